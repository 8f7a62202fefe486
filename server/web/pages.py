# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The dashboard's pages: thin handlers over the services the REST API uses.

* Login with the master password (``auth.verify_master_password``), counted against the
  same per-address rate-limit bucket as the API's master-password route; the session is
  ``auth``'s database row behind an HttpOnly, SameSite=Strict cookie (Secure over TLS).
  The login form itself carries a double-submit token (a short-lived cookie on /login).
* Every state-changing request is a POST whose form carries the session's CSRF token,
  checked here before anything changes; without a session it goes to the login page.
* Images: ``images.list_images``/``set_enabled``; the bundle: the API's own handler.
  Tokens: the API's create/list/revoke handlers.  Audit log: ``attestation.audit_entries``.
* Ids are validated against their exact shapes before any lookup (no path ever reaches
  the file system; bundles come from the database).
* Secrets: a new token is on its result page only (``Cache-Control: no-store``); the
  master password is never rendered or logged; volume keys never leave ``images``.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from ...plugins.module_utils.snp.tcb import SPL_NAMES
from .. import SERVER_VERSION, api, attestation, auth, images, ratelimit, tokens
from ..engine import now_ms, read_tx, write_tx
from ..errors import ApiError
from ..schemas import TokenCreate

log = logging.getLogger("snpguard.server.web")

TEMPLATES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                         undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)

LOGIN_COOKIE = "snpguard_login"  # double-submit token of the login form (no session exists yet)
LOGIN_COOKIE_TTL = 3600
# The bucket, limit and window of POST /v1/tokens with the master password: one budget per address.
LOGIN_LIMIT, LOGIN_WINDOW = 20, 60
AUDIT_PAGE_SIZE = 50
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
EXPIRY_CHOICES = {"never": None, "1d": 1, "7d": 7, "30d": 30, "90d": 90, "365d": 365}

router = APIRouter(include_in_schema=False)


class LoginRequired(Exception):
    """No live session: the answer is a redirect to the login page."""


class PageError(Exception):
    """An error answered with the dashboard's error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# -- rendering -----------------------------------------------------------------------------------------


def _tcb_text(tcb: dict[str, Any] | None) -> str:
    if not tcb:
        return ""
    if set(tcb) == {"raw"}:
        return f"raw 0x{tcb['raw']}"
    keys = [k for k in SPL_NAMES if k in tcb] + sorted(k for k in tcb if k not in SPL_NAMES)
    return ", ".join(f"{k} {tcb[k]}" for k in keys)


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


ENV.filters["tcb"] = _tcb_text
ENV.filters["when"] = _when


def render(template: str, *, status: int = 200, session: dict[str, Any] | None = None,
           headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    html = ENV.get_template(template).render(session=session, csrf=session["csrf"] if session else "",
                                             version=SERVER_VERSION, **context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


def _secure(request: Request) -> bool:
    return not api.context(request).settings.insecure_http or request.url.scheme == "https"


def _drop_cookie(request: Request, response: Response, name: str, path: str) -> None:
    response.delete_cookie(name, path=path, secure=_secure(request), httponly=True, samesite="strict")


def _same(expected: str | None, given: str | None) -> bool:
    """Constant-time equality of two tokens (compare_digest refuses non-ASCII str: such a token is wrong)."""
    return bool(expected and given and expected.isascii() and given.isascii()
                and secrets.compare_digest(expected, given))


async def login_required(request: Request, _exc: Exception) -> Response:
    response = RedirectResponse("/login", status_code=303)
    if request.cookies.get(auth.COOKIE_NAME):
        _drop_cookie(request, response, auth.COOKIE_NAME, "/")
    return response


async def page_error(_request: Request, exc: Exception) -> Response:
    status = exc.status if isinstance(exc, PageError) else 500
    message = exc.message if isinstance(exc, PageError) else "internal error"
    return render("error.html", status=status, status_code=status, message=message)


def install_handlers(app: Any) -> None:
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(PageError, page_error)


# -- sessions and CSRF ---------------------------------------------------------------------------------


def current_session(request: Request) -> dict[str, Any]:
    with read_tx(api.context(request).engine) as conn:
        session = auth.lookup_web_session(conn, request.cookies.get(auth.COOKIE_NAME))
    if session is None:
        raise LoginRequired
    return session


Session = Annotated[dict[str, Any], Depends(current_session)]


def checked_session(session: Session, csrf: Annotated[str | None, Form()] = None) -> dict[str, Any]:
    """The session of a state-changing request whose form carries its CSRF token, or 403."""
    if csrf is None or not csrf.isascii() or not auth.csrf_ok(session, csrf):
        raise PageError(403, "This form is missing its security token or it does not match your session. "
                             "Reload the page and try again.")
    return session


CheckedSession = Annotated[dict[str, Any], Depends(checked_session)]


def _image_id(value: str) -> uuid.UUID:
    if not UUID_RE.match(value):
        raise PageError(404, "No such image.")
    return uuid.UUID(value)


def _service(call: Any, *args: Any) -> Any:
    """Call a service or API handler; its refusals become the error page."""
    try:
        return call(*args)
    except ApiError as exc:
        if exc.status >= 500:
            raise
        raise PageError(exc.status, exc.message) from exc


# -- login and logout ------------------------------------------------------------------------------------


def _login_page(request: Request, status: int = 200, error: str | None = None,
                headers: dict[str, str] | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render("login.html", status=status, headers=headers, login_csrf=token, error=error)
    response.set_cookie(LOGIN_COOKIE, token, max_age=LOGIN_COOKIE_TTL, path="/login", secure=_secure(request),
                        httponly=True, samesite="strict")
    return response


@router.get("/")
def web_root() -> RedirectResponse:
    return RedirectResponse("/images", status_code=303)


@router.get("/login")
def web_login_form(request: Request) -> Response:
    with read_tx(api.context(request).engine) as conn:
        if auth.lookup_web_session(conn, request.cookies.get(auth.COOKIE_NAME)) is not None:
            return RedirectResponse("/images", status_code=303)
    return _login_page(request)


@router.post("/login")
def web_login(request: Request, password: Annotated[str | None, Form()] = None,
              csrf: Annotated[str | None, Form()] = None) -> Response:
    if not _same(request.cookies.get(LOGIN_COOKIE), csrf):
        return _login_page(request, 403, "The login form expired or did not come from this page. Please try again.")
    ctx = api.context(request)
    address = api.client_address(request)
    try:
        with write_tx(ctx.engine) as conn:
            ratelimit.hit(conn, f"login:{address}", LOGIN_LIMIT, LOGIN_WINDOW, now_ms())
    except ApiError as exc:
        if exc.status != 429:
            raise
        log.warning("dashboard: login from %s refused: rate limited", address)
        return _login_page(request, 429, "Too many login attempts from this address. Wait a minute and try again.",
                           headers=exc.headers)
    with read_tx(ctx.engine) as conn:
        ok = auth.verify_master_password(conn, password or "")
    if not ok:
        log.warning("dashboard: failed login from %s (wrong master password)", address)
        return _login_page(request, 401, "That is not the master password.")
    with write_tx(ctx.engine) as conn:
        auth.end_web_session(conn, request.cookies.get(auth.COOKIE_NAME))  # never keep a pre-login session
        cookie = auth.create_web_session(conn)[0]
    log.info("dashboard: login from %s", address)
    response = RedirectResponse("/images", status_code=303)
    response.set_cookie(auth.COOKIE_NAME, cookie, **auth.cookie_params(_secure(request)))
    _drop_cookie(request, response, LOGIN_COOKIE, "/login")
    return response


@router.post("/logout")
def web_logout(request: Request, _session: CheckedSession) -> Response:
    with write_tx(api.context(request).engine) as conn:
        auth.end_web_session(conn, request.cookies.get(auth.COOKIE_NAME))
    log.info("dashboard: logout from %s", api.client_address(request))
    response = RedirectResponse("/login", status_code=303)
    _drop_cookie(request, response, auth.COOKIE_NAME, "/")
    return response


# -- images ------------------------------------------------------------------------------------------------


@router.get("/images")
def web_images(request: Request, session: Session,
               changed: Annotated[str | None, Query(max_length=64)] = None) -> HTMLResponse:
    items = images.list_images(api.context(request))
    changed_image = next((i for i in items if i["id"] == changed), None)
    return render("images.html", session=session, active="images", images=items, changed=changed_image)


def _set_enabled(request: Request, image_id: str, enabled: bool) -> RedirectResponse:
    checked = str(_image_id(image_id))
    out = _service(images.set_enabled, api.context(request), checked, enabled)
    log.info("dashboard: image %r (%s) %s", out["name"], checked, "enabled" if enabled else "disabled")
    return RedirectResponse(f"/images?changed={checked}#image-{checked}", status_code=303)


@router.post("/images/{image_id}/enable")
def web_enable_image(request: Request, image_id: str, _session: CheckedSession) -> RedirectResponse:
    return _set_enabled(request, image_id, True)


@router.post("/images/{image_id}/disable")
def web_disable_image(request: Request, image_id: str, _session: CheckedSession) -> RedirectResponse:
    return _set_enabled(request, image_id, False)


@router.get("/images/{image_id}/bundle")
def web_bundle(request: Request, image_id: str, _session: Session) -> Response:
    return _service(api.bundle_response, api.context(request), str(_image_id(image_id)))


# -- API tokens --------------------------------------------------------------------------------------------


def _tokens_page(request: Request, session: dict[str, Any], *, status: int = 200, error: str | None = None,
                 revoked: str | None = None, name: str = "") -> HTMLResponse:
    items = tokens.listing(api.context(request), tokens.MASTER)
    revoked_token = next((t for t in items if t["id"] == revoked), None)
    return render("tokens.html", status=status, session=session, active="tokens", tokens=items, error=error,
                  revoked=revoked_token, name=name, expiry_choices=list(EXPIRY_CHOICES))


@router.get("/tokens")
def web_tokens(request: Request, session: Session,
               revoked: Annotated[str | None, Query(max_length=32)] = None) -> HTMLResponse:
    return _tokens_page(request, session, revoked=revoked)


@router.post("/tokens")
def web_create_token(request: Request, session: CheckedSession, name: Annotated[str, Form()] = "",
                     expires: Annotated[str, Form()] = "never") -> HTMLResponse:
    name = name.strip()
    if expires not in EXPIRY_CHOICES:
        return _tokens_page(request, session, status=400, error="Choose an expiry from the list.", name=name[:128])
    days = EXPIRY_CHOICES[expires]
    expires_at = datetime.now(UTC) + timedelta(days=days) if days else None
    try:
        body = TokenCreate(name=name, expires_at=expires_at)
    except ValidationError:
        return _tokens_page(request, session, status=400, error="A token needs a name of 1 to 128 characters.",
                            name=name[:128])
    created = _service(tokens.create, api.context(request), tokens.MASTER, body.name, body.expires_at, body.scope)
    log.info("dashboard: API token %s (%r) created", created["id"], created["name"])
    return render("token_created.html", session=session, active="tokens", created=created)


@router.post("/tokens/{token_id}/revoke")
def web_revoke_token(request: Request, token_id: str, _session: CheckedSession) -> RedirectResponse:
    if not tokens.valid_id(token_id):
        raise PageError(404, "No such token.")
    _service(tokens.revoke_cascading, api.context(request), tokens.MASTER, token_id)
    log.info("dashboard: API token %s revoked", token_id)
    return RedirectResponse(f"/tokens?revoked={token_id}", status_code=303)


# -- audit log ----------------------------------------------------------------------------------------------


@router.get("/audit")
def web_audit(request: Request, session: Session,
              page: Annotated[int, Query(ge=1, le=1 << 30)] = 1,
              image: Annotated[str | None, Query(max_length=128)] = None) -> HTMLResponse:
    image = image or None
    rows = attestation.audit_entries(api.context(request), AUDIT_PAGE_SIZE + 1, (page - 1) * AUDIT_PAGE_SIZE, image)
    return render("audit.html", session=session, active="audit", entries=rows[:AUDIT_PAGE_SIZE], page=page,
                  has_next=len(rows) > AUDIT_PAGE_SIZE, image=image, page_size=AUDIT_PAGE_SIZE)
