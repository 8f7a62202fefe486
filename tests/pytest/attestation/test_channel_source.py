# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""attestation/report_sources.py's simulated channel: finding the port by name, the request line, refusals.

The guest side runs against a pseudo-terminal (a character device like the virtio port)
whose other end is the host's real ``SimulatedAmdSpService``; the whole guest↔host path
through QEMU is tested in tests/pytest/qemu/.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.report_sources import (
    find_channel,
    get_report,
    via_channel,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.simulation import SimulatedAmdSpService, SimulatedLaunch
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.launch_finish import LaunchIdentity
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.report import parse_report


def fake_sysfs(tmp_path: Path, ports: dict[str, str]) -> Path:
    root = tmp_path / "virtio-ports"
    for port, name in ports.items():
        (root / port).mkdir(parents=True)
        (root / port / "name").write_text(name + "\n")
    return root


def test_the_port_is_found_by_its_name(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, {"vport0p0": "org.qemu.guest_agent.0", "vport0p1": "org.snpguard.amdsp.0"})
    assert find_channel(sysfs=str(sysfs), dev="/dev") == "/dev/vport0p1"
    with pytest.raises(SnpError, match="no virtio-serial port named"):
        find_channel(sysfs=str(fake_sysfs(tmp_path / "b", {"vport0p0": "other"})))


def serve_pty(answer) -> tuple[str, threading.Thread]:
    master, slave = os.openpty()
    import tty

    tty.setraw(slave)
    path = os.ttyname(slave)

    def run() -> None:
        buffer = b""
        while b"\n" not in buffer:
            buffer += os.read(master, 4096)
        os.write(master, answer(buffer.split(b"\n", 1)[0]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return path, thread


def test_a_report_over_the_channel_is_the_hosts_signed_report(sim) -> None:
    launch = SimulatedLaunch(measurement=b"\x42" * 48, policy=0x30000, host_data=b"\x07" * 32,
                             identity=LaunchIdentity(), hashes_table_gpa=0x810C00, simulated_amdsp="(in memory)")
    service = SimulatedAmdSpService(launch, sim)
    path, thread = serve_pty(service.answer)
    got = get_report(bytes(range(64)), 0, channel=path)
    thread.join(5)
    report = parse_report(got.report)
    assert got.source == "simulated-channel" and got.certs
    assert report.measurement == b"\x42" * 48 and report.report_data == bytes(range(64))
    assert report.host_data == b"\x07" * 32 and service.answered == 1


@pytest.mark.parametrize("line", [b"ERR the AMD-SP is busy\n", b"OK notbase64 x\n", b"OK\n"])
def test_a_refusal_or_garbage_is_an_error(line: bytes) -> None:
    path, thread = serve_pty(lambda _request: line)
    with pytest.raises(SnpError) as info:
        via_channel(bytes(64), 0, path)
    thread.join(5)
    assert info.value.field == "report_source"


def test_the_host_refuses_malformed_requests(sim) -> None:
    launch = SimulatedLaunch(b"\0" * 48, 0x30000, bytes(32), LaunchIdentity(), 0, "")
    service = SimulatedAmdSpService(launch, sim)
    for request in (b"HELLO", b"REPORT zz 0", b"REPORT " + b"00" * 10 + b" 0", b"REPORT " + b"00" * 64 + b" 9"):
        assert service.answer(request).startswith(b"ERR "), request
    assert service.answered == 0
