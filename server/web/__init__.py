# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The web dashboard: server-rendered pages outside /v1, on the REST API's own services.

``install(app, ctx)`` is called once by ``create_app``.  It adds the page router
(``pages.py``: login, images, tokens, audit log, bundle download), the static files
(one stylesheet, one icon; no JavaScript) and a small ASGI middleware that puts the
security headers on every response outside /v1.

Nothing is re-implemented here: the master password, sessions and CSRF tokens are
``server.auth``'s; images, tokens, bundles and the audit log go through
``server.images``, ``server.attestation`` and the API handlers themselves.  All state
(sessions included) is in the database, so any replica serves any page.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi.staticfiles import StaticFiles

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

# Pages and their static files; the JSON API under /v1 keeps its own headers.
CSP = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
]


class SecurityHeadersMiddleware:
    """Adds ``SECURITY_HEADERS`` to every HTTP response whose path is not under /v1 (pure ASGI: no cost there)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path == "/v1" or path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _value in message.get("headers", ())}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = dict(message, headers=[*message.get("headers", ()), *extra])
            await send(message)

        await self.app(scope, receive, with_headers)


def install(app: Any, ctx: Any) -> None:
    """Mount the dashboard on ``app`` (``ctx`` is also reachable as ``request.app.state.ctx``)."""
    from . import pages

    del ctx  # every handler reads the context from the request, as the API's do
    app.include_router(pages.router)
    pages.install_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(SecurityHeadersMiddleware)
