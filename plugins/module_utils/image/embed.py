# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Writing a launch bundle into an image: the backend of ``cvm_embed`` and ``snpguard image embed``.

The image carries its launch artifacts in a GPT partition named ``LAUNCH_ARTIFACTS``
(ext4, file-system label ``LAUNCH_ARTIFACTS``, 512 MiB unless told otherwise)::

    a/                  one bundle, unpacked: kernel, initrd, cmdline, firmware.sha384, launch.json, ...
    a/.snpguard-bundle.json   {"format", "digest", "files": {name: sha256}} of that bundle
    b/                  the other slot
    artifacts -> a      the active slot

A new bundle is unpacked into the inactive slot, then ``artifacts.new`` is made to point at
it and renamed over ``artifacts`` (rename(2), atomic): that rename is the commit point, so
a reader always sees one whole bundle, the old or the new.  The same bundle already active
(the same file digests, checked again in the slot) changes nothing.

Failure handling: the bundle is read and checked (``bundle/archive.py read_bundle``)
before the image is opened.  When the partition has to be made, the image is not touched
until everything worked: partition, file system and bundle are written into a temporary
qcow2 overlay of the grown size, and only then is the image grown (``qemu-img resize``)
and the overlay committed into it.  With an existing partition all writes go to the
inactive slot, in one appliance session, before the switch.

The partition table is read on the host (``qemu-img dd`` of the first sectors) to plan
without starting an appliance; libguestfs (the ``guestfs`` Python bindings, package
``python3-guestfs``) does the writing.  On a host without KVM set
``LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..bundle.archive import read_bundle
from ..common.process import Runner
from ..snp.errors import SnpError

LABEL = "LAUNCH_ARTIFACTS"
SLOTS = ("a", "b")
LINK = "artifacts"
SLOT_MANIFEST = ".snpguard-bundle.json"
FORMAT = "snpguard-embedded-bundle/1"
IMAGE_FORMATS = ("qcow2", "raw")
DEFAULT_SIZE = 512 << 20
MIN_SIZE = 16 << 20
MAX_BUNDLE = 1 << 30
SECTOR = 512
ALIGN_SECTORS = 2048  # 1 MiB
GPT_BACKUP_SECTORS = 33  # the backup table (32 sectors of entries) and header at the end of the disk
LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
QEMU_IMG_TIMEOUT = 900.0
_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*([KMGT]?)(i?B)?\s*$", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: Any, field_name: str = "size") -> int:
    """Bytes from ``536870912``, ``512M``, ``512MiB`` or ``1G`` (binary units), whole MiB, at least 16 MiB."""
    if isinstance(value, bool):
        raise SnpError("must be a size such as 512M", field=field_name)
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise SnpError(f"{value!r} is not a size such as 512M or 1G", field=field_name)
        size = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if size < MIN_SIZE:
        raise SnpError(f"must be at least {MIN_SIZE >> 20} MiB", field=field_name)
    if size % (1 << 20):
        raise SnpError("must be a whole number of MiB", field=field_name)
    return size


def bundle_manifest(files: Mapping[str, bytes]) -> dict[str, Any]:
    """What a slot records about its bundle: each file's SHA-256 and one digest over them."""
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    return {"format": FORMAT, "digest": digest_of(digests), "files": digests}


def digest_of(file_digests: Mapping[str, str]) -> str:
    """The bundle's identity: SHA-256 of the sorted ``{name: sha256}`` map (gzip framing does not count)."""
    return hashlib.sha256(json.dumps(dict(sorted(file_digests.items())), sort_keys=True).encode()).hexdigest()


# -- the image on the host -------------------------------------------------------------------------


def _run(runner: Runner, argv: list[str], what: str, field_name: str = "image") -> str:
    rc, out, err = runner(argv, QEMU_IMG_TIMEOUT)
    if rc != 0:
        detail = (err or out).strip().splitlines()
        raise SnpError(f"{what} failed: {detail[-1] if detail else f'exit {rc}'}", field=field_name)
    return out


def image_info(image: str, runner: Runner, image_format: str | None = None) -> tuple[str, int]:
    """(format, virtual size) from ``qemu-img info``; only qcow2 and raw are written."""
    if not os.path.isfile(image):
        raise SnpError("does not exist or is not a file", field="image", path=image)
    argv = ["qemu-img", "info", "--output=json", *(["-f", image_format] if image_format else []), image]
    out = _run(runner, argv, "qemu-img info")
    try:
        info = json.loads(out)
        fmt, size = str(info["format"]), int(info["virtual-size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SnpError(f"qemu-img info answered no format and size: {exc}", field="image", path=image) from exc
    if fmt not in IMAGE_FORMATS:
        raise SnpError(f"is a {fmt} image; only {', '.join(IMAGE_FORMATS)} are written", field="image", path=image)
    if info.get("backing-filename"):
        raise SnpError("has a backing file; embed into a standalone image", field="image", path=image)
    return fmt, size


@dataclass
class Partition:
    number: int
    start: int  # first sector
    end: int  # last sector (inclusive)
    name: str

    @property
    def size(self) -> int:
        return (self.end - self.start + 1) * SECTOR


@dataclass
class Gpt:
    sectors: int
    first_usable: int
    last_usable: int
    entries: int
    partitions: list[Partition] = field(default_factory=list)


def _read_head(image: str, fmt: str, sectors: int, runner: Runner, scratch: str) -> bytes:
    out = os.path.join(scratch, f"head-{sectors}.bin")
    # skip is not used: qemu-img dd's count includes skipped blocks in some versions and not in others.
    _run(runner, ["qemu-img", "dd", "-f", fmt, "-O", "raw", f"bs={SECTOR}", f"count={sectors}", f"if={image}",
                  f"of={out}"], "qemu-img dd (reading the partition table)")
    with open(out, "rb") as handle:
        return handle.read()


def parse_gpt(head: bytes, disk_size: int) -> Gpt:
    """The primary GPT from the first sectors of a disk; refuses anything but a valid GPT."""
    header = head[SECTOR:2 * SECTOR]
    if len(header) < 92 or header[:8] != b"EFI PART":
        raise SnpError("has no GPT partition table (a LAUNCH_ARTIFACTS partition needs GPT)", field="image")
    header_size = struct.unpack_from("<I", header, 12)[0]
    if not 92 <= header_size <= SECTOR:
        raise SnpError("has a GPT header of an impossible size", field="image")
    crc = struct.unpack_from("<I", header, 16)[0]
    if zlib.crc32(header[:16] + b"\0\0\0\0" + header[20:header_size]) != crc:
        raise SnpError("has a GPT header with a wrong CRC (a damaged partition table)", field="image")
    first_usable, last_usable = struct.unpack_from("<QQ", header, 40)
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
    if entry_size < 128 or entry_size % 8 or count > 1024:
        raise SnpError("has GPT entries of an unusual layout", field="image")
    start = entries_lba * SECTOR
    table = head[start:start + count * entry_size]
    if len(table) != count * entry_size:
        raise SnpError("GPT entries lie outside the sectors read", field="image")
    if zlib.crc32(table) != entries_crc:
        raise SnpError("has GPT entries with a wrong CRC (a damaged partition table)", field="image")
    parts = []
    for index in range(count):
        entry = table[index * entry_size:(index + 1) * entry_size]
        if entry[:16] == b"\0" * 16:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        name = entry[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        parts.append(Partition(number=index + 1, start=first, end=last, name=name))
    return Gpt(sectors=disk_size // SECTOR, first_usable=first_usable, last_usable=last_usable, entries=count,
               partitions=parts)


def read_gpt(image: str, fmt: str, disk_size: int, runner: Runner, scratch: str) -> Gpt:
    head = _read_head(image, fmt, 34, runner, scratch)
    if len(head) >= 2 * SECTOR and head[SECTOR:SECTOR + 8] == b"EFI PART":
        entries_lba, count, entry_size = struct.unpack_from("<QII", head, SECTOR + 72)
        needed = entries_lba + -(-count * entry_size // SECTOR)
        if needed > 34:
            if needed > 1 << 17:
                raise SnpError("has GPT entries far from the disk's start", field="image")
            head = _read_head(image, fmt, needed, runner, scratch)
    return parse_gpt(head, disk_size)


@dataclass
class Layout:
    """Where a new partition goes and how large the disk must become."""

    start: int
    end: int
    new_disk_size: int

    def grow_by(self, disk_size: int) -> int:
        return max(0, self.new_disk_size - disk_size)


def plan_partition(gpt: Gpt, disk_size: int, size: int) -> Layout:
    """The image grows by ``size`` plus 1 MiB (alignment, backup GPT); the new partition ends the disk.

    Free space the image already has stays where it is (a root file system can still grow into it).
    """
    if len(gpt.partitions) >= gpt.entries:
        raise SnpError(f"its GPT has no free entry (all {gpt.entries} used)", field="image")
    mib = 1 << 20
    new_size = -(-disk_size // mib) * mib + size + mib
    last_usable = new_size // SECTOR - GPT_BACKUP_SECTORS - 1
    start = (last_usable + 1 - size // SECTOR) // ALIGN_SECTORS * ALIGN_SECTORS
    used = max([p.end for p in gpt.partitions] + [gpt.first_usable - 1])
    if start <= used:
        raise SnpError("a partition ends beyond the disk's size", field="image")
    return Layout(start=start, end=start + size // SECTOR - 1, new_disk_size=new_size)


# -- the appliance ---------------------------------------------------------------------------------


def _guestfs_module() -> Any:
    try:
        import guestfs  # type: ignore[import-not-found]
    except ImportError:
        raise SnpError("needs the libguestfs Python bindings: install the package python3-guestfs (Debian, Ubuntu; "
                       "python3-libguestfs on Fedora) for the Python that runs this", field="guestfs") from None
    return guestfs


class Appliance:
    """One libguestfs session on one drive; errors become ``SnpError`` naming ``image``."""

    def __init__(self, drive: str, fmt: str, readonly: bool) -> None:
        guestfs = _guestfs_module()
        self.g = guestfs.GuestFS(python_return_dict=True)
        self.drive = drive
        try:
            self.g.add_drive_opts(drive, format=fmt, readonly=readonly)
            self.g.launch()
        except RuntimeError as exc:
            self.close()
            raise SnpError(f"libguestfs cannot open it: {exc}", field="image", path=drive) from exc
        self.device = self.g.list_devices()[0]

    def partition(self, number: int) -> str:
        for part in self.g.list_partitions():
            if self.g.part_to_dev(part) == self.device and self.g.part_to_partnum(part) == number:
                return str(part)
        raise SnpError(f"partition {number} is not there", field="image", path=self.drive)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.g.close()

    def finish(self) -> None:
        """Unmount, flush and stop the appliance; a failure to write back is an error."""
        try:
            self.g.umount_all()
            self.g.sync()
            self.g.shutdown()
        except RuntimeError as exc:
            raise SnpError(f"libguestfs could not finish writing: {exc}", field="image", path=self.drive) from exc
        finally:
            self.close()


@dataclass
class SlotState:
    active: str | None = None  # "a", "b" or None
    digest: str | None = None  # the active bundle's digest, when its files match its manifest


def read_state(g: Any) -> SlotState:
    """Which slot is active and which bundle it holds (verified file by file)."""
    if not g.exists("/" + LINK) and not g.is_symlink("/" + LINK):
        return SlotState()
    if not g.is_symlink("/" + LINK):
        raise SnpError(f"/{LINK} in the {LABEL} partition is not a symlink; refusing to replace it", field="image")
    target = g.readlink("/" + LINK).rstrip("/")
    if target not in SLOTS:
        raise SnpError(f"/{LINK} points to {target!r}, not to one of {', '.join(SLOTS)}", field="image")
    state = SlotState(active=target)
    path = f"/{target}/{SLOT_MANIFEST}"
    if not g.is_file(path):
        return state
    try:
        doc = json.loads(g.read_file(path))
        files = dict(doc["files"])
        digest = str(doc["digest"])
    except (ValueError, KeyError, TypeError, RuntimeError):
        return state
    if doc.get("format") != FORMAT or digest != digest_of(files):
        return state
    for name, sha in files.items():
        member = f"/{target}/{name}"
        if not g.is_file(member) or g.checksum("sha256", member) != sha:
            return state
    state.digest = digest
    return state


def write_slot(g: Any, slot: str, files: Mapping[str, bytes], manifest: Mapping[str, Any], scratch: str) -> None:
    """Unpack the bundle into ``slot`` (emptied first), manifest last, then switch ``artifacts`` to it."""
    root = "/" + slot
    if g.exists(root) or g.is_symlink(root):
        g.rm_rf(root)
    g.mkdir_mode(root, 0o755)
    for name, data in sorted(files.items()):
        local = os.path.join(scratch, name)
        with open(local, "wb") as handle:
            handle.write(data)
        g.upload(local, f"{root}/{name}")
        g.chmod(0o644, f"{root}/{name}")
        os.unlink(local)
    g.write(f"{root}/{SLOT_MANIFEST}", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    g.chmod(0o644, f"{root}/{SLOT_MANIFEST}")
    g.sync()
    new = f"/{LINK}.new"
    if g.exists(new) or g.is_symlink(new):
        g.rm_f(new)
    g.ln_s(slot, new)
    g.sync()
    g.rename(new, "/" + LINK)  # the commit point
    g.sync()


def _space_needed(files: Mapping[str, bytes]) -> int:
    return sum(len(data) + 4096 for data in files.values()) + (64 << 10)


# -- the verb --------------------------------------------------------------------------------------


def _describe(state: SlotState) -> dict[str, Any]:
    return {"active": state.active, "bundle_digest": state.digest}


def read_bundle_file(path: str) -> tuple[bytes, dict[str, bytes]]:
    try:
        size = os.path.getsize(path)
        if size > MAX_BUNDLE:
            raise SnpError(f"is larger than {MAX_BUNDLE} bytes", field="bundle", path=path)
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise SnpError(f"cannot read: {exc.strerror}", field="bundle", path=path) from exc
    try:
        files = read_bundle(data, max_size=MAX_BUNDLE)
    except SnpError as exc:
        raise SnpError(f"is not a valid launch bundle: {exc.message}", field=exc.field or "bundle",
                       path=path) from exc
    return data, files


def embed(image: str, bundle: str, *, runner: Runner, size: Any = DEFAULT_SIZE, image_format: str | None = None,
          check_mode: bool = False) -> dict[str, Any]:
    """Make ``bundle`` the active launch bundle of ``image``; returns changed, action, slot, diff, ..."""
    size_bytes = parse_size(size)
    if image_format is not None and image_format not in IMAGE_FORMATS:
        raise SnpError(f"must be one of {', '.join(IMAGE_FORMATS)}", field="format")
    data, files = read_bundle_file(bundle)
    manifest = bundle_manifest(files)
    new_digest = manifest["digest"]
    if _space_needed(files) > size_bytes * 9 // 10:
        raise SnpError(f"the bundle ({len(data)} bytes compressed) does not fit a {size_bytes >> 20} MiB partition",
                       field="size")
    fmt, disk_size = image_info(image, runner, image_format)
    scratch = tempfile.mkdtemp(prefix="snpguard-embed-")
    try:
        gpt = read_gpt(image, fmt, disk_size, runner, scratch)
        named = [p for p in gpt.partitions if p.name == LABEL]
        if len(named) > 1:
            raise SnpError(f"has {len(named)} partitions named {LABEL}", field="image", path=image)
        result: dict[str, Any] = {"image": image, "format": fmt, "bundle_digest": new_digest,
                                  "bundle_sha256": hashlib.sha256(data).hexdigest()}
        if not named:
            return _create(image, fmt, disk_size, gpt, size_bytes, files, manifest, result, check_mode, runner,
                           scratch)
        return _update(image, fmt, named[0], files, manifest, result, check_mode, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _create(image: str, fmt: str, disk_size: int, gpt: Gpt, size: int, files: Mapping[str, bytes],
            manifest: dict[str, Any], result: dict[str, Any], check_mode: bool, runner: Runner,
            scratch: str) -> dict[str, Any]:
    layout = plan_partition(gpt, disk_size, size)
    grow = layout.grow_by(disk_size)
    result.update(changed=True, action="created", slot=SLOTS[0], previous_slot=None, previous_bundle_digest=None,
                  partition={"number": None, "start": layout.start * SECTOR, "size": size, "label": LABEL,
                             "created": True},
                  grown_by=grow,
                  diff={"before": _describe(SlotState()),
                        "after": {"active": SLOTS[0], "bundle_digest": manifest["digest"]}})
    result["msg"] = (f"{'would grow' if check_mode else 'grew'} the image by {grow} bytes, "
                     f"{'would add' if check_mode else 'added'} a {size >> 20} MiB {LABEL} partition and "
                     f"{'would write' if check_mode else 'wrote'} the bundle to {SLOTS[0]}/")
    if check_mode:
        return result
    # Everything goes into an overlay first: the image itself changes only after it all worked.
    work = tempfile.mkdtemp(prefix=".snpguard-embed-", dir=os.path.dirname(os.path.abspath(image)))
    try:
        overlay = os.path.join(work, "overlay.qcow2")
        _run(runner, ["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.abspath(image), "-F", fmt, overlay,
                      str(layout.new_disk_size)], "qemu-img create (the overlay)")
        app = Appliance(overlay, "qcow2", readonly=False)
        try:
            g = app.g
            if g.part_get_parttype(app.device) != "gpt":
                raise SnpError("has no GPT partition table", field="image", path=image)
            g.part_expand_gpt(app.device)  # the backup GPT moves to the new end of the disk
            g.part_add(app.device, "p", layout.start, layout.end)
            number = next(int(p["part_num"]) for p in g.part_list(app.device)
                          if int(p["part_start"]) == layout.start * SECTOR)
            g.part_set_name(app.device, number, LABEL)
            g.part_set_gpt_type(app.device, number, LINUX_FS_GUID)
            part = app.partition(number)
            g.mkfs("ext4", part, label=LABEL)
            g.mount(part, "/")
            write_slot(g, SLOTS[0], files, manifest, scratch)
            app.finish()
        except RuntimeError as exc:
            raise SnpError(f"libguestfs failed: {exc}", field="image", path=image) from exc
        finally:
            app.close()
        result["partition"]["number"] = number
        if grow:
            _run(runner, ["qemu-img", "resize", "-q", "-f", fmt, image, str(layout.new_disk_size)],
                 "qemu-img resize")
        try:
            _run(runner, ["qemu-img", "commit", "-q", "-f", "qcow2", "-d", overlay], "qemu-img commit")
        except SnpError:
            if grow:  # back to the size it had; the partition table was not committed
                runner(["qemu-img", "resize", "-q", "--shrink", "-f", fmt, image, str(disk_size)], QEMU_IMG_TIMEOUT)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _update(image: str, fmt: str, found: Partition, files: Mapping[str, bytes], manifest: dict[str, Any],
            result: dict[str, Any], check_mode: bool, scratch: str) -> dict[str, Any]:
    app = Appliance(image, fmt, readonly=check_mode)
    try:
        g = app.g
        part = app.partition(found.number)
        if g.part_get_name(app.device, found.number) != LABEL:
            raise SnpError(f"partition {found.number} is no longer named {LABEL}", field="image", path=image)
        kind = g.vfs_type(part)
        if kind != "ext4":
            raise SnpError(f"the {LABEL} partition (number {found.number}) holds {kind or 'no file system'}, "
                           "not ext4; refusing to touch it", field="image", path=image)
        g.mount_ro(part, "/")  # read-only until there is something to write: a no-op leaves the image as it was
        state = read_state(g)
        result["partition"] = {"number": found.number, "start": found.start * SECTOR, "size": found.size,
                               "label": g.vfs_label(part), "created": False}
        result["grown_by"] = 0
        result["previous_slot"] = state.active
        result["previous_bundle_digest"] = state.digest
        if state.digest == manifest["digest"]:
            result.update(changed=False, action="unchanged", slot=state.active,
                          msg=f"the bundle is already active in {state.active}/",
                          diff={"before": _describe(state), "after": _describe(state)})
            app.finish()
            return result
        target = SLOTS[1] if state.active == SLOTS[0] else SLOTS[0]
        stat = g.statvfs("/")
        free = int(stat["bavail"]) * int(stat["bsize"])
        if g.is_dir("/" + target):
            free += sum(int(entry["st_size"]) + 4096 for entry in _lstat_dir(g, "/" + target))
        if _space_needed(files) > free:
            raise SnpError(f"the {LABEL} partition has {free} bytes free, the bundle needs {_space_needed(files)}",
                           field="image", path=image)
        result.update(changed=True, action="switched", slot=target,
                      msg=f"{'would write' if check_mode else 'wrote'} the bundle to {target}/ and "
                          f"{'would switch' if check_mode else 'switched'} {LINK} from "
                          f"{state.active or 'nothing'} to {target}",
                      diff={"before": _describe(state),
                            "after": {"active": target, "bundle_digest": manifest["digest"]}})
        if not check_mode:
            g.umount("/")
            g.mount(part, "/")
            write_slot(g, target, files, manifest, scratch)
        app.finish()
    except RuntimeError as exc:
        raise SnpError(f"libguestfs failed: {exc}", field="image", path=image) from exc
    finally:
        app.close()
    return result


def _lstat_dir(g: Any, path: str) -> list[dict[str, Any]]:
    names = list(g.ls(path))
    return list(g.lstatnslist(path, names)) if names else []
