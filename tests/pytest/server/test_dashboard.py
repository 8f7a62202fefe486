# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The web dashboard over HTTP: sessions, CSRF, cookie flags, headers, secrets, downloads.

Most tests talk to a real ``snpguard server run`` over TLS (the ``server`` fixture);
the rate-limit and plain-HTTP cookie tests build the app in-process with FastAPI's
TestClient, where the login limit can be lowered.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import Agent, ServerProcess, register

CSRF_RE = re.compile(r'name="csrf" value="([^"]*)"')
PAGES = ("/images", "/tokens", "/audit")


def measurement(tag: int) -> bytes:
    return bytes([tag]) * 48


def artifacts() -> dict:
    """Small stand-in boot artifacts: enough for the server to build a launch bundle."""
    return {"kernel_b64": base64.b64encode(b"K" * 64).decode(), "initrd_b64": base64.b64encode(b"I" * 64).decode(),
            "cmdline": "console=ttyS0", "firmware_sha384": "ab" * 48}


def handshake(agent: Agent, admin: httpx.Client, image: dict, tag: int) -> tuple[httpx.Response, bytearray | None]:
    """A guest of ``image`` launched from its bundle: the server-signed ID block (so the report carries the
    ID key digest) and the bundle's host_data binding."""
    response, key, _body = agent.handshake(admin, measurement(tag),
                                           id_key_digest=bytes.fromhex(image["generated_id_key_digest"]),
                                           host_data=bytes.fromhex(image["host_data"]))
    return response, key


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Set-Cookie headers by cookie name (the raw header, attributes included)."""
    return {header.split("=", 1)[0]: header for header in response.headers.get_list("set-cookie")}


def web_client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.base, verify=server.ca, follow_redirects=False, timeout=30)


def login(client: httpx.Client, password: str) -> httpx.Response:
    form = client.get("/login")
    assert form.status_code == 200
    response = client.post("/login", data={"password": password, "csrf": csrf_of(form.text)})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/images"
    return response


@pytest.fixture(scope="module")
def password(server: ServerProcess) -> str:
    value = server.master_password()
    assert value
    return value


@pytest.fixture(scope="module")
def volume_key() -> bytes:
    return os.urandom(32)


@pytest.fixture(scope="module")
def image(admin: httpx.Client, volume_key: bytes) -> dict:
    response = register(admin, "web-image", {"2": measurement(0x21).hex(), "4": measurement(0x22).hex()}, volume_key,
                        policy={"smt": True}, min_tcb={"bootloader": 0, "tee": 0, "snp": 0, "microcode": 0},
                        generate_id_keys=True, artifacts=artifacts())
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def web(server: ServerProcess, password: str) -> Iterator[httpx.Client]:
    """A logged-in browser-like client (one login for the module: logins count against a per-address limit)."""
    with web_client(server) as client:
        login(client, password)
        yield client


# -- sessions and login --------------------------------------------------------------------------------------


def test_pages_need_a_session(server: ServerProcess, image: dict, admin: httpx.Client) -> None:
    with web_client(server) as client:
        for path in ("/", *PAGES, f"/images/{image['id']}/bundle"):
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"] in ("/login", "/images"), path
        client.cookies.set("snpguard_session", "forged-session-cookie")
        response = client.get("/images")
        assert response.status_code == 303 and response.headers["location"] == "/login"
        assert "snpguard_session=" in response.headers.get("set-cookie", "")  # the bad cookie is cleared
        # A state change without a session goes to the login page and changes nothing.
        response = client.post(f"/images/{image['id']}/disable", data={"csrf": "x"})
        assert response.status_code == 303 and response.headers["location"] == "/login"
    assert admin.get(f"/images/{image['id']}").json()["enabled"] is True


def test_login_refused_with_wrong_password(server: ServerProcess, password: str) -> None:
    wrong = "not-the-password-" + os.urandom(6).hex()
    with web_client(server) as client:
        form = client.get("/login")
        response = client.post("/login", data={"password": wrong, "csrf": csrf_of(form.text)})
        assert response.status_code == 401
        assert "not the master password" in response.text
        assert wrong not in response.text
        assert "snpguard_session" not in set_cookies(response)
        assert client.get("/images").status_code == 303
        # The refused form came with a fresh login token: the right password now works.
        response = client.post("/login", data={"password": password, "csrf": csrf_of(response.text)})
        assert response.status_code == 303
        assert client.get("/images").status_code == 200
    assert wrong not in server.log()
    assert "failed login" in server.log()


@pytest.mark.parametrize("token", [None, "", "wrong-token", "ünïcode-token"])
def test_login_refused_without_its_form_token(server: ServerProcess, password: str, token: str | None) -> None:
    with web_client(server) as client:
        client.get("/login")  # sets the login cookie; the form's token is not sent back
        data = {"password": password} if token is None else {"password": password, "csrf": token}
        response = client.post("/login", data=data)
        assert response.status_code == 403
        assert "snpguard_session" not in set_cookies(response)
        assert client.get("/images").status_code == 303


def test_cookie_flags(server: ServerProcess, password: str) -> None:
    with web_client(server) as client:
        form = client.get("/login")
        login_cookie = set_cookies(form)["snpguard_login"]
        response = client.post("/login", data={"password": password, "csrf": csrf_of(form.text)})
        session_cookie = set_cookies(response)["snpguard_session"]
    for header in (login_cookie, session_cookie):
        attributes = {part.strip().split("=")[0].lower(): part.strip() for part in header.split(";")[1:]}
        assert "httponly" in attributes, header
        assert "secure" in attributes, header
        assert attributes["samesite"].lower() == "samesite=strict", header
    assert "Path=/;" in session_cookie + ";" and "Max-Age=43200" in session_cookie
    assert "Path=/login" in login_cookie


def test_logout_ends_the_session_in_the_database(server: ServerProcess, password: str) -> None:
    with web_client(server) as client:
        login(client, password)
        cookie = client.cookies["snpguard_session"]
        page = client.get("/images")
        assert client.post("/logout", data={}).status_code == 403  # logout is a POST with the CSRF token too
        response = client.post("/logout", data={"csrf": csrf_of(page.text)})
        assert response.status_code == 303 and response.headers["location"] == "/login"
    with web_client(server) as replay:
        replay.cookies.set("snpguard_session", cookie)
        assert replay.get("/images").status_code == 303


def test_sessions_are_shared_by_replicas(server: ServerProcess, password: str) -> None:
    """A second server process on the same database accepts the first one's session and CSRF token."""
    other = ServerProcess(server.data_dir, list(server.args))
    other.start()
    try:
        with web_client(server) as first, web_client(other) as second:
            login(first, password)
            page = first.get("/tokens")
            second.cookies.set("snpguard_session", first.cookies["snpguard_session"])
            assert second.get("/tokens").status_code == 200
            response = second.post("/tokens", data={"name": "from-replica", "csrf": csrf_of(page.text)})
            assert response.status_code == 200 and "sgt_" in response.text
    finally:
        other.stop()


# -- headers and markup --------------------------------------------------------------------------------------


def test_security_headers_and_no_script(web: httpx.Client, image: dict) -> None:
    for path in (*PAGES, "/login", "/static/dashboard.css", "/static/favicon.svg", "/no-such-page"):
        response = web.get(path)
        headers = response.headers
        assert "default-src 'self'" in headers["content-security-policy"], path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-frame-options"] == "DENY", path
        assert headers["referrer-policy"] == "no-referrer", path
        assert headers["x-content-type-options"] == "nosniff", path
        if headers.get("content-type", "").startswith("text/html"):
            assert headers["cache-control"] == "no-store", path
            assert "<script" not in response.text.lower() and " style=" not in response.text.lower(), path
    assert "content-security-policy" not in web.get("/v1/health").headers  # the JSON API is not the dashboard's


def test_dashboard_is_not_in_the_openapi_document(server: ServerProcess) -> None:
    with server.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert all(path.startswith("/v1/") for path in paths)


def test_images_page_shows_the_image(web: httpx.Client, image: dict) -> None:
    html = web.get("/images").text
    assert "web-image" in html and image["id"] in html
    assert measurement(0x21).hex() in html and measurement(0x22).hex() in html
    assert image["generated_id_key_digest"] in html
    assert image["bundle_sha256"] in html
    assert "smt: must be on" in html and "debug: refused" in html
    assert f'href="/images/{image["id"]}/bundle"' in html


# -- CSRF ----------------------------------------------------------------------------------------------------


def test_every_state_change_needs_the_session_csrf_token(server: ServerProcess, password: str, web: httpx.Client,
                                                         image: dict, admin: httpx.Client) -> None:
    token_page = web.post("/tokens", data={"name": "csrf-victim", "csrf": csrf_of(web.get("/tokens").text)})
    victim_id = re.search(r"<code>([0-9a-f]{16})</code>", token_page.text).group(1)
    with web_client(server) as other:  # another admin session: its token is valid, but not for this session
        login(other, password)
        foreign = csrf_of(other.get("/images").text)
    targets = [(f"/images/{image['id']}/disable", {}), (f"/tokens/{victim_id}/revoke", {}),
               ("/tokens", {"name": "csrf-made"}), ("/logout", {})]
    for path, fields in targets:
        for bad in (None, "", "x" * 43, foreign, "ü" * 10):
            data = dict(fields) if bad is None else {**fields, "csrf": bad}
            response = web.post(path, data=data)
            assert response.status_code == 403, (path, bad)
            assert "security token" in response.text
    assert admin.get(f"/images/{image['id']}").json()["enabled"] is True
    tokens = {t["id"]: t for t in admin.get("/tokens").json()["items"]}
    assert tokens[victim_id]["state"] == "active"
    assert not any(t["name"] == "csrf-made" for t in tokens.values())
    assert web.get("/images").status_code == 200  # still logged in


def test_disable_and_enable_change_what_attestation_releases(web: httpx.Client, image: dict, admin: httpx.Client,
                                                             sim, volume_key: bytes) -> None:
    agent = Agent(sim)
    csrf = csrf_of(web.get("/images").text)
    response = web.post(f"/images/{image['id']}/disable", data={"csrf": csrf})
    assert response.status_code == 303
    assert response.headers["location"] == f"/images?changed={image['id']}#image-{image['id']}"
    assert re.search(r"is now\s+disabled", web.get(response.headers["location"]).text)
    assert admin.get(f"/images/{image['id']}").json()["enabled"] is False
    refused = handshake(agent, admin, image, 0x21)[0]
    assert refused.status_code == 403 and refused.json()["error"]["check"] == "image.disabled"
    response = web.post(f"/images/{image['id']}/enable", data={"csrf": csrf})
    assert response.status_code == 303
    assert admin.get(f"/images/{image['id']}").json()["enabled"] is True
    response, key = handshake(agent, admin, image, 0x22)
    assert response.status_code == 200, response.text
    assert bytes(key) == volume_key


@pytest.mark.parametrize("bad", ["not-a-uuid", "00000000-0000-4000-8000-00000000000G", "..", "%2e%2e",
                                 "00000000-0000-4000-8000-000000000000"])
def test_enable_refuses_bad_or_unknown_ids(web: httpx.Client, bad: str) -> None:
    response = web.post(f"/images/{bad}/enable", data={"csrf": csrf_of(web.get("/images").text)})
    assert response.status_code == 404


# -- tokens --------------------------------------------------------------------------------------------------


def test_token_is_shown_once_then_revoked(server: ServerProcess, web: httpx.Client, admin: httpx.Client) -> None:
    csrf = csrf_of(web.get("/tokens").text)
    created = web.post("/tokens", data={"name": "shown-once", "expires": "30d", "csrf": csrf})
    assert created.status_code == 200
    assert created.headers["cache-control"] == "no-store"
    token = re.search(r'value="(sgt_[0-9a-f]{16}_[A-Za-z0-9_-]{43})"', created.text).group(1)
    token_id = token.split("_")[1]
    with server.client(token) as client:
        assert client.get("/images").status_code == 200
    secret = token.split("_", 2)[2]
    for path in (*PAGES, "/tokens?revoked=" + token_id):
        assert secret not in web.get(path).text, path
    listed = web.get("/tokens").text
    assert "shown-once" in listed and token_id in listed
    assert secret not in server.log()
    response = web.post(f"/tokens/{token_id}/revoke", data={"csrf": csrf})
    assert response.status_code == 303 and response.headers["location"] == f"/tokens?revoked={token_id}"
    assert "is revoked" in web.get(response.headers["location"]).text
    with server.client(token) as client:
        assert client.get("/images").json()["error"]["code"] == "token_revoked"


@pytest.mark.parametrize(("fields", "message"), [
    ({"name": ""}, "needs a name"), ({"name": "   "}, "needs a name"), ({"name": "x" * 129}, "needs a name"),
    ({"name": "ok", "expires": "forever"}, "Choose an expiry"),
])
def test_token_form_refuses_bad_input(web: httpx.Client, fields: dict, message: str) -> None:
    response = web.post("/tokens", data={**fields, "csrf": csrf_of(web.get("/tokens").text)})
    assert response.status_code == 400
    assert message in response.text and "sgt_" not in response.text


@pytest.mark.parametrize("bad", ["ABCDEF0123456789", "0123", "..%2F..%2Fv1%2Ftokens", "%2e%2e", "0123456789abcdef0"])
def test_revoke_refuses_bad_ids(web: httpx.Client, bad: str) -> None:
    response = web.post(f"/tokens/{bad}/revoke", data={"csrf": csrf_of(web.get("/tokens").text)})
    assert response.status_code == 404


# -- secrets -------------------------------------------------------------------------------------------------


def test_no_secret_in_any_page_or_log(server: ServerProcess, password: str, web: httpx.Client, image: dict,
                                      volume_key: bytes) -> None:
    secret_values = [password, volume_key.hex(), base64.b64encode(volume_key).decode()]
    for path in (*PAGES, "/login", "/tokens?revoked=0000000000000000"):
        html = web.get(path).text
        for secret in secret_values:
            assert secret not in html, path
    log = server.log()
    assert log.count(password) == 1, "the master password must be in the log only in the first-start banner"
    assert volume_key.hex() not in log


# -- downloads -----------------------------------------------------------------------------------------------


def test_bundle_download_is_the_apis(web: httpx.Client, image: dict, admin: httpx.Client) -> None:
    response = web.get(f"/images/{image['id']}/bundle")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/gzip"
    assert response.headers["content-disposition"] == 'attachment; filename="web-image.bundle.tar.gz"'
    assert hashlib.sha256(response.content).hexdigest() == image["bundle_sha256"]
    assert response.content == admin.get(f"/images/{image['id']}/bundle").content


@pytest.mark.parametrize("path", [
    "/images/..%2F..%2F..%2Fetc%2Fpasswd/bundle",
    "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd/bundle",
    "/images/..%5c..%5cetc%5cpasswd/bundle",
    "/images/%2e%2e/bundle",
    "/images/etc%00passwd/bundle",
    "/images/{UPPER}/bundle",
    "/images/{BRACED}/bundle",
    "/images/00000000-0000-4000-8000-000000000000/bundle",
    "/static/..%2Fpages.py",
    "/static/%2e%2e/pages.py",
    "/static/..%2F..%2Fkek.py",
])
def test_downloads_refuse_traversal_and_bad_ids(web: httpx.Client, image: dict, path: str) -> None:
    path = path.replace("{UPPER}", image["id"].upper()).replace("{BRACED}", "%7B" + image["id"] + "%7D")
    response = web.get(path)
    assert response.status_code == 404, (path, response.status_code)
    assert b"root:" not in response.content and b"import" not in response.content


def test_bundle_of_an_image_without_artifacts(web: httpx.Client, admin: httpx.Client) -> None:
    plain = register(admin, "web-no-artifacts", {"1": measurement(0x23).hex()}, os.urandom(32))
    assert plain.status_code == 201
    response = web.get(f"/images/{plain.json()['id']}/bundle")
    assert response.status_code == 404 and "without boot artifacts" in response.text


# -- audit log -----------------------------------------------------------------------------------------------


def test_audit_log_newest_first_and_paginated(web: httpx.Client, admin: httpx.Client, image: dict, sim) -> None:
    agent = Agent(sim)
    released = handshake(agent, admin, image, 0x21)[0]
    assert released.status_code == 200, released.text
    # 55 more decisions, each cheap: verify with a session nobody asked for (refused as session.unknown).
    body = {"session_id": str(uuid.uuid4()), "report": base64.b64encode(bytes(0x4A0)).decode(),
            "agent_public_key": base64.b64encode(bytes(32)).decode()}
    for _index in range(55):
        assert admin.post("/attest/verify", json=dict(body, session_id=str(uuid.uuid4()))).status_code == 403
    unmatched = agent.handshake(admin, measurement(0x7E))[0]
    assert unmatched.status_code == 403

    first = web.get("/audit").text
    rows = re.findall(r"<tr class=\"row--(ok|refused)\">(.*?)</tr>", first, re.S)
    assert len(rows) == 50
    assert "measurement" in rows[0][1] and measurement(0x7E).hex()[:12] in rows[0][1]  # the newest
    assert "session.unknown" in rows[1][1]
    assert 'rel="next" href="/audit?page=2"' in first and 'rel="prev"' not in first
    second = web.get("/audit?page=2").text
    assert 'rel="prev" href="/audit?page=1"' in second
    assert "127.0.0.1" in second
    older = "".join(web.get(f"/audit?page={page}").text for page in (2, 3, 4))
    assert "released" in older and "bootloader" in older  # the release and the TCB it saw

    filtered = web.get("/audit", params={"image": image["id"]}).text
    filtered_rows = re.findall(r"<tr class=\"row--(ok|refused)\">", filtered)
    assert filtered_rows and "session.unknown" not in filtered
    assert web.get("/audit?page=100000").status_code == 200


# -- in-process: rate limit and plain HTTP -------------------------------------------------------------------


@pytest.fixture
def local_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, str]]:
    from fastapi.testclient import TestClient

    from ansible_collections.snpguard.cvm.server.app import create_app
    from ansible_collections.snpguard.cvm.server.config import load_settings
    from ansible_collections.snpguard.cvm.server.state import initialize
    from ansible_collections.snpguard.cvm.server.web import pages

    monkeypatch.setattr(pages, "LOGIN_LIMIT", 3)
    settings = load_settings(str(tmp_path / "data"), {"offline": True, "insecure_http": True})
    result = initialize(settings)
    with TestClient(create_app(settings), follow_redirects=False) as client:
        yield client, result.master_password or ""


def test_login_is_rate_limited_per_address(local_app) -> None:
    client, password = local_app
    statuses = []
    for _attempt in range(4):
        form = client.get("/login")
        statuses.append(client.post("/login", data={"password": "wrong", "csrf": csrf_of(form.text)}))
    assert [r.status_code for r in statuses] == [401, 401, 401, 429]
    assert "Too many login attempts" in statuses[-1].text and int(statuses[-1].headers["retry-after"]) >= 1
    form = client.get("/login")
    response = client.post("/login", data={"password": password, "csrf": csrf_of(form.text)})
    assert response.status_code == 429, "the limit holds for the right password too"


def test_plain_http_cookies_are_not_secure_but_still_strict(local_app) -> None:
    client, password = local_app
    form = client.get("/login")
    response = client.post("/login", data={"password": password, "csrf": csrf_of(form.text)})
    cookie = set_cookies(response)["snpguard_session"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert client.get("/images").status_code == 200


def test_csrf_check_refuses_non_ascii_token_without_raising() -> None:
    """server.auth.csrf_ok itself refuses a non-ASCII token (hmac.compare_digest would raise)."""
    from ansible_collections.snpguard.cvm.server.auth import csrf_ok

    session = {"csrf": "abc123"}
    assert csrf_ok(session, "abc123") is True
    assert csrf_ok(session, "abc12\u00e9") is False
    assert csrf_ok(session, "") is False
    assert csrf_ok(None, "abc123") is False
