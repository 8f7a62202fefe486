# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The launch-artifacts bundle: one deterministic ``tar.gz`` that ``boot`` consumes.

Members, all regular files at the top level::

    kernel            the kernel QEMU loads (-kernel)
    initrd            the initrd (-initrd)
    cmdline           the kernel command line, UTF-8, no trailing newline
    firmware.sha384   hex SHA-384 of the OVMF image (its identity; the firmware itself is the host's)
    launch.json       the launch facts (``launch.py``): vCPUs, vCPU type, guest policy, guest features,
                      VMM type, expected measurement(s), host data, and the ID block files per vCPU count
    id_block.b64      ID block and ID auth, base64 as QEMU takes them, when there is one vCPU count;
    id_auth.b64       with several, ``id_block.<vcpus>.b64`` / ``id_auth.<vcpus>.b64`` per count

Deterministic: sorted members, mtime 0, uid/gid 0, mode 0644, USTAR headers, gzip
without a name or timestamp, so the same inputs always give the same bytes and the
bundle's SHA-256 identifies its content.  ``read_bundle`` is strict the other way: a
bundle with directories, links, absolute or dotted names, or duplicate members is
refused, so unpacking one can never write outside its directory.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
import zlib
from collections.abc import Mapping
from typing import Any

from ..snp.errors import FormatError, SnpError
from .launch import parse_launch

MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
REQUIRED = ("kernel", "initrd", "cmdline", "firmware.sha384", "launch.json")
MAX_MEMBERS = 64
MAX_RATIO = 8
MIN_EXPANSION_LIMIT = 64 << 20


def build_bundle(files: Mapping[str, bytes]) -> bytes:
    """A deterministic tar.gz of ``files`` (top-level names only)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            if not MEMBER_NAME.match(name) or ".." in name:
                raise SnpError(f"bad member name {name!r}", field="bundle")
            data = bytes(files[name])
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def build_launch_bundle(*, kernel: bytes, initrd: bytes, cmdline: str, firmware_sha384: str,
                        launch: Mapping[str, Any], id_blocks: Mapping[int, tuple[str, str]] | None = None) -> bytes:
    """The bundle for one image; ``id_blocks`` maps vCPU count → (ID block b64, ID auth b64)."""
    firmware = firmware_sha384.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{96}", firmware):
        raise SnpError("must be 96 hex digits (SHA-384)", field="artifacts.firmware_sha384")
    files: dict[str, bytes] = {
        "kernel": bytes(kernel),
        "initrd": bytes(initrd),
        "cmdline": cmdline.encode("utf-8"),
        "firmware.sha384": firmware.encode("ascii") + b"\n",
    }
    facts = parse_launch(launch, field_name="artifacts.launch")
    blocks = dict(id_blocks or {})
    if blocks:
        single = len(blocks) == 1
        names: dict[str, dict[str, str]] = {}
        for vcpus in sorted(blocks):
            block, auth = blocks[vcpus]
            block_name = "id_block.b64" if single else f"id_block.{vcpus}.b64"
            auth_name = "id_auth.b64" if single else f"id_auth.{vcpus}.b64"
            files[block_name] = block.encode("ascii") + b"\n"
            files[auth_name] = auth.encode("ascii") + b"\n"
            names[str(vcpus)] = {"id_block": block_name, "id_auth": auth_name}
        facts.id_block_files = {int(k): v for k, v in names.items()}
    files["launch.json"] = facts.dumps()
    return build_bundle(files)


def gunzip_capped(data: bytes, limit: int, *, field: str = "bundle") -> bytes:
    """Decompress gzip (one or more members) as a stream, refusing as soon as the output passes ``limit``.

    A small "gzip bomb" can expand a thousandfold; stopping at the limit bounds both the
    memory and the time it can cost.
    """
    out = bytearray()
    view = memoryview(data)
    pending = bytes(view)
    if not pending:
        raise FormatError("is not gzip: empty", field=field)
    chunk = 1 << 20
    while pending:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        source = memoryview(pending)
        offset = 0
        try:
            while not inflater.eof:
                piece = inflater.unconsumed_tail or bytes(source[offset:offset + chunk])
                if not inflater.unconsumed_tail:
                    offset += len(piece)
                if not piece:
                    raise FormatError("is not gzip: truncated", field=field)
                out += inflater.decompress(piece, limit + 1 - len(out))
                if len(out) > limit:
                    raise FormatError(f"expands to more than {limit} bytes", field=field)
        except zlib.error as exc:
            raise FormatError(f"is not gzip: {exc}", field=field) from exc
        pending = inflater.unused_data + bytes(source[offset:])
    return bytes(out)


def expansion_limit(compressed_size: int, max_size: int) -> int:
    """How far a bundle may expand: kernels and initrds are compressed already, so real bundles stay near 1:1."""
    return min(max_size, max(MIN_EXPANSION_LIMIT, MAX_RATIO * compressed_size))


def read_bundle(data: bytes, *, max_size: int = 1 << 30) -> dict[str, bytes]:
    """Unpack and check a bundle in memory; raises ``FormatError`` naming what is wrong.

    The archive may expand to ``MAX_RATIO`` times its size (at least 64 MiB) and never past ``max_size``.
    """
    if len(data) > max_size:
        raise FormatError(f"is larger than {max_size} bytes", field="bundle")
    raw = gunzip_capped(data, expansion_limit(len(data), max_size))
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                if len(files) >= MAX_MEMBERS:
                    raise FormatError(f"has more than {MAX_MEMBERS} members", field="bundle")
                if not member.isfile():
                    raise FormatError(f"member {member.name!r} is not a regular file", field="bundle")
                if not MEMBER_NAME.match(member.name) or ".." in member.name:
                    raise FormatError(f"member name {member.name!r} is not a plain top-level name", field="bundle")
                if member.name in files:
                    raise FormatError(f"member {member.name!r} appears twice", field="bundle")
                handle = tar.extractfile(member)
                files[member.name] = handle.read() if handle else b""
    except tarfile.TarError as exc:
        raise FormatError(f"is not a tar archive: {exc}", field="bundle") from exc
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise FormatError(f"lacks {', '.join(missing)}", field="bundle")
    try:
        doc = json.loads(files["launch.json"])
    except ValueError as exc:
        raise FormatError(f"launch.json is not JSON: {exc}", field="bundle.launch.json") from exc
    if not isinstance(doc, dict):
        raise FormatError("launch.json is not a JSON object", field="bundle.launch.json")
    try:
        parse_launch(doc, field_name="bundle.launch.json")
    except SnpError as exc:
        raise FormatError(exc.message, field=exc.field) from exc
    return files
