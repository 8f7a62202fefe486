# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Time per SNP launch measurement: snpguard vs the sev-snp-measure library, same inputs, same run.

Inputs: the Debian OVMF.amdsev.fd, the Debian kernel, and a 60 MiB initrd (the Debian
initrd, concatenated with itself until it reaches 60 MiB: concatenated cpio archives
are a valid initrd).  Runs alternate between the two implementations so machine noise
hits both alike; the ratio of medians is what to read.

    .venv/bin/python bench/measure_bench.py [--rounds N] [--artifacts DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib


def _initrd_of_size(source: Path, size: int, directory: str) -> str:
    data = source.read_bytes()
    path = os.path.join(directory, "initrd-60MiB.img")
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            chunk = data[: size - written]
            handle.write(chunk)
            written += len(chunk)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--artifacts", type=Path, default=benchlib.artifacts_default())
    parser.add_argument("--vcpus", type=int, default=4)
    args = parser.parse_args()

    benchlib.import_collection()
    from sevsnpmeasure import guest
    from sevsnpmeasure.sev_mode import SevMode

    from ansible_collections.snpguard.cvm.plugins.module_utils.measurement.files import measure
    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.measure import LaunchConfig
    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.vcpu_types import CPU_SIGNATURES

    ovmf = str(args.artifacts / "OVMF.amdsev.fd")
    kernel = str(args.artifacts / "vmlinuz")
    append = "console=ttyS0 root=/dev/mapper/root ro"
    sig = CPU_SIGNATURES["EPYC-v4"]
    with tempfile.TemporaryDirectory() as tmp:
        initrd = _initrd_of_size(args.artifacts / "initrd.img", 60 << 20, tmp)
        config = LaunchConfig(ovmf=ovmf, vcpus=(args.vcpus,), vcpu_sig=sig, vcpu_type="EPYC-v4", kernel=kernel,
                              initrd=initrd, append=append)

        def ours() -> bytes:
            return measure(config).digest

        def theirs() -> bytes:
            return guest.calc_launch_digest(SevMode.SEV_SNP, args.vcpus, sig, ovmf, kernel, initrd, append, 0x1)

        if ours() != theirs():
            print("digests differ: the benchmark compares nothing", file=sys.stderr)
            return 1
        times: dict[str, list[float]] = {"snpguard": [], "sev-snp-measure": []}
        for _round in range(args.rounds):
            for name, func in (("sev-snp-measure", theirs), ("snpguard", ours)):
                start = time.perf_counter()
                func()
                times[name].append(time.perf_counter() - start)
        paths = {"ovmf": ovmf, "kernel": kernel, "initrd": initrd}
        sizes = {name: os.path.getsize(path) for name, path in paths.items()}
    print(f"inputs: OVMF {sizes['ovmf'] >> 10} KiB, kernel {sizes['kernel'] >> 10} KiB, "
          f"initrd {sizes['initrd'] >> 20} MiB, {args.vcpus} vCPUs, {args.rounds} alternating rounds")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:>16}: median {value * 1000:8.1f} ms  (min {min(times[name]) * 1000:.1f} ms)")
    ratio = medians["snpguard"] / medians["sev-snp-measure"]
    print(f"ratio snpguard/sev-snp-measure (median time per measurement): {ratio:.2f}  (target <= 0.50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
