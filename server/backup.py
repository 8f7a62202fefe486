# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard server backup|restore``: the data dir's keys and the database, as one file.

A backup is a tar.gz (0600, written to a temp file and renamed) holding:

* ``manifest.json`` — format, server version, schema revision, row counts, and the
  KEK check value, so a restore can tell the pieces belong together;
* ``kek.key`` and ``tls/`` (the CA that clients pin, the server key and certificate)
  and ``config.json`` when present;
* ``tables/<name>.jsonl`` — every row of the durable tables (settings, images,
  measurements, bundles, tokens, audit), read in one snapshot transaction, bytes as
  base64.  A logical dump, so a backup of SQLite restores into PostgreSQL and back.

Sessions, rate-limit counters and dashboard logins are left out: they expire anyway.

The backup holds the KEK *and* everything under it: it is exactly as secret as the
data dir itself.  Keep it where the data dir's key would be kept.

``restore`` needs an empty data dir (no KEK, no database state): it writes the files,
migrates a fresh database to the backup's revision, inserts every row in one
transaction, then migrates to head.  The KEK is checked against the backup's rows
before anything is written.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
import tempfile
import time
from typing import Any

from sqlalchemy import Engine, Table, insert, select, text
from sqlalchemy.engine import Connection

from ..plugins.module_utils.common.fileio import atomic_write, create_private
from ..plugins.module_utils.snp.errors import SnpError
from . import SERVER_VERSION, kek, keys
from .config import CONFIG_NAME, Settings
from .engine import make_engine
from .tables import audit, bundles, current_revision, images, measurements, settings_table, tokens

FORMAT = "snpguard-server-backup/v1"
#: In dependency order (restored in this order, in one transaction).
TABLES: tuple[Table, ...] = (settings_table, images, measurements, bundles, tokens, audit)
MAX_MEMBER = 4 << 30


def _encode(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row._mapping.items():
        if isinstance(value, bytes | bytearray | memoryview):
            out[name] = {"$b64": base64.b64encode(bytes(value)).decode()}
        else:
            out[name] = value
    return out


def _decode(values: dict[str, Any]) -> dict[str, Any]:
    return {k: base64.b64decode(v["$b64"]) if isinstance(v, dict) and "$b64" in v else v for k, v in values.items()}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def _snapshot(engine: Engine) -> Connection:
    """A connection whose transaction sees one point in time (REPEATABLE READ; SQLite's WAL read snapshot)."""
    conn = engine.connect()
    if engine.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


def backup(settings: Settings, out_path: str) -> dict[str, Any]:
    """Write the backup file; returns its manifest."""
    kek_bytes = kek.load_or_create_kek(settings.kek_path, create=False)
    engine = make_engine(settings.database_url, pool_size=1)
    directory = os.path.dirname(os.path.abspath(out_path)) or "."
    handle, temp = tempfile.mkstemp(prefix=".backup-", dir=directory)
    os.fchmod(handle, 0o600)
    try:
        with os.fdopen(handle, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            counts: dict[str, int] = {}
            with _snapshot(engine) as conn, conn.begin():
                revision = current_revision(conn)
                recorded = keys.get_setting(conn, keys.KEK_CHECK)
                if recorded is not None and recorded != keys.kek_check(kek_bytes):
                    raise SnpError("does not match the database (wrong --kek-file?)", field="kek_file")
                for table in TABLES:
                    lines = io.BytesIO()
                    count = 0
                    for row in conn.execute(select(table)).yield_per(500):
                        lines.write(json.dumps(_encode(row), sort_keys=True).encode() + b"\n")
                        count += 1
                    counts[table.name] = count
                    _add(tar, f"tables/{table.name}.jsonl", lines.getvalue())
            manifest = {"format": FORMAT, "server_version": SERVER_VERSION, "revision": revision,
                        "created_at": int(time.time()), "kek_check": keys.kek_check(kek_bytes), "rows": counts,
                        "files": []}
            _add(tar, "kek.key", kek_bytes)
            manifest["files"].append("kek.key")
            config = os.path.join(settings.data_dir, CONFIG_NAME)
            if os.path.isfile(config):
                with open(config, "rb") as f:
                    _add(tar, CONFIG_NAME, f.read())
                manifest["files"].append(CONFIG_NAME)
            if os.path.isdir(settings.tls_dir):
                for name in sorted(os.listdir(settings.tls_dir)):
                    path = os.path.join(settings.tls_dir, name)
                    if os.path.isfile(path) and not os.path.islink(path):
                        with open(path, "rb") as f:
                            _add(tar, f"tls/{name}", f.read())
                        manifest["files"].append(f"tls/{name}")
            _add(tar, "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
        os.replace(temp, out_path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    finally:
        engine.dispose()
    return manifest


def _read_backup(path: str) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                name = member.name
                if not member.isfile() or name.startswith("/") or ".." in name.split("/"):
                    raise SnpError(f"member {name!r} is not a plain file of a backup", field="backup", path=path)
                if member.size > MAX_MEMBER:
                    raise SnpError(f"member {name!r} is too large", field="backup", path=path)
                handle = tar.extractfile(member)
                members[name] = handle.read() if handle else b""
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise SnpError(f"is not a readable backup: {exc}", field="backup", path=path) from exc
    if "manifest.json" not in members:
        raise SnpError("has no manifest.json (not a snpguard backup)", field="backup", path=path)
    return members


def _is_empty(settings: Settings, engine: Engine) -> bool:
    if os.path.exists(settings.kek_path):
        return False
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            found = conn.execute(text("SELECT name FROM sqlite_master WHERE type='table' AND name='settings'"))
        else:
            found = conn.execute(text("SELECT table_name FROM information_schema.tables WHERE table_name='settings'"))
        if found.first() is None:
            return True
        return conn.execute(select(settings_table.c.name).limit(1)).first() is None


def restore(settings: Settings, backup_path: str) -> dict[str, Any]:
    """Restore a backup into an empty data dir (and database); returns the manifest."""
    from .state import secure_data_dir

    members = _read_backup(backup_path)
    try:
        manifest = json.loads(members["manifest.json"])
    except ValueError as exc:
        raise SnpError(f"manifest.json is not JSON: {exc}", field="backup", path=backup_path) from exc
    if manifest.get("format") != FORMAT:
        raise SnpError(f"format {manifest.get('format')!r} is not {FORMAT!r}", field="backup", path=backup_path)
    kek_bytes = members.get("kek.key", b"")
    if len(kek_bytes) != kek.KEK_SIZE or keys.kek_check(kek_bytes) != manifest.get("kek_check"):
        raise SnpError("its kek.key does not match its manifest", field="backup", path=backup_path)
    rows: dict[str, list[dict[str, Any]]] = {}
    for table in TABLES:
        data = members.get(f"tables/{table.name}.jsonl")
        if data is None:
            raise SnpError(f"lacks the table {table.name}", field="backup", path=backup_path)
        rows[table.name] = [_decode(json.loads(line)) for line in data.splitlines() if line.strip()]
    recorded = {r["name"]: r["value"] for r in rows["settings"]}
    if recorded.get(keys.KEK_CHECK, manifest["kek_check"]) != manifest["kek_check"]:
        raise SnpError("its database rows are not under its kek.key", field="backup", path=backup_path)

    secure_data_dir(settings)
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        if not _is_empty(settings, engine):
            raise SnpError("restore needs an empty data dir and database (this one has a KEK or server state)",
                           field="data_dir", path=settings.data_dir)
        create_private(settings.kek_path, kek_bytes)
        try:
            _restore_rows(engine, manifest["revision"], rows)
        except BaseException:
            os.unlink(settings.kek_path)  # the data dir stays empty, so the restore can be tried again
            raise
        for name, data in members.items():
            if name.startswith("tls/") and "/" not in name[4:]:
                os.makedirs(settings.tls_dir, mode=0o700, exist_ok=True)
                atomic_write(os.path.join(settings.tls_dir, name[4:]), data, mode=0o600)
            elif name == CONFIG_NAME and not os.path.exists(os.path.join(settings.data_dir, CONFIG_NAME)):
                atomic_write(os.path.join(settings.data_dir, CONFIG_NAME), data, mode=0o600)
    finally:
        engine.dispose()
    return manifest


def _restore_rows(engine: Engine, revision: str | None, rows: dict[str, list[dict[str, Any]]]) -> None:
    """Schema at the backup's revision, every row in one transaction, then the schema at head."""
    from .engine import write_tx
    from .tables import migrate

    if not revision:
        raise SnpError("the backup names no schema revision", field="backup")
    migrate(engine, revision)
    with write_tx(engine) as conn:
        for table in TABLES:
            batch = rows[table.name]
            for start in range(0, len(batch), 500):
                conn.execute(insert(table), batch[start:start + 500])
        if engine.dialect.name == "postgresql":
            for table in (measurements, audit):  # serial columns continue after the restored ids
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                  f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"))
    migrate(engine)
