# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The server's keys over time: the KEK file as it is now, the ingestion keys, and their rotation.

* ``KeyStore`` opens and seals KEK blobs (``kek``) with the KEK file as it is *now*: a
  rotation replaces the file (rename), and every process of this host notices the new
  inode before its next blob operation.  The database records which KEK its blobs are
  under (``kek_check`` = HMAC-SHA256(KEK, label)); a process whose KEK file does not
  match (a replica on another host that has not received the new file yet) refuses
  to seal, so it can never write a blob no one else can open.
* Ingestion keys: the current X25519 pair (private half under the KEK) and, after a
  rotation, the previous one until its grace period ends; registrations try both, so
  volume keys sealed just before a rotation still register.
* ``rotate_kek``: a new KEK is written beside the old (``kek.key.new``, 0600), every blob
  is re-wrapped in one transaction that also moves ``kek_check``, then the new file is
  renamed over the old.  A crash in between is finished (or undone) at the next start
  by ``recover_rotation``, which goes by ``kek_check``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.engine import Connection

from ..plugins.module_utils.common.fileio import create_private
from ..plugins.module_utils.keyrelease.protocol import generate_x25519, wipe
from ..plugins.module_utils.snp.errors import SnpError
from . import kek
from .engine import now_ms
from .tables import images, settings_table

KEK_CHECK = "kek_check"
KEK_CHECK_LABEL = b"snpguard/kek-check/v1"
INGESTION_PRIVATE = "ingestion_private_key"
INGESTION_PUBLIC = "ingestion_public_key"
PREVIOUS_PRIVATE = "ingestion_private_key_previous"
PREVIOUS_PUBLIC = "ingestion_public_key_previous"
PREVIOUS_UNTIL = "ingestion_previous_until"


def kek_check(kek_bytes: bytes) -> str:
    return hmac.new(kek_bytes, KEK_CHECK_LABEL, hashlib.sha256).hexdigest()


def get_setting(conn: Connection, name: str) -> str | None:
    row = conn.execute(select(settings_table.c.value).where(settings_table.c.name == name)).first()
    return row.value if row else None


def put_setting(conn: Connection, name: str, value: str) -> None:
    now = now_ms()
    if get_setting(conn, name) is None:
        conn.execute(insert(settings_table).values(name=name, value=value, updated_at=now))
    else:
        conn.execute(update(settings_table).where(settings_table.c.name == name).values(value=value, updated_at=now))


def drop_setting(conn: Connection, name: str) -> None:
    conn.execute(delete(settings_table).where(settings_table.c.name == name))


class KeyStore:
    """The KEK of this process, re-read when its file is replaced."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._identity: tuple[int, int, int] | None = None
        self._kek = b""
        self._load()

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise SnpError(f"cannot read the key-encryption key: {exc.strerror}", field="kek_file",
                           path=self.path) from exc
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _load(self) -> None:
        identity = self._stat()
        self._kek = kek.load_or_create_kek(self.path, create=False)
        self._identity = identity

    def current(self) -> bytes:
        with self._lock:
            if self._stat() != self._identity:
                self._load()
            return self._kek

    @property
    def check(self) -> str:
        return kek_check(self.current())

    def open(self, blob: bytes, aad: bytes, *, what: str) -> bytearray:
        return kek.open_blob(self.current(), bytes(blob), aad, what=what)


# -- ingestion keys ---------------------------------------------------------------------------------


@dataclass
class IngestionKeys:
    public: bytes
    previous_public: bytes | None
    previous_until: int | None


def ingestion_public(conn: Connection) -> IngestionKeys:
    current = get_setting(conn, INGESTION_PUBLIC)
    if current is None:
        raise SnpError("the server is not initialised (no ingestion key)", field="database")
    previous = get_setting(conn, PREVIOUS_PUBLIC)
    until = get_setting(conn, PREVIOUS_UNTIL)
    return IngestionKeys(base64.b64decode(current), base64.b64decode(previous) if previous else None,
                         int(until) if until else None)


def ingestion_privates(conn: Connection, store: KeyStore) -> list[bytearray]:
    """The private ingestion keys a registration may be sealed to: current, then previous within its grace."""
    sealed = get_setting(conn, INGESTION_PRIVATE)
    if sealed is None:
        raise SnpError("the server is not initialised (no ingestion key)", field="database")
    keys = [store.open(base64.b64decode(sealed), kek.INGESTION_KEY_AAD, what="ingestion key")]
    previous, until = get_setting(conn, PREVIOUS_PRIVATE), get_setting(conn, PREVIOUS_UNTIL)
    if previous and until and now_ms() < int(until):
        keys.append(store.open(base64.b64decode(previous), kek.INGESTION_KEY_AAD, what="previous ingestion key"))
    return keys


def create_ingestion_key(conn: Connection, kek_bytes: bytes) -> bytes:
    """A new current ingestion key pair (first start); returns the public key."""
    private, public = generate_x25519()
    try:
        sealed = kek.seal(kek_bytes, private, kek.INGESTION_KEY_AAD)
    finally:
        wipe(private)
    put_setting(conn, INGESTION_PRIVATE, base64.b64encode(sealed).decode())
    put_setting(conn, INGESTION_PUBLIC, base64.b64encode(public).decode())
    return public


def rotate_ingestion_key(engine: Engine, kek_bytes: bytes, grace_seconds: int) -> tuple[bytes, bytes, int]:
    """Make a new ingestion key current; the old one opens registrations for ``grace_seconds`` more.

    Returns (new public key, old public key, end of grace in ms).  One transaction.
    """
    if grace_seconds < 0:
        raise SnpError("must be >= 0", field="grace")
    from .engine import write_tx

    with write_tx(engine) as conn:
        old_private = get_setting(conn, INGESTION_PRIVATE)
        old_public = get_setting(conn, INGESTION_PUBLIC)
        if old_private is None or old_public is None:
            raise SnpError("the server is not initialised (no ingestion key)", field="database")
        require_kek(conn, kek_bytes)
        kek.open_blob(kek_bytes, base64.b64decode(old_private), kek.INGESTION_KEY_AAD, what="ingestion key")
        until = now_ms() + grace_seconds * 1000
        put_setting(conn, PREVIOUS_PRIVATE, old_private)
        put_setting(conn, PREVIOUS_PUBLIC, old_public)
        put_setting(conn, PREVIOUS_UNTIL, str(until))
        public = create_ingestion_key(conn, kek_bytes)
    return public, base64.b64decode(old_public), until


# -- the KEK ------------------------------------------------------------------------------------------


def require_kek(conn: Connection, kek_bytes: bytes) -> None:
    """Refuse to write blobs sealed under ``kek_bytes`` unless the database's blobs are under it too.

    Call it in the transaction that writes them: a replica whose KEK file predates a
    rotation must not add blobs that no other process can open.
    """
    recorded = get_setting(conn, KEK_CHECK)
    if recorded is not None and recorded != kek_check(kek_bytes):
        raise SnpError("this server's KEK file is not the one the database's keys are under (was the KEK "
                       "rotated? install the new KEK file on this host)", field="kek_file")


def record_kek(conn: Connection, kek_bytes: bytes) -> None:
    """At start: record which KEK the blobs are under (older databases lack it), or refuse a wrong one."""
    recorded = get_setting(conn, KEK_CHECK)
    if recorded is None:
        put_setting(conn, KEK_CHECK, kek_check(kek_bytes))
    elif recorded != kek_check(kek_bytes):
        raise SnpError("does not match the key the database's blobs are under (wrong KEK file for this "
                       "database?)", field="kek_file")


def _rewrap(conn: Connection, old: bytes, new: bytes) -> int:
    """Re-seal every KEK blob from ``old`` to ``new`` inside ``conn``'s transaction; returns how many."""
    count = 0
    for name in (INGESTION_PRIVATE, PREVIOUS_PRIVATE):
        value = get_setting(conn, name)
        if value:
            plain = kek.open_blob(old, base64.b64decode(value), kek.INGESTION_KEY_AAD, what=name)
            try:
                put_setting(conn, name, base64.b64encode(kek.seal(new, plain, kek.INGESTION_KEY_AAD)).decode())
            finally:
                wipe(plain)
            count += 1
    rows = conn.execute(select(images.c.id, images.c.volume_key_enc, images.c.id_key_enc)).all()
    for row in rows:
        values = {}
        for column, label, what in (("volume_key_enc", kek.VOLUME_KEY_AAD, "volume key"),
                                    ("id_key_enc", kek.ID_KEY_AAD, "ID key")):
            blob = getattr(row, column)
            if blob is None:
                continue
            aad = label + row.id.encode()
            plain = kek.open_blob(old, bytes(blob), aad, what=f"{what} of image {row.id}")
            try:
                values[column] = kek.seal(new, plain, aad)
            finally:
                wipe(plain)
            count += 1
        if values:
            conn.execute(update(images).where(images.c.id == row.id).values(**values))
    put_setting(conn, KEK_CHECK, kek_check(new))
    return count


def pending_path(path: str) -> str:
    return path + ".new"


def recover_rotation(conn: Connection, path: str) -> str | None:
    """Finish or undo a rotation that a crash interrupted; returns what was done (None: nothing pending)."""
    pending = pending_path(path)
    if not os.path.exists(pending):
        return None
    recorded = get_setting(conn, KEK_CHECK)
    new = kek.load_or_create_kek(pending, create=False)
    if recorded is not None and recorded == kek_check(new):
        os.replace(pending, path)
        _fsync_dir(path)
        return "finished an interrupted KEK rotation (the database was already re-wrapped)"
    os.unlink(pending)
    return "removed the new KEK of an interrupted rotation (the database was never re-wrapped)"


def rotate_kek(engine: Engine, path: str) -> int:
    """Re-wrap every blob under a fresh KEK and replace the KEK file; returns the number of blobs."""
    from .engine import write_tx

    pending = pending_path(path)
    with write_tx(engine) as conn:
        recover_rotation(conn, path)
    old = kek.load_or_create_kek(path, create=False)
    new = os.urandom(kek.KEK_SIZE)
    create_private(pending, new)
    try:
        with write_tx(engine) as conn:
            require_kek(conn, old)
            count = _rewrap(conn, old, new)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(pending)
        raise
    os.replace(pending, path)
    _fsync_dir(path)
    return count


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
