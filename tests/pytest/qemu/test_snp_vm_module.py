# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The snp_vm and snp_host_info modules in real ansible-playbook runs (a simulated guest on this machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_run import registered_task, run_playbook
from probe_initrd import build

pytestmark = pytest.mark.slow


def test_snp_vm_life_cycle(tmp_path: Path, firmware: Path, kernel: Path, busybox: Path, sim_dir: Path) -> None:
    initrd = build(busybox, bytes(64), tmp_path / "initrd", stay=True)
    state = tmp_path / "vm"
    guest = {"name": "play", "state_dir": str(state), "kernel": str(kernel), "initrd": str(initrd),
             "cmdline": "console=ttyS0", "firmware": str(firmware), "simulate": True,
             "simulated_amdsp": str(sim_dir), "memory_mb": 512}
    m = "snpguard.cvm.snp_vm"
    results = run_playbook(tmp_path, [
        registered_task(m, "planned", guest, check_mode=True),
        registered_task(m, "started", guest),
        registered_task(m, "again", guest),
        registered_task(m, "other", {**guest, "cmdline": "console=ttyS0 quiet"}),
        {"name": "wait for the report",
         "ansible.builtin.wait_for": {"path": str(state / "serial.log"), "search_regex": "SNPGUARD-PROBE-END",
                                      "timeout": 180},
         "register": "waited"},
        registered_task(m, "libvirt", {**guest, "output": "libvirt", "simulate": False, "cbitpos": 51,
                                       "reduced_phys_bits": 1}),
        registered_task(m, "stopped", {"name": "play", "state_dir": str(state), "state": "stopped",
                                       "stop_timeout": 3}),
        registered_task(m, "stopped_again", {"name": "play", "state_dir": str(state), "state": "stopped"}),
        registered_task(m, "absent", {"name": "play", "state_dir": str(state), "state": "absent"}),
        registered_task(m, "refused", {**guest, "name": "refused", "state_dir": str(tmp_path / "r"),
                                       "simulate": False}),
        registered_task("snpguard.cvm.snp_host_info", "host", {}),
    ])
    assert results["planned"]["changed"] and "-accel" in results["planned"]["argv"], results["planned"]
    assert results["planned"].get("pid") is None  # check mode launched nothing
    assert results["started"]["changed"] and results["started"]["measurement"], results["started"]
    assert not results["again"]["changed"] and results["again"]["pid"] == results["started"]["pid"]
    assert not results["other"]["changed"] and results["other"]["config_differs"]
    assert "<launchSecurity type='sev-snp'" in results["libvirt"]["xml"] and not results["libvirt"]["changed"]
    assert results["stopped"]["changed"] and not results["stopped_again"]["changed"]
    assert results["absent"]["changed"] and not state.exists()
    assert results["refused"]["failed"] and results["refused"]["field"] == "simulate"
    assert results["host"]["snp_capable"] is False and results["host"]["problems"]
