# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The verity initrd scripts in a real Debian 13 initrd: the measured root hash decides the boot.

A small dm-verity disk is made on the host without device mapper (``mkfs.ext4 -d`` fills a
file system image, ``veritysetup format --hash-offset`` appends the tree to it, ``sgdisk``
gives it a GPT partition with a known PARTUUID).  Debian 13's kernel and an initrd made by
the root's own ``mkinitramfs`` with ``verity_scripts()`` boot under a simulated SEV-SNP
launch (OVMF checks the kernel hashes of exactly this cmdline).  A test-only init-bottom
script, run after the verity one, prints what the running system would see and powers off.

* the tree's own root hash: the root is the verity mapper mounted read-only, /var, /home,
  /root and /tmp are tmpfs, /etc an overlay, and the marker file reads back;
* every refusal of the local-top script, each on its own boot: a root hash that is not the
  tree's (named: it does not match), a malformed root hash, no data partition parameter, a
  PARTUUID no disk has (waited for 5 s, ``snpguard.verity.wait=5``), a wait that is not whole seconds - the
  console names the problem, the VM powers itself off and the
  marker is never read.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import agent_root
import pytest
from conftest import need_root, stage
from test_agent_boot import wait_until

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.agent.verity import (
    DATA_DEVICE,
    HASH_OFFSET,
    ROOT_HASH,
    WAIT,
    verity_cmdline,
    verity_scripts,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.config import Disk, VmConfig
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.vm import Vm

pytestmark = pytest.mark.slow
BLOCK = 4096
DATA_BLOCKS = 8192  # a 32 MiB file system
PART_START = 2048  # sectors
PARTUUID = "6c1d6f3e-0b9a-4d43-9d8e-5b2d3c9a7e11"

MARKER_SCRIPT = """#!/bin/sh
# test only: what the verity root looks like once snpguard-verity's init-bottom ran, then stop.
PREREQ="snpguard-verity"
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
while read -r dev mnt fstype opts rest; do
    case "$mnt" in
    "${rootmnt}"|"${rootmnt}"/*) echo "SNPGUARD-TEST: mount ${mnt#${rootmnt}} $dev $fstype ${opts%%,*}" ;;
    esac
done < /proc/mounts
echo "SNPGUARD-TEST: marker $(cat "${rootmnt}/snpguard-marker" 2>&1)"
if : > "${rootmnt}/var/snpguard-write" 2>/dev/null; then echo "SNPGUARD-TEST: var writable"; fi
if : > "${rootmnt}/snpguard-write" 2>/dev/null; then echo "SNPGUARD-TEST: root writable"; fi
echo "SNPGUARD-TEST: done"
sync
echo o > /proc/sysrq-trigger
sleep 30
"""


@dataclass
class VerityDisk:
    path: Path
    root_hash: str
    hash_offset: int
    marker: str

    def cmdline(self, *, root_hash: str | None = None, partuuid: str = PARTUUID, drop: str | None = None,
                extra: tuple[str, ...] = ()) -> str:
        args = verity_cmdline(root_hash or self.root_hash, partuuid, self.hash_offset) + list(extra)
        if drop:
            args = [arg for arg in args if not arg.startswith(drop + "=")]
        return " ".join(["console=ttyS0", "root=/dev/mapper/root", "ro", *args])


@pytest.fixture(scope="module")
def verity_disk(tmp_path_factory: pytest.TempPathFactory) -> VerityDisk:
    need_root()
    for tool in ("veritysetup", "sgdisk", "mkfs.ext4"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    work = tmp_path_factory.mktemp("verity")
    tree = work / "tree"
    marker = f"snpguard-verity-marker-{secrets.token_hex(8)}"
    for name in ("etc", "var/lib", "home/user", "root", "tmp"):
        (tree / name).mkdir(parents=True)
    (tree / "snpguard-marker").write_text(marker)
    (tree / "etc/hostname").write_text("verity-test\n")
    (tree / "var/lib/state").write_text("from the image\n")
    data = work / "data.img"
    subprocess.run(["mkfs.ext4", "-q", "-b", str(BLOCK), "-d", str(tree), str(data), str(DATA_BLOCKS)],
                   check=True, capture_output=True)
    offset = DATA_BLOCKS * BLOCK
    out = subprocess.run(["veritysetup", "format", "--hash=sha256", f"--data-block-size={BLOCK}",
                          f"--hash-block-size={BLOCK}", f"--data-blocks={DATA_BLOCKS}", f"--hash-offset={offset}",
                          str(data), str(data)], check=True, capture_output=True, text=True).stdout
    root_hash = re.search(r"^Root hash:\s+([0-9a-f]{64})$", out, re.M).group(1)
    disk = work / "disk.raw"
    part_bytes = -(-data.stat().st_size // (1 << 20)) * (1 << 20)
    with open(disk, "wb") as handle:
        handle.truncate(PART_START * 512 + part_bytes + (1 << 20))
    subprocess.run(["sgdisk", "-n", f"1:{PART_START}:+{part_bytes // 512 - 1}", "-t", "1:8304",
                    "-u", f"1:{PARTUUID}", str(disk)], check=True, capture_output=True)
    subprocess.run(["dd", f"if={data}", f"of={disk}", "bs=1M", f"seek={PART_START * 512}", "oflag=seek_bytes",
                    "conv=notrunc", "status=none"], check=True)
    return VerityDisk(disk, root_hash, offset, marker)


@dataclass
class VerityInitrd:
    kernel: Path
    initrd: Path
    seconds: dict[str, float]
    variant: str


#: One initrd per variant for the session: pytest sets an indirectly parametrized fixture up again
#: whenever the next test's parameter differs, and a build is a root copy plus a generator run.
_INITRDS: dict[str, VerityInitrd] = {}


@pytest.fixture(scope="module", params=[pytest.param(v, marks=pytest.mark.dracut_stage) if v == "dracut" else v
                                        for v in agent_root.VARIANTS])
def verity_initrd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> VerityInitrd:
    """Debian 13's kernel and an initrd made by the root's own generator (mkinitramfs or dracut) with the
    verity scripts as the converter installs them."""
    need_root()
    variant = request.param
    if variant not in _INITRDS:
        _INITRDS[variant] = _build_initrd(variant, tmp_path_factory)
    return _INITRDS[variant]


def _build_initrd(variant: str, tmp_path_factory: pytest.TempPathFactory) -> VerityInitrd:
    seconds: dict[str, float] = {}
    t = time.monotonic()
    cached = agent_root.build(variant)
    version = agent_root.manifest(cached)["kernels"][0]
    out = tmp_path_factory.mktemp(f"verity-initrd-{variant}")
    with agent_root.work_copy(cached, out / "root") as root:
        t = stage(seconds, "root_copy", t)
        for dest, data, mode in verity_scripts():
            path = root / dest.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(mode)
        agent_root.install_marker(root, variant, MARKER_SCRIPT)
        (root / "etc/fstab").write_text("/dev/mapper/root / ext4 ro 0 0\n")
        agent_root.mkinitramfs(root, version, out / "initrd.img", variant)
        t = stage(seconds, f"{variant}_verity", t)
        shutil.copyfile(root / "boot" / f"vmlinuz-{version}", out / "vmlinuz")
    return VerityInitrd(out / "vmlinuz", out / "initrd.img", seconds, variant)


def boot(tmp_path: Path, name: str, firmware: Path, sim_dir: Path, initrd: VerityInitrd, disk: VerityDisk,
         cmdline: str) -> str:
    """Boot a copy of the disk with ``cmdline``; the console once the marker script finished or the VM is gone."""
    copy = tmp_path / f"{name}.raw"
    shutil.copyfile(disk.path, copy)
    config = VmConfig(name=name, state_dir=str(tmp_path / name), firmware=str(firmware), kernel=str(initrd.kernel),
                      initrd=str(initrd.initrd), cmdline=cmdline, memory_mb=1024, simulate=True,
                      disks=[Disk(str(copy), format="raw")]).validate()
    vm = Vm(config.name, config.state_dir, run)
    serial = Path(config.state_dir) / "serial.log"
    try:
        vm.start(config, simulated_amdsp=str(sim_dir))
        text = wait_until(vm, serial, re.compile(r"SNPGUARD-TEST: done|powering off|Kernel panic"))
        gone = time.monotonic() + 60
        while vm.pid() is not None and time.monotonic() < gone:
            time.sleep(0.5)
        text = serial.read_text(errors="replace")
        assert vm.pid() is None, f"the VM did not power itself off:\n{text[-3000:]}"
    finally:
        vm.remove()
    return text


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if "snpguard-verity:" in line or "SNPGUARD-TEST" in line]


def test_the_measured_root_hash_opens_a_read_only_root_with_writable_layers(
        tmp_path: Path, firmware: Path, sim_dir: Path, verity_disk: VerityDisk, verity_initrd: VerityInitrd) -> None:
    stages = dict(verity_initrd.seconds)
    t = time.monotonic()
    text = boot(tmp_path, "verity-ok", firmware, sim_dir, verity_initrd, verity_disk, verity_disk.cmdline())
    stage(stages, "boot_to_marker", t)
    seen = lines(text)
    print("\n".join(seen) + f"\nstages (s): {stages}")
    assert f"(dm-verity, root hash {verity_disk.root_hash})" in text, text[-4000:]
    assert "SNPGUARD-TEST: mount  /dev/mapper/root ext4 ro" in text, text[-4000:]
    for writable in ("/var", "/home", "/root"):
        assert re.search(rf"SNPGUARD-TEST: mount {writable} snpguard-rw tmpfs rw", text), (writable, text[-4000:])
    assert "SNPGUARD-TEST: mount /tmp tmpfs tmpfs rw" in text
    assert "SNPGUARD-TEST: mount /etc snpguard-etc overlay rw" in text
    assert f"SNPGUARD-TEST: marker {verity_disk.marker}" in text
    assert "SNPGUARD-TEST: var writable" in text and "SNPGUARD-TEST: root writable" not in text


REFUSALS = {
    # name: (cmdline arguments, the named reason on the console)
    "wrong-hash": ({"root_hash": "ab" * 32}, "does not match the measured root hash"),
    "malformed-hash": ({"root_hash": "XYZ" + "0" * 61}, f"no valid {ROOT_HASH}="),
    "no-data": ({"drop": DATA_DEVICE}, f"no valid {DATA_DEVICE}=PARTUUID="),
    "no-offset": ({"drop": HASH_OFFSET}, f"no valid {HASH_OFFSET}="),
    "no-partition": ({"partuuid": "00000000-1111-2222-3333-444444444444", "extra": (f"{WAIT}=5",)},
                     "did not appear within 5 s"),
    "bad-wait": ({"extra": (f"{WAIT}=soon",)}, f"{WAIT}= must be whole seconds"),
}


#: The open script is the same file under both generators: every refusal boots under initramfs-tools, and
#: dracut's unit wiring is booted with the refusal that reads the tree (in the pytest-dracut stage).
CASES = [("initramfs-tools", case) for case in sorted(REFUSALS)] + [
    pytest.param("dracut", "wrong-hash", marks=pytest.mark.dracut_stage)]


@pytest.mark.parametrize(("verity_initrd", "case"), CASES, indirect=["verity_initrd"])
def test_a_root_the_measured_parameters_do_not_name_is_refused_and_the_vm_powers_off(
        case: str, tmp_path: Path, firmware: Path, sim_dir: Path, verity_disk: VerityDisk,
        verity_initrd: VerityInitrd) -> None:
    arguments, reason = REFUSALS[case]
    t = time.monotonic()
    text = boot(tmp_path, f"verity-{case}", firmware, sim_dir, verity_initrd, verity_disk,
                verity_disk.cmdline(**arguments))
    stages = {}
    stage(stages, f"boot_to_refusal_{case}", t)
    seen = lines(text)
    print("\n".join(seen))
    assert any(reason in line for line in seen), text[-4000:]
    assert "snpguard-verity: stopping this boot: no root file system, no shell; powering off" in text
    assert "SNPGUARD-TEST" not in text, "the boot went on past the refusal"
