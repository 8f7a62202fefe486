# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""API tokens: minting, checking, listing and revoking, with lineage and scope.

A token is ``sgt_<id>_<secret>``; the id finds the row, the secret is checked against
its PBKDF2 hash.  Every token records who minted it (``parent_id``; none when the
master password or the dashboard did) and a scope:

* ``operator`` — images (register, change, delete, bundles) and the audit log; it may
  list and revoke itself and the tokens below it, and mint nothing;
* ``admin`` — everything, including minting and revoking any token.

Rules that make a stolen child no stronger than its parent: only the master password
or an ``admin`` token mints; a child never outranks its parent's scope and never
outlives it (no expiry given: it inherits the parent's); revoking a token revokes
every token below it, in the same transaction, and minting locks the parent row so a
child cannot slip in beside a concurrent revocation.

Checking is a read transaction; failed attempts are counted per client address
(``ratelimit``) so guessing costs a bounded number of writes and then 429s.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import Connection

from ..plugins.module_utils.keyrelease.protocol import TOKEN_RE, TOKEN_SCOPES, format_token
from . import ratelimit
from .engine import now_ms, read_tx, write_tx
from .errors import ApiError
from .passwords import hash_password, verify_password

if TYPE_CHECKING:  # (the context imports the whole server; tokens is imported by it)
    from .context import ServerContext
from .tables import tokens

#: Secrets are 256 random bits, so a low PBKDF2 round count costs an attacker nothing
#: they could use and keeps every admin request cheap.
TOKEN_ROUNDS = 1_000
DEFAULT_SCOPE = "operator"
TOUCH_EVERY_MS = 60_000
MAX_DEPTH = 16  # generations below a master-password token (a loop guard, far above any real use)

MESSAGES = {
    "unauthenticated": "this endpoint needs 'Authorization: Bearer <API token>'",
    "token_invalid": "the API token is not valid",
    "token_revoked": "the API token was revoked",
    "token_expired": "the API token has expired",
}


@dataclass(frozen=True)
class Actor:
    """Who makes a request: a token (with its row's facts) or the master password / dashboard."""

    token_id: str | None  # None: the master password (or a dashboard session, which logged in with it)
    scope: str
    expires_at: int | None = None

    @property
    def is_master(self) -> bool:
        return self.token_id is None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


MASTER = Actor(None, "admin")


@dataclass(frozen=True)
class TokenCheck:
    """Outcome of checking a bearer token; ``code`` names why it was refused (see ``MESSAGES``)."""

    actor: Actor | None
    code: str | None

    @property
    def ok(self) -> bool:
        return self.code is None


def valid_id(token_id: str) -> bool:
    return len(token_id) == 16 and all(c in "0123456789abcdef" for c in token_id)


def _rank(scope: str) -> int:
    return TOKEN_SCOPES.index(scope)


# -- checking -------------------------------------------------------------------------------------


def check(conn: Connection, header: str | None) -> TokenCheck:
    """Validate ``Authorization: Bearer sgt_…`` (read-only)."""
    if not header or not header.lower().startswith("bearer "):
        return TokenCheck(None, "unauthenticated")
    match = TOKEN_RE.match(header[7:].strip())
    if not match:
        return TokenCheck(None, "token_invalid")
    token_id, secret = match.groups()
    row = conn.execute(select(tokens).where(tokens.c.id == token_id)).first()
    if row is None:
        hash_password(secret, TOKEN_ROUNDS)  # same work as a hit: no timing oracle for token ids
        return TokenCheck(None, "token_invalid")
    if not verify_password(secret, row.secret_hash):
        return TokenCheck(None, "token_invalid")
    actor = Actor(token_id, row.scope, row.expires_at)
    if row.revoked_at is not None:
        return TokenCheck(actor, "token_revoked")
    if row.expires_at is not None and row.expires_at <= now_ms():
        return TokenCheck(actor, "token_expired")
    return TokenCheck(actor, None)


def authenticate(engine: Engine, header: str | None, source: str, *, limit: int, window_s: int) -> TokenCheck:
    """Check a bearer token for a request from ``source``: 429 once it failed ``limit`` times this window.

    The check itself reads; a failure is counted (one small write), a success touches
    ``last_used_at`` at most once a minute.  A missing header is not a failure.
    """
    now = now_ms()
    bucket = f"auth-fail:{source}"
    with read_tx(engine) as conn:
        ratelimit.check(conn, bucket, limit, window_s, now)
        result = check(conn, header)
        last_used = None
        if result.ok and result.actor is not None:
            last_used = conn.execute(select(tokens.c.last_used_at)
                                     .where(tokens.c.id == result.actor.token_id)).scalar()
    if not result.ok and result.code != "unauthenticated" and limit > 0:
        with write_tx(engine) as conn:
            ratelimit.hit(conn, bucket, limit, window_s, now, enforce=False)
    elif result.ok and result.actor is not None and (last_used is None or now - last_used > TOUCH_EVERY_MS):
        with write_tx(engine) as conn:
            conn.execute(update(tokens).where(tokens.c.id == result.actor.token_id).values(last_used_at=now))
    return result


def unauthorized(code: str) -> ApiError:
    return ApiError(401, code, MESSAGES[code], headers={"WWW-Authenticate": 'Bearer realm="snpguard"'})


def require_scope(actor: Actor, scope: str) -> None:
    if _rank(actor.scope) < _rank(scope):
        raise ApiError(403, "forbidden", f"this needs a token with scope {scope} (this one has {actor.scope})",
                       field="scope")


# -- minting --------------------------------------------------------------------------------------


def mint(conn: Connection, actor: Actor, name: str, expires_at_ms: int | None,
         scope: str | None = None) -> dict[str, Any]:
    """Insert a token minted by ``actor``; returns its row facts and the full token (shown once)."""
    scope = scope or DEFAULT_SCOPE
    if scope not in TOKEN_SCOPES:
        raise ApiError(400, "invalid_request", f"scope must be one of {', '.join(TOKEN_SCOPES)}", field="scope")
    parent_id = None
    if not actor.is_master:
        if not actor.is_admin:
            raise ApiError(403, "forbidden", "minting tokens needs the master password or a token with scope admin",
                           field="scope")
        # Lock the parent: a concurrent revocation either sees this child or makes this mint fail.
        parent = conn.execute(select(tokens).where(tokens.c.id == actor.token_id).with_for_update()).first()
        now = now_ms()
        if parent is None or parent.revoked_at is not None or (
                parent.expires_at is not None and parent.expires_at <= now):
            raise unauthorized("token_revoked" if parent is not None and parent.revoked_at else "token_invalid")
        if _rank(scope) > _rank(parent.scope):
            raise ApiError(403, "forbidden", f"a token cannot mint a token above its own scope ({parent.scope})",
                           field="scope")
        if parent.expires_at is not None:
            if expires_at_ms is None:
                expires_at_ms = parent.expires_at
            elif expires_at_ms > parent.expires_at:
                raise ApiError(400, "invalid_request", "a token cannot outlive the token that mints it "
                               "(expires_at is after its parent's)", field="expires_at")
        if _depth(conn, parent.id) >= MAX_DEPTH:
            raise ApiError(400, "invalid_request", f"tokens nest at most {MAX_DEPTH} deep", field="parent")
        parent_id = parent.id
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    created = now_ms()
    conn.execute(insert(tokens).values(id=token_id, name=name, secret_hash=hash_password(secret, TOKEN_ROUNDS),
                                       created_at=created, expires_at=expires_at_ms, parent_id=parent_id,
                                       scope=scope))
    return {"id": token_id, "name": name, "token": format_token(token_id, secret), "created_at": created,
            "expires_at": expires_at_ms, "scope": scope, "parent_id": parent_id}


def _depth(conn: Connection, token_id: str) -> int:
    depth = 0
    current: str | None = token_id
    while current is not None and depth <= MAX_DEPTH:
        current = conn.execute(select(tokens.c.parent_id).where(tokens.c.id == current)).scalar()
        depth += 1
    return depth


# -- listing and revoking -----------------------------------------------------------------------------


def _descendants(conn: Connection, token_id: str) -> list[str]:
    found: list[str] = []
    frontier = [token_id]
    while frontier and len(found) < 100_000:
        rows = conn.execute(select(tokens.c.id).where(tokens.c.parent_id.in_(frontier))).scalars().all()
        frontier = [r for r in rows if r not in found and r != token_id]
        found.extend(frontier)
    return found


def visible_ids(conn: Connection, actor: Actor) -> set[str] | None:
    """The token ids ``actor`` may see and revoke: all (None) for admins, else itself and its descendants."""
    if actor.is_admin:
        return None
    assert actor.token_id is not None
    return {actor.token_id, *_descendants(conn, actor.token_id)}


def state_of(row: Any, now: int) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


def list_tokens(conn: Connection, actor: Actor) -> list[Any]:
    query = select(tokens).order_by(tokens.c.created_at, tokens.c.id)
    allowed = visible_ids(conn, actor)
    if allowed is not None:
        query = query.where(tokens.c.id.in_(sorted(allowed)))
    return list(conn.execute(query).all())


def revoke(conn: Connection, actor: Actor, token_id: str) -> list[str]:
    """Revoke ``token_id`` and every token below it; returns the ids newly revoked (404 when not visible)."""
    allowed = visible_ids(conn, actor)
    row = conn.execute(select(tokens.c.id).where(tokens.c.id == token_id).with_for_update()).first()
    if row is None or (allowed is not None and token_id not in allowed):
        # Not "forbidden": an operator learns nothing about tokens outside its own lineage.
        raise ApiError(404, "not_found", "no such token", field="id")
    targets = [token_id, *_descendants(conn, token_id)]
    now = now_ms()
    newly = []
    for start in range(0, len(targets), 500):
        chunk = targets[start:start + 500]
        pending = conn.execute(select(tokens.c.id).where(tokens.c.id.in_(chunk), tokens.c.revoked_at.is_(None))
                               ).scalars().all()
        if pending:
            conn.execute(update(tokens).where(tokens.c.id.in_(pending)).values(revoked_at=now))
            newly.extend(pending)
    return newly


# -- the service (what the API and the dashboard call) ---------------------------------------------------


def _ts(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def token_out(row: Any, now: int) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "created_at": _ts(row.created_at), "expires_at": _ts(row.expires_at),
            "revoked_at": _ts(row.revoked_at), "last_used_at": _ts(row.last_used_at),
            "state": state_of(row, now), "scope": row.scope, "parent_id": row.parent_id}


def expires_ms_of(expires_at: datetime | None) -> int | None:
    """An expiry as stored (ms); naive times are UTC; out of range is a 400 naming expires_at."""
    if expires_at is None:
        return None
    when = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
    try:
        expires_ms = int(when.timestamp() * 1000)
    except (OverflowError, ValueError, OSError) as exc:
        raise ApiError(400, "invalid_request", "expires_at is out of range", field="expires_at") from exc
    if not 0 <= expires_ms < 1 << 62:
        raise ApiError(400, "invalid_request", "expires_at is out of range", field="expires_at")
    return expires_ms


def create(ctx: ServerContext, actor: Actor, name: str, expires_at: datetime | None,
           scope: str | None = None) -> dict[str, Any]:
    """Mint a token as ``actor`` (the dashboard mints as ``MASTER``); the answer holds the token once."""
    expires_ms = expires_ms_of(expires_at)
    with write_tx(ctx.engine) as conn:
        made = mint(conn, actor, name, expires_ms, scope)
    return {**made, "created_at": _ts(made["created_at"]), "expires_at": _ts(made["expires_at"])}


def listing(ctx: ServerContext, actor: Actor) -> list[dict[str, Any]]:
    now = now_ms()
    with read_tx(ctx.engine) as conn:
        return [token_out(row, now) for row in list_tokens(conn, actor)]


def revoke_cascading(ctx: ServerContext, actor: Actor, token_id: str) -> dict[str, Any]:
    with write_tx(ctx.engine) as conn:
        newly = revoke(conn, actor, token_id)
    return {"id": token_id, "revoked": True, "cascaded": sorted(t for t in newly if t != token_id)}
