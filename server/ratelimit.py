# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Fixed-window rate limiting with the counters in the database (shared by all replicas).

One upsert per request: ``INSERT … ON CONFLICT (bucket, window) DO UPDATE SET
count = count + 1 RETURNING count``, atomic on SQLite (>= 3.35) and PostgreSQL alike.  Old
windows are swept now and then by whoever happens to be writing.
"""

from __future__ import annotations

import random

from sqlalchemy.engine import Connection

from .db import HotSql
from .errors import ApiError

SWEEP_PROBABILITY = 0.01


def _refuse(limit: int, window_s: int, window: int, now_ms: int) -> ApiError:
    retry = max(1, ((window + 1) * window_s * 1000 - now_ms + 999) // 1000)
    return ApiError(429, "rate_limited", f"more than {limit} requests in {window_s} s from this address",
                    headers={"Retry-After": str(retry)})


_COUNT = HotSql('SELECT "count" FROM rate_limits WHERE bucket = :bucket AND "window" = :window')
_HIT = HotSql('INSERT INTO rate_limits (bucket, "window", "count") VALUES (:bucket, :window, 1) '
              'ON CONFLICT (bucket, "window") DO UPDATE SET "count" = rate_limits."count" + 1 RETURNING "count"')
_SWEEP = HotSql('DELETE FROM rate_limits WHERE "window" < :window')


def window_of(now_ms: int, window_s: int) -> int:
    return now_ms // (window_s * 1000)


def refuse_if_over(count: int | None, limit: int, window_s: int, now_ms: int) -> None:
    """429 when a count read elsewhere (e.g. joined into another query) is already at ``limit``."""
    if limit > 0 and count is not None and count >= limit:
        raise _refuse(limit, window_s, window_of(now_ms, window_s), now_ms)


def check(conn: Connection, bucket: str, limit: int, window_s: int, now_ms: int) -> None:
    """Read-only: raise 429 if ``bucket`` is already at ``limit`` (the request is counted later, by ``hit``).

    Lets a handler refuse early without a write transaction, and count the request in
    the write transaction it makes anyway.  Concurrent requests may overshoot the limit
    by at most their number, which a rate limit tolerates.
    """
    if limit <= 0:
        return
    window = now_ms // (window_s * 1000)
    count = _COUNT(conn, bucket=bucket[:128], window=window).scalar()
    if count is not None and count >= limit:
        raise _refuse(limit, window_s, window, now_ms)


def hit_call(bucket: str, window_s: int, now_ms: int) -> tuple[HotSql, dict[str, object]]:
    """The counting statement, for a caller that batches it with its own (see ``db.hot_batch``)."""
    return _HIT, {"bucket": bucket[:128], "window": window_of(now_ms, window_s)}


def maybe_sweep(conn: Connection, window_s: int, now_ms: int) -> None:
    if random.random() < SWEEP_PROBABILITY:
        _SWEEP(conn, window=window_of(now_ms, window_s) - 1)


def hit(conn: Connection, bucket: str, limit: int, window_s: int, now_ms: int, *, enforce: bool = True) -> None:
    """Count one request for ``bucket``; raise 429 with Retry-After when over ``limit`` (0 = no limit)."""
    if limit <= 0:
        return
    window = now_ms // (window_s * 1000)
    count = _HIT(conn, bucket=bucket[:128], window=window).scalar_one()
    if random.random() < SWEEP_PROBABILITY:
        _SWEEP(conn, window=window - 1)
    if enforce and count > limit:
        raise _refuse(limit, window_s, window, now_ms)
