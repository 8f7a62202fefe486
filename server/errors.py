# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""One error shape for every failure: ``{"error": {"code", "message", "field"?, ...}}``.

Bad input is always a 4xx naming the field; an unexpected exception is logged with
its traceback and answered with a bare 500 that carries no detail (and is a bug).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..plugins.module_utils.snp.errors import SnpError
from .limits import BodyTooLarge

log = logging.getLogger("snpguard.server")

_HTTP_CODES = {400: "invalid_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "body_too_large", 415: "unsupported_media_type",
               429: "rate_limited"}


class ApiError(Exception):
    """Raise anywhere in a handler to answer with this status and error body."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers
        self.extra = extra

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        error.update(self.extra)
        return {"error": error}


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(ApiError(status, code, message, field=field, **extra).body(), status_code=status,
                        headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    from starlette.routing import Match

    methods: set[str] = set()
    for route in app.router.routes:
        match, _child = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def is_database_error(exc: BaseException) -> bool:
    """The database is unreachable or failing: SQLAlchemy's wrapped errors, or a raw DBAPI error
    (the hot path's statements are not wrapped by SQLAlchemy)."""
    if isinstance(exc, DBAPIError):
        return True
    return type(exc).__module__.split(".")[0] in ("sqlite3", "psycopg") and \
        type(exc).__name__ in ("OperationalError", "InterfaceError", "DatabaseError")


def _database_unavailable(exc: Exception) -> JSONResponse:
    log.error("database error: %s", type(exc).__name__, exc_info=exc)
    return error_response(503, "database_unavailable", "the database is unavailable; retry",
                          headers={"Retry-After": "1"})


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        field = _loc(tuple(first.get("loc", ())))
        message = str(first.get("msg", "invalid request"))
        if first.get("type") == "json_invalid":
            field = "body"
        return error_response(400, "invalid_request", message, field=field)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_request: Request, _exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, "body_too_large", "request body too large", headers={"Connection": "close"})

    @app.exception_handler(SnpError)
    async def _snp_error(_request: Request, exc: SnpError) -> JSONResponse:
        return error_response(400, "invalid_request", exc.message, field=exc.field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; list every route's for this path.
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return error_response(exc.status_code, code, message, headers=headers or None)

    @app.exception_handler(DBAPIError)
    async def _database(_request: Request, exc: DBAPIError) -> JSONResponse:
        return _database_unavailable(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        if is_database_error(exc):
            return _database_unavailable(exc)
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "internal_error", "internal error (logged on the server)")
