# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``mode: verity``: the stock Debian 13 image as convert.yml converted it, inspected, and a flipped block booted.

The session's pipeline (conftest.py) converted the fixture with ``mode: verity``: the root copied
into a file system of the stock size, a dm-verity hash tree appended to the partition, the root
hash on the measured command line.  ``veritysetup`` checks the superblock and the whole tree
against the staged root hash; libguestfs reads the fstab and the initrd's scripts and tools, and
checks that no SSH host keys were copied.  A copy with one byte flipped in a data block of
/usr/sbin/sshd then boots under a simulated launch: the kernel reports the block corrupted and
sshd cannot start.  (The intact image boots in test_pipeline.py, where attest.yml verifies its boot
report and pins its host key; ``check_boot_report`` here verifies that report with the CLI too.)
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conversions import console, need_tools, wait_for
from pipeline import VERITY, Pipeline
from servers import stage

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.image import staging as stg
from ansible_collections.snpguard.cvm.plugins.module_utils.image.appliance import shell
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.config import Disk, VmConfig
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.vm import Vm

pytestmark = pytest.mark.slow
NAME = VERITY
FLIPPED_FILE = "/usr/sbin/sshd"


@dataclass
class Converted:
    output: Path
    staging: Path
    result: dict[str, Any]
    seconds: float


@pytest.fixture(scope="module")
def converted(pipeline: Pipeline) -> Converted:
    """The pipeline's verity image; ``result`` holds what the staging manifest records of it."""
    staged = stg.read_staging(str(pipeline.staging(VERITY)))
    return Converted(pipeline.image_path(VERITY), pipeline.staging(VERITY),
                     {"verity": staged.verity, "kernel_version": staged.kernel_version, "cmdline": staged.cmdline},
                     pipeline.times.get("convert_both", 0.0))


@dataclass
class Inspected:
    dump: str
    verify_rc: int
    flipped_verify_rc: int
    fstab: str
    ssh_host_keys: list[str]
    initrd_files: set[str]
    flipped: Path
    flipped_block: int


@pytest.fixture(scope="module")
def inspected(converted: Converted, tmp_path_factory: pytest.TempPathFactory) -> Inspected:
    """The converted image read-only, then a second overlay with one byte of sshd's first block flipped.

    The hash tree is checked on this machine (``veritysetup verify`` is user space, no device mapper): the
    partition copied out of the qcow2 by qemu-img reads and hashes in seconds, where the appliance under TCG
    took minutes for the same 3 GiB."""
    guestfs = need_tools()
    verity = converted.result["verity"]
    number = verity["device_partition"]
    device = f"/dev/sda{number}"
    work = tmp_path_factory.mktemp("flipped")
    flipped = work / "flipped.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(converted.output), "-F", "qcow2",
                    str(flipped)], check=True)
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.add_drive_opts(str(flipped), format="qcow2", readonly=False, label="image")
        g.launch()
        part = next(p for p in g.part_list("/dev/sda") if p["part_num"] == number)
        # libguestfs' name for API calls; a shell gets the kernel's through the label (they differ at times).
        shell_device = f"/dev/disk/guestfs/image{number}"
        g.mount_ro(device, "/")  # the file system starts at the partition's first byte
        version = converted.result["kernel_version"]
        facts = (g.cat("/etc/fstab"), g.glob_expand("/etc/ssh/ssh_host_*"),
                 set(g.command_lines(["lsinitramfs", f"/boot/initrd.img-{version}"])))
        block = int(shell(g, "bmap", f"debugfs -R 'bmap {FLIPPED_FILE} 0' {shell_device} 2>/dev/null").split()[-1])
        g.umount_all()
        byte = g.pread_device(device, 1, block * 4096 + 100)
        g.pwrite_device(device, bytes([byte[0] ^ 0xFF]), block * 4096 + 100)
        g.shutdown()
    finally:
        g.close()
    offset = f"--hash-offset={verity['hash_offset']}"

    def verify(image: Path) -> tuple[str, int]:
        raw = work / "root-partition.raw"
        source = {"driver": "raw", "offset": part["part_start"], "size": part["part_size"],
                  "file": {"driver": "qcow2", "file": {"driver": "file", "filename": str(image)}}}
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", "json:" + json.dumps(source), str(raw)], check=True)
        try:
            dump = subprocess.run(["veritysetup", "dump", offset, str(raw)], capture_output=True, text=True,
                                  check=True).stdout
            return dump, subprocess.run(["veritysetup", "verify", offset, str(raw), str(raw), verity["root_hash"]],
                                        capture_output=True, check=False).returncode
        finally:
            raw.unlink()

    dump, verify_rc = verify(converted.output)
    flipped_rc = verify(flipped)[1]
    return Inspected(dump, verify_rc, flipped_rc, facts[0], facts[1], facts[2], flipped, block)


def test_the_root_hash_is_on_the_measured_cmdline(converted: Converted) -> None:
    verity = converted.result["verity"]
    staged = stg.read_staging(str(converted.staging))  # checks the cmdline carries the manifest's root hash
    assert staged.mode == "verity" and staged.sealed_volume_key is None
    assert staged.verity["root_hash"] == verity["root_hash"]
    args = staged.cmdline.split()
    assert f"snpguard.verity.roothash={verity['root_hash']}" in args
    assert f"snpguard.verity.data=PARTUUID={verity['partuuid']}" in args
    assert f"snpguard.verity.hashoffset={verity['hash_offset']}" in args
    assert args[:2] == ["root=/dev/mapper/root", "ro"] and "ip=dhcp" not in args
    assert sorted(p.name for p in converted.staging.iterdir()) == sorted(
        [stg.MANIFEST, stg.KERNEL, stg.INITRD, stg.CMDLINE])
    print(f"\nverity conversion: {converted.seconds} s; {verity['data_blocks']} data blocks, "
          f"hash tree at {verity['hash_offset']} bytes")


def test_the_superblock_and_the_whole_tree_match_the_staged_root_hash(converted: Converted,
                                                                      inspected: Inspected) -> None:
    verity = converted.result["verity"]
    dump = inspected.dump
    assert re.search(r"^Hash type:\s+1$", dump, re.M), dump
    assert re.search(rf"^Data blocks:\s+{verity['data_blocks']}$", dump, re.M), dump
    assert re.search(r"^Data block size:\s+4096", dump, re.M), dump
    assert re.search(r"^Hash algorithm:\s+sha256$", dump, re.M), dump
    assert re.search(rf"^Salt:\s+{verity['salt']}$", dump, re.M), dump
    assert inspected.verify_rc == 0, "veritysetup verify refused the image as converted"
    assert inspected.flipped_verify_rc != 0, "veritysetup verify passed a root with a flipped byte"


def test_the_root_is_mounted_read_only_through_the_initrd_scripts(inspected: Inspected) -> None:
    root_lines = [line for line in inspected.fstab.splitlines() if line.split()[1:2] == ["/"]]
    assert root_lines == ["/dev/mapper/root / ext4 ro 0 0"]
    files = inspected.initrd_files
    for needed in ("scripts/local-top/snpguard-verity", "scripts/init-bottom/snpguard-verity",
                   "scripts/panic/snpguard-agent", "usr/sbin/veritysetup", "usr/lib/snpguard/bin/cp",
                   "usr/lib/snpguard/bin/mount", "dm-verity.ko", "overlay.ko"):
        assert any(needed in name for name in files), f"{needed} not in the initrd"
    assert not any("snpguard/agent/" in name for name in files), "no key-release agent in a verity initrd"
    assert inspected.ssh_host_keys == []


def test_a_flipped_block_fails_to_read_and_sshd_does_not_start(converted: Converted, inspected: Inspected,
                                                               artifacts: Path, sim_dir: Path, tmp_path: Path) -> None:
    staged = stg.read_staging(str(converted.staging))
    stages: dict[str, float] = {}
    config = VmConfig(name="verity-flipped", state_dir=str(tmp_path / "flipped"),
                      firmware=str(artifacts / "OVMF.amdsev.fd"), kernel=staged.kernel, initrd=staged.initrd,
                      cmdline=staged.cmdline, memory_mb=1536, simulate=True, network="user",
                      disks=[Disk(str(inspected.flipped), format="qcow2")]).validate()
    vm = Vm(config.name, config.state_dir, run)
    # sshd's unit failing is decisive: its restarts keep multi-user.target from being reached (and printed).
    done = re.compile(r"Failed to start .*ssh\.service|Reached target multi-user|Multi-User System|stopping this boot"
                      r"|powering off|Kernel panic")
    t = time.monotonic()
    try:
        assert vm.start(config, simulated_amdsp=str(sim_dir)).changed
        flipped = wait_for(vm, Path(config.state_dir) / "serial.log", done)
        time.sleep(10)  # a restart of sshd (it must fail again) or units beside the target report a moment later
        flipped = console(Path(config.state_dir) / "serial.log")
        stage(stages, "boot_flipped", t)
    finally:
        vm.remove()
    wanted = [line for line in flipped.splitlines() if "verity" in line.lower() or "ssh" in line.lower()]
    print("\n".join(wanted)[-3000:] + f"\nstages (s): {stages}")
    assert "opened as /dev/mapper/root (dm-verity" in flipped, flipped[-4000:]
    assert re.search(r"verity.*data block \d+ is corrupted", flipped), flipped[-4000:]
    assert not re.search(r"Started ssh\.service", flipped), "sshd ran from a corrupted block"


def check_boot_report(text: str, staged: stg.Staging, artifacts: Path, sim, tmp_path: Path) -> None:
    """The console's boot report: a genuine (simulated) report of this launch, binding the key it names."""
    import base64

    from servers import snpguard_cmd, snpguard_env

    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.binding import host_key_binding
    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.crypto_guard import serialization

    key = re.search(r"snpguard-boot-report: SSH host key (SHA256:\S+) \((ssh-ed25519) (\S+)\) bound into", text)
    report = re.search(r"snpguard-boot-report: report (\S+)", text)
    assert key and report, "no boot report on the console:\n" + text[-4000:]
    blob = base64.b64decode(key.group(3))
    (tmp_path / "boot-report.bin").write_bytes(base64.b64decode(report.group(1)))
    for name in ("vcek", "ask", "ark"):
        (tmp_path / f"{name}.pem").write_bytes(getattr(sim, name).public_bytes(serialization.Encoding.PEM))
    env = snpguard_env()
    measured = subprocess.run(snpguard_cmd("measure", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4",
                                           "--ovmf", str(artifacts / "OVMF.amdsev.fd"), "--kernel", staged.kernel,
                                           "--initrd", staged.initrd, "--append", staged.cmdline),
                              env=env, capture_output=True, text=True, timeout=300, check=True).stdout.strip()
    argv = ["report", "verify", "--report", str(tmp_path / "boot-report.bin"), "--offline",
            "--simulated-root", str(tmp_path / "ark.pem"), "--ark", str(tmp_path / "ark.pem"),
            "--ask", str(tmp_path / "ask.pem"), "--vcek", str(tmp_path / "vcek.pem"), "--measurement", measured]
    good = subprocess.run(snpguard_cmd(*argv, "--report-data", host_key_binding(blob).hex()), env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert good.returncode == 0, good.stdout + good.stderr
    other = host_key_binding(blob[:-1] + bytes([blob[-1] ^ 1])).hex()  # another key: the report must not vouch
    refused = subprocess.run(snpguard_cmd(*argv, "--report-data", other), env=env, capture_output=True, text=True,
                             timeout=120, check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    print(f"boot report: {key.group(1)} bound, measurement {measured[:16]}…, verified")
