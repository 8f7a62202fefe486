# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The agent in a real initrd, end to end: a simulated SEV-SNP launch attests, unlocks LUKS2, mounts the root.

Debian 13's kernel and an initrd made by the root's own ``mkinitramfs`` with the agent's
payload (``agent_files``) boot under QEMU/TCG with the launcher (``simulate=True``: OVMF
checks the kernel-hashes table, the host's simulated AMD-SP signs a report of exactly
this launch).  The guest reaches the key-release server only through a guestfwd.  The
image is registered with the measurement ``snpguard measure`` computes from the exact
firmware, kernel, initrd and cmdline.  A test-only init-bottom script prints what
initramfs-tools mounted as the root and the marker file read from it, then powers off.

Refusal: the same image disabled on the server → the console names the server's check
(``image.disabled``), the VM powers itself off, the volume is never opened.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from conftest import GUEST_SERVER, MAPPER, stage
from servers import register

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.config import Disk, VmConfig
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.vm import Vm

pytestmark = pytest.mark.slow
CMDLINE = f"console=ttyS0 root=/dev/mapper/{MAPPER} ro"
BOOT_DEADLINE = 600.0  # Debian's initrd under TCG on a loaded 2-core machine: ~1-3 min normally
MIB = 1 << 20


def measure(config: VmConfig) -> str:
    import subprocess

    from servers import snpguard_cmd, snpguard_env

    result = subprocess.run(snpguard_cmd("measure", "--mode", "snp", "--vcpus", str(config.vcpus), "--vcpu-type",
                                         config.vcpu_type, "--ovmf", config.firmware, "--kernel", config.kernel,
                                         "--initrd", config.initrd, "--append", config.cmdline, "--guest-features",
                                         hex(config.guest_features)),
                            env=snpguard_env(), capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def launch(tmp_path: Path, name: str, firmware: Path, agent_initrd, disk: Path, port: int) -> VmConfig:
    return VmConfig(name=name, state_dir=str(tmp_path / name), firmware=str(firmware), kernel=str(agent_initrd.kernel),
                    initrd=str(agent_initrd.initrd), cmdline=agent_initrd.cmdline, memory_mb=1536, simulate=True,
                    disks=[Disk(str(disk), format="raw")], network="user",
                    guest_forwards=[(GUEST_SERVER[0], GUEST_SERVER[1], port)]).validate()


def wait_until(vm: Vm, serial: Path, done: re.Pattern[str], deadline: float = BOOT_DEADLINE) -> str:
    """The serial log once ``done`` appears in it or the VM is gone (whichever comes first)."""
    end = time.monotonic() + deadline
    text = ""
    while time.monotonic() < end:
        text = serial.read_text(errors="replace") if serial.exists() else ""
        if done.search(text) or vm.pid() is None:
            time.sleep(1.0)
            return serial.read_text(errors="replace") if serial.exists() else ""
        time.sleep(0.5)
    raise AssertionError(f"nothing decisive within {deadline} s; serial log tail:\n{text[-4000:]}")


def agent_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if "snpguard-agent:" in line or "SNPGUARD-TEST" in line]


def test_the_agent_attests_unlocks_the_root_and_initramfs_mounts_it(
        tmp_path: Path, firmware: Path, sim_dir: Path, guest_server, guest_admin, luks_disk, agent_initrd) -> None:
    stages: dict[str, float] = dict(agent_initrd.seconds)
    t = time.monotonic()
    config = launch(tmp_path, "agent-ok", firmware, agent_initrd, luks_disk.copy(tmp_path / "disk.raw"),
                    guest_server.port)
    measurement = measure(config)
    t = stage(stages, "measure", t)
    made = register(guest_admin, agent_initrd.image, {"1": measurement}, luks_disk.key)
    assert made.status_code == 201, made.text
    t = stage(stages, "register", t)
    vm = Vm(config.name, config.state_dir, run)
    try:
        result = vm.start(config, simulated_amdsp=str(sim_dir))
        assert result.changed, result.as_dict()
        t = stage(stages, "qemu_start", t)
        serial = Path(config.state_dir) / "serial.log"
        text = wait_until(vm, serial, re.compile(r"SNPGUARD-TEST: mapper|stopping this boot|Kernel panic"))
        t = stage(stages, "boot_to_marker", t)
    finally:
        vm.remove()
    lines = agent_lines(text)
    print("\n".join(lines))
    assert any(f"attested, key released for {agent_initrd.image}" in line for line in lines), text[-4000:]
    assert any(f"opened as /dev/mapper/{MAPPER}; key wiped" in line for line in lines), text[-4000:]
    assert f"SNPGUARD-TEST: root /dev/mapper/{MAPPER}" in text
    assert f"SNPGUARD-TEST: marker {luks_disk.marker}" in text
    assert "network: " in text and "10.0.2.15" in text  # what DHCP gave, as the agent parsed it
    assert "Please unlock disk" not in text  # cryptroot found the mapping open and never prompted
    audit = guest_admin.get("/audit", params={"limit": 5})
    if audit.status_code == 200:
        print(json.dumps(audit.json(), indent=1)[:1500])
    sizes = json.loads((agent_initrd.initrd.parent / "sizes.json").read_text())
    growth = sizes["agent"] - sizes["plain"]
    print(f"\ninitrd ({agent_initrd.variant}): {sizes['plain'] / MIB:.1f} MiB without the agent, "
          f"{sizes['agent'] / MIB:.1f} MiB with it (+{growth / MIB:.1f} MiB, of which network drivers "
          f"{sizes['net_drivers'] / MIB:.1f} MiB)\nstages (s): {stages}")
    assert growth - sizes["net_drivers"] <= 15 * MIB


def test_a_refusal_is_named_on_the_console_and_the_vm_powers_off_locked(
        tmp_path: Path, firmware: Path, sim_dir: Path, guest_server, guest_admin, luks_disk, agent_initrd) -> None:
    stages: dict[str, float] = {}
    t = time.monotonic()
    config = launch(tmp_path, "agent-refused", firmware, agent_initrd, luks_disk.copy(tmp_path / "disk.raw"),
                    guest_server.port)
    measurement = measure(config)
    made = register(guest_admin, agent_initrd.image, {"1": measurement}, luks_disk.key)
    assert made.status_code in (200, 201), made.text
    image_id = made.json()["id"]
    assert guest_admin.post(f"/images/{image_id}/disable").json()["enabled"] is False
    t = stage(stages, "register_disabled", t)
    vm = Vm(config.name, config.state_dir, run)
    try:
        vm.start(config, simulated_amdsp=str(sim_dir))
        serial = Path(config.state_dir) / "serial.log"
        text = wait_until(vm, serial, re.compile(r"powering off|SNPGUARD-TEST"))
        t = stage(stages, "boot_to_refusal", t)
        gone = time.monotonic() + 60
        while vm.pid() is not None and time.monotonic() < gone:
            time.sleep(0.5)
        stopped = vm.pid() is None
        t = stage(stages, "power_off", t)
    finally:
        vm.remove()
        guest_admin.post(f"/images/{image_id}/enable")
    lines = agent_lines(text)
    print("\n".join(lines) + f"\nstages (s): {stages}")
    assert any("REFUSED" in line and "check image.disabled" in line for line in lines), text[-4000:]
    assert "the root stays locked (agent status 3)" in text
    assert "SNPGUARD-TEST" not in text and "opened as /dev/mapper" not in text
    assert stopped, "the VM did not power itself off after the refusal"
