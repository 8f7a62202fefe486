# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""First start and shared server state: migrations, the master password, the ingestion key.

``initialize`` is idempotent and safe when several processes or replicas start at
once (it runs under ``db.init_lock``): the first one migrates the database, makes the
HPKE ingestion key pair (private half under the KEK) and a master password; the
others find them in the database.  Only the process that generated the password
gets it back, to print once.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

from sqlalchemy import Engine, insert, select
from sqlalchemy.engine import Connection

from ..plugins.module_utils.keyrelease import generate_x25519, wipe
from ..plugins.module_utils.snp.errors import SnpError
from . import auth, kek
from .config import CONFIG_NAME, Settings
from .db import init_lock, make_engine, migrate, now_ms, settings_table, write_tx

INGESTION_PRIVATE = "ingestion_private_key"
INGESTION_PUBLIC = "ingestion_public_key"


@dataclass
class InitResult:
    master_password: str | None  # set only when this call generated it
    revision: str
    ingestion_public_key: bytes


def _get(conn: Connection, name: str) -> str | None:
    row = conn.execute(select(settings_table.c.value).where(settings_table.c.name == name)).first()
    return row.value if row else None


def _put(conn: Connection, name: str, value: str) -> None:
    conn.execute(insert(settings_table).values(name=name, value=value, updated_at=now_ms()))


def initialize(settings: Settings, engine: Engine | None = None) -> InitResult:
    """Create (or find) everything a server needs; returns a new master password only once."""
    os.makedirs(settings.data_dir, mode=0o700, exist_ok=True)
    own = engine is None
    engine = engine or make_engine(settings.database_url, pool_size=2)
    try:
        with init_lock(engine, settings.data_dir):
            kek_bytes = load_kek(settings, create=True)
            revision = migrate(engine)
            password = None
            with write_tx(engine) as conn:
                public_b64 = _get(conn, INGESTION_PUBLIC)
                if public_b64 is None:
                    private, public = generate_x25519()
                    try:
                        sealed = kek.seal(kek_bytes, private, kek.INGESTION_KEY_AAD)
                    finally:
                        wipe(private)
                    _put(conn, INGESTION_PRIVATE, base64.b64encode(sealed).decode())
                    public_b64 = base64.b64encode(public).decode()
                    _put(conn, INGESTION_PUBLIC, public_b64)
                else:
                    # A replica with the wrong KEK must fail at start, not at the first registration.
                    load_ingestion_private_key(conn, kek_bytes)
                if _get(conn, auth.MASTER_SETTING) is None:
                    password = auth.generate_master_password()
                    auth.set_master_password(conn, password)
        return InitResult(password, revision, base64.b64decode(public_b64))
    finally:
        if own:
            engine.dispose()


def load_kek(settings: Settings, *, create: bool = False) -> bytes:
    return kek.load_or_create_kek(settings.kek_path, create=create)


def load_ingestion_private_key(conn: Connection, kek_bytes: bytes) -> bytearray:
    value = _get(conn, INGESTION_PRIVATE)
    if value is None:
        raise SnpError("the server is not initialised (no ingestion key)", field="database")
    return kek.open_blob(kek_bytes, base64.b64decode(value), kek.INGESTION_KEY_AAD, what="ingestion key")


def ingestion_public_key(conn: Connection) -> bytes:
    value = _get(conn, INGESTION_PUBLIC)
    if value is None:
        raise SnpError("the server is not initialised (no ingestion key)", field="database")
    return base64.b64decode(value)


def reset_master_password(settings: Settings) -> str:
    """A new random master password (hash stored, dashboard sessions ended); returned to print once."""
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with init_lock(engine, settings.data_dir):
            migrate(engine)
            password = auth.generate_master_password()
            with write_tx(engine) as conn:
                auth.set_master_password(conn, password)
        return password
    finally:
        engine.dispose()


def create_token_offline(settings: Settings, name: str, expires_at_ms: int | None) -> tuple[str, str]:
    """Mint an API token directly in the database (bootstrap for roles and scripts on the server host)."""
    from sqlalchemy.exc import DBAPIError

    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with write_tx(engine) as conn:
            token_id, token, _created = auth.create_token(conn, name, expires_at_ms)
        return token_id, token
    except DBAPIError as exc:
        raise SnpError(f"cannot write the token (is the server initialised?): {type(exc.orig).__name__}",
                       field="database") from exc
    finally:
        engine.dispose()


def write_config(settings: Settings, values: dict[str, object]) -> str:
    """Record non-default settings given to ``init`` in ``<data-dir>/config.json`` (not secret)."""
    import json

    from ..plugins.module_utils.fileio import atomic_write

    path = os.path.join(settings.data_dir, CONFIG_NAME)
    atomic_write(path, (json.dumps(values, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
    return path
