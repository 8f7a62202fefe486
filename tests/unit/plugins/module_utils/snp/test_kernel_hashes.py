# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The SEV kernel-hashes table (reference §5.5) and the file hashing behind it."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp import kernel_hashes
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import MeasurementError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.kernel_hashes import (
    KernelHashes,
    cmdline_bytes,
)
from ansible_collections.snpguard.cvm.tests.unit.plugins.module_utils.snp.ovmf_synth import (
    cmdline_hash,
    guid_le,
    ref_hash_table,
)

SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA256_NUL = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"


def test_cmdline_bytes() -> None:
    assert cmdline_bytes(None) == b"\x00"
    assert cmdline_bytes("") == b"\x00"
    assert cmdline_bytes("console=ttyS0") == b"console=ttyS0\x00"
    assert cmdline_bytes("é ü") == "é ü".encode() + b"\x00"
    assert hashlib.sha256(cmdline_bytes(None)).hexdigest() == SHA256_NUL


def test_from_digests_defaults() -> None:
    kernel = hashlib.sha256(b"k").digest()
    hashes = KernelHashes.from_digests(kernel, None, None)
    assert hashes.kernel == kernel
    assert hashes.initrd.hex() == SHA256_EMPTY
    assert hashes.cmdline.hex() == SHA256_NUL
    assert hashes.as_dict() == {"kernel_sha256": kernel.hex(), "initrd_sha256": SHA256_EMPTY,
                                "cmdline_sha256": SHA256_NUL}


def test_table_layout_by_hand() -> None:
    k, i, c = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    table = KernelHashes(k, i, c).table()
    assert len(table) == 176
    assert table[:16] == guid_le("9438d606-4f22-4cc9-b479-a793d411fd21")
    assert table[16:18] == (168).to_bytes(2, "little")
    entries = [table[18 + 50 * n : 18 + 50 * (n + 1)] for n in range(3)]
    # Order is cmdline, initrd, kernel.
    assert entries[0] == guid_le("97d02dd8-bd20-4c94-aa78-e7714d36ab2a") + b"\x32\x00" + c
    assert entries[1] == guid_le("44baf731-3a2f-4bd7-9af1-41e29169781d") + b"\x32\x00" + i
    assert entries[2] == guid_le("4de79437-abd2-427f-b835-d5b172d2045b") + b"\x32\x00" + k
    assert table[168:] == bytes(8)
    assert table == ref_hash_table(k, i, c)


def test_engine_guids() -> None:
    assert str(kernel_hashes.TABLE_GUID) == "9438d606-4f22-4cc9-b479-a793d411fd21"
    assert str(kernel_hashes.KERNEL_GUID) == "4de79437-abd2-427f-b835-d5b172d2045b"
    assert kernel_hashes.TABLE_SIZE == 168 and kernel_hashes.PADDED_TABLE_SIZE == 176


@pytest.mark.parametrize("gpa", [0x810C00, 0x810000, 0x810F50, 0x1234])
def test_page_places_the_table_at_the_gpa_offset(gpa: int) -> None:
    hashes = KernelHashes(b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32)
    page = hashes.page(gpa)
    off = gpa & 0xFFF
    assert len(page) == 0x1000
    assert page == bytes(off) + hashes.table() + bytes(0x1000 - off - 176)


@pytest.mark.parametrize("gpa", [0x810F51, 0x810FFF])
def test_page_refuses_a_table_crossing_the_page(gpa: int) -> None:
    with pytest.raises(MeasurementError, match="cross a page boundary") as info:
        KernelHashes(bytes(32), bytes(32), bytes(32)).page(gpa)
    assert info.value.field == "ovmf"


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=5000), st.one_of(st.none(), st.text(max_size=50)))
def test_table_matches_reference_for_any_input(kernel: bytes, append: str | None) -> None:
    hashes = KernelHashes.from_digests(hashlib.sha256(kernel).digest(), None, append)
    assert hashes.table() == ref_hash_table(hashlib.sha256(kernel).digest(), bytes.fromhex(SHA256_EMPTY),
                                            cmdline_hash(append))
