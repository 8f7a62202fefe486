# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The ASGI application factory.

``create_app(settings)`` is what uvicorn workers, tests and the dashboard build on: it
opens the (already initialised) database, loads the KEK and keys, mounts the REST API
under /v1 and the dashboard router from ``server.web``, and publishes the OpenAPI
document at /v1/openapi.json.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from . import API_VERSION, SERVER_VERSION, errors
from .api import router as api_router
from .config import Settings
from .context import ServerContext, build_context
from .engine import WalCheckpointer
from .fastpath import AttestFastPath
from .gate import AdminGate
from .limits import BodyLimitMiddleware
from .tls import TlsFiles

OPENAPI_URL = f"/{API_VERSION}/openapi.json"


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with our error shape instead of its default 422 validation body."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                del responses["422"]
                responses["400"] = {"description": "invalid request (the error names the field)",
                                    "content": {"application/json": {"schema": error_ref}}}
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    app.openapi_schema = doc
    return doc


def create_app(settings: Settings, *, tls: TlsFiles | None = None, ctx: ServerContext | None = None) -> FastAPI:
    ctx = ctx or build_context(settings, tls)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Fewer handler threads than anyio's 40: under the GIL more threads only add switching,
        # and a thread holding the database write lock waits longer for its turn.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        checkpointer = WalCheckpointer(ctx.engine).start()
        # Everything built so far lives as long as the process: keep it out of the cyclic GC's
        # full collections, which otherwise stall a request for tens of milliseconds now and then.
        gc.collect()
        gc.freeze()
        yield
        checkpointer.stop()
        ctx.close()

    app = FastAPI(
        lifespan=lifespan,
        title="snpguard key-release server",
        version=SERVER_VERSION,
        description="Registers AMD SEV-SNP images and releases their volume keys to guests that attest "
                    "(protocol v1: challenge, then verify a report bound to the nonce and the agent's X25519 key; "
                    "the key comes back HPKE-sealed). Admin endpoints need 'Authorization: Bearer <API token>'.",
        openapi_url=OPENAPI_URL, docs_url=None, redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operationId = handler name, e.g. register_image
    )
    app.state.ctx = ctx
    errors.install(app)
    app.include_router(api_router)
    from .web import install as install_web

    install_web(app, ctx)
    app.add_middleware(AttestFastPath, ctx=ctx)
    app.add_middleware(AdminGate, ctx=ctx)  # token checked before any body is read
    app.add_middleware(BodyLimitMiddleware, settings=settings)  # added last: runs first
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _exit_with_parent() -> None:
    """Have the kernel send SIGTERM to this worker when uvicorn's supervisor dies.

    A supervisor killed with SIGKILL cannot stop its workers; they would go on serving on
    the inherited socket, outside any process manager.  Linux only (prctl).
    """
    import ctypes
    import multiprocessing
    import os
    import signal

    parent = multiprocessing.parent_process()
    if parent is None:  # not a worker spawned by uvicorn's supervisor
        return
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent.pid:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: settings come from the environment (see ``run``)."""
    import os

    _exit_with_parent()
    settings = Settings.from_env()
    tls = None
    cert, key, ca = (os.environ.get(f"SNPGUARD_TLS_{n}") for n in ("CERT", "KEY", "CA"))
    if cert and key:
        tls = TlsFiles(cert=cert, key=key, ca=ca or None)
    return create_app(settings, tls=tls)
