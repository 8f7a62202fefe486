# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Fixed-window rate limiting with the counters in the database (shared by all replicas).

One upsert per request: ``INSERT … ON CONFLICT (bucket, window) DO UPDATE SET
count = count + 1 RETURNING count``, atomic on SQLite and PostgreSQL alike.  Old
windows are swept now and then by whoever happens to be writing.
"""

from __future__ import annotations

import random

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from .db import rate_limits
from .errors import ApiError

SWEEP_PROBABILITY = 0.01


def hit(conn: Connection, bucket: str, limit: int, window_s: int, now_ms: int) -> None:
    """Count one request for ``bucket``; raise 429 with Retry-After when over ``limit`` (0 = no limit)."""
    if limit <= 0:
        return
    window = now_ms // (window_s * 1000)
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(rate_limits).values(bucket=bucket[:128], window=window, count=1)
    stmt = stmt.on_conflict_do_update(index_elements=[rate_limits.c.bucket, rate_limits.c.window],
                                      set_={"count": rate_limits.c.count + 1}).returning(rate_limits.c.count)
    count = conn.execute(stmt).scalar_one()
    if random.random() < SWEEP_PROBABILITY:
        conn.execute(delete(rate_limits).where(rate_limits.c.window < window - 1))
    if count > limit:
        retry = max(1, ((window + 1) * window_s * 1000 - now_ms + 999) // 1000)
        raise ApiError(429, "rate_limited", f"more than {limit} requests in {window_s} s from this address",
                       headers={"Retry-After": str(retry)})
