# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""image/staging.py: a staging dir written with write_manifest reads back, and every edit is refused by name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.launch import parse_launch
from ansible_collections.snpguard.cvm.plugins.module_utils.image import staging
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError


def make(directory: Path, mode: str = "luks") -> Path:
    directory.mkdir()
    (directory / staging.KERNEL).write_bytes(b"kernel" * 1000)
    (directory / staging.INITRD).write_bytes(b"initrd" * 1000)
    sealed = None
    if mode == "luks":
        (directory / staging.SEALED_KEY).write_text("c2VhbGVk\n")
        sealed = str(directory / staging.SEALED_KEY)
    staging.write_manifest(str(directory), staging.Staging(
        directory=str(directory), image="img", mode=mode, kernel_version="6.12",
        cmdline="console=ttyS0 ro" + (f" snpguard.verity.roothash={'cd' * 32}" if mode == "verity" else ""),
        firmware_sha384="ab" * 48, launch=parse_launch({"vcpus": [1, 4], "vcpu_type": "EPYC-v4"}),
        kernel_sha256=hashlib.sha256(b"kernel" * 1000).hexdigest(),
        initrd_sha256=hashlib.sha256(b"initrd" * 1000).hexdigest(), sealed_volume_key=sealed,
        verity={"root_hash": "cd" * 32} if mode == "verity" else None))
    return directory


def test_round_trip(tmp_path: Path) -> None:
    read = staging.read_staging(str(make(tmp_path / "s")))
    assert read.image == "img" and read.mode == "luks" and read.cmdline == "console=ttyS0 ro"
    assert read.launch.vcpus == [1, 4] and read.launch.vcpu_type == "EPYC-v4"
    assert read.sealed_volume_key == str(tmp_path / "s" / staging.SEALED_KEY)
    assert read.kernel == str(tmp_path / "s" / "vmlinuz")
    assert (tmp_path / "s" / "cmdline").read_text() == "console=ttyS0 ro\n"
    verity = staging.read_staging(str(make(tmp_path / "v", "verity")))
    assert verity.sealed_volume_key is None and verity.verity == {"root_hash": "cd" * 32}


def edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / staging.MANIFEST
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: (d / "initrd.img").write_bytes(b"other"), "initrd"),
    (lambda d: (d / "vmlinuz").unlink(), "kernel"),
    (lambda d: (d / "cmdline").write_text("console=ttyS0 init=/bin/sh\n"), "cmdline"),
    (lambda d: (d / "manifest.json").write_text("{"), "staging_dir"),
    (lambda d: (d / "manifest.json").unlink(), "staging_dir"),
    (lambda d: (d / "manifest.json").write_bytes(b" " * (staging.MAX_MANIFEST + 1)), "staging_dir"),
    (lambda d: edit_manifest(d, format="other/1"), "manifest.format"),
    (lambda d: edit_manifest(d, mode="plain"), "manifest.mode"),
    (lambda d: edit_manifest(d, sealed_volume_key=None), "manifest.sealed_volume_key"),
    (lambda d: edit_manifest(d, sealed_volume_key={"file": "../key"}), "manifest.sealed_volume_key"),
    (lambda d: (d / "sealed-volume-key").unlink(), "sealed_volume_key"),
    (lambda d: edit_manifest(d, firmware={"sha384": "zz"}), "manifest.firmware.sha384"),
    (lambda d: edit_manifest(d, files={"kernel": {"file": "../vmlinuz", "sha256": "00" * 32},
                                       "initrd": {"file": "initrd.img", "sha256": "00" * 32}}),
     "manifest.files.kernel.file"),
    (lambda d: edit_manifest(d, launch={"vcpus": [1], "bogus": 1}), "manifest.launch"),
    (lambda d: edit_manifest(d, verity=[1]), "manifest.verity"),
    (lambda d: edit_manifest(d, image=7), "manifest.image"),
])
def test_refusals_name_the_field(tmp_path: Path, edit: object, field: str) -> None:
    directory = make(tmp_path / "s")
    edit(directory)  # type: ignore[operator]
    with pytest.raises(SnpError) as caught:
        staging.read_staging(str(directory))
    assert caught.value.field == field, caught.value.message


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: edit_manifest(d, verity=None), "manifest.verity"),
    (lambda d: edit_manifest(d, verity={"root_hash": "cd"}), "manifest.verity.root_hash"),
    (lambda d: edit_manifest(d, verity={"root_hash": "ef" * 32}), "cmdline"),  # not the hash the cmdline carries
])
def test_a_verity_staging_dir_must_carry_its_root_hash_on_the_cmdline(tmp_path: Path, edit: object,
                                                                      field: str) -> None:
    directory = make(tmp_path / "v", "verity")
    edit(directory)  # type: ignore[operator]
    with pytest.raises(SnpError) as caught:
        staging.read_staging(str(directory))
    assert caught.value.field == field, caught.value.message


def test_publish_dir_replaces_in_one_rename(tmp_path: Path) -> None:
    target = tmp_path / "out.staging"
    for content in ("first", "second"):
        tmp = Path(staging.new_dir_beside(str(target)))
        (tmp / "x").write_text(content)
        staging.publish_dir(str(tmp), str(target))
        assert (target / "x").read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.staging"]
    leftover = Path(staging.new_dir_beside(str(target)))
    staging.discard_dir(str(leftover))
    assert not leftover.exists()
