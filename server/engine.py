# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Engines, transactions and locks, with the per-dialect settings the server relies on.

SQLite runs in WAL mode with ``synchronous=FULL`` (a 201 survives power loss) and
write transactions start with ``BEGIN IMMEDIATE``, so concurrent writers queue on the
busy timeout instead of failing a read-to-write lock upgrade; in this server they
queue on an ``flock`` first (``SqliteWriteLock``).  Checkpoints run in the background.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection


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


@contextlib.contextmanager
def short_engine(url: str) -> Iterator[Engine]:
    """A one-connection engine for a command that runs once (init, rotation, backup), disposed after."""
    engine = make_engine(url, pool_size=1)
    try:
        yield engine
    finally:
        engine.dispose()


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
