# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Images the conversion cannot convert faithfully are refused by name, and leave nothing behind.

Each case is a small real disk (64 MiB qcow2) made here in one libguestfs appliance: a root
that libguestfs' own inspection takes for a Linux root (``/etc``, ``/bin`` -> ``usr/bin``,
``/etc/fstab``, an os-release) on a layout the conversion refuses.  Each is then given to
``convert`` as a stock image: the conversion makes its new disk, inspects the source in its one
appliance, must refuse naming the field, and must remove the new disk and the staging dir.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.image.appliance import appliance, kernel_devices, shell
from ansible_collections.snpguard.cvm.plugins.module_utils.image.convert import convert
from ansible_collections.snpguard.cvm.plugins.module_utils.image.cvm_image import options_from
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError

os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")

SIZE = 64 << 20
LVM_TYPE = "E6D6D379-F507-44C2-A23C-238F2A3DF928"

#: root_tree MOUNTPOINT OS_ID FSTAB: the least libguestfs' inspection takes for a Linux root.
ROOT_TREE = r"""
root_tree() {
  mkdir -p "$1/etc" "$1/usr/bin"
  ln -s usr/bin "$1/bin"
  printf 'NAME="%s"\nID=%s\nVERSION_ID="13"\nVERSION_CODENAME=trixie\n' "$2" "$2" > "$1/etc/os-release"
  printf '%b' "$3" > "$1/etc/fstab"
}
uuid() { blkid -o value -s UUID "$1"; }
# single_root LABEL FS OS_ID: DISK with one partition holding a root of file system FS
single_root() {
  printf 'label: %s\n,\n' "$1" | sfdisk -q "$DISK"; udevadm settle
  "mkfs.$2" -q "${DISK}1"; mount "${DISK}1" /tmp/r
  root_tree /tmp/r "$3" "UUID=$(uuid "${DISK}1") / $2 defaults 0 1\n"; umount /tmp/r
}
mkdir -p /tmp/r
"""

#: case -> (how the disk DISK is made, the field the refusal names, words of its message)
CASES = {
    "blank": ("true", "image", "no operating system"),
    "two_roots": ("printf 'label: gpt\\n,28M\\n,\\n' | sfdisk -q $DISK; udevadm settle\n"
                  "for n in 1 2; do mkfs.ext4 -q ${DISK}$n; mount ${DISK}$n /tmp/r\n"
                  "  root_tree /tmp/r debian \"UUID=$(uuid ${DISK}$n) / ext4 defaults 0 1\\n\"; umount /tmp/r; done",
                  "image", "more than one operating system"),
    "lvm_root": (f"printf 'label: gpt\\n,,{LVM_TYPE}\\n' | sfdisk -q $DISK; udevadm settle\n"
                 "lvm pvcreate -ff -y ${DISK}1; lvm vgcreate snpguardtest ${DISK}1\n"
                 "lvm lvcreate -y -l 100%FREE -n root snpguardtest; udevadm settle\n"
                 "mkfs.ext4 -q /dev/snpguardtest/root; mount /dev/snpguardtest/root /tmp/r\n"
                 "root_tree /tmp/r debian '/dev/snpguardtest/root / ext4 defaults 0 1\\n'; umount /tmp/r\n"
                 "lvm vgchange -an snpguardtest",
                 "image.root", "LVM"),
    "ext3_root": ("single_root gpt ext3 debian", "image.root", "only ext4"),
    "mbr_disk": ("single_root dos ext4 debian", "image.partition_table", "only GPT"),
    "unknown_distro": ("single_root gpt ext4 arch", "image.distro", "archlinux"),
    "separate_var": ("printf 'label: gpt\\n,28M\\n,\\n' | sfdisk -q $DISK; udevadm settle\n"
                     "mkfs.ext4 -q ${DISK}1; mkfs.ext4 -q ${DISK}2; mount ${DISK}1 /tmp/r\n"
                     "root_tree /tmp/r debian \"UUID=$(uuid ${DISK}1) / ext4 defaults 0 1\\n"
                     "UUID=$(uuid ${DISK}2) /var ext4 defaults 0 2\\n\"; umount /tmp/r",
                     "image.fstab", "/var"),
}


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case's disk, made in one appliance (each drive found by its label)."""
    pytest.importorskip("guestfs")
    if os.geteuid() != 0:
        pytest.skip("libguestfs' appliance needs root here")
    directory = tmp_path_factory.mktemp("refused-images")
    paths = {name: directory / f"{name}.qcow2" for name in CASES}
    for path in paths.values():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(SIZE)], check=True)
    labels = ["".join(c for c in name if c.isalpha()) for name in paths]  # libguestfs takes letters only
    with appliance([(str(path), "qcow2", False, label) for path, label in zip(paths.values(), labels, strict=True)],
                   force_tcg=True) as handle:
        devices = kernel_devices(handle, *labels)
        for (name, (script, _field, _words)), device in zip(CASES.items(), devices, strict=True):
            shell(handle, f"make the {name} disk", ROOT_TREE + f"DISK={device}\n" + script)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_an_image_the_conversion_cannot_handle_is_refused_by_name(
        case: str, disks: dict[str, Path], convert_params: dict, tmp_path: Path) -> None:
    _script, field, words = CASES[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SnpError) as refused:
        convert(options_from({**convert_params, "source": str(disks[case]), "force_tcg": True}), run)
    assert (refused.value.field, words in str(refused.value)) == (field, True), str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no new disk, no staging dir, no temp names
