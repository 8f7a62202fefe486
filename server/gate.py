# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Authentication before the body: API-token routes refuse a bad token without reading a byte of it.

FastAPI reads and parses a request body before it runs the dependency that checks the
token, so an anonymous client could make a worker hold a registration-sized body in
memory just to be told 401.  This middleware checks ``Authorization: Bearer`` first,
off the event loop, for every route that needs a token, answers 401 / 429 with the
connection closed (the unread body is never read), and hands the result to the route
(``request.state``) so the token is checked once.  Bodies larger than ``max_body`` (only
registrations may be) are also limited to ``max_uploads`` at a time per worker.
"""

from __future__ import annotations

import json

import anyio
import anyio.to_thread

from . import API_VERSION, tokens
from .context import ServerContext
from .limits import ASGIApp, Receive, Scope, Send

ADMIN_STATE = "snpguard_token"
PREFIX = f"/{API_VERSION}/"
#: The API-token routes (everything else under /v1 is public: attestation, probes, public facts, OpenAPI).
TOKEN_ROUTES = tuple(f"{PREFIX}{name}" for name in ("images", "tokens", "audit"))


def needs_token(method: str, path: str, authorization: bytes | None) -> bool:
    if not any(path == route or path.startswith(route + "/") for route in TOKEN_ROUTES):
        return False
    # POST /v1/tokens also takes the master password (HTTP Basic), checked by its route.
    return not (path.rstrip("/") == f"{PREFIX}tokens" and method == "POST"
                and authorization is not None and authorization[:6].lower() == b"basic ")


class AdminGate:
    def __init__(self, app: ASGIApp, ctx: ServerContext, max_uploads: int = 2) -> None:
        self.app = app
        self.ctx = ctx
        self.uploads = anyio.Semaphore(max_uploads) if max_uploads > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        authorization = headers.get(b"authorization")
        if not needs_token(scope["method"], scope["path"], authorization):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        source = client[0] if client else "unknown"
        settings = self.ctx.settings
        header = authorization.decode("latin-1") if authorization is not None else None
        try:
            result = await anyio.to_thread.run_sync(lambda: tokens.authenticate(
                self.ctx.engine, header, source, limit=settings.auth_failure_limit, window_s=settings.rate_window))
        except Exception as exc:  # 429 (ApiError) or a database error: answered like the routes answer them
            from .errors import ApiError

            if isinstance(exc, ApiError):
                await _send(send, exc.status, exc.body(), exc.headers)
                return
            raise
        if not result.ok:
            error = tokens.unauthorized(result.code or "unauthenticated")
            await _send(send, 401, error.body(), error.headers)
            return
        scope.setdefault("state", {})[ADMIN_STATE] = result
        declared = headers.get(b"content-length", b"0")
        large = declared.isdigit() and int(declared) > settings.max_body
        if not large or self.uploads is None:
            await self.app(scope, receive, send)
            return
        try:
            self.uploads.acquire_nowait()
        except anyio.WouldBlock:
            await _send(send, 503, {"error": {"code": "busy", "message": "other large uploads are in progress; "
                                              "retry"}}, {"Retry-After": "5"})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.uploads.release()


async def _send(send: Send, status: int, payload: dict[str, object], headers: dict[str, str] | None) -> None:
    data = json.dumps(payload, separators=(",", ":")).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
