# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The server under hostile clients (issue 8): each attack of the outside review, made to fail.

Every test here runs against a real ``snpguard server run`` on loopback and reproduces
one observed attack; where the old server would have hung, the test asks for an
answer within a socket timeout far above the configured deadline, so it fails (times
out) without the fix and never depends on how fast this machine is.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import Agent, ServerProcess, register

from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import AgentSession
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.binding import report_data_binding

# Small-order X25519 points (RFC 7748 §6.1 and the usual blocklists): 0, 1, the order-8 points, p-1, p, p+1.
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def measurement(tag: int) -> bytes:
    return bytes([tag]) * 48


def refused(response: httpx.Response, check: str) -> dict:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "attestation_refused" and error["check"] == check, error
    return error


def tls_socket(server: ServerProcess, *, timeout: float = 20.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    context = server.ca
    assert isinstance(context, ssl.SSLContext)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def read_response(sock: socket.socket) -> bytes:
    """Everything until the server closes (it does, after each refusal here)."""
    data = b""
    with contextlib.suppress(ConnectionResetError, ssl.SSLError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data[9:12])


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory, sim_root: Path) -> Iterator[ServerProcess]:
    """A server with short deadlines and small caps, so each budget is reached quickly."""
    proc = ServerProcess(tmp_path_factory.mktemp("tight") / "data", [
        "--simulated-root", str(sim_root), "--offline", "--header-timeout", "1", "--body-timeout", "1",
        "--min-body-rate", "1000000", "--max-connections-per-address", "8", "--tls-handshake-timeout", "1",
        "--auth-failure-limit", "3", "--rate-window", "60"])
    proc.start()
    yield proc
    proc.stop()


# -- 1. a KDS that never answers does not hold up anyone else ----------------------------------------------


class SilentKds:
    """Accepts TCP connections and never says a word (not even a TLS ServerHello)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.connected = threading.Event()
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _peer = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)
            self.connected.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_kds_that_never_answers_delays_no_other_client(tmp_path: Path, sim, sim_root: Path) -> None:
    kds = SilentKds()
    proc = ServerProcess(tmp_path / "data", ["--simulated-root", str(sim_root), "--kds-url",
                                             f"https://127.0.0.1:{kds.port}", "--kds-timeout", "4",
                                             "--kds-failure-ttl", "600"])
    try:
        proc.start()
        with proc.client(proc.mint_token()) as admin:
            assert register(admin, "kds-image", {"1": measurement(0x41).hex()}, os.urandom(32)).status_code == 201
            no_certs = Agent(sim, send_certs=False)
            outcome: dict[str, httpx.Response] = {}

            def slow_handshake() -> None:
                with proc.client() as client:
                    outcome["verify"] = no_certs.handshake(client, measurement(0x41))[0]

            worker = threading.Thread(target=slow_handshake)
            worker.start()
            assert kds.connected.wait(20), "the server never asked KDS"
            # While the VCEK fetch hangs, other clients are served by the same (single) worker.
            with proc.client(timeout=20) as other:
                assert other.get("/health").status_code == 200
                assert other.post("/attest/challenge").status_code == 200
                assert other.get("/images").status_code == 401
            assert worker.is_alive(), "the fetch finished before the other clients were served: not a test"
            worker.join(30)
            error = refused(outcome["verify"], "collateral")
            assert "127.0.0.1" not in error["message"] and str(proc.data_dir) not in error["message"]
            # The failure is remembered for this chip and TCB: no second fetch, refused at once.
            before = kds.accepted
            refused(no_certs.handshake(admin, measurement(0x41))[0], "collateral")
            assert kds.accepted == before
            entries = admin.get("/audit", params={"image": "kds-image"}).json()["items"]
            assert entries[0]["check"] == "collateral" and "remembered" in entries[0]["message"]
            assert "127.0.0.1" in entries[1]["message"]  # the details are in the audit log
    finally:
        proc.stop()
        kds.close()


def test_kds_fetches_beyond_the_limit_are_refused_not_queued(tmp_path: Path, sim, sim_root: Path) -> None:
    kds = SilentKds()
    proc = ServerProcess(tmp_path / "data", ["--simulated-root", str(sim_root), "--kds-url",
                                             f"https://127.0.0.1:{kds.port}", "--kds-timeout", "8"])
    try:
        proc.start()
        with proc.client(proc.mint_token()) as admin:
            assert register(admin, "busy-image", {"1": measurement(0x42).hex()}, os.urandom(32)).status_code == 201
            no_certs = Agent(sim, send_certs=False)
            results: list[httpx.Response] = []

            def handshake(tag: int) -> None:
                with proc.client() as client:  # another chip each: no failure memory in the way
                    results.append(no_certs.handshake(client, measurement(0x42), chip_id=bytes([tag]) * 64)[0])

            workers = [threading.Thread(target=handshake, args=(i + 1,)) for i in range(4)]
            for worker in workers:
                worker.start()
            deadline = time.monotonic() + 20
            while kds.accepted < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert kds.accepted == 4  # the default limit: four fetches in flight per worker
            with proc.client() as client:
                refused(no_certs.handshake(client, measurement(0x42), chip_id=b"\x55" * 64)[0], "collateral.busy")
            for worker in workers:
                worker.join(30)
            assert sorted(r.json()["error"]["check"] for r in results) == ["collateral"] * 4
    finally:
        proc.stop()
        kds.close()


# -- 2. no body is read before the token is checked ---------------------------------------------------------------


def test_an_unauthenticated_upload_is_refused_before_its_body(tight: ServerProcess) -> None:
    with tls_socket(tight) as sock:
        sock.sendall(b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 209715200\r\n\r\n{")  # 200 MiB announced, one byte sent
        data = read_response(sock)
    assert status_of(data) == 401 and b"unauthenticated" in data


def test_a_bad_token_is_refused_before_its_body(tight: ServerProcess) -> None:
    with tls_socket(tight) as sock:
        sock.sendall(b"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sgt_0123456789abcdef_"
                     + b"A" * 43 + b"\r\nContent-Length: 209715200\r\n\r\n{")
        data = read_response(sock)
    assert status_of(data) == 401 and b"token_invalid" in data


def test_large_uploads_are_limited_per_worker(tmp_path: Path, sim_root: Path) -> None:
    proc = ServerProcess(tmp_path / "data", ["--offline", "--body-timeout", "60"])
    try:
        proc.start()
        token = proc.mint_token().encode()
        head = (b"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token
                + b"\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n")
        uploading = []
        for _upload in range(2):
            sock = tls_socket(proc)
            sock.sendall(head + b"{")
            uploading.append(sock)
        time.sleep(0.5)  # (ordering only: let the server start reading both)
        with tls_socket(proc) as third:
            third.sendall(head + b"{")
            data = read_response(third)
        assert status_of(data) == 503 and b"busy" in data
        for sock in uploading:
            sock.close()
    finally:
        proc.stop()


# -- 3. header budgets -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", [
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(500)) + b"\r\n",
], ids=["one-huge-header", "many-headers"])
def test_oversized_heads_get_431(tight: ServerProcess, head: bytes) -> None:
    with tls_socket(tight) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError, ssl.SSLError):
            sock.sendall(head)
        data = read_response(sock)
    assert status_of(data) == 431


def test_a_huge_url_gets_414(tight: ServerProcess) -> None:
    with tls_socket(tight) as sock:
        sock.sendall(b"GET /v1/health?" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(read_response(sock)) == 414


def test_a_normal_request_still_works(tight: ServerProcess) -> None:
    with tls_socket(tight) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(read_response(sock)) == 200


# -- 4. slow clients are timed out, connections per address are capped -------------------------------------------


def test_a_slow_head_is_timed_out(tight: ServerProcess) -> None:
    with tls_socket(tight) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert status_of(read_response(sock)) == 408


def test_a_slow_body_is_timed_out(tight: ServerProcess) -> None:
    with tls_socket(tight) as sock:
        sock.sendall(b"POST /v1/attest/challenge HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        assert status_of(read_response(sock)) == 408


def test_a_stalled_tls_handshake_is_dropped(tight: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", tight.port), timeout=20) as raw:
        assert raw.recv(1) == b""  # closed by the server (asyncio's default would wait 60 s)


def test_connections_per_address_are_capped(tight: ServerProcess) -> None:
    held = [tls_socket(tight) for _conn in range(8)]
    try:
        with tls_socket(tight) as extra:
            data = read_response(extra)
        assert status_of(data) == 503 and b"too_many_connections" in data
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)  # (ordering only: the server notices the closes)
    with httpx.Client(verify=tight.ca, timeout=20) as client:
        assert client.get(tight.url + "/health").status_code == 200


# -- 6. low-order agent keys; every schema-valid request audited and consumed -------------------------------------


@pytest.fixture(scope="module")
def admin_tight(tight: ServerProcess) -> Iterator[httpx.Client]:
    with tight.client(tight.mint_token()) as client:
        yield client


@pytest.fixture(scope="module")
def tight_image(admin_tight: httpx.Client) -> dict:
    key = os.urandom(32)
    response = register(admin_tight, "tight-image", {"1": measurement(0x51).hex()}, key,
                        host_data="ab" * 32)
    assert response.status_code == 201, response.text
    return {**response.json(), "key": key}


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=[f"p{i}" for i in range(len(LOW_ORDER_POINTS))])
def test_a_report_bound_to_a_low_order_key_is_refused_and_consumes_the_session(
        tight: ServerProcess, admin_tight: httpx.Client, tight_image: dict, sim, point: bytes) -> None:
    challenge = admin_tight.post("/attest/challenge").json()
    nonce = base64.b64decode(challenge["nonce"])
    report = sim.report(measurement=measurement(0x51), report_data=report_data_binding(nonce, point),
                        host_data=bytes.fromhex("ab" * 32))
    body = {"session_id": challenge["session_id"], "report": base64.b64encode(report).decode(),
            "agent_public_key": base64.b64encode(point).decode(), "certs": Agent(sim).certs()}
    refused(admin_tight.post("/attest/verify", json=body), "request.agent_public_key")
    # The nonce is spent: the same report with a good key cannot use it any more.
    good = AgentSession()
    body["agent_public_key"] = base64.b64encode(good.public_key).decode()
    refused(admin_tight.post("/attest/verify", json=body), "session.replayed")
    audit = admin_tight.get("/audit", params={"limit": 2}).json()["items"]
    assert [a["check"] for a in audit] == ["session.replayed", "request.agent_public_key"]
    assert audit[1]["session_id"] == challenge["session_id"]


def test_a_bad_report_consumes_the_session(admin_tight: httpx.Client, tight_image: dict) -> None:
    challenge = admin_tight.post("/attest/challenge").json()
    body = {"session_id": challenge["session_id"], "report": base64.b64encode(b"short").decode(),
            "agent_public_key": base64.b64encode(AgentSession().public_key).decode()}
    refused(admin_tight.post("/attest/verify", json=body), "report.format")
    refused(admin_tight.post("/attest/verify", json=body), "session.replayed")


def test_a_broken_key_store_is_an_audited_refusal_not_a_500(tmp_path: Path, sim, sim_root: Path) -> None:
    proc = ServerProcess(tmp_path / "data", ["--simulated-root", str(sim_root), "--offline"])
    try:
        proc.start()
        with proc.client(proc.mint_token()) as admin:
            assert register(admin, "broken", {"1": measurement(0x52).hex()}, os.urandom(32)).status_code == 201
            # Another KEK in the file (0600, 32 bytes): the stored volume key no longer opens.
            kek = proc.data_dir / "kek.key"
            replacement = proc.data_dir / "kek.other"
            replacement.write_bytes(os.urandom(32))
            replacement.chmod(0o600)
            replacement.replace(kek)
            response, key, body = Agent(sim).handshake(admin, measurement(0x52))
            error = refused(response, "internal")
            assert key is None and "kek" not in error["message"].lower()
            refused(admin.post("/attest/verify", json=body), "session.replayed")
            entry = admin.get("/audit", params={"image": "broken", "limit": 2}).json()["items"][1]
            assert entry["check"] == "internal" and "does not open" in entry["message"]
    finally:
        proc.stop()


# -- 9. refusals tell the caller the check, not the image's expected values -----------------------------------------


def test_refusals_do_not_leak_expected_values(tight: ServerProcess, admin_tight: httpx.Client, tight_image: dict,
                                              sim) -> None:
    response = Agent(sim).handshake(admin_tight, measurement(0x51), host_data=bytes.fromhex("cd" * 32))[0]
    error = refused(response, "host_data")
    assert "ab" * 32 not in error["message"] and "cd" * 32 not in error["message"]
    entry = admin_tight.get("/audit", params={"image": "tight-image", "limit": 1}).json()["items"][0]
    assert entry["check"] == "host_data" and "ab" * 32 in entry["message"]
    # Collateral refusals name no server path either (offline server, no certificates sent).
    error = refused(Agent(sim, send_certs=False).handshake(admin_tight, measurement(0x51),
                                                           host_data=bytes.fromhex("ab" * 32))[0], "collateral")
    assert str(tight.data_dir) not in error["message"] and "kds-cache" not in error["message"]


# -- 10. failed token attempts: read-only, rate-limited per address -----------------------------------------------


def test_failed_token_attempts_are_rate_limited(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data", ["--offline", "--auth-failure-limit", "3"])
    try:
        proc.start()
        token = proc.mint_token()
        bad = "sgt_0123456789abcdef_" + "B" * 43
        with proc.client(bad) as client:
            assert [client.get("/images").status_code for _try in range(3)] == [401, 401, 401]
            limited = client.get("/images")
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        with proc.client(token) as good:  # the address is limited, whoever it is
            assert good.get("/images").status_code == 429
            assert good.get("/health").status_code == 200
    finally:
        proc.stop()


def test_a_valid_token_needs_no_write_lock(tmp_path: Path) -> None:
    """With SQLite's write lock held by someone else, token checks still answer (they only read)."""
    import sqlite3

    proc = ServerProcess(tmp_path / "data", ["--offline"])
    try:
        proc.start()
        with proc.client(proc.mint_token(), timeout=20) as client:
            assert client.get("/images").status_code == 200  # touches last_used_at (once a minute)
            holder = sqlite3.connect(proc.data_dir / "snpguard.db", timeout=1, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            try:
                assert client.get("/images").status_code == 200
                assert client.get("/tokens").status_code == 200
            finally:
                holder.execute("ROLLBACK")
                holder.close()
    finally:
        proc.stop()


# -- 5. a gzip bomb as a prebuilt bundle ------------------------------------------------------------------------------


def test_a_gzip_bomb_bundle_is_refused_at_the_cap(admin_tight: httpx.Client) -> None:
    import gzip

    from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import seal_for_ingestion

    bomb = gzip.compress(bytes(1 << 30), compresslevel=9)  # ~1 MB that would become 1 GiB
    public = base64.b64decode(admin_tight.get("/public/info").json()["ingestion_public_key"])
    body = {"name": "bomb", "measurements": {"1": measurement(0x53).hex()},
            "sealed_volume_key": base64.b64encode(seal_for_ingestion(os.urandom(32), public, "bomb")).decode(),
            "bundle_b64": base64.b64encode(bomb).decode()}
    response = admin_tight.post("/images", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "bundle_b64" and "expands to more than" in error["message"]
