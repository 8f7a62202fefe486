# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The schema at head (SQLAlchemy Core tables, for queries) and the migrations that build it.

All server state lives in these tables, so any number of replicas can share one
PostgreSQL.  Times are integer milliseconds since the epoch: portable, indexable and
unambiguous on SQLite and PostgreSQL alike.  The tables below describe the schema *at
head*; the schema itself is created only by the Alembic migrations in ``migrations/``
(``alembic upgrade head`` at every start, under ``init_lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Connection

metadata = MetaData()

# BigInteger autoincrement needs INTEGER on SQLite to alias the rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")

settings_table = Table(
    "settings", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

images = Table(
    "images", metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("enabled", Boolean, nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("spec", Text, nullable=False),
    Column("volume_key_enc", LargeBinary, nullable=True),  # NULL: integrity-only (verity) images have no key
    Column("id_key_enc", LargeBinary, nullable=True),
    Column("id_key_digest", String(96), nullable=True),
    Column("bundle_sha256", String(64), nullable=True),
    Column("release_count", BigInteger, nullable=False),
    Column("refusal_count", BigInteger, nullable=False),
    Column("last_release_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

measurements = Table(
    "measurements", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("image_id", String(36), ForeignKey("images.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("vcpus", Integer, nullable=False),
    Column("measurement", String(96), nullable=False, unique=True),
    Column("id_block", Text, nullable=True),
    Column("id_auth", Text, nullable=True),
    UniqueConstraint("image_id", "vcpus", name="uq_measurements_image_vcpus"),
)

bundles = Table(
    "bundles", metadata,
    Column("image_id", String(36), ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

tokens = Table(
    "tokens", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("secret_hash", String(255), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    Column("revoked_at", BigInteger, nullable=True),
    Column("last_used_at", BigInteger, nullable=True),
    Column("parent_id", String(32), nullable=True, index=True),  # the token that minted it (None: master password)
    Column("scope", String(16), nullable=False),  # keyrelease.TOKEN_SCOPES
)

attest_sessions = Table(
    "attest_sessions", metadata,
    Column("id", String(36), primary_key=True),
    Column("nonce", LargeBinary, nullable=False),
    Column("source", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
    Column("consumed_at", BigInteger, nullable=True),
)

audit = Table(
    "audit", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False, index=True),
    Column("source", String(64), nullable=False),
    Column("session_id", String(36), nullable=True),
    Column("image_id", String(36), nullable=True, index=True),
    Column("image_name", String(128), nullable=True),
    Column("measurement", String(96), nullable=True),
    Column("reported_tcb", Text, nullable=True),
    Column("result", String(16), nullable=False),
    Column("check_name", String(64), nullable=True),
    Column("message", Text, nullable=True),
)

rate_limits = Table(
    "rate_limits", metadata,
    Column("bucket", String(128), primary_key=True),
    Column("window", BigInteger, primary_key=True),
    Column("count", Integer, nullable=False),
)

web_sessions = Table(
    "web_sessions", metadata,
    Column("id", String(64), primary_key=True),  # SHA-256 of the cookie secret, never the secret
    Column("csrf", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
    Column("last_seen_at", BigInteger, nullable=False),
)


# -- migrations ---------------------------------------------------------------------------------

MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", MIGRATIONS_DIR)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError("no migrations")
    return head


def current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def init_lock(engine: Engine, data_dir: str) -> Iterator[None]:
    """Serialise migrations and first-start initialisation across processes and replicas.

    PostgreSQL: a session-level advisory lock (replicas may not share a file system).
    SQLite: an flock on a file beside the data (all users of the file are on this host).
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(5318008)"))
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(5318008)"))
                conn.commit()
        return
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, ".init.lock"), "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def migrate(engine: Engine, revision: str = "head") -> str:
    """``alembic upgrade <revision>`` (default head) on ``engine``; returns the revision reached."""
    from alembic import command

    config = _alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        conn.commit()
    return head_revision() if revision == "head" else revision
