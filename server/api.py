# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The REST API under /v1: thin handlers that validate, authenticate and call one service.

Admin handlers are plain ``def`` (FastAPI runs them in its thread pool).  The two
attestation handlers are ``async def`` and run inline on the event loop: their work is
about a millisecond of CPU (signature checks) plus a few short statements on a local
or nearby database, and handing each request to a thread cost as much CPU as the work
itself.  A worker therefore handles one handshake at a time; throughput comes from
``--workers`` (one per core), as with any CPU-bound server.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer
from sqlalchemy import text

from ..plugins.module_utils.keyrelease.protocol import HPKE_SUITE_IDS, HPKE_SUITE_NAME, INGEST_LABEL, KEY_RELEASE_LABEL
from ..plugins.module_utils.snp.binding import REPORT_DATA_LABEL
from . import API_VERSION, SERVER_VERSION, attestation, auth, images, keys, ratelimit, tokens
from .context import ServerContext
from .engine import now_ms, read_tx, write_tx
from .errors import ApiError
from .gate import ADMIN_STATE
from .schemas import (
    AuditList,
    Challenge,
    Deleted,
    ErrorBody,
    Health,
    ImageCreate,
    ImageList,
    ImageOut,
    PublicInfo,
    Ready,
    Released,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenRevoked,
    VerifyRequest,
)
from .tables import current_revision

bearer = HTTPBearer(auto_error=False, description="API token: sgt_<id>_<secret>")
basic = HTTPBasic(auto_error=False, description="the master password (any user name); POST /v1/tokens only")

ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing, invalid, revoked or expired token"},
    403: {"model": ErrorBody, "description": "the token's scope does not allow this"},
    404: {"model": ErrorBody, "description": "no such object"},
    429: {"model": ErrorBody, "description": "too many failed token attempts from this address"},
}

ImageId = Annotated[uuid.UUID, Path(description="image id (UUID)")]
TokenId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="token id (16 hex digits)")]


def context(request: Request) -> ServerContext:
    return request.app.state.ctx


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def authenticated(request: Request) -> tokens.Actor:
    """The actor of a valid API token (checked by ``gate.AdminGate`` before the body, else here), or 401/429."""
    result = getattr(request.state, ADMIN_STATE, None)
    if result is None:
        ctx = context(request)
        result = tokens.authenticate(ctx.engine, request.headers.get("authorization"), client_address(request),
                                     limit=ctx.settings.auth_failure_limit, window_s=ctx.settings.rate_window)
    if not result.ok:
        raise tokens.unauthorized(result.code or "unauthenticated")
    return result.actor


def require_token(request: Request, _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
                  ) -> tokens.Actor:
    """Any valid API token (operator or admin): images and the audit log."""
    return authenticated(request)


Caller = Annotated[tokens.Actor, Depends(require_token)]
router = APIRouter(prefix=f"/{API_VERSION}")


def _ts(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


# -- attestation (first: the hot path, matched before every other route) -----------------------------------


ATTEST_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody}, 429: {"model": ErrorBody, "description": "rate limited; see Retry-After"}}


@router.post("/attest/challenge", response_model=Challenge, tags=["attestation"],
             summary="a single-use nonce for one handshake (unauthenticated)", responses=ATTEST_ERRORS)
async def attest_challenge(request: Request) -> Any:
    out = attestation.challenge(context(request), client_address(request))
    out["expires_at"] = out["expires_at"].isoformat().replace("+00:00", "Z")
    return JSONResponse(out)  # already in the documented shape: skip response-model validation


@router.post("/attest/verify", response_model=Released, tags=["attestation"],
             summary="verify a report bound to the nonce and the agent's key; release the sealed volume key",
             responses={403: {"model": ErrorBody, "description": "attestation_refused, naming the failed check"},
                        **ATTEST_ERRORS})
async def attest_verify(request: Request, body: VerifyRequest) -> Any:
    return JSONResponse(await attestation.verify(context(request), client_address(request), body))


# -- health and public facts ------------------------------------------------------------------------


@router.get("/health", response_model=Health, tags=["health"], summary="liveness")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", response_model=Ready, tags=["health"], summary="readiness: database reachable, schema at head",
            responses={503: {"model": ErrorBody}})
def ready(request: Request) -> Any:
    ctx = context(request)
    try:
        with read_tx(ctx.engine) as conn:
            conn.execute(text("SELECT 1"))
            revision = current_revision(conn)
    except Exception as exc:  # any driver error means "not ready"
        return JSONResponse({"error": {"code": "not_ready", "message": f"database unreachable: {type(exc).__name__}"}},
                            status_code=503)
    if revision != ctx.head:
        return JSONResponse({"error": {"code": "not_ready", "message": f"schema at {revision}, want {ctx.head}"}},
                            status_code=503)
    return {"status": "ready", "revision": revision}


@router.get("/public/info", response_model=PublicInfo, tags=["public"],
            summary="what agents and conversion need: the ingestion key and the protocol constants")
def public_info(request: Request) -> dict[str, Any]:
    ctx = context(request)
    with read_tx(ctx.engine) as conn:
        ingestion = keys.ingestion_public(conn)
    return {
        "version": SERVER_VERSION, "api": API_VERSION,
        "ingestion_public_key": base64.b64encode(ingestion.public).decode(),
        "hpke_suite": HPKE_SUITE_NAME, "hpke_suite_ids": list(HPKE_SUITE_IDS),
        "key_release_info_label": KEY_RELEASE_LABEL.decode(), "ingest_info_label": INGEST_LABEL.decode(),
        "report_data_label": REPORT_DATA_LABEL.decode(),
        "trusts_simulated_root": bool(ctx.simulated_roots),
        "tls_ca_sha256": ctx.tls_ca_sha256, "nonce_ttl_seconds": ctx.settings.nonce_ttl,
    }


# -- images ---------------------------------------------------------------------------------------------


@router.post("/images", response_model=ImageOut, status_code=201, tags=["images"],
             summary="register an image (idempotent: identical content gives 200 and created=false)",
             responses={200: {"model": ImageOut, "description": "unchanged, or replaced with replace=true"},
                        409: {"model": ErrorBody, "description": "name or measurement taken"},
                        413: {"model": ErrorBody}, **ADMIN_ERRORS})
def register_image(request: Request, body: ImageCreate, _caller: Caller) -> Any:
    status, out = images.register(context(request), body)
    return JSONResponse(jsonable_encoder(out), status_code=status)


@router.get("/images", response_model=ImageList, tags=["images"], responses=ADMIN_ERRORS)
def list_images(request: Request, _caller: Caller) -> dict[str, Any]:
    return {"items": images.list_images(context(request))}


@router.get("/images/{image_id}", response_model=ImageOut, tags=["images"], responses=ADMIN_ERRORS)
def get_image(request: Request, image_id: ImageId, _caller: Caller) -> dict[str, Any]:
    return images.get_image(context(request), str(image_id))


@router.post("/images/{image_id}/enable", response_model=ImageOut, tags=["images"], responses=ADMIN_ERRORS)
def enable_image(request: Request, image_id: ImageId, _caller: Caller) -> dict[str, Any]:
    return images.set_enabled(context(request), str(image_id), True)


@router.post("/images/{image_id}/disable", response_model=ImageOut, tags=["images"], responses=ADMIN_ERRORS)
def disable_image(request: Request, image_id: ImageId, _caller: Caller) -> dict[str, Any]:
    return images.set_enabled(context(request), str(image_id), False)


@router.delete("/images/{image_id}", response_model=Deleted, tags=["images"], responses=ADMIN_ERRORS)
def delete_image(request: Request, image_id: ImageId, _caller: Caller) -> dict[str, Any]:
    images.delete_image(context(request), str(image_id))
    return {"id": str(image_id), "deleted": True}


@router.get("/images/{image_id}/bundle", tags=["images"], response_class=Response,
            summary="the launch-artifacts bundle (tar.gz)",
            responses={200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the bundle"}, **ADMIN_ERRORS})
def get_bundle(request: Request, image_id: ImageId, _caller: Caller) -> Response:
    return bundle_response(context(request), str(image_id))


def bundle_response(ctx: ServerContext, image_id: str) -> Response:
    """The bundle download (the API's and the dashboard's)."""
    name, data, sha256 = images.get_bundle(ctx, image_id)
    # The name matches ^[A-Za-z0-9][A-Za-z0-9._-]*$: safe in a header and as a file name.
    return Response(data, media_type="application/gzip", headers={
        "Content-Disposition": f'attachment; filename="{name}.bundle.tar.gz"', "X-Content-SHA256": sha256,
        "Cache-Control": "no-store"})


# -- tokens ---------------------------------------------------------------------------------------------


def _token_minter(request: Request, _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                  _basic: Annotated[HTTPBasicCredentials | None, Depends(basic)]) -> tokens.Actor:
    """An API token (its scope decides), or the master password (so a fresh server can mint its first token)."""
    header = request.headers.get("authorization")
    password = auth.basic_auth_password(header)
    if password is None:
        return authenticated(request)
    ctx = context(request)
    with write_tx(ctx.engine) as conn:
        ratelimit.hit(conn, f"login:{client_address(request)}", 20, 60, now_ms())
    with read_tx(ctx.engine) as conn:
        ok = auth.verify_master_password(conn, password)
    if not ok:
        raise ApiError(401, "password_invalid", "the master password is not correct",
                       headers={"WWW-Authenticate": 'Basic realm="snpguard"'})
    return tokens.MASTER


@router.post("/tokens", response_model=TokenCreated, status_code=201, tags=["tokens"],
             summary="create an API token (shown once): with the master password (HTTP Basic) or an admin token",
             responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 429: {"model": ErrorBody}})
def create_token(request: Request, body: TokenCreate, actor: Annotated[tokens.Actor, Depends(_token_minter)]
                 ) -> dict[str, Any]:
    return tokens.create(context(request), actor, body.name, body.expires_at, body.scope)


@router.get("/tokens", response_model=TokenList, tags=["tokens"], responses=ADMIN_ERRORS,
            summary="API tokens (never their secrets): all for admin tokens, else the caller and those below it")
def list_tokens(request: Request, actor: Caller) -> dict[str, Any]:
    return {"items": tokens.listing(context(request), actor)}


@router.delete("/tokens/{token_id}", response_model=TokenRevoked, tags=["tokens"], responses=ADMIN_ERRORS,
               summary="revoke a token and every token it minted (admin: any; operator: itself and below)")
def revoke_token(request: Request, token_id: TokenId, actor: Caller) -> dict[str, Any]:
    return tokens.revoke_cascading(context(request), actor, token_id)


# -- audit -----------------------------------------------------------------------------------------------


@router.get("/audit", response_model=AuditList, tags=["audit"], summary="attestation decisions, newest first",
            responses=ADMIN_ERRORS)
def get_audit(request: Request, _caller: Caller,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              offset: Annotated[int, Query(ge=0, le=1 << 40)] = 0,
              image: Annotated[str | None, Query(max_length=128, description="image id or name")] = None,
              ) -> dict[str, Any]:
    return {"items": attestation.audit_entries(context(request), limit, offset, image), "limit": limit,
            "offset": offset}
