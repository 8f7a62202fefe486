# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Request-body size limits (413), enforced before and while the body is read.

A declared Content-Length over the limit is refused at once; a chunked body is counted
as it streams and refused as soon as it crosses the limit, so no handler ever holds
more than the limit in memory.  Registrations (kernel and initrd inside) get their own,
larger limit; the unauthenticated attestation endpoints the smallest.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from .config import Settings

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


def limit_for(settings: Settings, method: str, path: str) -> int:
    if path.startswith("/v1/attest/"):
        return settings.max_attest_body
    if method == "POST" and path.rstrip("/") == "/v1/images":
        return settings.max_image_body
    return settings.max_body


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limit_for(self.settings, scope["method"], scope["path"])
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    await _reject(send, limit, declared < 0)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _reject(send, limit, False)


async def _reject(send: Send, limit: int, bad_header: bool) -> None:
    status = 400 if bad_header else 413
    code = "invalid_request" if bad_header else "body_too_large"
    message = "Content-Length is not a number" if bad_header else f"request body larger than {limit} bytes"
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
