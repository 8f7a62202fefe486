# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""A Debian 13 root to build initrds with the agent in: mmdebstrap, cached by recipe.

Two variants, as the converter meets them: ``initramfs-tools`` (Debian's default) and
``dracut`` (dracut with dracut-network, systemd in the initrd, no initramfs-tools).

``~/.cache/snpguard/agent-root/<recipe-id>/`` holds ``root/`` (the tree), ``manifest.json``
(recipe, package versions, build time); it is rebuilt when the recipe changes.  Tests
never modify it: ``work_copy`` gives each one a copy to install the agent into and run
``mkinitramfs`` in (chroot, as root).

    python3 tests/pytest/agent/agent_root.py [dracut]     # build (or find) it, print its path
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
#: The dracut variant: what the converter installs into a dracut cloud image (dracut-network, its
#: iputils-arping), on top of the image's own systemd, udev and iproute2.
VARIANTS = {"initramfs-tools": PACKAGES,
            "dracut": ("linux-image-amd64", "python3", "cryptsetup-bin", "dracut", "dracut-network", "systemd",
                       "systemd-sysv", "udev", "iproute2", "zstd", "python3-cffi-backend")}
DPKG_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")
REVISION = 1


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("SNPGUARD_AGENT_ROOT_CACHE", Path(base) / "snpguard" / "agent-root"))


def mirror() -> str:
    sys.path.insert(0, str(REPO / "scripts"))
    from fetch_artifacts import configured_mirror

    return configured_mirror()


def recipe(variant: str = "initramfs-tools") -> dict:
    spec = {"suite": SUITE, "mirror": mirror(), "packages": VARIANTS[variant], "excludes": DPKG_EXCLUDES,
            "revision": REVISION}
    if variant != "initramfs-tools":  # (the first variant's recipe id is unchanged)
        spec["variant"] = variant
    return spec


def recipe_id(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def build(variant: str = "initramfs-tools") -> Path:
    """The cached directory (``root/`` + ``manifest.json``), built once per recipe."""
    spec = recipe(variant)
    packages = spec["packages"]
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
                f"--include={','.join(packages)}", *[f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES],
                SUITE, str(work / "root"), f"deb [signed-by={KEYRING}] {spec['mirror']} {SUITE} main"]
        print(f"agent_root: {' '.join(argv)}", file=sys.stderr, flush=True)
        subprocess.run(argv, check=True)
        versions = subprocess.run(["chroot", str(work / "root"), "dpkg-query", "-W", "-f", "${Package} ${Version}\n",
                                   *packages], capture_output=True, text=True, check=True).stdout.splitlines()
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
    print(build(*sys.argv[1:2]))


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


#: The same marker in a dracut (systemd) initrd: a unit after /sysroot is mounted, before the root file
#: systems are declared ready; its script prints what is mounted there and powers off.
DRACUT_MARKER_SETUP = """#!/bin/bash
# test only
check() { return 0; }
depends() { echo systemd; return 0; }
install() {
    inst_script "$moddir/snpguard-test-marker.sh" /usr/lib/snpguard-test/marker.sh
    inst_simple "$moddir/snpguard-test-marker.service" "$systemdsystemunitdir/snpguard-test-marker.service"
    $SYSTEMCTL -q --root "$initdir" enable snpguard-test-marker.service
}
"""
DRACUT_MARKER_UNIT = """[Unit]
Description=snpguard test marker
DefaultDependencies=no
After=sysroot.mount snpguard-verity-layers.service
Requires=sysroot.mount
Before=initrd-root-fs.target

[Service]
Type=oneshot
Environment=rootmnt=/sysroot
ExecStart=/usr/lib/snpguard-test/marker.sh
StandardOutput=journal+console

[Install]
WantedBy=initrd-root-fs.target
"""
DRACUT_MARKER_SCRIPT = """#!/bin/sh
root=
while read -r dev mnt rest; do [ "$mnt" = /sysroot ] && root=$dev; done < /proc/mounts
echo "SNPGUARD-TEST: root $root"
echo "SNPGUARD-TEST: marker $(cat /sysroot/snpguard-marker 2>&1)"
echo "SNPGUARD-TEST: mapper $(ls /dev/mapper | tr '\\n' ' ')"
sync
echo o > /proc/sysrq-trigger
sleep 30
"""


def install_marker(root: Path, variant: str, script: str | None = None) -> None:
    """The test-only marker into the root's initrd generator: it runs once the root is mounted (``$rootmnt``),
    then stops.  ``script`` replaces the default marker (it runs as an init-bottom script or a unit)."""
    if variant == "dracut":
        module = root / "usr/lib/dracut/modules.d/99snpguard-test"
        module.mkdir(parents=True, exist_ok=True)
        for name, text in (("module-setup.sh", DRACUT_MARKER_SETUP),
                           ("snpguard-test-marker.sh", script or DRACUT_MARKER_SCRIPT),
                           ("snpguard-test-marker.service", DRACUT_MARKER_UNIT)):
            (module / name).write_text(text)
            (module / name).chmod(0o755)
        return
    marker = root / "etc/initramfs-tools/scripts/init-bottom/snpguard-test-marker"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(script or MARKER_SCRIPT)
    marker.chmod(0o755)


def write_files(root: Path, files: list) -> None:
    """``PayloadFile``s (dest, data, mode) into ``root``."""
    for item in files:
        path = root / item.dest.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.data)
        path.chmod(item.mode)


def mkinitramfs(root: Path, kernel_version: str, out: Path, variant: str = "initramfs-tools") -> float:
    """The root's own initrd generator in the chroot (``mkinitramfs``, or ``dracut --no-hostonly`` as the
    converter runs it); the initrd is moved to ``out``; returns the seconds it took."""
    started = time.monotonic()
    argv = ["mkinitramfs", "-o", "/tmp/initrd.img", kernel_version]
    if variant == "dracut":
        argv = ["dracut", "--quiet", "--force", "--no-hostonly", "/tmp/initrd.img", kernel_version]
    result = subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    shutil.copyfile(root / "tmp/initrd.img", out)
    return time.monotonic() - started


def net_driver_bytes(root: Path) -> int:
    """Bytes of network drivers (drivers/net) in the initrd the last ``mkinitramfs`` call made in ``root``."""
    listing = subprocess.run(["chroot", str(root), "lsinitrd", "/tmp/initrd.img"], capture_output=True, text=True,
                             check=True).stdout
    total = 0
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 9 and "/kernel/drivers/net/" in fields[-1] and fields[4].isdigit():
            total += int(fields[4])
    return total
