# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""HOST_DATA as a real binding: register a bundle, launch from it, and the server holds the two together.

The server records, for a registration with boot artifacts, the HOST_DATA a launch from
its bundle carries (launch.json's, else the SHA-256 of the bundle's launch configuration);
the launcher launches the bundle with exactly that; a report with any other HOST_DATA is
refused at release naming ``host_data``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from servers import Agent, register

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.archive import read_bundle
from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.launch import bundle_host_data
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.snp_vm import apply
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.vm import Vm

pytestmark = pytest.mark.slow


def test_a_bundle_launch_carries_the_host_data_the_server_enforces(tmp_path: Path, admin, sim, sim_dir: Path,
                                                                   firmware: Path, kernel: Path,
                                                                   busybox: Path) -> None:
    from conftest import cli
    from probe_initrd import build

    initrd = build(busybox, bytes(64), tmp_path / "initrd", stay=True)
    cmdline = "console=ttyS0 panic=-1"
    measured = cli("measure", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", str(firmware),
                   "--kernel", str(kernel), "--initrd", str(initrd), "--append", cmdline)
    assert measured.returncode == 0, measured.stderr
    measurement = measured.stdout.strip()
    artifacts = {"kernel_b64": base64.b64encode(kernel.read_bytes()).decode(),
                 "initrd_b64": base64.b64encode(initrd.read_bytes()).decode(), "cmdline": cmdline,
                 "firmware_sha384": hashlib.sha384(firmware.read_bytes()).hexdigest(),
                 "launch": {"vmm_type": "QEMU", "policy": "0x30000", "vcpu_type": "EPYC-v4"}}
    key = os.urandom(32)
    made = register(admin, "bound-bundle", {"1": measurement}, key, artifacts=artifacts)
    assert made.status_code == 201, made.text
    bundle = admin.get(f"/images/{made.json()['id']}/bundle").content
    (tmp_path / "image.bundle.tar.gz").write_bytes(bundle)
    expected = bundle_host_data(read_bundle(bundle))
    assert made.json()["host_data"] == expected.hex()

    state = tmp_path / "vm"
    result = apply({"name": "bound", "state_dir": str(state), "bundle": str(tmp_path / "image.bundle.tar.gz"),
                    "firmware": str(firmware), "simulate": True, "simulated_amdsp": str(sim_dir)}, run)
    try:
        assert result["changed"] and result["host_data"] == expected.hex()
        assert result["measurement"] == measurement  # the launcher measured exactly what was registered
        launch = json.loads((state / "launch.json").read_text())
        assert launch["host_data"] == expected.hex()
        agent = Agent(sim)
        released, opened, _body = agent.handshake(admin, bytes.fromhex(measurement), host_data=expected)
        assert released.status_code == 200 and bytes(opened) == key
        refused, _key, _body = agent.handshake(admin, bytes.fromhex(measurement), host_data=b"\x01" * 32)
        assert refused.status_code == 403 and refused.json()["error"]["check"] == "host_data"
    finally:
        Vm("bound", str(state), run).remove()


def test_a_bundle_for_another_firmware_is_refused(tmp_path: Path, firmware: Path, kernel: Path) -> None:
    from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.archive import build_launch_bundle
    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError

    bundle = build_launch_bundle(kernel=kernel.read_bytes(), initrd=b"x", cmdline="console=ttyS0",
                                 firmware_sha384="ab" * 48, launch={"vcpus": [1]})
    (tmp_path / "b.tar.gz").write_bytes(bundle)
    with pytest.raises(SnpError) as info:
        apply({"name": "wrong-fw", "state_dir": str(tmp_path / "s"), "bundle": str(tmp_path / "b.tar.gz"),
               "firmware": str(firmware), "simulate": True}, run)
    assert info.value.field == "firmware" and "SHA-384" in info.value.message
