# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Key-release server benchmark: complete handshakes per second with 50 concurrent agents.

A handshake is what a booting guest does: POST /v1/attest/challenge, have the AMD-SP
sign a report whose REPORT_DATA binds the nonce and a fresh X25519 key (here the
simulated AMD-SP, so every report is signed *after* its challenge), POST
/v1/attest/verify, open the HPKE-sealed volume key.  Latency is measured from the
challenge request to the opened key.  Agents run as asyncio tasks with httpx over TLS
on loopback, on the same 2 cores as the server, so their CPU is measured and printed.

The baseline is the same number of bare ``attest()`` verifications (parse, collateral
from the certificate table, chain, signature, expectations) in this process, on one
core: the ratio shows what the HTTP, TLS, database and protocol layers cost on top.

Usage::

    .venv/bin/python bench/server_bench.py                 # SQLite and PostgreSQL (if installed)
    .venv/bin/python bench/server_bench.py --backends sqlite --handshakes 5000 --workers 2,4

Targets (issue 4): >= 300 handshakes/s with p99 < 100 ms on this 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchlib import DEVROOT, REPO, import_collection

import_collection()

import httpx
from cryptography.hazmat.primitives.serialization import Encoding

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.collateral import (
    CollateralSources,
    resolve_collateral,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import (
    AgentSession,
    seal_for_ingestion,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.attest import attest
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.binding import report_data_binding
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.cert_table import (
    build_cert_table,
    parse_cert_table,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.report import parse_report
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import SimulatedAmdSp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.validate import Expectations
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.verify import TrustSettings
from ansible_collections.snpguard.cvm.server.config import auto_workers

TARGET_RATE = 300.0
TARGET_P99_MS = 100.0
MEASUREMENT = bytes.fromhex("5e" * 48)
CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


@dataclass
class Result:
    backend: str
    workers: int
    mode: str  # "closed" (as fast as possible) or "paced" (fixed arrival rate)
    handshakes: int
    errors: int
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    agent_cpu_s: float
    server_cpu_s: float
    database_cpu_s: float
    machine_busy_pct: float


# -- processes and CPU accounting ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _proc_cpu(match: callable) -> float:  # type: ignore[valid-type]
    """utime+stime (s) of every process whose /proc/<pid>/stat fields satisfy ``match``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        comm = text[text.index("(") + 1:text.rindex(")")]
        if match(int(entry), comm, fields):
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def group_cpu(pgid: int) -> float:
    return _proc_cpu(lambda _pid, _comm, f: int(f[2]) == pgid)


def postgres_cpu() -> float:
    return _proc_cpu(lambda _pid, comm, _f: comm.startswith("postgres"))


def machine_busy() -> tuple[float, float]:
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) / CLK_TCK, idle / CLK_TCK


class Postgres:
    """A throwaway PostgreSQL cluster on a loopback port (as the postgres user when run as root)."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
        if not bins:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bins[0].parent
        self.root = Path(tempfile.mkdtemp(prefix="snpguard-bench-pg-"))
        self.prefix: list[str] = []
        sock = self.root / "sock"
        sock.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(sock, "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        data = self.root / "data"
        subprocess.run([*self.prefix, str(self.bindir / "initdb"), "-D", str(data), "-U", "snpguard",
                        "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
        # Durable defaults (fsync on, synchronous_commit on), as a production server would run.
        options = f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=200"
        subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(data), "-o", options,
                        "-l", str(self.root / "pg.log"), "-w", "start"], check=True, capture_output=True)
        subprocess.run([*self.prefix, str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "snpguard", "snpguard"], check=True, capture_output=True)
        self.url = f"postgresql+psycopg://snpguard@127.0.0.1:{self.port}/snpguard"

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast",
                        "-w", "stop"], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


class Server:
    def __init__(self, data_dir: Path, args: list[str], workers: int, devroot: Path = DEVROOT) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.log = data_dir.parent / f"server-{self.port}.log"
        argv = [sys.executable, "-m", "ansible_collections.snpguard.cvm.cli", "server", "run", "--data-dir",
                str(data_dir), "--listen", f"127.0.0.1:{self.port}", "--workers", str(workers), "--no-access-log",
                "--log-level", "warning", "--offline", "--rate-limit", "10000000", *args]
        env = dict(os.environ, PYTHONPATH=str(devroot), PYTHONUNBUFFERED="1")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.url = f"https://127.0.0.1:{self.port}/v1"
        self.ssl = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            if (data_dir / "tls" / "ca.pem").exists():
                self.ssl = ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.pem"))
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(self.url + "/ready", verify=self.ssl, timeout=2).status_code == 200:
                        return
            time.sleep(0.2)
        raise RuntimeError("server not ready:\n" + self.log.read_text())

    def master_password(self) -> str:
        match = re.search(r"shown ONCE.*?\n\n\s+(\S+)\n", self.log.read_text(), re.S)
        if not match:
            raise RuntimeError("no master password in the log")
        return match.group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


# -- the work ------------------------------------------------------------------------------------


def cert_table(sim: SimulatedAmdSp) -> bytes:
    der = Encoding.DER
    return build_cert_table({"vcek": sim.vcek.public_bytes(der), "ask": sim.ask.public_bytes(der),
                             "ark": sim.ark.public_bytes(der)})


def baseline(sim: SimulatedAmdSp, count: int) -> float:
    """Bare attest() verifications per second on one core (reports signed beforehand, not timed)."""
    table = cert_table(sim)
    trust = TrustSettings(simulated_roots=(sim.ark,))
    items = []
    for _index in range(count):
        agent = AgentSession()
        nonce = os.urandom(32)
        items.append((sim.report(measurement=MEASUREMENT, report_data=agent.report_data(nonce)), nonce,
                      agent.public_key))
    start = time.perf_counter()
    for raw, nonce, key in items:
        report = parse_report(raw)
        collateral = resolve_collateral(report, CollateralSources(extended=parse_cert_table(table)))
        attest(report, collateral, trust, Expectations(measurements=(MEASUREMENT,), vmpl=0,
                                                       report_data=report_data_binding(nonce, key)))
    return count / (time.perf_counter() - start)


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client (one connection): the load generator's own CPU is overhead
    on the 2 cores the server needs, and httpx spends ~1 ms per request on itself."""

    def __init__(self, url: str, context: ssl.SSLContext | None) -> None:
        rest = url.split("://", 1)[1]
        hostport, _sep, base = rest.partition("/")
        self.host, port = hostport.rsplit(":", 1)
        self.port, self.base, self.context = int(port), "/" + base, context
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict | None = None) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, ssl=self.context)
        data = json.dumps(body).encode() if body is not None else b""
        self.writer.write(f"POST {self.base}{path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: "
                          f"application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        assert self.reader is not None
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _sep, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, json.loads(await self.reader.readexactly(length)) if length else {}

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


class HttpxClient:
    def __init__(self, url: str, context: ssl.SSLContext | None) -> None:
        # One client per agent: httpx's pool scans all its connections per request (O(n^2) with 50 shared).
        self.client = httpx.AsyncClient(base_url=url, verify=context, timeout=60,
                                        limits=httpx.Limits(max_connections=1))

    async def post(self, path: str, body: dict | None = None) -> tuple[int, dict]:
        response = await self.client.post(path, json=body)
        return response.status_code, response.json()

    async def close(self) -> None:
        await self.client.aclose()


async def load(server: Server, sim: SimulatedAmdSp, agents: int, count: int, *, client: str = "raw",
               rate: float | None = None) -> tuple[list[float], int, float]:
    """``agents`` concurrent agents, each on its own keep-alive connection (as separate guests would be).

    Closed loop (``rate`` None): every agent starts its next handshake as soon as one ends.
    Paced (``rate`` per second): handshakes start on a fixed schedule, at most ``agents`` at once,
    and latency counts from the scheduled start, so a server that falls behind shows it.
    """
    certs = base64.b64encode(cert_table(sim)).decode()
    latencies: list[float] = []
    errors = 0
    issued = 0
    start = time.perf_counter()
    make = RawHttp if client == "raw" else HttpxClient

    async def agent_loop() -> None:
        nonlocal issued, errors
        http = make(server.url, server.ssl)
        try:
            while issued < count:
                index = issued
                issued += 1
                due = start + index / rate if rate else time.perf_counter()
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                status, challenge = await http.post("/attest/challenge")
                session = AgentSession()
                nonce = base64.b64decode(challenge["nonce"])
                report = sim.report(measurement=MEASUREMENT, report_data=session.report_data(nonce))
                status, released = await http.post("/attest/verify", {
                    "session_id": challenge["session_id"], "report": base64.b64encode(report).decode(),
                    "agent_public_key": base64.b64encode(session.public_key).decode(), "certs": certs})
                if status != 200:
                    errors += 1
                    continue
                session.open(base64.b64decode(released["sealed_key"]), challenge["session_id"], report)
                latencies.append(time.perf_counter() - due)
        finally:
            await http.close()

    await asyncio.gather(*(agent_loop() for _agent in range(agents)))
    return latencies, errors, time.perf_counter() - start


def run_async(coro: object) -> object:
    """uvloop when available: its C TLS transport costs the agents far less CPU than asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def measure(server: Server, sim: SimulatedAmdSp, args: argparse.Namespace, name: str, workers: int, mode: str,
            rate: float | None, pg: bool) -> Result:
    cpu0, agent0, server0, db0 = machine_busy(), time.process_time(), group_cpu(server.proc.pid), postgres_cpu()
    latencies, errors, seconds = run_async(load(server, sim, args.agents, args.handshakes, client=args.client,
                                                rate=rate))  # type: ignore[misc]
    cpu1, agent1, server1, db1 = machine_busy(), time.process_time(), group_cpu(server.proc.pid), postgres_cpu()
    total, idle = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    ms = sorted(x * 1000 for x in latencies) or [0.0]
    return Result(name, workers, mode, len(latencies), errors, seconds, len(latencies) / seconds,
                  statistics.median(ms), ms[int(0.99 * (len(ms) - 1))], ms[-1], agent1 - agent0, server1 - server0,
                  db1 - db0 if pg else 0.0, 100.0 * (total - idle) / total if total else 0.0)


def run_backend(name: str, tmp: Path, sim: SimulatedAmdSp, root: Path, args: argparse.Namespace,
                workers: int, devroot: Path = DEVROOT, label: str = "") -> list[Result]:
    """Start a server on ``name``, register the image, then a closed-loop run and a paced run."""
    pg = Postgres() if name == "postgresql" else None
    server = None
    try:
        extra = ["--simulated-root", str(root), *args.server_args.split()] + (["--db-url", pg.url] if pg else [])
        server = Server(tmp / f"{name}-{workers}{label}", extra, workers, devroot)
        token = httpx.post(server.url + "/tokens", json={"name": "bench"}, verify=server.ssl,
                           auth=("admin", server.master_password())).json()["token"]
        with httpx.Client(base_url=server.url, verify=server.ssl, headers={"Authorization": f"Bearer {token}"}) as c:
            info = c.get("/public/info").json()
            sealed = seal_for_ingestion(os.urandom(32), base64.b64decode(info["ingestion_public_key"]), "bench")
            response = c.post("/images", json={"name": "bench", "measurements": {"2": MEASUREMENT.hex()},
                                               "sealed_volume_key": base64.b64encode(sealed).decode()})
            response.raise_for_status()
        run_async(load(server, sim, args.agents, min(500, args.handshakes), client=args.client))  # warm-up
        results = [measure(server, sim, args, name + label, workers, "closed", None, pg is not None)]
        if args.paced and not label:
            results.append(measure(server, sim, args, name, workers, "paced", args.paced, pg is not None))
        return results
    finally:
        if server is not None:
            server.stop()
        if pg is not None:
            pg.stop()


def report(result: Result, base: float) -> None:
    per = 1000 / max(result.handshakes, 1)
    if result.mode == "closed":
        ok = result.rate >= TARGET_RATE and not result.errors
        verdict = f"{'MEETS' if ok else 'MISSES'} >= {TARGET_RATE:.0f}/s"
    else:
        ok = result.p99_ms < TARGET_P99_MS and not result.errors and result.rate >= 0.97 * TARGET_RATE
        verdict = f"{'MEETS' if ok else 'MISSES'} p99 < {TARGET_P99_MS:.0f} ms at {TARGET_RATE:.0f}/s"
    label = "as fast as possible" if result.mode == "closed" else f"paced at {TARGET_RATE:.0f}/s"
    print(f"{result.backend:10s} workers={result.workers} {label}: {result.handshakes} handshakes, "
          f"{result.errors} errors, {result.rate:.0f}/s (ratio to bare verification {result.rate / base:.2f}), "
          f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max {result.max_ms:.0f} ms  [{verdict}]")
    cpu = result.agent_cpu_s * per + result.server_cpu_s * per + result.database_cpu_s * per
    print(f"{'':10s} CPU per handshake: agents {result.agent_cpu_s * per:.2f} ms, "
          f"server {result.server_cpu_s * per:.2f} ms"
          + (f", PostgreSQL {result.database_cpu_s * per:.2f} ms" if result.backend == "postgresql" else "")
          + f"; agents used {100 * result.agent_cpu_s / result.seconds:.0f}% of one core; machine "
          f"{result.machine_busy_pct:.0f}% busy (other processes: "
          f"{max(0.0, result.machine_busy_pct * CORES / 100 - cpu * result.rate / 1000):.2f} cores)")
    if result.mode == "closed":
        print(f"{'':10s} CPU bound on a dedicated {CORES}-core machine: {CORES * 1000 / cpu:.0f} handshakes/s "
              f"({cpu:.2f} ms of CPU per handshake, all processes)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--handshakes", type=int, default=3000, help="per run")
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--workers", default="auto",
                        help="workers, or auto (the server's choice per database); a comma-separated list runs each")
    parser.add_argument("--paced", type=float, default=TARGET_RATE,
                        help="also run at this fixed arrival rate per second (0: skip) to measure latency")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="agents' HTTP client: a minimal HTTP/1.1 one, or httpx (about 2 ms more CPU each)")
    parser.add_argument("--server-args", default="", help="extra 'snpguard server run' options, e.g. '--threads 4'")
    parser.add_argument("--rsa-bits", type=int, default=4096, help="simulated ARK/ASK size (AMD uses 4096)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--baseline-ref", metavar="GIT_REF",
                        help="also run the server of this commit (a git worktree), alternating with this one, and "
                             "print this one's closed-loop rate as a ratio to it (e.g. the commit before a change)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds with --baseline-ref")
    args = parser.parse_args()

    sim = SimulatedAmdSp.create(Product.MILAN, rsa_bits=args.rsa_bits)
    tmp = Path(tempfile.mkdtemp(prefix="snpguard-bench-"))
    root = tmp / "ark.pem"
    root.write_bytes(sim.ark.public_bytes(Encoding.PEM))
    try:
        base = baseline(sim, args.handshakes)
        print(f"baseline: {args.handshakes} bare attest() verifications: {base:.0f}/s on one core "
              f"({1000 / base:.2f} ms each)")
        print(f"targets: >= {TARGET_RATE:.0f} handshakes/s and p99 < {TARGET_P99_MS:.0f} ms, {args.agents} agents "
              f"({args.client} client); closed loop measures capacity, where latency is agents/rate by "
              "Little's law; the paced run measures latency at the target rate")
        if args.baseline_ref:
            return compare_with_ref(args, tmp, sim, root)
        results: list[Result] = []
        for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
            kind = "postgresql" if name == "postgresql" else "sqlite"
            for workers in [auto_workers(kind) if w.strip() == "auto" else int(w) for w in args.workers.split(",")]:
                try:
                    batch = run_backend(name, tmp, sim, root, args, workers)
                except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                    print(f"{name}: skipped ({exc})")
                    continue
                for result in batch:
                    report(result, base)
                results.extend(batch)
        if args.json:
            print(json.dumps({"baseline_per_s": base, "results": [asdict(r) for r in results]}, indent=2))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compare_with_ref(args: argparse.Namespace, tmp: Path, sim: SimulatedAmdSp, root: Path) -> int:
    """This tree against ``--baseline-ref``: closed-loop handshake rates, alternating, median of rounds."""
    ref_tree = tmp / "baseline-tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(ref_tree),
                    args.baseline_ref], check=True, capture_output=True)
    ref_devroot = tmp / "baseline-devroot"
    (ref_devroot / "ansible_collections" / "snpguard").mkdir(parents=True)
    (ref_devroot / "ansible_collections" / "snpguard" / "cvm").symlink_to(ref_tree, target_is_directory=True)
    saved_paced, args.paced = args.paced, 0
    try:
        for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
            kind = "postgresql" if name == "postgresql" else "sqlite"
            workers = auto_workers(kind) if args.workers == "auto" else int(args.workers.split(",")[0])
            rates: dict[str, list[float]] = {"before": [], "after": []}
            for round_no in range(args.rounds):
                order = [("before", ref_devroot), ("after", DEVROOT)]
                for label, devroot in order if round_no % 2 == 0 else order[::-1]:
                    result = run_backend(name, tmp, sim, root, args, workers, devroot, f"-{label}-{round_no}")[0]
                    rates[label].append(result.rate)
                    print(f"{name:10s} {label:6s} ({args.baseline_ref if label == 'before' else 'this tree'}) "
                          f"round {round_no + 1}: {result.rate:.0f} handshakes/s, {result.errors} errors, "
                          f"p99 {result.p99_ms:.1f} ms")
            before, after = statistics.median(rates["before"]), statistics.median(rates["after"])
            ratio = after / before
            verdict = "MEETS" if ratio >= 0.90 else "MISSES"
            print(f"{name:10s} after/before = {after:.0f}/{before:.0f} = {ratio:.2f}  "
                  f"[{verdict} >= 0.90: the change costs at most 10% of the handshake rate]")
    finally:
        args.paced = saved_paced
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(ref_tree)],
                       check=False, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
