# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The two attestation endpoints served straight from ASGI, ahead of FastAPI's routing.

Every booting guest makes exactly these two requests, and FastAPI's per-request
machinery (route matching, dependency solving, response validation, exception
middleware) cost about as much CPU as verifying the report.  This middleware
answers ``POST /v1/attest/challenge`` and ``POST /v1/attest/verify`` itself with the
same services (``attestation``), the same request model (``VerifyRequest``, strict)
and the same error shapes; the FastAPI routes of the same paths remain the
documented definition in the OpenAPI document (and answer if the middleware is
not installed).  Body-size limits apply before this middleware (``limits``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

from . import API_VERSION, attestation
from .context import ServerContext
from .errors import ApiError, is_database_error
from .limits import ASGIApp, BodyTooLarge, Receive, Scope, Send
from .schemas import VerifyRequest

log = logging.getLogger("snpguard.server")

CHALLENGE = f"/{API_VERSION}/attest/challenge"
VERIFY = f"/{API_VERSION}/attest/verify"


class AttestFastPath:
    def __init__(self, app: ASGIApp, ctx: ServerContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or scope["method"] != "POST" or path not in (CHALLENGE, VERIFY):
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
        except BodyTooLarge:
            await _send(send, 413, {"error": {"code": "body_too_large", "message": "request body too large"}})
            return
        client = scope.get("client")
        source = client[0] if client else "unknown"
        headers: dict[str, str] | None = None
        try:
            if path == CHALLENGE:
                out = attestation.challenge(self.ctx, source)
                out["expires_at"] = out["expires_at"].isoformat().replace("+00:00", "Z")
            else:
                out = await attestation.verify(self.ctx, source, _parse_verify(body))
            status = 200
        except ApiError as exc:
            status, out, headers = exc.status, exc.body(), exc.headers
        except Exception as exc:  # the same mapping as errors.install: never a traceback to the client
            if is_database_error(exc):
                log.error("database error: %s", type(exc).__name__, exc_info=exc)
                status, headers = 503, {"Retry-After": "1"}
                out = {"error": {"code": "database_unavailable", "message": "the database is unavailable; retry"}}
            else:
                log.exception("unexpected error", exc_info=exc)
                status = 500
                out = {"error": {"code": "internal_error", "message": "internal error (logged on the server)"}}
        await _send(send, status, out, headers)


def _parse_verify(body: bytes) -> VerifyRequest:
    try:
        return VerifyRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        first: dict[str, Any] = dict(errors[0]) if errors else {}
        field = ".".join(str(p) for p in first.get("loc", ())) or "body"
        if first.get("type") == "json_invalid":
            field = "body"
        raise ApiError(400, "invalid_request", str(first.get("msg", "invalid request")), field=field) from None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _send(send: Send, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    data = json.dumps(payload, separators=(",", ":")).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
