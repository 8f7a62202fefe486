# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Fixed-window rate limiting with the counters in the database (shared by all replicas).

A client address's count for a window is spread over ``SHARDS`` rows: each request
increments one shard at random (``INSERT … ON CONFLICT (bucket, window) DO UPDATE SET
count = count + 1``, atomic on SQLite >= 3.35 and PostgreSQL), and the limit compares
the sum of the shards.  With one row per address, every concurrent request from one
address (guests behind one NAT, a load test) would queue on that row's lock until the
previous transaction commits; sharded, they rarely meet.  Old windows are swept now
and then by whoever happens to be writing.
"""

from __future__ import annotations

import random
from typing import Any

from sqlalchemy.engine import Connection

from .errors import ApiError
from .hotpath import HotSql

SWEEP_PROBABILITY = 0.01
SHARDS = 8
BUCKET_MAX = 120  # the column holds 128: room for "#<shard>"

_SHARD_PARAMS = ", ".join(f":b{i}" for i in range(SHARDS))
#: The sum over a bucket's shards; usable as a sub-select (parameters from ``count_params``).
COUNT_SQL = ('SELECT COALESCE(SUM("count"), 0) FROM rate_limits '
             f'WHERE "window" = :window AND bucket IN ({_SHARD_PARAMS})')
_COUNT = HotSql(COUNT_SQL)
_HIT = HotSql('INSERT INTO rate_limits (bucket, "window", "count") VALUES (:bucket, :window, 1) '
              'ON CONFLICT (bucket, "window") DO UPDATE SET "count" = rate_limits."count" + 1')
_SWEEP = HotSql('DELETE FROM rate_limits WHERE "window" < :window')


def _refuse(limit: int, window_s: int, window: int, now_ms: int) -> ApiError:
    retry = max(1, ((window + 1) * window_s * 1000 - now_ms + 999) // 1000)
    return ApiError(429, "rate_limited", f"more than {limit} requests in {window_s} s from this address",
                    headers={"Retry-After": str(retry)})


def window_of(now_ms: int, window_s: int) -> int:
    return now_ms // (window_s * 1000)


def count_params(bucket: str, window_s: int, now_ms: int) -> dict[str, Any]:
    """Parameters of ``COUNT_SQL``: the window and the bucket's shard keys ``b0`` … ``b7``."""
    params: dict[str, Any] = {f"b{i}": f"{bucket[:BUCKET_MAX]}#{i}" for i in range(SHARDS)}
    params["window"] = window_of(now_ms, window_s)
    return params


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
    if limit > 0:
        refuse_if_over(_COUNT(conn, **count_params(bucket, window_s, now_ms)).scalar(), limit, window_s, now_ms)


def hit_call(bucket: str, window_s: int, now_ms: int) -> tuple[HotSql, dict[str, Any]]:
    """The counting statement (one random shard), for a caller that batches it (``hotpath.hot_batch``)."""
    shard = random.randrange(SHARDS)
    return _HIT, {"bucket": f"{bucket[:BUCKET_MAX]}#{shard}", "window": window_of(now_ms, window_s)}


def count_call(bucket: str, window_s: int, now_ms: int) -> tuple[HotSql, dict[str, Any]]:
    """The sum over the shards (it sees this transaction's own increment when batched after it)."""
    return _COUNT, count_params(bucket, window_s, now_ms)


def maybe_sweep(conn: Connection, window_s: int, now_ms: int) -> None:
    if random.random() < SWEEP_PROBABILITY:
        _SWEEP(conn, window=window_of(now_ms, window_s) - 1)


def hit(conn: Connection, bucket: str, limit: int, window_s: int, now_ms: int, *, enforce: bool = True) -> None:
    """Count one request for ``bucket``; raise 429 with Retry-After when over ``limit`` (0 = no limit)."""
    if limit <= 0:
        return
    statement, params = hit_call(bucket, window_s, now_ms)
    statement(conn, **params)
    maybe_sweep(conn, window_s, now_ms)
    if enforce:
        count = _COUNT(conn, **count_params(bucket, window_s, now_ms)).scalar()
        refuse_if_over(count - 1, limit, window_s, now_ms)
