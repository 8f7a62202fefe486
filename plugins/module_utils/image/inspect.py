# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""What a stock image is: distribution, partitions, root file system, kernels and their command line.

Conversion refuses what it cannot convert faithfully, naming it, before it writes
anything: an unknown distribution, an LVM or multi-device root, a root that is not
ext4, a kernel built without SEV-SNP guest support.  The parsers here take text (an
os-release, a kernel config, /etc/default/grub) and never execute it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from ..snp.errors import SnpError
from .appliance import call

SUPPORTED_DISTROS = ("debian", "ubuntu")
#: Kernel options a SEV-SNP guest kernel needs: memory encryption itself, and the guest
#: driver behind /dev/sev-guest and configfs-tsm reports.
SNP_GUEST_OPTIONS = (("CONFIG_AMD_MEM_ENCRYPT", ("y",)), ("CONFIG_SEV_GUEST", ("y", "m")))
#: ...and what the confidential root needs in the initrd.
LUKS_OPTIONS = (("CONFIG_DM_CRYPT", ("y", "m")),)
VERITY_OPTIONS = (("CONFIG_DM_VERITY", ("y", "m")), ("CONFIG_OVERLAY_FS", ("y", "m")))


@dataclass
class Kernel:
    version: str
    vmlinuz: str  # path inside the image
    initrd: str | None
    config: dict[str, str] = field(default_factory=dict)

    def missing(self, options: tuple[tuple[str, tuple[str, ...]], ...]) -> list[str]:
        return [name for name, accepted in options if self.config.get(name) not in accepted]


@dataclass
class Partition:
    device: str  # in the appliance, e.g. /dev/sda1
    number: int
    start: int  # bytes
    size: int
    fs_type: str
    uuid: str
    label: str
    gpt_type: str
    gpt_guid: str
    name: str


@dataclass
class ImageFacts:
    distro: str
    release: str  # VERSION_ID
    codename: str
    arch: str
    root: Partition
    partitions: list[Partition]
    disk_size: int
    kernels: list[Kernel]
    cmdline: list[str]  # the stock kernel arguments (GRUB_CMDLINE_LINUX and _DEFAULT), root= removed
    init_system: str  # initramfs-tools or dracut
    fstab: str
    systemd: bool = True  # /usr/lib/systemd/systemd exists (dracut then builds a systemd initrd)

    def to_json(self) -> dict[str, Any]:
        return {"distro": self.distro, "release": self.release, "codename": self.codename, "arch": self.arch,
                "root": {"device": self.root.device, "fs_type": self.root.fs_type, "uuid": self.root.uuid},
                "kernels": [k.version for k in self.kernels], "cmdline": " ".join(self.cmdline),
                "initrd_generator": self.init_system, "systemd": self.systemd}


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines, values unquoted as os-release(5) says (never run as shell)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        out[key.strip()] = " ".join(words)
    return out


def parse_kernel_config(text: str) -> dict[str, str]:
    """CONFIG_X=y|m|"string" lines of /boot/config-VERSION."""
    out = {}
    for line in text.splitlines():
        match = re.match(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$", line.strip())
        if match:
            out[match.group(1)] = match.group(2).strip('"')
    return out


def parse_default_grub(texts: list[str]) -> list[str]:
    """Kernel arguments of GRUB_CMDLINE_LINUX and GRUB_CMDLINE_LINUX_DEFAULT (later files win, as in GRUB)."""
    values = {"GRUB_CMDLINE_LINUX": "", "GRUB_CMDLINE_LINUX_DEFAULT": ""}
    for text in texts:
        for line in text.splitlines():
            match = re.match(r'^\s*(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=(.*)$', line)
            if not match:
                continue
            raw = match.group(2).strip()
            raw = raw.replace("$GRUB_CMDLINE_LINUX_DEFAULT", values["GRUB_CMDLINE_LINUX_DEFAULT"])
            raw = raw.replace("${GRUB_CMDLINE_LINUX_DEFAULT}", values["GRUB_CMDLINE_LINUX_DEFAULT"])
            raw = raw.replace("$GRUB_CMDLINE_LINUX", values["GRUB_CMDLINE_LINUX"])
            raw = raw.replace("${GRUB_CMDLINE_LINUX}", values["GRUB_CMDLINE_LINUX"])
            try:
                words = shlex.split(raw)
            except ValueError:
                continue
            values[match.group(1)] = words[0] if words else ""
    args = (values["GRUB_CMDLINE_LINUX"] + " " + values["GRUB_CMDLINE_LINUX_DEFAULT"]).split()
    return [arg for arg in args if not arg.startswith(("root=", "rootflags=", "rootfstype="))]


def _version_key(version: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"[.+~-]", version)]


def _read_text(handle: Any, path: str, limit: int = 1 << 20) -> str | None:
    if not handle.is_file(path, followsymlinks=True):
        return None
    data = call(f"read {path}", handle.read_file, path)
    return data[:limit].decode("utf-8", "replace")


def _partitions(handle: Any) -> tuple[list[Partition], int]:
    devices = call("list devices", handle.list_devices)
    if len(devices) < 1:
        raise SnpError("the image has no disk", field="image")
    disk = devices[0]
    size = call("disk size", handle.blockdev_getsize64, disk)
    parts = []
    filesystems = call("list file systems", handle.list_filesystems)
    if call("partition table", handle.part_get_parttype, disk) != "gpt":
        raise SnpError("only GPT disks are supported (cloud images use GPT)", field="image.partition_table")
    for entry in call("list partitions", handle.part_list, disk):
        number = entry["part_num"]
        device = f"{disk}{number}"
        fs_type = filesystems.get(device, "unknown")
        uuid = label = ""
        if fs_type not in ("unknown", ""):
            uuid = call("file system uuid", handle.vfs_uuid, device)
            label = call("file system label", handle.vfs_label, device)
        parts.append(Partition(device=device, number=number, start=entry["part_start"], size=entry["part_size"],
                               fs_type=fs_type, uuid=uuid, label=label,
                               gpt_type=call("gpt type", handle.part_get_gpt_type, disk, number),
                               gpt_guid=call("gpt guid", handle.part_get_gpt_guid, disk, number),
                               name=call("gpt name", handle.part_get_name, disk, number)))
    return parts, size


def inspect_image(handle: Any) -> ImageFacts:
    """Inspect the (read-only) first drive of ``handle``; mounts its root read-only and leaves it unmounted."""
    roots = call("inspect the image", handle.inspect_os)
    if not roots:
        raise SnpError("no operating system found in the image", field="image")
    if len(roots) > 1:
        raise SnpError(f"more than one operating system in the image ({', '.join(roots)})", field="image")
    root_device = roots[0]
    if root_device.startswith("/dev/mapper/") or call("is LVM", handle.is_lv, root_device):
        raise SnpError(f"the root file system is on LVM ({root_device}): LVM roots are not supported",
                       field="image.root")
    parts, size = _partitions(handle)
    root = next((p for p in parts if p.device == root_device), None)
    if root is None:
        raise SnpError(f"the root file system {root_device} is not a partition of the first disk", field="image.root")
    if root.fs_type != "ext4":
        raise SnpError(f"the root file system is {root.fs_type}; only ext4 roots are supported", field="image.root")
    distro = call("distribution", handle.inspect_get_distro, root_device)
    if distro not in SUPPORTED_DISTROS:
        raise SnpError(f"the distribution is {distro!r}; supported: {', '.join(SUPPORTED_DISTROS)}",
                       field="image.distro")
    call("mount the root read-only", handle.mount_ro, root_device, "/")
    try:
        mounts = call("file systems of the image", handle.inspect_get_mountpoints, root_device)
        extra = sorted(m for m in mounts if m not in ("/", "/boot/efi"))
        if extra:
            raise SnpError(f"separate file systems for {', '.join(extra)} are not supported yet",
                           field="image.fstab")
        release = parse_os_release(_read_text(handle, "/etc/os-release") or "")
        kernels = []
        for name in sorted(call("list /boot", handle.ls, "/boot")):
            if not name.startswith("vmlinuz-"):
                continue
            version = name[len("vmlinuz-"):]
            initrd = f"/boot/initrd.img-{version}"
            config_text = _read_text(handle, f"/boot/config-{version}", 1 << 24) or ""
            kernels.append(Kernel(version=version, vmlinuz=f"/boot/{name}",
                                  initrd=initrd if handle.is_file(initrd) else None,
                                  config=parse_kernel_config(config_text)))
        kernels.sort(key=lambda k: _version_key(k.version))
        grub = [_read_text(handle, "/etc/default/grub") or ""]
        if handle.is_dir("/etc/default/grub.d"):
            grub += [_read_text(handle, f"/etc/default/grub.d/{n}") or ""
                     for n in sorted(handle.ls("/etc/default/grub.d")) if n.endswith(".cfg")]
        dracut = handle.is_dir("/usr/lib/dracut") and not handle.is_file("/usr/sbin/mkinitramfs")
        systemd = handle.is_file("/usr/lib/systemd/systemd") or handle.is_file("/lib/systemd/systemd")
        fstab = _read_text(handle, "/etc/fstab") or ""
        arch = call("architecture", handle.inspect_get_arch, root_device)
    finally:
        call("unmount", handle.umount_all)
    if arch != "x86_64":
        raise SnpError(f"the image is for {arch}; SEV-SNP guests are x86_64", field="image.arch")
    return ImageFacts(distro=distro, release=release.get("VERSION_ID", ""),
                      codename=release.get("VERSION_CODENAME", ""), arch=arch, root=root, partitions=parts,
                      disk_size=size, kernels=kernels, cmdline=parse_default_grub(grub),
                      init_system="dracut" if dracut else "initramfs-tools", fstab=fstab, systemd=systemd)


def select_kernel(facts: ImageFacts, wanted: str | None, mode: str) -> Kernel:
    """The kernel named (default: the newest), refused when it lacks what a SEV-SNP guest needs."""
    if not facts.kernels:
        raise SnpError("the image has no kernel in /boot", field="kernel")
    if wanted:
        chosen = next((k for k in facts.kernels if k.version == wanted), None)
        if chosen is None:
            raise SnpError(f"{wanted!r} is not in the image; it has {', '.join(k.version for k in facts.kernels)}",
                           field="kernel")
    else:
        chosen = facts.kernels[-1]
    if not chosen.config:
        raise SnpError(f"/boot/config-{chosen.version} is missing: cannot check SEV-SNP guest support",
                       field="kernel")
    needed = SNP_GUEST_OPTIONS + (LUKS_OPTIONS if mode == "luks" else VERITY_OPTIONS)
    missing = chosen.missing(needed)
    if missing:
        raise SnpError(f"kernel {chosen.version} lacks {', '.join(missing)} (needed by a SEV-SNP {mode} guest)",
                       field="kernel")
    if chosen.initrd is None:
        raise SnpError(f"kernel {chosen.version} has no initrd in /boot", field="kernel")
    return chosen
