# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""A simulated SNP launch: what the AMD-SP would measure and check, and a host-side AMD-SP that signs reports.

No SEV hardware here, so the launcher does what the AMD-SP does at LAUNCH_START …
LAUNCH_FINISH, from the very files QEMU is given:

* ``prepare`` computes the launch digest of firmware + kernel-hashes page + VMSAs for
  this vCPU count, vCPU type and guest features (``measurement.files``), checks the ID
  block like SNP_LAUNCH_FINISH (``snp.launch_finish``: refused launches never start),
  writes the kernel-hashes table that OVMF verifies the kernel against, and records the
  launch (``launch.json`` in the state dir) for the AMD-SP process;
* ``serve`` is that process: it listens on the socket QEMU's virtio-serial port connects
  to and answers each ``REPORT <REPORT_DATA hex> <VMPL>`` line with ``OK <report b64>
  <certificate table b64>`` — a report whose MEASUREMENT, POLICY, HOST_DATA, ID/author key
  digests, FAMILY_ID, IMAGE_ID and GUEST_SVN are the recorded launch's, signed by the
  simulated chain (trusted by a verifier only when its root is configured explicitly).

The guest never holds a key: it only has the port (``attestation.report_sources.via_channel``).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Any

from ..attestation.simulator_store import load_simulated_amdsp
from ..common.fileio import atomic_write
from ..measurement.files import measure
from ..measurement.snp_measure import build_config
from ..snp.cert_table import build_cert_table
from ..snp.crypto_guard import serialization
from ..snp.errors import SnpError
from ..snp.kernel_hashes import KernelHashes
from ..snp.launch_finish import LaunchIdentity, check_id_block
from ..snp.ovmf import parse_firmware
from ..snp.simulated_amdsp import ReportFields, SimulatedAmdSp
from .argv import Paths
from .config import VmConfig

LAUNCH_RECORD = "launch.json"
MAX_LINE = 512


@dataclass(frozen=True)
class SimulatedLaunch:
    """What the simulated AMD-SP certifies for one launch."""

    measurement: bytes
    policy: int
    host_data: bytes
    identity: LaunchIdentity
    hashes_table_gpa: int
    simulated_amdsp: str  # the directory of the simulator (chain and keys)

    def to_json(self) -> dict[str, Any]:
        i = self.identity
        return {"measurement": self.measurement.hex(), "policy": f"0x{self.policy:x}",
                "host_data": self.host_data.hex(), "family_id": i.family_id.hex(), "image_id": i.image_id.hex(),
                "guest_svn": i.guest_svn, "id_key_digest": i.id_key_digest.hex(),
                "author_key_digest": i.author_key_digest.hex(), "author_key_en": i.author_key_en,
                "hashes_table_gpa": f"0x{self.hashes_table_gpa:x}", "simulated_amdsp": self.simulated_amdsp}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SimulatedLaunch:
        identity = LaunchIdentity(family_id=bytes.fromhex(doc["family_id"]), image_id=bytes.fromhex(doc["image_id"]),
                                  guest_svn=int(doc["guest_svn"]), id_key_digest=bytes.fromhex(doc["id_key_digest"]),
                                  author_key_digest=bytes.fromhex(doc["author_key_digest"]),
                                  author_key_en=bool(doc["author_key_en"]))
        return cls(bytes.fromhex(doc["measurement"]), int(doc["policy"], 16), bytes.fromhex(doc["host_data"]),
                   identity, int(doc["hashes_table_gpa"], 16), doc["simulated_amdsp"])


def launch_digest(config: VmConfig) -> tuple[bytes, KernelHashes | None]:
    """The SNP launch digest of this exact launch (what MEASUREMENT will be), and its kernel hashes."""
    options = {"ovmf": config.firmware, "mode": "snp", "vcpus": str(config.vcpus), "vcpu_type": config.vcpu_type,
               "kernel": config.kernel, "initrd": config.initrd, "append": config.cmdline,
               "guest_features": config.guest_features, "vmm_type": "QEMU"}
    result = measure(build_config(options))
    return result.digests[config.vcpus], result.kernel_hashes


def prepare(config: VmConfig, simulated_amdsp: str, *, write: bool = True) -> SimulatedLaunch:
    """Measure, check the ID block as LAUNCH_FINISH would, write the hashes table and the launch record."""
    measurement, hashes = launch_digest(config)
    if config.expected_measurement and config.expected_measurement != measurement.hex():
        raise SnpError(f"this launch measures {measurement.hex()}, the bundle expects {config.expected_measurement}",
                       field="measurement")
    try:
        identity = check_id_block(config.id_block, config.id_auth, measurement=measurement, policy=config.policy,
                                  author_key_enabled=config.author_key_enabled if config.id_block else None)
    except SnpError as exc:
        raise SnpError(f"the (simulated) AMD-SP refuses the launch: {exc.message}", field=exc.field) from exc
    with open(config.firmware, "rb") as handle:
        firmware = parse_firmware(handle.read(), config.firmware)
    if hashes is None:
        raise SnpError("a simulated launch boots a kernel (OVMF checks it against the hashes table)", field="kernel")
    launch = SimulatedLaunch(measurement, config.policy, config.host_data or bytes(32), identity,
                             firmware.hash_table_gpa, os.path.abspath(simulated_amdsp))
    if write:
        paths = Paths(config.state_dir)
        atomic_write(paths.hashes_table, hashes.table(), mode=0o600)
        atomic_write(os.path.join(config.state_dir, LAUNCH_RECORD),
                     (json.dumps(launch.to_json(), indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
    return launch


# -- the AMD-SP process ---------------------------------------------------------------------------------


class SimulatedAmdSpService:
    """Answers report requests for one launch (one guest), as the AMD-SP's guest-request path does."""

    def __init__(self, launch: SimulatedLaunch, simulator: SimulatedAmdSp) -> None:
        self.launch = launch
        self.simulator = simulator
        der = serialization.Encoding.DER
        self.certs = build_cert_table({"vcek": simulator.vcek.public_bytes(der), "ask": simulator.ask.public_bytes(der),
                                       "ark": simulator.ark.public_bytes(der)})
        self.answered = 0

    def answer(self, line: bytes) -> bytes:
        """One request line → one reply line (``OK …`` or ``ERR <reason>``)."""
        parts = line.strip().split()
        if len(parts) != 3 or parts[0] != b"REPORT":
            return b"ERR expected: REPORT <128 hex digits of REPORT_DATA> <VMPL 0-3>\n"
        try:
            report_data = bytes.fromhex(parts[1].decode("ascii"))
            vmpl = int(parts[2])
        except (ValueError, UnicodeDecodeError):
            return b"ERR REPORT_DATA must be hex and VMPL a number\n"
        if len(report_data) != 64 or not 0 <= vmpl <= 3:
            return b"ERR REPORT_DATA must be 64 bytes and VMPL 0-3\n"
        i = self.launch.identity
        fields = ReportFields(measurement=self.launch.measurement, report_data=report_data, vmpl=vmpl,
                              host_data=self.launch.host_data, policy=self.launch.policy, family_id=i.family_id,
                              image_id=i.image_id, guest_svn=i.guest_svn, id_key_digest=i.id_key_digest,
                              author_key_digest=i.author_key_digest, author_key_en=i.author_key_en)
        report = self.simulator.report(fields)
        self.answered += 1
        return b"OK " + base64.b64encode(report) + b" " + base64.b64encode(self.certs) + b"\n"

    def handle(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    conn.sendall(self.answer(line))
                if len(buffer) > MAX_LINE:
                    conn.sendall(b"ERR request line too long\n")
                    buffer = b""


def serve(socket_path: str, service: SimulatedAmdSpService, ready: threading.Event | None = None,
          stop: threading.Event | None = None) -> None:
    """Listen on ``socket_path`` (QEMU's chardev connects to it, and reconnects after a guest reboot)."""
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        listener.bind(socket_path)
    finally:
        os.umask(old)
    listener.listen(4)
    listener.settimeout(0.5)
    if ready is not None:
        ready.set()
    try:
        while stop is None or not stop.is_set():
            try:
                conn, _peer = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            threading.Thread(target=service.handle, args=(conn,), daemon=True).start()
    finally:
        listener.close()


def run_daemon(state_dir: str, pidfile: str) -> None:
    """The daemon's body (after the launcher forked it): lock the pidfile, drop stdio, serve until SIGTERM.

    Everything it needs is imported at module load: a daemon forked from an Ansible module
    outlives the module's temporary files.
    """
    fd = os.open(pidfile, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held for the daemon's life: the launcher tests it
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    null = os.open(os.devnull, os.O_RDWR)
    for stdio in (0, 1, 2):
        os.dup2(null, stdio)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_args: stop.set())
    with open(os.path.join(state_dir, LAUNCH_RECORD), encoding="utf-8") as handle:
        launch = SimulatedLaunch.from_json(json.load(handle))
    service = SimulatedAmdSpService(launch, load_simulated_amdsp(launch.simulated_amdsp))
    serve(Paths(state_dir).amdsp_socket, service, stop=stop)
