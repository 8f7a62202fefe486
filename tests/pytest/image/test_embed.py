# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``cvm_embed`` / ``snpguard image embed``: a launch bundle into the image's LAUNCH_ARTIFACTS partition.

The image is a small qcow2 made here (GPT with one ext4 partition, through libguestfs).
What embed wrote is inspected with host tools that share no code with it: the image is
converted to raw, ``sfdisk --json`` reads the partition table, and ``debugfs`` /
``dumpe2fs`` read the ext4 file system of the extracted partition.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from ansible_run import registered_task, run_playbook
from servers import snpguard_cmd, snpguard_env

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.archive import build_launch_bundle, read_bundle
from ansible_collections.snpguard.cvm.plugins.module_utils.image import embed as embed_mod
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError

os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")

BASE_SIZE = 64 << 20
SMALL = "32M"  # partitions made by the tests other than the default-size one


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 MiB qcow2: GPT, one ext4 partition (label root) holding /etc/hostname."""
    import guestfs

    path = tmp_path_factory.mktemp("embed-base") / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(BASE_SIZE)], check=True)
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(path), format="qcow2", readonly=False)
    g.launch()
    g.part_init("/dev/sda", "gpt")
    g.part_add("/dev/sda", "p", 2048, 2048 + (40 << 20) // 512 - 1)
    g.part_set_name("/dev/sda", 1, "root")
    g.mkfs("ext4", "/dev/sda1", label="root")
    g.mount("/dev/sda1", "/")
    g.mkdir("/etc")
    g.write("/etc/hostname", b"embed-test\n")
    g.umount_all()
    g.shutdown()
    g.close()
    return path


@pytest.fixture
def image(base_image: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "guest.qcow2"
    shutil.copyfile(base_image, copy)
    return copy


def make_bundle(directory: Path, tag: str) -> Path:
    """A valid launch bundle whose contents differ by ``tag``."""
    seed = hashlib.sha256(tag.encode()).digest()
    data = build_launch_bundle(kernel=seed * 8192 + b"kernel", initrd=seed * 16384 + b"initrd",
                               cmdline=f"console=ttyS0 snpguard.test={tag}", firmware_sha384="ab" * 48,
                               launch={"vcpus": [1, 2], "vcpu_type": "EPYC-v4", "policy": "0x30000"})
    path = directory / f"{tag}.bundle.tar.gz"
    path.write_bytes(data)
    return path


@dataclass
class Inspection:
    partitions: list[dict]
    label: str
    link: str | None
    slots: dict[str, dict[str, bytes]]

    def named(self, name: str) -> dict:
        return next(p for p in self.partitions if p.get("name") == name)


def _debugfs(part: Path, request: str) -> bytes:
    proc = subprocess.run(["debugfs", "-R", request, str(part)], capture_output=True, timeout=120, check=True)
    return proc.stdout


def inspect(image: Path, work: Path) -> Inspection:
    raw = work / "inspect.raw"
    raw.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)], check=True, timeout=300)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    partitions = table["partitions"]
    found = next((p for p in partitions if p.get("name") == embed_mod.LABEL), None)
    if found is None:
        raw.unlink()
        return Inspection(partitions, "", None, {})
    part = work / "inspect.part"
    part.unlink(missing_ok=True)
    subprocess.run(["dd", f"if={raw}", f"of={part}", "bs=1M", "iflag=skip_bytes,count_bytes", "conv=sparse",
                    f"skip={found['start'] * 512}", f"count={found['size'] * 512}", "status=none"], check=True)
    raw.unlink()
    header = subprocess.run(["dumpe2fs", "-h", str(part)], capture_output=True, text=True, check=True).stdout
    label = re.search(r"^Filesystem volume name:\s+(\S*)", header, re.M).group(1)
    stat = _debugfs(part, "stat /artifacts").decode(errors="replace")
    match = re.search(r'Fast link dest: "([^"]*)"', stat)
    slots: dict[str, dict[str, bytes]] = {}
    for slot in embed_mod.SLOTS:
        listing = _debugfs(part, f"ls -p /{slot}").decode(errors="replace")
        names = [line.split("/")[5] for line in listing.splitlines() if line.count("/") >= 6]
        names = [n for n in names if n not in (".", "..")]
        if names:
            slots[slot] = {n: _debugfs(part, f"cat /{slot}/{n}") for n in names}
    part.unlink()
    return Inspection(partitions, label, match.group(1) if match else None, slots)


def bundle_files(path: Path) -> dict[str, bytes]:
    return read_bundle(path.read_bytes())


def embed(image: Path, bundle: Path, **kwargs: object) -> dict:
    return embed_mod.embed(str(image), str(bundle), runner=run, **kwargs)


def slot_content(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k != embed_mod.SLOT_MANIFEST}


def test_embed_creates_the_partition_then_switches_a_b(image: Path, tmp_path: Path) -> None:
    first_bundle, second_bundle, third_bundle = (make_bundle(tmp_path, t) for t in ("one", "two", "three"))
    size_before = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image)], capture_output=True,
                                            text=True, check=True).stdout)["virtual-size"]

    first = embed(image, first_bundle)
    assert first["changed"] is True and first["action"] == "created" and first["slot"] == "a"
    assert first["partition"]["size"] == 512 << 20 and first["partition"]["number"] == 2
    assert size_before + (512 << 20) <= size_before + first["grown_by"] <= size_before + (514 << 20)
    assert first["diff"] == {"before": {"active": None, "bundle_digest": None},
                             "after": {"active": "a", "bundle_digest": first["bundle_digest"]}}
    seen = inspect(image, tmp_path)
    part = seen.named(embed_mod.LABEL)
    assert part["size"] * 512 == 512 << 20 and part["type"] == embed_mod.LINUX_FS_GUID
    assert seen.named("root")["start"] == 2048  # the existing partition is untouched
    assert seen.label == embed_mod.LABEL and seen.link == "a"
    assert slot_content(seen.slots["a"]) == bundle_files(first_bundle) and "b" not in seen.slots
    recorded = json.loads(seen.slots["a"][embed_mod.SLOT_MANIFEST])
    assert recorded["digest"] == first["bundle_digest"]
    assert recorded["files"] == {k: hashlib.sha256(v).hexdigest() for k, v in bundle_files(first_bundle).items()}

    digest = sha256(image)
    again = embed(image, first_bundle)
    assert again["changed"] is False and again["action"] == "unchanged" and again["slot"] == "a"
    assert sha256(image) == digest  # a no-op does not even touch the file system

    planned = embed(image, second_bundle, check_mode=True)
    assert planned["changed"] is True and planned["slot"] == "b" and "would" in planned["msg"]
    assert sha256(image) == digest

    second = embed(image, second_bundle)
    assert second["changed"] is True and second["action"] == "switched" and second["slot"] == "b"
    assert second["previous_slot"] == "a" and second["previous_bundle_digest"] == first["bundle_digest"]
    assert second["diff"]["before"]["bundle_digest"] == first["bundle_digest"]
    assert second["diff"]["after"] == {"active": "b", "bundle_digest": second["bundle_digest"]}
    third = embed(image, third_bundle)
    assert third["slot"] == "a" and third["previous_slot"] == "b"
    seen = inspect(image, tmp_path)
    assert seen.link == "a"
    assert slot_content(seen.slots["a"]) == bundle_files(third_bundle)
    assert slot_content(seen.slots["b"]) == bundle_files(second_bundle)
    assert len([p for p in seen.partitions if p.get("name") == embed_mod.LABEL]) == 1


def test_refusals_leave_the_image_alone(image: Path, tmp_path: Path) -> None:
    digest = sha256(image)
    good = make_bundle(tmp_path, "good")
    corrupt = tmp_path / "corrupt.tar.gz"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    for bad, field in ((corrupt, "bundle"), (tmp_path / "missing.tar.gz", "bundle")):
        with pytest.raises(SnpError) as caught:
            embed(image, bad)
        assert caught.value.field == field
    not_a_bundle = tmp_path / "plain.tar.gz"
    not_a_bundle.write_bytes(b"\x1f\x8b" + b"\0" * 100)
    with pytest.raises(SnpError) as caught:
        embed(image, not_a_bundle)
    assert caught.value.field == "bundle"
    for size in ("1M", "lots", "100.5M", "513K"):
        with pytest.raises(SnpError) as caught:
            embed(image, good, size=size)
        assert caught.value.field == "size"
    with pytest.raises(SnpError) as caught:
        embed(image, good, image_format="vmdk")
    assert caught.value.field == "format"
    mbr = tmp_path / "mbr.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(mbr), "64M"], check=True)
    subprocess.run(["sfdisk", "-q", str(mbr)], input="label: dos\n,32M,L\n", text=True, check=True)
    with pytest.raises(SnpError) as caught:
        embed(mbr, good)
    assert caught.value.field == "image" and "GPT" in caught.value.message
    assert sha256(image) == digest


def test_check_mode_on_a_fresh_image_changes_nothing(image: Path, tmp_path: Path) -> None:
    digest = sha256(image)
    planned = embed(image, make_bundle(tmp_path, "plan"), size=SMALL, check_mode=True)
    assert planned["changed"] is True and planned["action"] == "created" and planned["slot"] == "a"
    assert planned["grown_by"] >= 32 << 20 and "would grow" in planned["msg"]
    assert sha256(image) == digest and not list(tmp_path.glob(".snpguard-embed-*"))


def test_cli_and_module(image: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "cli")
    argv = snpguard_cmd("image", "embed", str(image), "--bundle", str(bundle), "--size", SMALL, "--json")
    env = dict(snpguard_env(), LIBGUESTFS_BACKEND="direct", LIBGUESTFS_BACKEND_SETTINGS="force_tcg")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    created = json.loads(done.stdout)
    assert created["action"] == "created" and created["partition"]["size"] == 32 << 20
    bad = subprocess.run(snpguard_cmd("image", "embed", str(image), "--bundle", str(tmp_path / "nope"), "--json"),
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert bad.returncode in (2, 3) and json.loads(bad.stdout)["error"]["field"] == "bundle"

    other = make_bundle(tmp_path, "module")
    args = {"image": str(image), "bundle": str(other)}
    env_task = {"environment": {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}}
    results = run_playbook(tmp_path, [
        registered_task("snpguard.cvm.cvm_embed", "planned", args, check_mode=True, **env_task),
        registered_task("snpguard.cvm.cvm_embed", "switched", args, diff=True, **env_task),
        registered_task("snpguard.cvm.cvm_embed", "again", args, **env_task),
        registered_task("snpguard.cvm.cvm_embed", "corrupt", {"image": str(image), "bundle": str(image)},
                        **env_task),
    ])
    assert results["planned"]["changed"] is True and results["planned"]["slot"] == "b", results["planned"]
    switched = results["switched"]
    assert switched["changed"] is True and switched["slot"] == "b" and switched["previous_slot"] == "a"
    assert switched["diff"]["before"]["bundle_digest"] == created["bundle_digest"]
    assert results["again"]["changed"] is False and results["again"]["slot"] == "b"
    assert results["corrupt"]["failed"] is True and results["corrupt"]["field"] == "bundle"
