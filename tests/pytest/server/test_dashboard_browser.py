# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The dashboard in real headless Chromium: Debian's ``chromium`` driven by Playwright.

One administrator's story against a real server (TLS with its generated CA) and the
simulated AMD-SP: log in (a wrong password first), see a registered image with its
measurements and release counts, download its bundle, create an API token (shown
once) and revoke it, disable and re-enable the image while guests attest, read the
audit log, log out.  Every step is saved as a screenshot in
build/test-artifacts/screenshots/ (kept as test artifacts), and the browser must log
no error: a Content-Security-Policy violation or a failed sub-resource would show there.

Needs /usr/bin/chromium (``apt-get install chromium``; or $SNPGUARD_CHROMIUM) and the
``playwright`` package (requirements-test.txt; its own browser downloads are never used).
Missing either, the test is skipped, or fails under CI=true.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import REPO, Agent, ServerProcess, register

CHROMIUM = os.environ.get("SNPGUARD_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = REPO / "build" / "test-artifacts" / "screenshots"
# As root there is no sandbox; nothing may reach out to the network or update itself.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
NAME = "debian-13-web"
TIMEOUT_MS = 20_000


def measurement(tag: int) -> bytes:
    return bytes([tag]) * 48


def _need_browser() -> None:
    problems = []
    if not os.access(CHROMIUM, os.X_OK):
        problems.append(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package is missing (pip install -r requirements-test.txt)")
    if problems:
        message = "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class Story:
    """The browser page, numbered screenshots, and everything the browser complained about."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.step = 0
        self.problems: list[str] = []
        self.expected_statuses: list[int] = []  # error pages the story asks for (Chromium logs each one)
        self.shots: list[Path] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        status = re.search(r"Failed to load resource: the server responded with a status of (\d+)", message.text)
        if status and int(status.group(1)) in self.expected_statuses:
            self.expected_statuses.remove(int(status.group(1)))
            return
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def _failed(self, request: Any) -> None:
        if request.resource_type != "document":  # downloads and navigations are checked by the story
            self.problems.append(f"request failed: {request.url} {request.failure}")

    def _response(self, response: Any) -> None:
        if response.request.resource_type in ("stylesheet", "image", "font", "script") and response.status >= 400:
            self.problems.append(f"{response.status} for {response.url}")

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def shot(self, name: str) -> Path:
        self.step += 1
        path = SCREENSHOTS / f"{self.step:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        return path

    def path(self) -> str:
        return re.sub(r"^https://[^/]+", "", self.page.url)


@pytest.fixture(scope="module")
def story(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    _need_browser()
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS, ignore_https_errors=True,
            viewport={"width": 1280, "height": 860}, accept_downloads=True, locale="en-GB", timezone_id="UTC")
        try:
            context.set_default_timeout(TIMEOUT_MS)
            page = context.pages[0] if context.pages else context.new_page()
            yield Story(page, server.base)
        finally:
            context.close()


@pytest.fixture(scope="module")
def seeded(server: ServerProcess, admin: httpx.Client, sim) -> dict:
    """An image with boot artifacts and server-signed ID blocks, one release and one refusal in the log."""
    key = os.urandom(32)
    artifacts = {"kernel_b64": base64.b64encode(b"K" * 4096).decode(),
                 "initrd_b64": base64.b64encode(b"I" * 4096).decode(),
                 "cmdline": "console=ttyS0 root=/dev/vda1", "firmware_sha384": "5a" * 48}
    response = register(admin, NAME, {"2": measurement(0x31).hex(), "4": measurement(0x32).hex()}, key,
                        vcpu_type="EPYC-Milan", policy={"allow_debug": False, "smt": True, "min_abi": "1.51"},
                        min_tcb={"bootloader": 9, "tee": 0, "snp": 23, "microcode": 72}, generate_id_keys=True,
                        artifacts=artifacts)
    assert response.status_code == 201, response.text
    image = response.json()
    other = register(admin, "legacy-appliance", {"1": measurement(0x33).hex()}, os.urandom(32),
                     author_key_digests=[measurement(0x34).hex()])
    assert other.status_code == 201, other.text
    agent = Agent(sim)
    released = guest(agent, admin, image, 0x32)
    assert released.status_code == 200, released.text
    assert agent.handshake(admin, measurement(0x7A))[0].status_code == 403  # nobody registered this one
    return {"image": image, "key": key, "agent": agent}


def guest(agent: Agent, admin: httpx.Client, image: dict, tag: int) -> httpx.Response:
    """A guest launched with the image's server-signed ID block attests (its report carries the ID key digest).

    Its policy: SMT allowed (bit 16), the reserved bit 17, ABI 1.51 (the image's minimum); its HOST_DATA
    the bundle's binding.
    """
    return agent.handshake(admin, measurement(tag), policy=0x30000 | 1 << 8 | 51,
                           id_key_digest=bytes.fromhex(image["generated_id_key_digest"]),
                           host_data=bytes.fromhex(image["host_data"]))[0]


def test_administrator_story_in_chromium(story: Story, seeded: dict, server: ServerProcess, admin: httpx.Client,
                                         tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page, image = story.page, seeded["image"]
    password = server.master_password()
    assert password

    # 1. Every page needs a session: the root sends us to the login form.
    story.goto("/")
    assert story.path() == "/login"
    expect(page).to_have_title(re.compile("^Log in"))
    expect(page.get_by_label("Master password")).to_be_focused()  # autofocus: type at once
    story.shot("login")

    # 2. A wrong password is refused with a message, and nothing is echoed back.
    page.get_by_label("Master password").fill("wrong-password-123")
    story.expected_statuses.append(401)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("not the master password")
    assert "wrong-password-123" not in page.content()
    story.shot("login-refused")

    # 3. The right one, from the keyboard only.
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    page.wait_for_url("**/images")
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["snpguard_session"]
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
    assert "snpguard_login" not in cookies

    # 4. The images: measurements per vCPU count, policy, minimum TCB, digests, request counts.
    card = page.locator(f"#image-{image['id']}")
    expect(card.get_by_role("heading", name=re.compile(NAME))).to_be_visible()
    expect(card).to_contain_text(measurement(0x31).hex())
    expect(card).to_contain_text(measurement(0x32).hex())
    expect(card).to_contain_text("bootloader 9, tee 0, snp 23, microcode 72")
    expect(card).to_contain_text("smt: must be on")
    expect(card).to_contain_text("ABI at least 1.51")
    expect(card).to_contain_text(image["generated_id_key_digest"])
    expect(card).to_contain_text("1 released, 0 refused")
    summary = page.get_by_role("table").first
    expect(summary.get_by_role("row", name=re.compile(NAME))).to_contain_text("enabled")
    expect(page.locator("#image-" + image["id"]).locator(".badge")).to_have_text("enabled")
    # The stylesheet applied (CSP allows 'self' only: a blocked sheet would leave the header unstyled).
    header_bg = page.locator(".site-header").evaluate("e => getComputedStyle(e).backgroundColor")
    assert header_bg == "rgb(13, 37, 56)", header_bg
    expect(page.get_by_role("link", name="Images", exact=True)).to_have_attribute("aria-current", "page")
    story.shot("images")

    # 5. The launch bundle downloads, byte for byte the API's.
    with page.expect_download() as download_info:
        card.get_by_role("link", name=f"Download bundle of {NAME}").click()
    download = download_info.value
    assert download.suggested_filename == f"{NAME}.bundle.tar.gz"
    saved = tmp_path / download.suggested_filename
    download.save_as(str(saved))
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == image["bundle_sha256"]

    # 6. A new API token is shown once, works, and is never shown again.
    page.get_by_role("link", name="API tokens", exact=True).click()
    page.wait_for_url("**/tokens")
    page.get_by_label("Name").fill("ci-deploy")
    page.get_by_label("Expires").select_option("30d")
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_role("heading", name="Token created")).to_be_visible()
    token = page.get_by_label("API token").input_value()
    assert re.fullmatch(r"sgt_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", token), token
    story.shot("token-created")
    with server.client(token) as client:
        assert client.get("/images").status_code == 200
    page.get_by_role("link", name="Done: back to the tokens").click()
    page.wait_for_url("**/tokens")
    row = page.get_by_role("row", name=re.compile("ci-deploy"))
    expect(row).to_contain_text("active")
    assert token.split("_", 2)[2] not in page.content()
    story.shot("tokens")

    # 7. Revoke it: the list says so and the API refuses it.
    row.get_by_role("button", name="Revoke ci-deploy").click()
    expect(page.get_by_role("status")).to_contain_text("is revoked")
    expect(page.get_by_role("row", name=re.compile("ci-deploy"))).to_contain_text("revoked")
    with server.client(token) as client:
        assert client.get("/images").json()["error"]["code"] == "token_revoked"
    story.shot("token-revoked")

    # 8. Disable the image: a guest is refused; enable it again: released.
    page.get_by_role("link", name="Images", exact=True).click()
    page.locator(f"#image-{image['id']}").get_by_role("button", name=f"Disable {NAME}").click()
    expect(page.get_by_role("status")).to_contain_text("disabled")
    expect(page.locator(f"#image-{image['id']}").locator(".badge")).to_have_text("disabled")
    assert admin.get(f"/images/{image['id']}").json()["enabled"] is False
    refused = guest(seeded["agent"], admin, image, 0x31)
    assert refused.status_code == 403 and refused.json()["error"]["check"] == "image.disabled"
    story.shot("image-disabled")
    page.locator(f"#image-{image['id']}").get_by_role("button", name=f"Enable {NAME}").click()
    expect(page.get_by_role("status")).to_contain_text("enabled")
    assert guest(seeded["agent"], admin, image, 0x31).status_code == 200
    page.reload()
    expect(page.locator(f"#image-{image['id']}")).to_contain_text("2 released, 1 refused")
    story.shot("image-enabled")

    # 9. The audit log, newest first: the release after re-enabling, the refusal while disabled, ...
    page.get_by_role("link", name="Audit log", exact=True).click()
    page.wait_for_url("**/audit")
    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.nth(0)).to_contain_text("released")
    expect(rows.nth(0)).to_contain_text(NAME)
    expect(rows.nth(0)).to_contain_text("bootloader 9, tee 0, snp 23, microcode 72")
    expect(rows.nth(0)).to_contain_text("127.0.0.1")
    expect(rows.nth(1)).to_contain_text("image.disabled")
    expect(rows.nth(2)).to_contain_text("measurement")
    expect(rows.nth(2)).to_contain_text("not registered")
    expect(rows.nth(3)).to_contain_text("released")
    story.shot("audit")

    # 10. Log out: the session is gone from the database, the pages send us back to the login form.
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login")
    story.shot("logged-out")
    story.goto("/images")
    assert story.path() == "/login"

    assert story.problems == [] and story.expected_statuses == [], (story.problems, story.expected_statuses)
    assert len(story.shots) == 10 and all(p.stat().st_size > 5000 for p in story.shots)


def test_csrf_forgery_from_another_page_is_refused(story: Story, seeded: dict, server: ServerProcess,
                                                   admin: httpx.Client) -> None:
    """A logged-in browser submitting a form without the session's token (what a forged form does) changes nothing."""
    from playwright.sync_api import expect

    page, image = story.page, seeded["image"]
    page.context.clear_cookies()
    story.goto("/login")
    page.get_by_label("Master password").fill(server.master_password() or "")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/images")
    # The image's own disable form, its CSRF field emptied in the page (the browser still sends the cookie).
    form = page.locator(f"form[action='/images/{image['id']}/disable']")
    form.locator("input[name=csrf]").evaluate("e => { e.value = 'forged'; }")
    story.expected_statuses.append(403)
    form.get_by_role("button").click()
    expect(page.get_by_role("heading", name="Error 403")).to_be_visible()
    assert admin.get(f"/images/{image['id']}").json()["enabled"] is True
    story.shot("csrf-refused")
    assert story.problems == [] and story.expected_statuses == [], (story.problems, story.expected_statuses)
