# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The stock cloud-image fixture is what it claims: inspected with libguestfs, and booted.

Each variant is inspected in one libguestfs appliance (TCG, read-only) and booted once with
plain OVMF.fd under QEMU/TCG on a copy-on-write overlay (the cached image stays pristine),
waiting for systemd's multi-user target on the serial console.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import CloudImage

BOOT_DEADLINE = 900.0  # an upper bound under TCG on a loaded 2-core machine (it takes 2-3 min)
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"


def _guestfs():
    try:
        import guestfs
    except ImportError as exc:
        message = f"python guestfs bindings not importable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return guestfs


@pytest.fixture(scope="module", params=["initramfs-tools", pytest.param("dracut", marks=pytest.mark.dracut_stage)])
def image(request: pytest.FixtureRequest) -> CloudImage:
    name = "cloud_image" if request.param == "initramfs-tools" else "cloud_image_dracut"
    return request.getfixturevalue(name)


@pytest.fixture(scope="module")
def inspected(image: CloudImage) -> Iterator[object]:
    """A read-only libguestfs handle on the image, root on / and the ESP on /boot/efi."""
    guestfs = _guestfs()
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    handle = guestfs.GuestFS(python_return_dict=True)
    handle.add_drive_opts(str(image.path), format="qcow2", readonly=True)
    handle.launch()
    handle.mount_ro("/dev/sda1", "/")
    handle.mount_ro("/dev/sda15", "/boot/efi")
    try:
        yield handle
    finally:
        handle.close()


def test_gpt_layout_matches_the_manifest(inspected, image: CloudImage) -> None:
    g = inspected
    disk = image.manifest["disk"]
    assert g.part_get_parttype("/dev/sda") == "gpt"
    assert g.blockdev_getsz("/dev/sda") == disk["sectors"]
    table = {p["part_num"]: p for p in g.part_list("/dev/sda")}
    assert sorted(table) == [1, 14, 15]
    for row in disk["partitions"]:
        number = row["number"]
        assert table[number]["part_start"] == row["start"] * 512
        assert table[number]["part_end"] == row["end"] * 512 + 511
        assert g.part_get_gpt_type("/dev/sda", number) == row["type_guid"]
        assert g.part_get_gpt_guid("/dev/sda", number).lower() == row["partuuid"]
        assert g.part_get_name("/dev/sda", number) == ""
    assert g.part_get_gpt_type("/dev/sda", 15) == ESP_TYPE
    assert g.part_get_gpt_type("/dev/sda", 1) == ROOT_TYPE
    assert 120 << 20 <= table[15]["part_size"] <= 128 << 20


def test_file_systems(inspected, image: CloudImage) -> None:
    g = inspected
    assert g.vfs_type("/dev/sda1") == "ext4"
    assert g.vfs_uuid("/dev/sda1") == image.manifest["root_fs_uuid"]
    assert g.vfs_type("/dev/sda15") == "vfat"
    assert g.vfs_uuid("/dev/sda15") == image.manifest["esp_fs_uuid"]
    assert g.vfs_label("/dev/sda1") == ""
    fstab = g.cat("/etc/fstab")
    assert f"UUID={image.manifest['root_fs_uuid']} / ext4" in fstab
    assert f"UUID={image.manifest['esp_fs_uuid']} /boot/efi vfat" in fstab


def test_esp_holds_grub_on_the_removable_path(inspected, image: CloudImage) -> None:
    g = inspected
    assert g.is_file("/boot/efi/EFI/BOOT/BOOTX64.EFI")
    assert g.pread("/boot/efi/EFI/BOOT/BOOTX64.EFI", 2, 0) == b"MZ"
    stub = g.cat("/boot/efi/EFI/BOOT/grub.cfg")
    assert f"search.fs_uuid {image.manifest['root_fs_uuid']} root" in stub
    assert "configfile $prefix/grub.cfg" in stub
    assert g.is_file("/boot/grub/x86_64-efi/linux.mod")
    grub_cfg = g.cat("/boot/grub/grub.cfg")
    assert image.manifest["cmdline"] in grub_cfg
    assert f"root=UUID={image.manifest['root_fs_uuid']} ro" in image.manifest["cmdline"]
    assert "console=ttyS0" in image.manifest["cmdline"]


def test_kernels_and_initrds(inspected, image: CloudImage) -> None:
    g = inspected
    kernels = image.manifest["kernels"]
    assert kernels
    on_disk = sorted(name for name in g.ls("/boot") if name.startswith("vmlinuz-"))
    assert on_disk == sorted(Path(k["vmlinuz"]).name for k in kernels)
    for kernel in kernels:
        assert g.is_file(kernel["vmlinuz"])
        assert g.is_file(kernel["initrd"])
        assert g.filesize(kernel["initrd"]) == kernel["initrd_bytes"] > 1 << 20
        assert g.filesize(kernel["vmlinuz"]) == kernel["vmlinuz_bytes"]
        assert f"linux\t/boot/vmlinuz-{kernel['version']}" in g.cat("/boot/grub/grub.cfg")


def _dpkg_installed(g) -> dict[str, str]:
    installed: dict[str, str] = {}
    for stanza in g.cat("/var/lib/dpkg/status").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.MULTILINE))
        if fields.get("Status", "").endswith(" installed"):
            installed[fields["Package"]] = fields["Version"]
    return installed


def test_packages_match_the_manifest(inspected, image: CloudImage) -> None:
    installed = _dpkg_installed(inspected)
    assert installed == image.manifest["packages"]
    for name in ("openssh-server", "cloud-init", "grub-efi-amd64", "linux-image-amd64", "systemd-sysv", "python3"):
        assert name in installed, name
    for name in ("cryptsetup", "cryptsetup-bin", "cryptsetup-initramfs"):
        assert name not in installed, name
    assert not inspected.exists("/usr/sbin/cryptsetup")
    generator, other = ("dracut", "initramfs-tools") if image.variant == "dracut" else ("initramfs-tools", "dracut")
    assert generator in installed
    assert other not in installed


def test_first_boot_state_is_left_to_first_boot(inspected) -> None:
    g = inspected
    assert g.glob_expand("/etc/ssh/ssh_host_*") == []
    assert g.cat("/etc/machine-id") == ""
    assert "datasource_list: [ NoCloud, None ]" in g.cat("/etc/cloud/cloud.cfg.d/99_snpguard_fixture.cfg")


def test_manifest_describes_the_image_file(image: CloudImage) -> None:
    manifest = image.manifest
    digest = hashlib.sha256()
    with open(image.path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == manifest["image_sha256"]
    assert image.path.stat().st_size == manifest["image_bytes"]
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image.path)], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == manifest["virtual_size"] == manifest["disk"]["sectors"] * 512
    assert manifest["schema"] == 1
    assert manifest["python"].startswith("3.")
    assert manifest["debian_version"].startswith("13")


@pytest.mark.slow
def test_boots_to_multi_user_with_plain_ovmf(image: CloudImage, artifacts: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.path), str(overlay)],
                   check=True)
    console = tmp_path / "serial.log"
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-cpu", "max,la57=off", "-smp", "2", "-m", "1024",
        "-bios", str(artifacts / "OVMF.fd"),
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        "-netdev", "user,id=net0,restrict=on", "-device", "virtio-net-pci,netdev=net0",
        "-serial", f"file:{console}", "-display", "none", "-monitor", "none", "-no-reboot",
    ]
    before = image.path.stat().st_mtime_ns
    started = time.monotonic()
    qemu = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    reached = re.compile(r"Reached target .*multi-user\.target")
    text = ""
    try:
        while time.monotonic() - started < BOOT_DEADLINE:
            text = console.read_text(errors="replace") if console.exists() else ""
            if reached.search(text):
                break
            if qemu.poll() is not None:
                pytest.fail(f"QEMU exited ({qemu.returncode}) during boot: {qemu.stdout.read()!r}\n{text[-3000:]}")
            time.sleep(2)
        else:
            pytest.fail(f"no multi-user.target within {BOOT_DEADLINE:.0f} s; console tail:\n{text[-3000:]}")
        seconds = time.monotonic() - started
        print(f"{image.variant}: multi-user.target after {seconds:.0f} s under TCG")
    finally:
        qemu.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            qemu.wait(timeout=15)
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
    assert f"root=UUID={image.manifest['root_fs_uuid']}" in text  # the kernel got GRUB's command line
    assert "EXT4-fs (vda1): mounted filesystem" in text
    assert image.path.stat().st_mtime_ns == before
