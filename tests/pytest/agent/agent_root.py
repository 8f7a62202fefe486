# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""A Debian 13 root to build initrds with the agent in: mmdebstrap, cached by recipe.

``~/.cache/snpguard/agent-root/<recipe-id>/`` holds ``root/`` (the tree), ``manifest.json``
(recipe, package versions, build time); it is rebuilt when the recipe changes.  Tests
never modify it: ``work_copy`` gives each one a copy to install the agent into and run
``mkinitramfs`` in (chroot, as root).

    python3 tests/pytest/agent/agent_root.py      # build (or find) it, print its path
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SUITE = "trixie"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PACKAGES = ("linux-image-amd64", "python3", "cryptsetup-bin", "cryptsetup-initramfs", "initramfs-tools", "busybox",
            "zstd", "python3-cffi-backend")
DPKG_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")
REVISION = 1


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("SNPGUARD_AGENT_ROOT_CACHE", Path(base) / "snpguard" / "agent-root"))


def mirror() -> str:
    sys.path.insert(0, str(REPO / "scripts"))
    from fetch_artifacts import configured_mirror

    return configured_mirror()


def recipe() -> dict:
    return {"suite": SUITE, "mirror": mirror(), "packages": PACKAGES, "excludes": DPKG_EXCLUDES, "revision": REVISION}


def recipe_id(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def build() -> Path:
    """The cached directory (``root/`` + ``manifest.json``), built once per recipe."""
    spec = recipe()
    target = cache_root() / recipe_id(spec)
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "manifest.json").is_file() and (target / "root" / "usr").is_dir():
            return target
        work = target.with_name(target.name + ".new")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        started = time.monotonic()
        argv = ["mmdebstrap", "--variant=apt", "--mode=root", "--format=directory", "--quiet",
                f"--include={','.join(PACKAGES)}", *[f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES],
                SUITE, str(work / "root"), f"deb [signed-by={KEYRING}] {spec['mirror']} {SUITE} main"]
        print(f"agent_root: {' '.join(argv)}", file=sys.stderr, flush=True)
        subprocess.run(argv, check=True)
        versions = subprocess.run(["chroot", str(work / "root"), "dpkg-query", "-W", "-f", "${Package} ${Version}\n",
                                   *PACKAGES], capture_output=True, text=True, check=True).stdout.splitlines()
        kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (work / "root" / "boot").glob("vmlinuz-*"))
        manifest = {"recipe": spec, "versions": versions, "kernels": kernels,
                    "python": os.readlink(work / "root" / "usr/bin/python3"),
                    "build_seconds": round(time.monotonic() - started, 1)}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        work.rename(target)
        return target


def manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


@contextlib.contextmanager
def work_copy(directory: Path, dest: Path) -> Iterator[Path]:
    """A private copy of the root at ``dest`` with /proc and /dev mounted for chroot; removed after."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(directory / "root"), str(dest)], check=True)
    mounts: list[Path] = []
    try:
        subprocess.run(["mount", "-t", "proc", "proc", str(dest / "proc")], check=True)
        mounts.append(dest / "proc")
        subprocess.run(["mount", "--bind", "/dev", str(dest / "dev")], check=True)
        mounts.append(dest / "dev")
        yield dest
    finally:
        for where in reversed(mounts):
            subprocess.run(["umount", "-l", str(where)], check=False)
        shutil.rmtree(dest, ignore_errors=True)


if __name__ == "__main__":
    print(build())


MARKER_SCRIPT = """#!/bin/sh
# test only: show that the root initramfs-tools mounted is the unlocked LUKS volume, then stop.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
echo "SNPGUARD-TEST: root $(grep " ${rootmnt} " /proc/mounts | cut -d' ' -f1)"
echo "SNPGUARD-TEST: marker $(cat "${rootmnt}/snpguard-marker" 2>&1)"
echo "SNPGUARD-TEST: mapper $(ls /dev/mapper | tr '\\n' ' ')"
sync
echo o > /proc/sysrq-trigger
sleep 30
"""


def write_files(root: Path, files: list) -> None:
    """``PayloadFile``s (dest, data, mode) into ``root``."""
    for item in files:
        path = root / item.dest.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.data)
        path.chmod(item.mode)


def mkinitramfs(root: Path, kernel_version: str, out: Path) -> float:
    """``mkinitramfs`` in the chroot; the initrd is moved to ``out``; returns the seconds it took."""
    started = time.monotonic()
    result = subprocess.run(["chroot", str(root), "mkinitramfs", "-o", "/tmp/initrd.img", kernel_version],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"mkinitramfs failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    shutil.move(str(root / "tmp/initrd.img"), out)
    return time.monotonic() - started
