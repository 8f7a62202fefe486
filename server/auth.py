# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Who may administer the server: the master password, API tokens, dashboard sessions.

* The master password is generated (192 random bits), printed once and stored only as
  a PBKDF2-SHA256 hash (``passwords``: hashlib, in the format passlib wrote before).
* API tokens: see ``tokens``.
* Dashboard sessions (for the web UI built on top): a random cookie whose SHA-256 is
  the row id, with a per-session CSRF token; cookies are HttpOnly, SameSite=Strict and
  Secure unless the server runs on plain HTTP.  All of it lives in the database, so
  any replica can serve any request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from .engine import now_ms
from .passwords import hash_password, verify_password
from .tables import settings_table, web_sessions

MASTER_ROUNDS = 600_000
MASTER_SETTING = "master_password_hash"
COOKIE_NAME = "snpguard_session"
SESSION_TTL_MS = 12 * 3600 * 1000


# -- master password ---------------------------------------------------------------------------


def generate_master_password() -> str:
    return secrets.token_urlsafe(24)


def hash_master_password(password: str) -> str:
    return hash_password(password, MASTER_ROUNDS)


def set_master_password(conn: Connection, password: str) -> None:
    """Store the hash (insert or replace) and end every dashboard session."""
    hashed = hash_master_password(password)
    existing = conn.execute(select(settings_table.c.name).where(settings_table.c.name == MASTER_SETTING)).first()
    if existing:
        conn.execute(update(settings_table).where(settings_table.c.name == MASTER_SETTING)
                     .values(value=hashed, updated_at=now_ms()))
    else:
        conn.execute(insert(settings_table).values(name=MASTER_SETTING, value=hashed, updated_at=now_ms()))
    conn.execute(delete(web_sessions))


def verify_master_password(conn: Connection, password: str) -> bool:
    row = conn.execute(select(settings_table.c.value).where(settings_table.c.name == MASTER_SETTING)).first()
    if row is None or not isinstance(password, str) or not password:
        return False
    return verify_password(password, row.value)


def basic_auth_password(header: str | None) -> str | None:
    """The password of an ``Authorization: Basic`` header (any user name), or None."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    _user, sep, password = decoded.partition(":")
    return password if sep else None


# -- dashboard sessions -----------------------------------------------------------------------------


def _session_id(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8")).hexdigest()


def create_web_session(conn: Connection, ttl_ms: int = SESSION_TTL_MS) -> tuple[str, str]:
    """After a successful master-password login: returns (cookie value, CSRF token)."""
    cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = now_ms()
    conn.execute(insert(web_sessions).values(id=_session_id(cookie), csrf=csrf, created_at=now,
                                             expires_at=now + ttl_ms, last_seen_at=now))
    conn.execute(delete(web_sessions).where(web_sessions.c.expires_at < now))
    return cookie, csrf


def lookup_web_session(conn: Connection, cookie: str | None) -> dict[str, Any] | None:
    """The live session for a cookie value ({id, csrf, created_at, expires_at}), or None."""
    if not cookie or len(cookie) > 128:
        return None
    row = conn.execute(select(web_sessions).where(web_sessions.c.id == _session_id(cookie))).first()
    if row is None or row.expires_at <= now_ms():
        return None
    return dict(row._mapping)


def end_web_session(conn: Connection, cookie: str | None) -> None:
    if cookie:
        conn.execute(delete(web_sessions).where(web_sessions.c.id == _session_id(cookie)))


def csrf_ok(session: dict[str, Any] | None, token: str | None) -> bool:
    """Constant-time CSRF check; a missing or non-ASCII token is simply wrong (never a 500)."""
    if not session or not token or not token.isascii():
        return False
    return hmac.compare_digest(session["csrf"], token)


def cookie_params(secure: bool, ttl_ms: int = SESSION_TTL_MS) -> dict[str, Any]:
    """Keyword arguments for Starlette's ``response.set_cookie(COOKIE_NAME, value, **params)``."""
    return {"httponly": True, "secure": secure, "samesite": "strict", "path": "/", "max_age": ttl_ms // 1000}
