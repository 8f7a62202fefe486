# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Real key-release servers for the tests: ``snpguard server run`` subprocesses on loopback.

A pytest plugin (``pytest_plugins`` in tests/pytest/conftest.py), so its fixtures serve every
directory; tests import its classes as ``from servers import ...``.

Each server gets a temp data dir, a free port and its generated TLS CA (clients pin
it, as real clients do).  Agents are simulated: a ``SimulatedAmdSp`` signs reports
whose REPORT_DATA binds the server's nonce and the agent's ephemeral key, exactly
as the guest agent does on hardware.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.simulator_store import save_simulated_amdsp
from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import AgentSession, seal_for_ingestion
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.binding import report_data_binding
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.cert_table import build_cert_table
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.crypto_guard import serialization
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import SimulatedAmdSp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product

REPO = Path(__file__).resolve().parents[2]
DEVROOT = REPO / "build" / "devroot"
PASSWORD_RE = re.compile(r"shown ONCE.*?\n\n\s+(\S+)\n", re.S)
GUEST_SERVER = ("10.0.2.100", 443)  # where a booted guest reaches the server (QEMU guestfwd to its port)


def stage(stages: dict[str, float], name: str, since: float) -> float:
    """Record and print how long a stage of a boot test took; returns now (the next stage's start)."""
    now = time.monotonic()
    stages[name] = round(now - since, 1)
    print(f"stage {name}: {stages[name]} s", flush=True)
    return now


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def snpguard_cmd(*argv: str) -> list[str]:
    return [sys.executable, "-m", "ansible_collections.snpguard.cvm.cli", *argv]


def snpguard_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(DEVROOT), PYTHONUNBUFFERED="1")


@dataclass
class ServerProcess:
    """One ``snpguard server run``; ``url`` ends in /v1."""

    data_dir: Path
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    insecure: bool = False

    @property
    def base(self) -> str:
        return f"{'http' if self.insecure else 'https'}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + "/v1"

    @property
    def ca(self) -> ssl.SSLContext | bool:
        return False if self.insecure else ssl.create_default_context(cafile=str(self.data_dir / "tls" / "ca.pem"))

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child's lifetime
        argv = snpguard_cmd("server", "run", "--data-dir", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}",
                            "--no-access-log", "--log-level", "warning", *self.args)
        self.insecure = "--insecure-http" in self.args
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=snpguard_env(),
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError, OSError):
                if httpx.get(self.url + "/ready", verify=self.ca, timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def master_password(self) -> str | None:
        match = PASSWORD_RE.search(self.log())
        return match.group(1) if match else None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, verify=self.ca, headers=headers, **kwargs)

    def mint_token(self, name: str = "tests", password: str | None = None, **body: Any) -> str:
        password = password or self.master_password()
        assert password, "no master password in the server log"
        body.setdefault("scope", "admin")  # the tests' administrator; operator tokens are tested on their own
        with self.client() as client:
            response = client.post("/tokens", json={"name": name, **body}, auth=("admin", password))
        assert response.status_code == 201, response.text
        return response.json()["token"]


@dataclass
class Agent:
    """A simulated guest: asks for a challenge, has the AMD-SP sign a bound report, opens the key."""

    sim: SimulatedAmdSp
    send_certs: bool = True

    def certs(self) -> str:
        der = serialization.Encoding.DER
        table = build_cert_table({"vcek": self.sim.vcek.public_bytes(der), "ask": self.sim.ask.public_bytes(der),
                                  "ark": self.sim.ark.public_bytes(der)})
        return base64.b64encode(table).decode()

    def handshake(self, client: httpx.Client, measurement: bytes, *, verify_client: httpx.Client | None = None,
                  session_id: str | None = None, nonce: bytes | None = None, bind_key: bytes | None = None,
                  report: bytes | None = None, **fields: Any) -> tuple[httpx.Response, bytearray | None, dict]:
        """One challenge + verify; returns (verify response, opened key or None, the request body)."""
        if session_id is None:
            challenge = client.post("/attest/challenge")
            assert challenge.status_code == 200, challenge.text
            session_id = challenge.json()["session_id"]
            nonce = base64.b64decode(challenge.json()["nonce"])
        agent = AgentSession()
        # bind_key: a report bound to another key than the one sent (the attack the binding stops).
        report_data = agent.report_data(nonce) if bind_key is None else report_data_binding(nonce, bind_key)
        if report is None:
            report = self.sim.report(measurement=measurement, report_data=report_data, **fields)
        body = {"session_id": session_id, "report": base64.b64encode(report).decode(),
                "agent_public_key": base64.b64encode(agent.public_key).decode()}
        if self.send_certs:
            body["certs"] = self.certs()
        response = (verify_client or client).post("/attest/verify", json=body)
        key = None
        if response.status_code == 200:
            key = agent.open(base64.b64decode(response.json()["sealed_key"]), session_id, report)
        return response, key, body


def register(client: httpx.Client, name: str, measurements: dict[str, str], volume_key: bytes,
             **extra: Any) -> httpx.Response:
    info = client.get("/public/info").json()
    sealed = seal_for_ingestion(volume_key, base64.b64decode(info["ingestion_public_key"]), name)
    body = {"name": name, "measurements": measurements, "sealed_volume_key": base64.b64encode(sealed).decode(),
            **extra}
    return client.post("/images", json=body)


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimulatedAmdSp:
    chip = SimulatedAmdSp.create(Product.MILAN, rsa_bits=2048)
    save_simulated_amdsp(chip, str(tmp_path_factory.mktemp("simulated-amdsp")))
    return chip


@pytest.fixture(scope="session")
def sim_root(sim: SimulatedAmdSp, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("root") / "ark.pem"
    path.write_bytes(sim.ark.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sim_root: Path) -> Iterator[ServerProcess]:
    """A server that trusts the simulated root, offline (no KDS), short nonce TTL for the expiry test."""
    yield from running(tmp_path_factory.mktemp("server") / "data", sim_root, "--nonce-ttl", "3")


def running(data_dir: Path, sim_root: Path, *args: str) -> Iterator[ServerProcess]:
    """A fixture's server that trusts the simulated root, offline (no KDS), stopped when the fixture ends."""
    proc = ServerProcess(data_dir, ["--simulated-root", str(sim_root), "--offline", *args])
    proc.start()
    yield proc
    proc.stop()


def admin_client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(server.mint_token()) as client:
        yield client


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    yield from admin_client(server)


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory, sim: SimulatedAmdSp) -> Path:
    """The session's simulated AMD-SP saved where the launcher (``simulated_amdsp``) reads it."""
    directory = tmp_path_factory.mktemp("guest") / "simulated-amdsp"
    save_simulated_amdsp(sim, str(directory))
    return directory


@pytest.fixture(scope="module")
def guest_server(tmp_path_factory: pytest.TempPathFactory, sim_root: Path) -> Iterator[ServerProcess]:
    """A server for booted guests: its generated certificate also names the address they use (GUEST_SERVER)."""
    yield from running(tmp_path_factory.mktemp("guest-server") / "data", sim_root, "--tls-ips",
                       f"127.0.0.1,{GUEST_SERVER[0]}")


@pytest.fixture(scope="module")
def guest_admin(guest_server: ServerProcess) -> Iterator[httpx.Client]:
    yield from admin_client(guest_server)


def find_postgres_bin() -> Path | None:
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / "initdb").exists() and (base / "pg_ctl").exists():
            return base
    return None


@dataclass
class Postgres:
    url: str
    stop: Any


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A private PostgreSQL cluster on a loopback port (initdb as the postgres user when we are root)."""
    bindir = find_postgres_bin()
    if bindir is None:
        message = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # Not under pytest's 0700 temp root: the postgres user must reach the cluster directory.
    root = Path(tempfile.mkdtemp(prefix="snpguard-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    port = free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "snpguard", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "pg.log"),
                    "-w", "start"], check=True, capture_output=True)

    def stop() -> None:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, check=False)

    try:
        subprocess.run([*prefix, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "snpguard",
                        "snpguard"], check=True, capture_output=True)
        yield Postgres(f"postgresql+psycopg://snpguard@127.0.0.1:{port}/snpguard", stop)
    finally:
        stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres: Postgres) -> Iterator[str]:
    """A database of its own on the session's cluster (dropped afterwards): tests that start from empty state."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres.url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
