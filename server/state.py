# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""First start and shared server state: migrations, the master password, the ingestion key.

``initialize`` is idempotent and safe when several processes or replicas start at
once (it runs under ``tables.init_lock``): the first one migrates the database, makes the
HPKE ingestion key pair (private half under the KEK) and a master password; the
others find them in the database.  Only the process that generated the password
gets it back, to print once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from ..plugins.module_utils.keyrelease.protocol import wipe
from ..plugins.module_utils.snp.errors import SnpError
from . import auth, kek, keys, tokens
from .config import CONFIG_NAME, Settings
from .engine import make_engine, short_engine, write_tx
from .tables import init_lock, migrate


@dataclass
class InitResult:
    master_password: str | None  # set only when this call generated it
    revision: str
    ingestion_public_key: bytes
    recovered: str | None = None  # what was done about an interrupted KEK rotation


def secure_data_dir(settings: Settings) -> None:
    """Create the data dir 0700, or refuse one that group or others can enter; tighten the files in it.

    Files the server creates are 0600 whatever the caller's umask (it is set to 077 here,
    before SQLite creates the database and its WAL).  Existing state files that are
    group- or world-readable (from an older version or a copy) are chmod-ed to 0600.
    """
    os.umask(0o077)
    path = settings.data_dir
    os.makedirs(path, mode=0o700, exist_ok=True)
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise SnpError(f"is accessible by group or others (mode {mode:04o}); chmod 700 it", field="data_dir",
                       path=path)
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.islink(full) or not os.path.isfile(full):
            continue
        if os.stat(full).st_mode & 0o077:
            os.chmod(full, 0o600)


def initialize(settings: Settings, engine: Engine | None = None) -> InitResult:
    """Create (or find) everything a server needs; returns a new master password only once."""
    secure_data_dir(settings)
    own = engine is None
    engine = engine or make_engine(settings.database_url, pool_size=2)
    try:
        with init_lock(engine, settings.data_dir):
            revision = migrate(engine)
            password = None
            with write_tx(engine) as conn:
                recovered = keys.recover_rotation(conn, settings.kek_path)
                kek_bytes = load_kek(settings, create=keys.get_setting(conn, keys.INGESTION_PUBLIC) is None)
                if keys.get_setting(conn, keys.INGESTION_PUBLIC) is None:
                    public = keys.create_ingestion_key(conn, kek_bytes)
                else:
                    public = keys.ingestion_public(conn).public
                # A replica with the wrong KEK must fail at start, not at the first registration.
                keys.record_kek(conn, kek_bytes)
                store_opens_ingestion(conn, settings)
                if keys.get_setting(conn, auth.MASTER_SETTING) is None:
                    password = auth.generate_master_password()
                    auth.set_master_password(conn, password)
        return InitResult(password, revision, public, recovered)
    finally:
        if own:
            engine.dispose()


def load_kek(settings: Settings, *, create: bool = False) -> bytes:
    return kek.load_or_create_kek(settings.kek_path, create=create)


def store_opens_ingestion(conn: Connection, settings: Settings) -> None:
    """Prove the KEK opens the stored ingestion key(s) (wiped at once)."""
    for private in keys.ingestion_privates(conn, keys.KeyStore(settings.kek_path)):
        wipe(private)


def reset_master_password(settings: Settings) -> str:
    """A new random master password (hash stored, dashboard sessions ended); returned to print once."""
    secure_data_dir(settings)
    with short_engine(settings.database_url) as engine, init_lock(engine, settings.data_dir):
        migrate(engine)
        password = auth.generate_master_password()
        with write_tx(engine) as conn:
            auth.set_master_password(conn, password)
    return password


def create_token_offline(settings: Settings, name: str, expires_at_ms: int | None,
                         scope: str | None = None) -> tuple[str, str]:
    """Mint an API token directly in the database (bootstrap for roles and scripts on the server host)."""
    from sqlalchemy.exc import DBAPIError

    secure_data_dir(settings)
    try:
        with short_engine(settings.database_url) as engine, write_tx(engine) as conn:
            made = tokens.mint(conn, tokens.MASTER, name, expires_at_ms, scope)
        return made["id"], made["token"]
    except DBAPIError as exc:
        raise SnpError(f"cannot write the token (is the server initialised?): {type(exc.orig).__name__}",
                       field="database") from exc


def write_config(settings: Settings, values: dict[str, object]) -> str:
    """Record non-default settings given to ``init`` in ``<data-dir>/config.json`` (not secret)."""
    import json

    from ..plugins.module_utils.common.fileio import atomic_write

    path = os.path.join(settings.data_dir, CONFIG_NAME)
    atomic_write(path, (json.dumps(values, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
    return path
