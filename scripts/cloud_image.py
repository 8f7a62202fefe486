# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Build a stock Debian 13 "genericcloud-like" qcow2 image: the converter's test input.

The image is what a user would download from cloud.debian.org, built here instead (tests
never download cloud images): a GPT disk laid out like Debian's cloud images, a root
built by mmdebstrap from the configured Debian mirror (every package checked against
the archive keys), GRUB for EFI on the removable-media path, cloud-init, OpenSSH.
It boots with plain OVMF (no Secure Boot, no shim) to a login prompt on ttyS0.

  cloud_image.py build [--variant initramfs-tools|dracut] [--refresh]   build or reuse; prints the image path
  cloud_image.py path  [--variant ...]                                  prints it if cached, else exit 1

Variants differ only in the initrd generator: ``initramfs-tools`` (Debian's default)
or ``dracut``.  Neither has cryptsetup: adding what an image lacks is the converter's job.

Cache: ${SNPGUARD_CLOUD_IMAGE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/snpguard/cloud-images}/
<variant>-<recipe-id>/ holding image.qcow2 and manifest.json.  The recipe id is a digest
of everything that decides the image's contents (suite, mirror, packages, layout, the
files written into it, a revision number); a changed recipe builds a new directory; the
variant's three most recent images are kept (other checkouts sharing the cache may be at
other recipes), older ones removed.  Builds run under a lock (parallel test processes build
once), in a temporary directory renamed into place when complete: no partial image is ever
visible under the final name.  UUIDs are derived from the recipe id, so a rebuild of the
same recipe has the same identifiers (its bytes may still differ: timestamps).

Layout (as debian-cloud-images' partition hook for amd64; sectors of 512 bytes):

  p14  2048..8191        BIOS boot (EF02), left empty: no grub-pc here, EFI only
  p15  8192..262143      EFI System (EF00), FAT32, 124 MiB, mounted at /boot/efi
  p1   262144..end       Linux root x86-64 (8304), ext4, mounted at /
  No partition names and no file-system labels (Debian's images have none); fstab by UUID.

Boot chain: OVMF -> /EFI/BOOT/BOOTX64.EFI (grub-mkimage with prefix /EFI/BOOT) ->
/EFI/BOOT/grub.cfg on the ESP (search.fs_uuid <root>, configfile /boot/grub/grub.cfg, as
Debian's /EFI/debian/grub.cfg) -> /boot/grub/grub.cfg made by the image's own grub-mkconfig
(settings in /etc/default/grub.d/10_cloud.cfg), so update-grub inside the image (e.g. in a
libguestfs appliance, where grub-probe sees the real disk) regenerates the same form.

cloud-init: /etc/cloud/cloud.cfg.d/99_snpguard_fixture.cfg sets ``datasource_list: [ NoCloud,
None ]``.  With every datasource enabled (a real genericcloud image) cloud-init probes
cloud metadata services and waits for their time-outs when none answers; here ds-identify
takes NoCloud (a seed disk labelled CIDATA, or /var/lib/cloud/seed/nocloud, works as usual)
and falls back to None, so a boot without a seed is not delayed.  SSH host keys are removed
from the image and made at first boot (sshd-keygen / cloud-init), as in Debian's images.

Manifest (manifest.json, ``schema`` 1; fields are only ever added):

  schema          1
  variant         "initramfs-tools" | "dracut"
  recipe_id       16 hex digits; recipe: the dict it digests
  image           "image.qcow2" (relative to the manifest's directory)
  image_sha256    hex digest of image.qcow2;  image_bytes: its size
  format          "qcow2";  virtual_size: bytes of the virtual disk
  suite, debian_version, python ("3.13"), initrd_generator (= variant)
  kernels         [{"version", "vmlinuz": "/boot/vmlinuz-V", "initrd": "/boot/initrd.img-V",
                    "vmlinuz_bytes", "initrd_bytes"}], newest last (initrd_bytes: the stock initrd's size,
                    the baseline of the agent's initrd growth)
  cmdline         the kernel arguments of grub.cfg's first entry (root=UUID=... ro ...)
  root_fs_uuid, esp_fs_uuid
  disk            {"table": "gpt", "disk_guid", "sector_size": 512, "sectors",
                   "partitions": [{"number", "role": "root"|"esp"|"bios_boot", "type_guid",
                                   "partuuid", "name": "", "start", "end" (inclusive sectors),
                                   "fs": "ext4"|"vfat"|null, "fs_uuid", "fs_label": "", "mountpoint"}]}
  packages        {name: version} of every installed package (dpkg-query)
  built, build_seconds

Standard library only; needs mmdebstrap, mkfs.ext4, mkfs.vfat, mtools (mmd, mcopy), sgdisk,
dd and qemu-img.  `build` needs root (mmdebstrap's root mode); no loop devices, no device mapper.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch_artifacts import KEYRING, configured_mirror

SCHEMA = 1
SUITE = "trixie"
VARIANTS = ("initramfs-tools", "dracut")
SECTOR = 512
DISK_SECTORS = 3 * 1024 * 1024 * 1024 // SECTOR  # 3 GiB virtual
# (number, role, sgdisk type code, type GUID, first sector, last sector or None = up to the 1 MiB boundary
# before the backup GPT)
LAYOUT = [
    (14, "bios_boot", "EF02", "21686148-6449-6E6F-744E-656564454649", 2048, 8191),
    (15, "esp", "EF00", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", 8192, 262143),
    (1, "root", "8304", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", 262144, None),
]
# A cloud image's small set beyond the `apt` variant (Essential + apt).  Recommends are
# not installed (mmdebstrap's default), as in Debian's images.
COMMON_PACKAGES = [
    "linux-image-amd64",
    "systemd-sysv",
    "systemd-resolved",
    "openssh-server",
    "cloud-init",
    "grub-efi-amd64",
    "ca-certificates",
    "sudo",
    "e2fsprogs",
    "dosfstools",
    "iproute2",
    "procps",
    "netbase",
    "less",
]
GENERATOR_PACKAGES = {"initramfs-tools": ["initramfs-tools"], "dracut": ["dracut"]}
DPKG_EXCLUDES = ["/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*"]
GRUB_EFI_MODULES = [
    "part_gpt", "fat", "ext2", "normal", "configfile", "search", "search_fs_uuid", "linux", "gzio",
    "echo", "test", "all_video", "serial", "terminal", "efi_gop",
]
# Images of one variant kept in the cache (the newest; other checkouts may use older recipes).
KEEP_BUILDS = 3
# Bumped whenever the build steps change what the image looks like beyond what the recipe lists.
RECIPE_REVISION = 2
# Static files written into the root before any package is installed (so the kernel's first
# initrd is already made with them).  fstab and the ESP's grub.cfg depend on UUIDs and are
# added per build.
FILES = {
    "etc/default/grub.d/10_cloud.cfg": (
        "# Serial console and no menu delay, as Debian's cloud images.\n"
        'GRUB_CMDLINE_LINUX_DEFAULT=""\n'
        'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200 consoleblank=0"\n'
        "GRUB_TIMEOUT=0\n"
        'GRUB_TERMINAL="console serial"\n'
        'GRUB_SERIAL_COMMAND="serial --speed=115200"\n'
        "GRUB_DISABLE_OS_PROBER=true\n"
    ),
    "etc/cloud/cloud.cfg.d/99_snpguard_fixture.cfg": (
        "# A NoCloud seed if one is attached, else no datasource: no waiting for metadata services.\n"
        "datasource_list: [ NoCloud, None ]\n"
    ),
    # DHCP on any wired interface when cloud-init writes no network configuration of its own
    # (cloud-init's 10-cloud-init-*.network sorts first and wins when it does).
    "etc/systemd/network/99-dhcp.network": "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
    "etc/hostname": "debian\n",
}
VARIANT_FILES = {
    "initramfs-tools": {},
    # A generic initrd (all drivers), never one fitted to the build host.
    "dracut": {"etc/dracut.conf.d/10-generic.conf": 'hostonly="no"\n'},
}
# grub-mkconfig's questions about the disk, answered for the image's layout (the build has no
# block device for the real grub-probe to look at).  Installed only while grub-mkconfig runs.
FAKE_GRUB_PROBE = """#!/bin/sh
target=
while [ $# -gt 0 ]; do
  case "$1" in
    --target=*) target=${1#--target=} ;;
    -t|--target) shift; target=$1 ;;
  esac
  shift
done
case "$target" in
  device) echo /dev/vda1 ;;
  fs) echo ext2 ;;
  fs_uuid) echo @FS_UUID@ ;;
  partuuid) echo @PARTUUID@ ;;
  partmap) echo gpt ;;
  abstraction|cryptodisk_uuid) ;;
  compatibility_hint) echo hd0,gpt1 ;;
  hints_string) echo "--hint-bios=hd0,gpt1 --hint-efi=hd0,gpt1 --hint-baremetal=ahci0,gpt1" ;;
  drive) echo "(hd0,gpt1)" ;;
  *) echo "grub-probe (snpguard fixture): unsupported target '$target'" >&2; exit 1 ;;
esac
"""
FAKE_GRUB_LIB = """. /usr/share/grub/grub-mkconfig_lib
grub_probe=/run/snpguard-grub/grub-probe
"""


def say(msg: str) -> None:
    print(f"cloud_image: {msg}", file=sys.stderr, flush=True)


class CloudImageError(Exception):
    """A step failed; the message says which and why."""


def cache_root() -> Path:
    if os.environ.get("SNPGUARD_CLOUD_IMAGE_CACHE"):
        return Path(os.environ["SNPGUARD_CLOUD_IMAGE_CACHE"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "snpguard" / "cloud-images"


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    try:
        return subprocess.run(argv, check=True, **kwargs)
    except FileNotFoundError as exc:
        raise CloudImageError(f"{argv[0]} is not installed (needed by cloud_image.py)") from exc
    except subprocess.CalledProcessError as exc:
        tail = ((exc.stderr or b"") + (exc.stdout or b""))[-3000:]
        if isinstance(tail, bytes):
            tail = tail.decode(errors="replace")
        raise CloudImageError(f"{shlex.join(argv[:4])} ... failed with exit status {exc.returncode}\n{tail}") from exc


@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------- recipe


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise CloudImageError(f"unknown variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    return variant


def packages(variant: str) -> list[str]:
    return [*COMMON_PACKAGES, *GENERATOR_PACKAGES[check_variant(variant)]]


def files(variant: str) -> dict[str, str]:
    return {**FILES, **VARIANT_FILES[check_variant(variant)]}


def recipe(mirror: str, variant: str) -> dict:
    return {
        "suite": SUITE,
        "mirror": mirror,
        "variant": check_variant(variant),
        "packages": packages(variant),
        "dpkg_excludes": DPKG_EXCLUDES,
        "disk_sectors": DISK_SECTORS,
        "layout": [list(row) for row in LAYOUT],
        "grub_efi_modules": GRUB_EFI_MODULES,
        "files": files(variant),
        "revision": RECIPE_REVISION,
    }


def recipe_id(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def image_dir(variant: str, rid: str) -> Path:
    return cache_root() / f"{check_variant(variant)}-{rid}"


def identifiers(rid: str) -> dict[str, str]:
    """The image's UUIDs, derived from the recipe id (stable across rebuilds of one recipe)."""
    base = uuid.uuid5(uuid.NAMESPACE_URL, f"https://snpguard.invalid/cloud-image/{rid}")

    def derived(name: str) -> str:
        return str(uuid.uuid5(base, name))

    volume = hashlib.sha256(f"{rid}/esp".encode()).hexdigest()[:8].upper()
    return {
        "disk_guid": derived("disk"),
        "root_fs_uuid": derived("root-fs"),
        "esp_fs_uuid": f"{volume[:4]}-{volume[4:]}",  # FAT volume id as blkid prints it
        "partuuid_1": derived("part-1"),
        "partuuid_14": derived("part-14"),
        "partuuid_15": derived("part-15"),
    }


def partitions(ids: dict[str, str]) -> list[dict]:
    """The partition table as the manifest records it."""
    last_usable = DISK_SECTORS - 34
    rows = []
    for number, role, _code, type_guid, start, end in LAYOUT:
        if end is None:
            end = (last_usable + 1) // 2048 * 2048 - 1
        fs = {"root": ("ext4", ids["root_fs_uuid"], "/"), "esp": ("vfat", ids["esp_fs_uuid"], "/boot/efi")}.get(role)
        rows.append({
            "number": number,
            "role": role,
            "type_guid": type_guid,
            "partuuid": ids[f"partuuid_{number}"],
            "name": "",
            "start": start,
            "end": end,
            "fs": fs[0] if fs else None,
            "fs_uuid": fs[1] if fs else None,
            "fs_label": "",
            "mountpoint": fs[2] if fs else None,
        })
    return rows


def fstab(ids: dict[str, str]) -> str:
    return (
        "# /etc/fstab: static file system information\n"
        f"UUID={ids['root_fs_uuid']} / ext4 rw,discard,errors=remount-ro 0 1\n"
        f"UUID={ids['esp_fs_uuid']} /boot/efi vfat defaults 0 0\n"
    )


def esp_grub_cfg(ids: dict[str, str]) -> str:
    return (
        f"search.fs_uuid {ids['root_fs_uuid']} root\n"
        "set prefix=($root)'/boot/grub'\n"
        "configfile $prefix/grub.cfg\n"
    )


def load_manifest(directory: Path) -> dict | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        return None
    if not (directory / str(manifest.get("image", ""))).is_file():
        return None
    return manifest


def cached(variant: str, mirror: str | None = None) -> Path | None:
    """The image of the current recipe if it is built, else None."""
    rid = recipe_id(recipe(mirror or configured_mirror(), variant))
    directory = image_dir(variant, rid)
    manifest = load_manifest(directory)
    if manifest and manifest.get("recipe_id") == rid:
        return directory / manifest["image"]
    return None


# --------------------------------------------------------------------------- build


def write_tree(base: Path, tree: dict[str, str]) -> None:
    for rel, text in tree.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)


def grub_mkconfig(root: Path, ids: dict[str, str]) -> str:
    """Run the image's grub-mkconfig with a grub-probe that knows the future disk."""
    fake = root / "run/snpguard-grub"
    fake.mkdir(parents=True)
    probe = fake / "grub-probe"
    probe.write_text(FAKE_GRUB_PROBE.replace("@FS_UUID@", ids["root_fs_uuid"])
                     .replace("@PARTUUID@", ids["partuuid_1"]), encoding="utf-8")
    probe.chmod(0o755)
    (fake / "grub-mkconfig_lib").write_text(FAKE_GRUB_LIB, encoding="utf-8")
    # 10_linux writes root=UUID= only when the by-uuid link exists.
    by_uuid = root / "dev/disk/by-uuid"
    by_uuid.mkdir(parents=True, exist_ok=True)
    (by_uuid / ids["root_fs_uuid"]).touch()
    try:
        run(["chroot", str(root), "env", "pkgdatadir=/run/snpguard-grub", "grub-mkconfig", "-o", "/boot/grub/grub.cfg"])
    finally:
        shutil.rmtree(root / "dev/disk")
        shutil.rmtree(fake)
    text = (root / "boot/grub/grub.cfg").read_text(encoding="utf-8")
    if f"root=UUID={ids['root_fs_uuid']}" not in text:
        raise CloudImageError("grub-mkconfig wrote no root=UUID= entry; see the image's /boot/grub/grub.cfg")
    return text


def first_cmdline(grub_cfg: str) -> str:
    match = re.search(r"^\s*linux\s+\S+\s+(.*)$", grub_cfg, re.MULTILINE)
    if not match:
        raise CloudImageError("grub.cfg has no linux line")
    return match.group(1).strip()


def kernel_list(root: Path) -> list[dict]:
    def key(path: Path) -> list:
        return [int(p) if p.isdigit() else p for p in re.split(r"[.+~-]", path.name.removeprefix("vmlinuz-"))]

    rows = []
    for vmlinuz in sorted((root / "boot").glob("vmlinuz-*"), key=key):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        initrd = root / "boot" / f"initrd.img-{version}"
        if not initrd.is_file():
            raise CloudImageError(f"kernel {version} has no initrd in the image's /boot")
        rows.append({"version": version, "vmlinuz": f"/boot/{vmlinuz.name}", "initrd": f"/boot/{initrd.name}",
                     "vmlinuz_bytes": vmlinuz.stat().st_size, "initrd_bytes": initrd.stat().st_size})
    if not rows:
        raise CloudImageError("no kernel in the image's /boot")
    return rows


def installed_packages(root: Path) -> dict[str, str]:
    out = run(["chroot", str(root), "dpkg-query", "-W", "-f", "${db:Status-Status} ${Package} ${Version}\n"],
              text=True).stdout
    return {name: version for status, name, version in (line.split() for line in out.splitlines())
            if status == "installed"}


def customise(root: Path, ids: dict[str, str]) -> str:
    """Make the root a cloud image; returns the generated /boot/grub/grub.cfg."""
    resolv = root / "etc/resolv.conf"  # the build host's, copied by mmdebstrap
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    run(["chroot", str(root), "systemctl", "enable", "systemd-networkd.service", "systemd-resolved.service"])
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        link = root / "etc/systemd/system/timers.target.wants" / timer
        if link.is_symlink():
            link.unlink()
    # Per-instance state is made at first boot.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("", encoding="utf-8")
    with contextlib.suppress(FileNotFoundError):
        (root / "var/lib/dbus/machine-id").unlink()
    # GRUB: modules where grub-install puts them, the removable-path EFI binary, the configs.
    modules = root / "boot/grub/x86_64-efi"
    modules.mkdir(parents=True, exist_ok=True)
    for item in (root / "usr/lib/grub/x86_64-efi").iterdir():
        if item.suffix in (".mod", ".lst"):
            shutil.copy2(item, modules / item.name)
    esp = root / "boot/efi/EFI/BOOT"
    esp.mkdir(parents=True)
    run(["chroot", str(root), "grub-mkimage", "-O", "x86_64-efi", "-p", "/EFI/BOOT", "-o",
         "/boot/efi/EFI/BOOT/BOOTX64.EFI", *GRUB_EFI_MODULES])
    (esp / "grub.cfg").write_text(esp_grub_cfg(ids), encoding="utf-8")
    grub_cfg = grub_mkconfig(root, ids)
    for path in (root / "var/cache/apt").rglob("*.bin"):
        path.unlink()
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)
    return grub_cfg


def assemble(work: Path, root: Path, ids: dict[str, str], table: list[dict]) -> Path:
    """ESP and root file systems made from directories, written into a GPT raw disk, converted to qcow2."""
    by_role = {row["role"]: row for row in table}
    esp_row, root_row = by_role["esp"], by_role["root"]
    esp_img, root_img, raw = work / "esp.img", work / "root.img", work / "disk.raw"
    esp_src = root / "boot/efi"
    esp_kib = (esp_row["end"] - esp_row["start"] + 1) * SECTOR // 1024
    run(["mkfs.vfat", "-F", "32", "-i", ids["esp_fs_uuid"].replace("-", ""), "-C", str(esp_img), str(esp_kib)])
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for item in sorted(esp_src.rglob("*")):
        rel = "::/" + str(item.relative_to(esp_src))
        if item.is_dir():
            run(["mmd", "-i", str(esp_img), rel], env=env)
        else:
            run(["mcopy", "-i", str(esp_img), str(item), rel], env=env)
    shutil.rmtree(esp_src)
    esp_src.mkdir()  # the mount point stays, empty
    root_bytes = (root_row["end"] - root_row["start"] + 1) * SECTOR
    run(["mkfs.ext4", "-q", "-F", "-U", ids["root_fs_uuid"], "-E", "root_owner=0:0", "-d", str(root),
         str(root_img), f"{root_bytes // 1024}k"])
    run(["tune2fs", "-c", "0", "-i", "0", str(root_img)])
    with open(raw, "wb") as handle:
        handle.truncate(DISK_SECTORS * SECTOR)
    argv = ["sgdisk", "-o", "-U", ids["disk_guid"]]
    for row, (_n, _r, code, *_rest) in zip(table, LAYOUT, strict=True):
        number = row["number"]
        argv += [f"-n{number}:{row['start']}:{row['end']}", f"-t{number}:{code}", f"-u{number}:{row['partuuid']}"]
    run([*argv, str(raw)])
    for image, row in ((esp_img, esp_row), (root_img, root_row)):
        run(["dd", f"if={image}", f"of={raw}", "bs=1M", f"seek={row['start'] * SECTOR}", "oflag=seek_bytes",
             "conv=notrunc,sparse", "status=none"])
        image.unlink()
    qcow2 = work / "image.qcow2"
    run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)])
    raw.unlink()
    return qcow2


def prune(variant: str, keep: Path) -> None:
    """Remove the variant's older images beyond the KEEP_BUILDS most recent.

    Not only the current one survives: checkouts at other commits (another worktree, a CI
    tree) share the cache with other recipes, and removing theirs would make each rebuild
    its own in turn.
    """
    built = [d for d in cache_root().glob(f"{variant}-*") if d.is_dir() and (d / "manifest.json").is_file()]
    built.sort(key=lambda d: (d != keep, -(d / "manifest.json").stat().st_mtime))
    for stale in built[KEEP_BUILDS:]:
        shutil.rmtree(stale, ignore_errors=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(variant: str = "initramfs-tools", refresh: bool = False) -> Path:
    """The cached image (its qcow2's path), built when missing, stale or asked to."""
    mirror = configured_mirror()
    spec = recipe(mirror, variant)
    rid = recipe_id(spec)
    target = image_dir(variant, rid)
    root_dir = cache_root()
    with locked(root_dir / f".{variant}.lock"):
        manifest = load_manifest(target)
        if manifest and manifest.get("recipe_id") == rid and not refresh:
            say(f"{variant} image {target} is current")
            return target / manifest["image"]
        if os.geteuid() != 0:
            raise CloudImageError("building the cloud image needs root (mmdebstrap --mode=root)")
        started = time.monotonic()
        ids = identifiers(rid)
        table = partitions(ids)
        work = Path(tempfile.mkdtemp(prefix=f".build-{variant}-", dir=root_dir))
        work.chmod(0o755)
        try:
            root = work / "root"
            seed = work / "seed"
            write_tree(seed, {**files(variant), "etc/fstab": fstab(ids)})
            say(f"mmdebstrap {SUITE} ({variant}) from {mirror}: "
                f"{len(spec['packages'])} packages beyond the apt variant")
            argv = [
                "mmdebstrap",
                "--variant=apt",
                "--mode=root",
                "--format=directory",
                "--quiet",
                f"--include={','.join(spec['packages'])}",
                f"--setup-hook=sync-in {shlex.quote(str(seed))} /",
            ]
            argv += [f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES]
            argv += [SUITE, str(root), f"deb [signed-by={KEYRING}] {mirror} {SUITE} main"]
            run(argv)
            say(f"root ready after {time.monotonic() - started:.0f} s; installing GRUB, making file systems")
            grub_cfg = customise(root, ids)
            pkgs = installed_packages(root)
            for name in ("cryptsetup", "cryptsetup-bin"):
                if name in pkgs:
                    raise CloudImageError(f"{name} got into the image (pulled in by a dependency); "
                                          "the fixture must lack it")
            kernels = kernel_list(root)
            debian_version = (root / "etc/debian_version").read_text(encoding="utf-8").strip()
            python = os.readlink(root / "usr/bin/python3").removeprefix("python")
            qcow2 = assemble(work, root, ids, table)
            shutil.rmtree(root)
            shutil.rmtree(seed)
            info = json.loads(run(["qemu-img", "info", "--output=json", str(qcow2)], text=True).stdout)
            manifest = {
                "schema": SCHEMA,
                "variant": variant,
                "recipe_id": rid,
                "recipe": spec,
                "image": qcow2.name,
                "image_sha256": sha256(qcow2),
                "image_bytes": qcow2.stat().st_size,
                "format": "qcow2",
                "virtual_size": info["virtual-size"],
                "suite": SUITE,
                "debian_version": debian_version,
                "python": python,
                "initrd_generator": variant,
                "kernels": kernels,
                "cmdline": first_cmdline(grub_cfg),
                "root_fs_uuid": ids["root_fs_uuid"],
                "esp_fs_uuid": ids["esp_fs_uuid"],
                "disk": {"table": "gpt", "disk_guid": ids["disk_guid"], "sector_size": SECTOR,
                         "sectors": DISK_SECTORS, "partitions": table},
                "packages": pkgs,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.monotonic() - started, 1),
            }
            (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            old = target.with_name(target.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                target.rename(old)
            work.rename(target)
            shutil.rmtree(old, ignore_errors=True)
            prune(variant, keep=target)
            say(f"built {target} in {manifest['build_seconds']} s: {manifest['image_bytes'] / 2**20:.0f} MiB qcow2, "
                f"kernel {kernels[-1]['version']}, {len(pkgs)} packages")
            return target / manifest["image"]
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build or reuse the cached image; prints its path")
    p_build.add_argument("--variant", choices=VARIANTS, default="initramfs-tools")
    p_build.add_argument("--refresh", action="store_true", help="rebuild even when the cached image is current")
    p_path = sub.add_parser("path", help="print the cached image's path (exit 1 when not built)")
    p_path.add_argument("--variant", choices=VARIANTS, default="initramfs-tools")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build(args.variant, args.refresh))
        else:
            image = cached(args.variant)
            if image is None:
                say(f"no {args.variant} image of the current recipe: "
                    f"run `cloud_image.py build --variant {args.variant}`")
                return 1
            print(image)
    except CloudImageError as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
