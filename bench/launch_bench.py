# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Simulated SEV-SNP launch: VM start → report answered, by stage, and the launcher's own share.

Boots Debian sid's OVMF.amdsev.fd with Debian 13's kernel and the probe initrd
(tests/pytest/qemu/probe_initrd.py) under QEMU/TCG through ``qemu.vm.Vm.start``, and times:

* launcher: measuring the launch, checking the ID block, writing the hashes table, starting
  the simulated AMD-SP daemon (everything before QEMU runs);
* QEMU start: exec until ``-daemonize`` returns;
* firmware: QEMU up until the kernel's first line on the serial console ("Linux version");
* kernel: until the probe's /init prints;
* initrd: until the report is printed (the request through virtio-serial to the host's AMD-SP).

The serial log is polled every 10 ms, so stage edges are ±10 ms.  The ratio printed is the
launcher's share of the whole (its cost against the baseline of everything else, measured in
the same run); rounds alternate nothing, but the median of several is printed.

    .venv/bin/python bench/launch_bench.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchlib import REPO, artifacts_default, import_collection

import_collection()
sys.path.insert(0, str(REPO / "tests" / "pytest" / "qemu"))

import probe_initrd

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.simulator_store import (
    save_simulated_amdsp,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.config import VmConfig
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.vm import Vm
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import SimulatedAmdSp

STAGES = ("launcher", "qemu_start", "firmware", "kernel", "initrd")


def one_round(work: Path, artifacts: Path, sim_dir: Path, index: int) -> dict[str, float]:
    initrd = probe_initrd.build(artifacts / "busybox", bytes(64), work / f"initrd-{index}")
    config = VmConfig(name=f"bench-{index}", state_dir=str(work / f"vm-{index}"),
                      firmware=str(artifacts / "OVMF.amdsev.fd"), kernel=str(artifacts / "vmlinuz-trixie"),
                      initrd=str(initrd), cmdline="console=ttyS0 panic=-1", simulate=True, memory_mb=1024)
    marks: dict[str, float] = {}

    def timed_run(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        """The launcher's Runner, noting when the QEMU that daemonizes is exec'd and returns."""
        launching = "-daemonize" in argv
        if launching:
            marks["qemu_exec"] = time.perf_counter()
        outcome = run(argv, timeout)
        if launching:
            marks["qemu_up"] = time.perf_counter()
        return outcome

    vm = Vm(config.name, config.state_dir, timed_run)
    start = time.perf_counter()
    vm.start(config, simulated_amdsp=str(sim_dir))
    serial = Path(config.state_dir) / "serial.log"
    edges = {"Linux version": "kernel_start", "probe: up": "init_start", probe_initrd.END: "report"}
    deadline = time.perf_counter() + 300
    try:
        while edges and time.perf_counter() < deadline:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            now = time.perf_counter()
            for needle in list(edges):
                if needle in text:
                    marks[edges.pop(needle)] = now
            time.sleep(0.01)
    finally:
        vm.remove()
    if edges:
        raise SystemExit(f"round {index}: the guest never printed {sorted(edges)}")
    return {"launcher": marks["qemu_exec"] - start, "qemu_start": marks["qemu_up"] - marks["qemu_exec"],
            "firmware": marks["kernel_start"] - marks["qemu_up"], "kernel": marks["init_start"] - marks["kernel_start"],
            "initrd": marks["report"] - marks["init_start"], "total": marks["report"] - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--artifacts", type=Path, default=artifacts_default())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="snpguard-launch-bench-") as tmp:
        work = Path(tmp)
        sim_dir = work / "sim"
        save_simulated_amdsp(SimulatedAmdSp.create(rsa_bits=2048), str(sim_dir))
        rounds = [one_round(work, args.artifacts, sim_dir, i) for i in range(args.rounds)]
    median = {k: statistics.median(r[k] for r in rounds) for k in (*STAGES, "total")}
    print(f"simulated launch, {args.rounds} rounds (median, seconds): "
          + ", ".join(f"{k} {median[k]:.3f}" for k in (*STAGES, "total")))
    others = median["total"] - median["launcher"]
    print(f"launcher's own share: {median['launcher']:.3f} s of {median['total']:.3f} s = "
          f"{median['launcher'] / median['total']:.3f} (ratio to everything else {median['launcher'] / others:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
