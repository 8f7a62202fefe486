# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Conversion (``mode: luks``) of a 2 GiB image against the least any conversion must do.

Input: the stock Debian 13 cloud image of scripts/cloud_image.py (built when missing) with
incompressible files added to its root until it holds ``--fill-to`` MiB (default 2048),
flattened into one qcow2.  Timed in the same run, each ``--rounds`` times, alternating:

* baseline: ``qemu-img convert`` of the source to a new qcow2, plus a full copy of its root
  file system (``cp -a`` onto a fresh ext4) through the same libguestfs appliance the
  converter uses (launch included);
* conversion: ``cvm_image`` with the default options (LUKS2 with argon2id, packages the
  image lacks installed offline, the agent installed, the initrd regenerated, the new
  image hashed), the plaintext key to a 0600 file (no server needed).

Printed: the median of each and their ratio (target: conversion at most 3 times the baseline), and the
conversion's own steps from its progress lines.

    .venv/bin/python bench/convert_bench.py --rounds 1
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, artifacts_default, import_collection

import_collection()
os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.image.appliance import appliance, kernel_devices, shell
from ansible_collections.snpguard.cvm.plugins.module_utils.image.cvm_image import apply
from ansible_collections.snpguard.cvm.plugins.module_utils.image.inspect import inspect_image

MIB = 1 << 20


def stock_image() -> Path:
    spec = importlib.util.spec_from_file_location("cloud_image", REPO / "scripts" / "cloud_image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build("initramfs-tools")


def make_source(stock: Path, work: Path, fill_to_mib: int) -> tuple[Path, int]:
    """The stock image with random files added to its root up to ``fill_to_mib`` used, as one qcow2."""
    overlay, source = work / "fill.qcow2", work / "source.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(stock), "-F", "qcow2", str(overlay)],
                   check=True)
    with appliance([(str(overlay), "qcow2", False)], force_tcg=True) as g:
        root = inspect_image(g).root.device
        g.mount(root, "/")
        used = int(shell(g, "used", "df -B1 --output=used /sysroot | tail -1"))
        missing = max(0, fill_to_mib * MIB - used)
        chunk = work / "chunk"
        index = 0
        g.mkdir_p("/srv/bench-fill")
        while missing > 0:
            size = min(missing, 128 * MIB)
            chunk.write_bytes(os.urandom(size))
            g.upload(str(chunk), f"/srv/bench-fill/{index:04d}")
            missing -= size
            index += 1
        chunk.unlink(missing_ok=True)
        used = int(shell(g, "used", "sync; df -B1 --output=used /sysroot | tail -1"))
        g.umount_all()
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(overlay), str(source)], check=True)
    overlay.unlink()
    return source, used


def baseline(source: Path, work: Path) -> float:
    copy = work / "baseline.qcow2"
    started = time.monotonic()
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(source), str(copy)], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "target.qcow2"), "4G"], check=True)
    with appliance([(str(copy), "qcow2", True, "source"), (str(work / "target.qcow2"), "qcow2", False, "target")],
                   force_tcg=True) as g:
        root = inspect_image(g).root.number
        src, dst = kernel_devices(g, "source", "target")  # what the shell calls them (the converter does the same)
        shell(g, "full copy", "\n".join([
            "mkdir -p /tmp/src /tmp/dst", "udevadm settle", f"mount -o ro {src}{root} /tmp/src",
            f"mkfs.ext4 -q {dst}", "udevadm settle", f"mount {dst} /tmp/dst", "cp -a /tmp/src/. /tmp/dst/",
            "sync", "umount /tmp/src /tmp/dst"]))
    seconds = time.monotonic() - started
    copy.unlink()
    (work / "target.qcow2").unlink()
    return seconds


def conversion(source: Path, work: Path, artifacts: Path, ca: Path, steps: list[tuple[float, str]]) -> float:
    out, staging, key = work / "cvm.qcow2", work / "cvm.staging", work / "cvm.key"
    started = time.monotonic()

    def progress(line: str) -> None:
        steps.append((time.monotonic() - started, line))

    apply({"source": str(source), "output": str(out), "staging_dir": str(staging), "name": "bench",
           "server_url": "https://10.0.2.100", "server_ca_file": str(ca), "volume_key_file": str(key),
           "firmware": str(artifacts / "OVMF.amdsev.fd"), "package_cache": str(work.parent / "bench-debs"),
           "force_tcg": True}, run, progress=progress)
    seconds = time.monotonic() - started
    for path in (out, key):
        path.unlink()
    subprocess.run(["rm", "-rf", str(staging)], check=True)
    return seconds


def self_signed_ca(path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "snpguard bench CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--fill-to", type=int, default=2048, metavar="MIB", help="data in the root (default 2048)")
    parser.add_argument("--artifacts", type=Path, default=artifacts_default())
    parser.add_argument("--work", type=Path, default=None, help="scratch dir (default a temp dir under /var/tmp)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (libguestfs' appliance, dpkg in the image)")
    with tempfile.TemporaryDirectory(prefix="snpguard-convert-bench-", dir=args.work or "/var/tmp") as tmp:
        work = Path(tmp)
        t = time.monotonic()
        source, used = make_source(stock_image(), work, args.fill_to)
        print(f"source: {source.stat().st_size / MIB:.0f} MiB qcow2, {used / MIB:.0f} MiB used in the root "
              f"(made in {time.monotonic() - t:.0f} s)", flush=True)
        ca = work / "ca.pem"
        self_signed_ca(ca)
        base, conv = [], []
        steps: list[tuple[float, str]] = []
        for index in range(args.rounds):
            base.append(baseline(source, work))
            print(f"round {index + 1}: baseline {base[-1]:.1f} s", flush=True)
            steps.clear()
            conv.append(conversion(source, work, args.artifacts, ca, steps))
            print(f"round {index + 1}: conversion {conv[-1]:.1f} s", flush=True)
        previous = 0.0
        print("\nconversion steps (s since start, last round):")
        for at, line in steps:
            if not line.startswith("copy: /") or line.endswith("100%)"):
                print(f"  {at:7.1f}  (+{at - previous:5.1f})  {line}")
                previous = at
        b, c = statistics.median(base), statistics.median(conv)
        print(f"\nbaseline (qemu-img convert + full copy through the appliance): {b:.1f} s (median of {len(base)})")
        print(f"conversion (cvm_image, mode luks):                             {c:.1f} s (median of {len(conv)})")
        print(f"ratio conversion / baseline: {c / b:.2f}x (target <= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
