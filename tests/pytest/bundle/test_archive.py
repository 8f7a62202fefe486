# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""module_utils/bundle/archive.py: deterministic launch bundles, and strict reading (no path traversal)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.archive import (
    build_bundle,
    build_launch_bundle,
    expansion_limit,
    gunzip_capped,
    read_bundle,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import FormatError, SnpError

ARGS = {"kernel": b"K" * 100, "initrd": b"I" * 200, "cmdline": "console=ttyS0", "firmware_sha384": "AB" * 48,
        "launch": {"vcpus": [1], "policy": "0x30000"}, "id_blocks": {1: ("YmxvY2s=", "YXV0aA==")}}


def test_same_inputs_same_bytes() -> None:
    first, second = build_launch_bundle(**ARGS), build_launch_bundle(**ARGS)
    assert first == second
    files = read_bundle(first)
    assert sorted(files) == ["cmdline", "firmware.sha384", "id_auth.b64", "id_block.b64", "initrd", "kernel",
                             "launch.json"]
    assert files["firmware.sha384"] == b"ab" * 48 + b"\n"
    assert json.loads(files["launch.json"])["id_block_files"] == {"1": {"id_block": "id_block.b64",
                                                                        "id_auth": "id_auth.b64"}}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first))) as tar:
        assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in tar)


def test_several_vcpu_counts_get_numbered_id_block_files() -> None:
    files = read_bundle(build_launch_bundle(**{**ARGS, "id_blocks": {1: ("a", "b"), 4: ("c", "d")}}))
    assert {"id_block.1.b64", "id_auth.4.b64"} <= set(files) and "id_block.b64" not in files


def _tar(*members: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return gzip.compress(raw.getvalue())


def _member(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = 1 if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize("bad", [
    _tar(_member("../escape")),
    _tar(_member("/etc/cron.d/x")),
    _tar(_member("sub/kernel")),
    _tar(_member("kernel", tarfile.SYMTYPE)),
    _tar(_member("dir", tarfile.DIRTYPE)),
    _tar(_member("kernel"), _member("kernel")),
    _tar(_member("kernel")),  # lacks the rest
    b"not gzip at all",
])
def test_unsafe_or_incomplete_bundles_are_refused(bad: bytes) -> None:
    with pytest.raises(FormatError) as error:
        read_bundle(bad)
    assert error.value.field.startswith("bundle")


def test_builder_refuses_unsafe_names_and_bad_firmware_digest() -> None:
    with pytest.raises(SnpError):
        build_bundle({"../x": b""})
    with pytest.raises(SnpError) as error:
        build_launch_bundle(**{**ARGS, "firmware_sha384": "xyz"})
    assert error.value.field == "artifacts.firmware_sha384"


# -- decompression bombs (issue 8, item 5) -------------------------------------------------------------------------


def test_a_gzip_bomb_is_refused_while_it_expands() -> None:
    """1 GiB of zeros in ~1 MB of gzip: refused at the running cap (64 MiB here), never fully inflated."""
    bomb = gzip.compress(bytes(1 << 30), compresslevel=9)
    with pytest.raises(FormatError, match="expands to more than 67108864 bytes"):
        read_bundle(bomb)


def test_the_cap_follows_the_compressed_size_and_the_maximum() -> None:
    assert expansion_limit(1 << 20, 1 << 30) == 64 << 20  # the floor
    assert expansion_limit(100 << 20, 1 << 30) == 800 << 20  # MAX_RATIO x
    assert expansion_limit(400 << 20, 512 << 20) == 512 << 20  # never past the maximum
    with pytest.raises(FormatError, match="is larger than"):
        read_bundle(b"x" * 2048, max_size=1024)


@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=4), st.integers(0, 20000))
@settings(max_examples=200, deadline=None)
def test_capped_gunzip_agrees_with_gzip(members: list[bytes], limit: int) -> None:
    """Multi-member gzip as gzip.decompress reads it: the same bytes under the cap, a refusal above it."""
    data = b"".join(gzip.compress(m) for m in members)
    whole = gzip.decompress(data)
    if len(whole) <= limit:
        assert gunzip_capped(data, limit) == whole
    else:
        with pytest.raises(FormatError, match="expands to more than"):
            gunzip_capped(data, limit)


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_capped_gunzip_refuses_garbage_with_format_errors(data: bytes) -> None:
    """Anything that is not gzip is a FormatError (never zlib.error, EOFError or a hang)."""
    if data.startswith(b"\x1f\x8b"):  # (a gzip header: it may still be valid; only the error type matters)
        try:
            gunzip_capped(data, 1 << 20)
        except FormatError:
            return
        return
    with pytest.raises(FormatError):
        gunzip_capped(data, 1 << 20)
