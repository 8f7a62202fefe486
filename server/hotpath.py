# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The hot path's SQL: the few statements every handshake runs, straight on the DBAPI cursor.

Building Core statements and result objects per request cost more CPU than the
database work itself (cache keys, bind parameters, result metadata), so the
attestation and rate-limit statements bypass them; the transaction (``engine.write_tx``
/ ``read_tx``), pooling and everything else stay SQLAlchemy's.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import Connection


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
