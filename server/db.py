# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Tables (SQLAlchemy Core), engines, transactions and migrations.

All server state lives here, so any number of replicas can share one PostgreSQL.
Times are integer milliseconds since the epoch: portable, indexable and unambiguous
on SQLite and PostgreSQL alike.  The tables below describe the schema *at head* for
queries; the schema itself is created only by the Alembic migrations in
``migrations/`` (``alembic upgrade head`` at every start).

SQLite runs in WAL mode with ``synchronous=FULL`` (a 201 survives power loss) and
write transactions start with ``BEGIN IMMEDIATE``, so concurrent writers queue on the
busy timeout instead of failing a read-to-write lock upgrade.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
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
    create_engine,
    event,
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
    Column("volume_key_enc", LargeBinary, nullable=False),
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


class HotResult:
    """The little of a result the hot path needs: rows by column name, scalar, rowcount."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, cursor: Any) -> None:
        self.rowcount = cursor.rowcount
        if cursor.description is None:
            self.rows: list[Any] = []
        else:
            names = [d[0] for d in cursor.description]
            self.rows = [HotRow(zip(names, values, strict=True)) for values in cursor.fetchall()]

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        return next(iter(self.rows[0].values())) if self.rows else None

    def scalar_one(self) -> Any:
        if len(self.rows) != 1:
            raise LookupError(f"expected one row, got {len(self.rows)}")
        return self.scalar()


class HotRow(dict):  # type: ignore[type-arg]
    """A result row: ``row.name`` and ``row["name"]``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class HotSql:
    """One SQL statement for the hot path, run on the DBAPI cursor inside the current transaction.

    Written once with ``:name`` placeholders (sqlite3's named style) and translated to
    ``%(name)s`` for psycopg.  Building Core statements and result objects per request
    cost more CPU than the database work itself (cache keys, bind parameters, result
    metadata), so the few statements every handshake runs bypass them; the transaction
    (``write_tx``/``read_tx``), pooling and everything else stay SQLAlchemy's.
    Driver errors are not wrapped: these statements have no expected failures.
    """

    _PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")

    def __init__(self, sql: str) -> None:
        self.sql = " ".join(sql.split())
        self._pyformat = self._PLACEHOLDER.sub(r"%(\1)s", self.sql.replace("%", "%%"))

    def text_for(self, conn: Connection) -> str:
        return self.sql if conn.dialect.name == "sqlite" else self._pyformat

    def __call__(self, conn: Connection, **params: Any) -> HotResult:
        return hot_batch(conn, [(self, params)])[0]


def hot_batch(conn: Connection, calls: list[tuple[HotSql, dict[str, Any]]]) -> list[HotResult]:
    """Run several hot statements in order; on PostgreSQL in one round trip (psycopg pipeline mode).

    A transaction's statements otherwise cost one network round trip each (plus one for
    psycopg's implicit BEGIN); pipelined, the server still runs them in order, so later
    statements see earlier ones, but the client waits once.
    """
    dbapi = conn.connection.dbapi_connection
    cursors: list[Any] = []
    try:
        if conn.dialect.name == "postgresql" and len(calls) > 1:
            with dbapi.pipeline():  # type: ignore[union-attr]
                for statement, params in calls:
                    cursors.append(dbapi.cursor())  # type: ignore[union-attr]
                    cursors[-1].execute(statement.text_for(conn), params)
        else:
            for statement, params in calls:
                cursors.append(dbapi.cursor())  # type: ignore[union-attr]
                cursors[-1].execute(statement.text_for(conn), params)
        return [HotResult(cursor) for cursor in cursors]
    except conn.dialect.loaded_dbapi.Error as exc:
        # What SQLAlchemy does for its own statements: a dead connection must not go back to the pool.
        if conn.dialect.is_disconnect(exc, dbapi, cursors[-1] if cursors else None):
            conn.invalidate(exc)
        raise
    finally:
        for cursor in cursors:
            cursor.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine with the per-dialect settings this server relies on."""
    if is_sqlite(url):
        # A pool as large as the handler thread count: an overflow connection would be closed on
        # return and reopened (file open, schema read, pragmas) on the next burst.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event decide how transactions start (the pysqlite recipe).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            # No automatic checkpoints: the commit that crossed the threshold would copy and fsync the
            # database file while holding the write lock (tens of ms of tail latency for every waiting
            # writer).  The server checkpoints in the background instead (WalCheckpointer); SQLite still
            # checkpoints when the last connection closes.
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000",
                           "wal_autocheckpoint=0"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # Straight to the driver: exec_driver_sql costs more than the BEGIN itself.
            statement = "BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN"
            conn.connection.dbapi_connection.execute(statement)  # type: ignore[union-attr]

        return engine
    # No pre-ping (a round trip per checkout on the hot path): a connection found dead is invalidated
    # when it fails (SQLAlchemy, HotSql), that request gets a 503, and the next one a fresh connection.
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False, pool_recycle=1800)


class SqliteWriteLock:
    """Serialises SQLite writers: a thread lock in this process, an flock across processes.

    SQLite's own busy handler makes a blocked writer *sleep* (1, 2, 5 … 100 ms) and poll,
    so under load most of a request's latency would be sleeping next to an idle lock.
    A kernel flock wakes the next writer the moment the lock is released.  SQLite's
    busy timeout stays as the fallback for writers outside this server.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


_WRITE_LOCKS: dict[str, SqliteWriteLock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(engine: Engine) -> SqliteWriteLock | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    path = os.path.abspath(database) + ".write-lock"
    with _WRITE_LOCKS_GUARD:
        lock = _WRITE_LOCKS.get(path)
        if lock is None:
            lock = _WRITE_LOCKS[path] = SqliteWriteLock(path)
        return lock


class WalCheckpointer:
    """Background PASSIVE checkpoints of an SQLite WAL (they never block readers or writers)."""

    def __init__(self, engine: Engine, interval: float = 1.0) -> None:
        self.engine, self.interval = engine, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)

    def start(self) -> WalCheckpointer:
        if self.engine.dialect.name == "sqlite":
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.engine.connect() as conn:
                    conn.connection.dbapi_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
            except Exception:  # a missed checkpoint is retried next time; never let the thread die
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


@contextlib.contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """One write transaction: committed on success, rolled back on any exception."""
    lock = _write_lock(engine)
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(engine.connect())
        if lock is not None:
            stack.enter_context(lock.hold())
        conn.execution_options(write=True)
        with conn.begin():
            yield conn


@contextlib.contextmanager
def autocommit(engine: Engine) -> Iterator[Connection]:
    """A connection without a transaction, for a single read statement (no BEGIN/COMMIT round trips).

    SQLite connections are in driver autocommit already (``isolation_level = None`` at connect);
    setting SQLAlchemy's AUTOCOMMIT there would reset them to implicit transactions on return.
    """
    with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


@contextlib.contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn, conn.begin():
        yield conn


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
