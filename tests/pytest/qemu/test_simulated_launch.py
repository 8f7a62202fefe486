# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The simulated SNP launch, end to end: OVMF checks what it boots, the host's AMD-SP signs what was launched.

Each test boots Debian 13's kernel with the probe initrd under QEMU/TCG (no SEV here):
the guest asks the virtio-serial port for a report bound to its REPORT_DATA and prints
it; the host verifies it with ``snpguard report verify`` against the simulated root and
the measurement of the launch (computed independently with ``snpguard measure``).
Attacks: a kernel, initrd or command line that does not match the hashes table is
stopped by OVMF itself (the kernel never runs); with the table recomputed the guest
boots but its report carries another MEASUREMENT, which verification refuses; an ID
block for another launch is refused before QEMU starts, as the AMD-SP refuses it at
LAUNCH_FINISH.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BOOT_DEADLINE, cli

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.argv import build_argv
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.simulation import prepare
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.vm import qemu_version
from ansible_collections.snpguard.cvm.plugins.module_utils.snp import sev_keys
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.id_block import IdAuth, IdBlock
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.report import parse_report

pytestmark = pytest.mark.slow
FIRMWARE_WINDOW = 30.0


def measured(config) -> str:
    """The launch digest by the CLI (the same computation a registration makes), for the probe's launch."""
    result = cli("measure", "--mode", "snp", "--vcpus", str(config.vcpus), "--vcpu-type", config.vcpu_type,
                 "--ovmf", config.firmware, "--kernel", config.kernel, "--initrd", config.initrd,
                 "--append", config.cmdline, "--guest-features", hex(config.guest_features))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def verify(tmp_path: Path, report: bytes, sim_dir: Path, *expect: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"report-{hashlib.sha256(report).hexdigest()[:8]}.bin"
    path.write_bytes(report)
    return cli("report", "verify", "--report", str(path), "--simulated-root", str(sim_dir / "ark.pem"),
               "--certs-dir", str(sim_dir), *expect)


def test_the_guest_gets_a_report_of_exactly_this_launch(tmp_path: Path, probe, sim_dir: Path) -> None:
    guest = probe("probe-ok")
    stages = {"t0": time.monotonic()}
    result = guest.vm.start(guest.config, simulated_amdsp=str(sim_dir))
    stages["qemu_started"] = time.monotonic()
    assert result.changed and result.message == "started" and result.pid
    status, report = guest.wait_report()
    stages["report"] = time.monotonic()
    assert status == "OK"
    fields = parse_report(report)
    expected = measured(guest.config)
    assert fields.measurement.hex() == expected
    assert fields.report_data == guest.report_data and fields.host_data == b"\x5a" * 32
    ok = verify(tmp_path, report, sim_dir, "--measurement", expected, "--report-data", guest.report_data.hex(),
                "--host-data", "5a" * 32)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # Without the simulated root the same report is refused: the simulator is trusted only when told.
    plain = cli("report", "verify", "--report", str(tmp_path / f"report-{hashlib.sha256(report).hexdigest()[:8]}.bin"),
                "--certs-dir", str(sim_dir), "--offline")
    assert plain.returncode == 1 and "ark.pinned" in plain.stdout + plain.stderr
    print(f"\nstages: QEMU start {stages['qemu_started'] - stages['t0']:.2f} s, "
          f"report answered {stages['report'] - stages['t0']:.1f} s after start")


def test_starting_again_is_idempotent_and_another_config_is_reported(probe, sim_dir: Path) -> None:
    guest = probe("probe-idem", stay=True)
    first = guest.vm.start(guest.config, simulated_amdsp=str(sim_dir))
    assert first.changed
    again = guest.vm.start(guest.config, simulated_amdsp=str(sim_dir))
    assert not again.changed and again.pid == first.pid and not again.config_differs
    guest.config.cmdline += " quiet"
    other = guest.vm.start(guest.config, simulated_amdsp=str(sim_dir))
    assert not other.changed and other.config_differs and other.pid == first.pid
    restarted = guest.vm.start(guest.config, simulated_amdsp=str(sim_dir), restart=True)
    assert restarted.changed and restarted.message == "restarted" and restarted.pid != first.pid
    stopped = guest.vm.stop(timeout=5)
    assert stopped.changed and guest.vm.pid() is None and guest.vm._amdsp_pid() is None
    assert not guest.vm.stop().changed


def _stale_table_boot(tmp_path: Path, guest, sim_dir: Path, tamper) -> str:
    """Prepare the launch (hashes table of the original files), then tamper, then boot with QEMU directly."""
    launch = prepare(guest.config, str(sim_dir))
    tamper(guest.config)
    argv = build_argv(guest.config, hashes_table_gpa=launch.hashes_table_gpa,
                      qemu_version=qemu_version(guest.config.qemu, run), daemonize=False)
    argv = _without_channel(argv)  # (no AMD-SP needed: nothing may boot far enough to ask)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # The untampered control reaches the kernel in ~3 s under TCG; the tampered runs get ten times that.
        deadline = time.monotonic() + FIRMWARE_WINDOW
        while time.monotonic() < deadline and proc.poll() is None:
            text = guest.serial.read_text(errors="replace") if guest.serial.exists() else ""
            if "Linux version" in text:
                break
            time.sleep(0.5)
        # QEMU itself must have accepted the command line and kept running (the firmware decides, not QEMU).
        assert proc.poll() is None, f"QEMU exited: {proc.stderr.read().decode(errors='replace') if proc.stderr else ''}"
    finally:
        proc.kill()
        proc.wait(10)
    return guest.serial.read_text(errors="replace") if guest.serial.exists() else ""


def _without_channel(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("-device", "-chardev") and index + 1 < len(argv) and (
                "virtio-serial" in argv[index + 1] or "virtserialport" in argv[index + 1]
                or "id=amdsp" in argv[index + 1]):
            skip = True
            continue
        out.append(arg)
    return out


@pytest.mark.parametrize("what", ["initrd", "cmdline", "kernel"])
def test_ovmf_refuses_what_the_hashes_table_does_not_name(
        tmp_path: Path, probe, sim_dir: Path, kernel: Path, what: str) -> None:
    guest = probe(f"probe-tamper-{what}")
    Path(guest.config.state_dir).mkdir(parents=True)

    def tamper(config) -> None:
        if what == "initrd":
            data = bytearray(Path(config.initrd).read_bytes())
            data[-1] ^= 1
            Path(config.initrd).write_bytes(bytes(data))
        elif what == "cmdline":
            config.cmdline += " init=/bin/sh"
        else:
            copy = tmp_path / "vmlinuz-other"
            data = bytearray(kernel.read_bytes())
            data[-100] ^= 1
            copy.write_bytes(bytes(data))
            config.kernel = str(copy)

    serial = _stale_table_boot(tmp_path, guest, sim_dir, tamper)
    assert "Linux version" not in serial, "OVMF booted a kernel the hashes table does not name"


def test_the_untampered_control_boots_the_same_way(tmp_path: Path, probe, sim_dir: Path) -> None:
    """The control for the test above: the same direct QEMU run, untampered, reaches the kernel."""
    guest = probe("probe-control")
    Path(guest.config.state_dir).mkdir(parents=True)
    serial = _stale_table_boot(tmp_path, guest, sim_dir, lambda config: None)
    assert "Linux version" in serial


def test_with_hashes_recomputed_the_measurement_gives_it_away(tmp_path: Path, probe, sim_dir: Path) -> None:
    guest = probe("probe-recomputed")
    registered = measured(guest.config)
    guest.config.cmdline += " snpguard.evil=1"  # the launcher recomputes the table: OVMF boots it
    guest.vm.start(guest.config, simulated_amdsp=str(sim_dir))
    _status, report = guest.wait_report()
    refused = verify(tmp_path, report, sim_dir, "--measurement", registered)
    assert refused.returncode == 1 and "measurement" in refused.stdout + refused.stderr


def _id_blocks(ld: bytes, policy: int = 0x30000, *, author: bool = False) -> tuple[str, str]:
    key, _pem = sev_keys.generate_private_key()
    block = IdBlock.build(ld.hex(), "a1" * 16, "b2" * 16, 3, policy)
    return block.to_b64(), IdAuth.build(block, key, sev_keys.generate_private_key()[0] if author else None).to_b64()


def test_an_id_block_for_this_launch_is_accepted_and_in_the_report(tmp_path: Path, probe, sim_dir: Path) -> None:
    guest = probe("probe-idblock")
    ld = bytes.fromhex(measured(guest.config))
    guest.config.id_block, guest.config.id_auth = _id_blocks(ld, author=True)
    guest.config.author_key_enabled = True
    guest.vm.start(guest.config, simulated_amdsp=str(sim_dir))
    _status, report = guest.wait_report()
    fields = parse_report(report)
    auth = IdAuth.from_bytes(base64.b64decode(guest.config.id_auth))
    assert fields.id_key_digest == auth.id_key_digest and fields.author_key_digest == auth.author_key_digest
    assert fields.family_id == b"\xa1" * 16 and fields.image_id == b"\xb2" * 16 and fields.guest_svn == 3


@pytest.mark.parametrize(("case", "check"), [("measurement", "id_block.measurement"), ("policy", "id_block.policy"),
                                             ("signature", "id_auth.id_block_sig")])
def test_the_simulated_amdsp_refuses_a_wrong_id_block_before_qemu_starts(probe, sim_dir: Path, case: str,
                                                                         check: str) -> None:
    guest = probe(f"probe-bad-{case}")
    ld = bytes.fromhex(measured(guest.config))
    if case == "measurement":
        block, auth = _id_blocks(bytes(48))
    elif case == "policy":
        block, auth = _id_blocks(ld, 0x30000 | 1 << 18)
    else:
        block, _auth = _id_blocks(ld)
        _other, auth = _id_blocks(ld)  # another key's signature over (an identical copy of) the block
        parsed = IdAuth.from_bytes(base64.b64decode(auth))
        auth = IdAuth(id_block_sig=bytes(len(parsed.id_block_sig)), id_key=parsed.id_key).to_b64()
    guest.config.id_block, guest.config.id_auth = block, auth
    with pytest.raises(SnpError) as info:
        guest.vm.start(guest.config, simulated_amdsp=str(sim_dir))
    assert info.value.field == check and "refuses the launch" in info.value.message
    assert guest.vm.pid() is None and not guest.serial.exists()


def test_the_cli_starts_reports_and_stops(tmp_path: Path, firmware: Path, kernel: Path, busybox: Path,
                                          sim_dir: Path) -> None:
    from probe_initrd import build, report_from_serial

    initrd = build(busybox, bytes(64), tmp_path / "initrd", stay=True)
    state = tmp_path / "cli-vm"
    common = ["--state-dir", str(state), "--json"]
    start = cli("vm", "start", "cli-probe", *common, "--kernel", str(kernel), "--initrd", str(initrd), "--cmdline",
                "console=ttyS0", "--firmware", str(firmware), "--simulate", "--simulated-amdsp", str(sim_dir))
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        started = json.loads(start.stdout)
        assert started["changed"] and started["measurement"] and started["running"]
        end = time.monotonic() + BOOT_DEADLINE
        while time.monotonic() < end and not report_from_serial((state / "serial.log").read_text(errors="replace")):
            time.sleep(0.2)
        status = json.loads(cli("vm", "status", "cli-probe", *common).stdout)
        assert status["state"] == "running" and status["guest"] == "running"
        stop = cli("vm", "stop", "cli-probe", *common, "--timeout", "3")
        assert json.loads(stop.stdout)["changed"] is True
        assert json.loads(cli("vm", "status", "cli-probe", *common).stdout)["state"] == "stopped"
    finally:
        cli("vm", "stop", "cli-probe", "--state-dir", str(state), "--timeout", "1")
        shutil.rmtree(state, ignore_errors=True)


def test_a_host_without_snp_is_refused_naming_why(firmware: Path, kernel: Path, tmp_path: Path) -> None:
    result = cli("vm", "start", "no-snp", "--state-dir", str(tmp_path / "s"), "--kernel", str(kernel),
                 "--firmware", str(firmware), "--json")
    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert error["field"] == "simulate" and "SEV-SNP" in error["message"] and "simulate" in error["message"]
