# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The staging directory: what a conversion hands to registration and boot.

A conversion writes the boot chain it built next to the confidential image, so that
registration measures exactly those files instead of taking hex from a person::

    manifest.json       this schema, below
    vmlinuz             the kernel the image boots (taken from its /boot)
    initrd.img          the initrd regenerated inside the image (agent included for luks)
    cmdline             the measured kernel command line, one line
    sealed-volume-key   luks only: the volume key sealed to the server's ingestion key
                        (HPKE, base64); the plaintext key is never in this directory

``manifest.json`` (``format: snpguard-staging/1``)::

    image           the image name the sealed key is bound to (registration must use it)
    mode            "luks" or "verity"
    kernel_version  e.g. "6.12.57+deb13-amd64"
    files           {"kernel": {"file", "sha256"}, "initrd": {"file", "sha256"}}
    cmdline         the command line (the same text as the cmdline file)
    firmware        {"sha384": SHA-384 of the OVMF file the image is measured with,
                     "path": where that file was at conversion (informative)}
    launch          launch.json facts without measurements (vcpus, vcpu_type, policy, ...)
    sealed_volume_key  {"file": "sealed-volume-key"} or null
    verity          {"root_hash", "hash_algorithm", "data_blocks", ...} or null
    source          {"path", "sha256"} of the stock image
    output          {"path", "sha256"} of the confidential image
    options_digest  SHA-256 of the conversion options (a rerun with the same input and
                    options is a no-op)

``read_staging`` checks every file against its digest, so a staging dir edited after
conversion is refused naming the file, before anything is measured or registered.
``publish_dir`` replaces a directory in one rename, so readers never see a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..bundle.launch import LaunchFacts, parse_launch
from ..common.fileio import file_digest
from ..snp.errors import SnpError

FORMAT = "snpguard-staging/1"
MANIFEST = "manifest.json"
KERNEL, INITRD, CMDLINE, SEALED_KEY = "vmlinuz", "initrd.img", "cmdline", "sealed-volume-key"
MODES = ("luks", "verity")
MAX_MANIFEST = 1 << 20


@dataclass
class Staging:
    """A staging directory whose files matched their recorded digests when it was read."""

    directory: str
    image: str
    mode: str
    kernel_version: str
    cmdline: str
    firmware_sha384: str
    launch: LaunchFacts
    kernel_sha256: str
    initrd_sha256: str
    sealed_volume_key: str | None = None  # path of the sealed key file, luks only
    verity: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    options_digest: str = ""

    @property
    def kernel(self) -> str:
        return os.path.join(self.directory, KERNEL)

    @property
    def initrd(self) -> str:
        return os.path.join(self.directory, INITRD)


def manifest_for(staging: Staging) -> dict[str, Any]:
    """The manifest document of ``staging`` (digests as recorded in it)."""
    launch = staging.launch.to_json()
    launch.pop("measurements", None)
    return {
        "format": FORMAT,
        "image": staging.image,
        "mode": staging.mode,
        "kernel_version": staging.kernel_version,
        "files": {"kernel": {"file": KERNEL, "sha256": staging.kernel_sha256},
                  "initrd": {"file": INITRD, "sha256": staging.initrd_sha256}},
        "cmdline": staging.cmdline,
        "firmware": {"sha384": staging.firmware_sha384},
        "launch": launch,
        "sealed_volume_key": {"file": SEALED_KEY} if staging.sealed_volume_key else None,
        "verity": staging.verity,
        "source": staging.source,
        "output": staging.output,
        "options_digest": staging.options_digest,
    }


def write_manifest(directory: str, staging: Staging) -> None:
    """Write manifest.json and the cmdline file of a staging dir being assembled."""
    doc = manifest_for(staging)
    with open(os.path.join(directory, CMDLINE), "w", encoding="utf-8") as handle:
        handle.write(staging.cmdline + "\n")
    with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(doc, handle, indent=2, sort_keys=True)
        handle.write("\n")


def _get(doc: Mapping[str, Any], key: str, kind: type, where: str = "manifest") -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise SnpError(f"must be a {kind.__name__}", field=f"{where}.{key}")
    return value


def _hex(value: Any, size: int, field_name: str) -> str:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise SnpError(f"must be {2 * size} hex digits", field=field_name)
    try:
        bytes.fromhex(value)
    except ValueError:
        raise SnpError(f"must be {2 * size} hex digits", field=field_name) from None
    return value.lower()


def read_staging(directory: str) -> Staging:
    """Load a staging dir and verify each file against the manifest; refusals name the field."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_MANIFEST + 1)
    except OSError as exc:
        raise SnpError(f"is not a staging directory ({exc.strerror})", field="staging_dir", path=path) from exc
    if len(raw) > MAX_MANIFEST:
        raise SnpError("manifest.json is too large", field="staging_dir", path=path)
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise SnpError(f"manifest.json is not JSON: {exc}", field="staging_dir", path=path) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SnpError(f"manifest.json is not {FORMAT}", field="manifest.format", path=path)
    mode = _get(doc, "mode", str)
    if mode not in MODES:
        raise SnpError(f"must be one of {', '.join(MODES)}", field="manifest.mode")
    files = _get(doc, "files", dict)
    digests = {}
    for role, name in (("kernel", KERNEL), ("initrd", INITRD)):
        entry = _get(files, role, dict, "manifest.files")
        if entry.get("file") != name:
            raise SnpError(f"must be {name!r}", field=f"manifest.files.{role}.file")
        expected = _hex(entry.get("sha256"), 32, f"manifest.files.{role}.sha256")
        actual = file_digest(os.path.join(directory, name), "sha256", field=role)
        if actual != expected:
            raise SnpError(f"{name} changed after conversion (SHA-256 {actual}, manifest {expected})",
                           field=role, path=os.path.join(directory, name))
        digests[role] = actual
    cmdline = _get(doc, "cmdline", str)
    try:
        with open(os.path.join(directory, CMDLINE), encoding="utf-8") as handle:
            on_disk = handle.read().rstrip("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise SnpError(f"cannot read: {exc}", field="cmdline", path=os.path.join(directory, CMDLINE)) from exc
    if on_disk != cmdline:
        raise SnpError("the cmdline file differs from manifest.json", field="cmdline",
                       path=os.path.join(directory, CMDLINE))
    firmware = _get(doc, "firmware", dict)
    sealed = doc.get("sealed_volume_key")
    sealed_path = None
    if sealed is not None:
        if not isinstance(sealed, dict) or sealed.get("file") != SEALED_KEY:
            raise SnpError(f"must be {{\"file\": \"{SEALED_KEY}\"}} or null", field="manifest.sealed_volume_key")
        sealed_path = os.path.join(directory, SEALED_KEY)
        if not os.path.isfile(sealed_path):
            raise SnpError("is missing", field="sealed_volume_key", path=sealed_path)
    elif mode == "luks":
        raise SnpError("a luks staging dir must carry the sealed volume key", field="manifest.sealed_volume_key")
    launch = parse_launch(_get(doc, "launch", dict), field_name="manifest.launch")
    verity = doc.get("verity")
    if verity is not None and not isinstance(verity, dict):
        raise SnpError("must be an object or null", field="manifest.verity")
    if mode == "verity":
        _check_verity(verity, cmdline)
    return Staging(
        directory=directory, image=_get(doc, "image", str), mode=mode,
        kernel_version=_get(doc, "kernel_version", str), cmdline=cmdline,
        firmware_sha384=_hex(firmware.get("sha384"), 48, "manifest.firmware.sha384"), launch=launch,
        kernel_sha256=digests["kernel"], initrd_sha256=digests["initrd"], sealed_volume_key=sealed_path,
        verity=verity, source=doc.get("source") or {}, output=doc.get("output") or {},
        options_digest=str(doc.get("options_digest") or ""))


def _check_verity(verity: dict[str, Any] | None, cmdline: str) -> None:
    """A verity staging dir boots only with its root hash on the measured cmdline: both must say the same."""
    from ..agent.verity import ROOT_HASH

    if not verity:
        raise SnpError("a verity staging dir must record the hash tree", field="manifest.verity")
    root_hash = _hex(verity.get("root_hash"), 32, "manifest.verity.root_hash")
    if f"{ROOT_HASH}={root_hash}" not in cmdline.split():
        raise SnpError(f"does not carry {ROOT_HASH}={root_hash} of manifest.verity", field="cmdline")


def new_dir_beside(target: str) -> str:
    """A fresh temp dir next to ``target`` (same file system, so publishing is a rename)."""
    parent = os.path.dirname(os.path.abspath(target)) or "."
    try:
        os.makedirs(parent, exist_ok=True)
        return tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    except OSError as exc:
        raise SnpError(f"cannot create a directory in {parent}: {exc.strerror}", path=target) from exc


def publish_dir(tmp: str, target: str) -> None:
    """Move a finished ``tmp`` dir to ``target``; an older ``target`` is removed after the switch."""
    old = None
    if os.path.lexists(target):
        old = target + ".old-" + os.path.basename(tmp)
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        if old:
            os.rename(old, target)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def discard_dir(tmp: str) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(tmp)
