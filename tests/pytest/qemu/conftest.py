# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the launcher's tests: real firmware and kernel, a simulated AMD-SP, probe guests.

Guests boot Debian sid's OVMF.amdsev.fd and Debian 13's kernel under QEMU/TCG with the
probe initrd (probe_initrd.py), a few seconds each; every VM is stopped and removed when
its test ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from probe_initrd import build, report_from_serial
from servers import snpguard_cmd, snpguard_env

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.simulator_store import save_simulated_amdsp
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.config import VmConfig
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.vm import Vm
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import SimulatedAmdSp

REPO = Path(__file__).resolve().parents[3]
BOOT_DEADLINE = 180.0  # an upper bound for a probe guest under TCG on a loaded machine (it takes ~5 s)


@pytest.fixture(scope="session")
def firmware(artifacts: Path) -> Path:
    return artifacts / "OVMF.amdsev.fd"


@pytest.fixture(scope="session")
def kernel(artifacts: Path) -> Path:
    return artifacts / "vmlinuz-trixie"


@pytest.fixture(scope="session")
def busybox(artifacts: Path) -> Path:
    return artifacts / "busybox"


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory, sim: SimulatedAmdSp) -> Path:
    directory = tmp_path_factory.mktemp("launcher") / "simulated-amdsp"
    save_simulated_amdsp(sim, str(directory))
    return directory


class Probe:
    """One probe guest: its initrd asks for a report with ``report_data`` and prints it."""

    def __init__(self, root: Path, name: str, firmware: Path, kernel: Path, busybox: Path,
                 report_data: bytes = bytes(range(64)), stay: bool = False, **overrides: object) -> None:
        self.root = root
        self.report_data = report_data
        self.initrd = build(busybox, report_data, root / f"{name}.initrd", stay=stay)
        self.config = VmConfig(name=name, state_dir=str(root / name), firmware=str(firmware), kernel=str(kernel),
                               initrd=str(self.initrd), cmdline="console=ttyS0 panic=-1", simulate=True,
                               host_data=b"\x5a" * 32)
        for key, value in overrides.items():
            setattr(self.config, key, value)
        self.vm = Vm(name, self.config.state_dir, run)

    @property
    def serial(self) -> Path:
        return Path(self.config.state_dir) / "serial.log"

    def wait_report(self, deadline: float = BOOT_DEADLINE) -> tuple[str, bytes]:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            text = self.serial.read_text(errors="replace") if self.serial.exists() else ""
            got = report_from_serial(text)
            if got:
                return got
            time.sleep(0.2)
        raise AssertionError(f"no report within {deadline} s; serial log:\n{self.serial_tail()}")

    def serial_tail(self) -> str:
        return self.serial.read_text(errors="replace")[-3000:] if self.serial.exists() else "(no serial log)"


@pytest.fixture
def probe(tmp_path: Path, firmware: Path, kernel: Path, busybox: Path) -> Iterator[object]:
    made: list[Probe] = []

    def make(name: str = "probe", **kwargs: object) -> Probe:
        made.append(Probe(tmp_path, name, firmware, kernel, busybox, **kwargs))
        return made[-1]

    yield make
    for p in made:
        p.vm.remove()


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(snpguard_cmd(*argv), env=snpguard_env(), capture_output=True, text=True, check=False,
                          timeout=600)


__all__ = ["BOOT_DEADLINE", "REPO", "Probe", "cli", "os", "sys"]
