# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""parse_report on arbitrary input: it returns a report or raises FormatError, nothing else.

Self-contained (no shared vectors): reports are built here from the layout in the
reference (§1), so the offsets are checked against an independent encoding.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import FormatError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.report import (
    REPORT_SIZE,
    SIGNED_SIZE,
    SUPPORTED_VERSIONS,
    AttestationReport,
    SigningKey,
    decode_platform_info,
    parse_report,
    reserved_ranges,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product


def _parse_or_format_error(data: bytes) -> AttestationReport | None:
    try:
        return parse_report(data)
    except FormatError as exc:
        assert exc.field in ("report", "report.version")
        return None


@given(st.binary(max_size=2 * REPORT_SIZE))
def test_arbitrary_bytes(data: bytes) -> None:
    report = _parse_or_format_error(data)
    if len(data) != REPORT_SIZE:
        assert report is None


@pytest.mark.parametrize("size", [0, 1, 793, REPORT_SIZE - 1, REPORT_SIZE + 1, 4000])
def test_wrong_sizes(size: int) -> None:
    with pytest.raises(FormatError, match=f"got {size}") as info:
        parse_report(bytes([2]) + bytes(max(size - 1, 0)) if size else b"", field_name="evidence")
    assert info.value.field == "evidence"


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_unsupported_versions(version: int) -> None:
    with pytest.raises(FormatError) as info:
        parse_report(struct.pack("<I", version) + bytes(REPORT_SIZE - 4))
    assert info.value.field == "report.version"


def _with_version(body: bytes, version: int) -> bytes:
    return struct.pack("<I", version) + body[4:]


@settings(max_examples=300)
@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE), st.sampled_from(SUPPORTED_VERSIONS))
def test_valid_versions_always_parse(body: bytes, version: int) -> None:
    data = _with_version(body, version)
    report = parse_report(data)
    assert report.raw == data and report.version == version
    assert report.signed_bytes == data[:SIGNED_SIZE] and report.signature == data[SIGNED_SIZE:SIGNED_SIZE + 0x200]
    # fields at the reference's offsets

    def u32(off: int) -> int:
        return int.from_bytes(data[off:off + 4], "little")

    def u64(off: int) -> int:
        return int.from_bytes(data[off:off + 8], "little")

    assert (report.guest_svn, report.policy, report.vmpl, report.signature_algo) == (u32(4), u64(8), u32(0x30),
                                                                                     u32(0x34))
    assert (report.family_id, report.image_id) == (data[0x10:0x20], data[0x20:0x30])
    assert (report.current_tcb_raw, report.platform_info, report.key_info) == (u64(0x38), u64(0x40), u32(0x48))
    assert report.report_data == data[0x50:0x90] and report.measurement == data[0x90:0xC0]
    assert report.host_data == data[0xC0:0xE0] and report.id_key_digest == data[0xE0:0x110]
    assert report.author_key_digest == data[0x110:0x140]
    assert (report.report_id, report.report_id_ma) == (data[0x140:0x160], data[0x160:0x180])
    assert report.reported_tcb_raw == u64(0x180) and report.chip_id == data[0x1A0:0x1E0]
    assert report.committed_tcb_raw == u64(0x1E0) and report.launch_tcb_raw == u64(0x1F0)
    assert (report.current_version.build, report.current_version.minor, report.current_version.major) == tuple(
        data[0x1E8:0x1EB])
    assert (report.committed_version.build, report.committed_version.minor, report.committed_version.major) == tuple(
        data[0x1EC:0x1EF])
    assert report.signature_r == int.from_bytes(data[0x2A0:0x2E8], "little")
    assert report.signature_s == int.from_bytes(data[0x2E8:0x330], "little")
    cpuid = (report.cpuid_family, report.cpuid_model, report.cpuid_stepping)
    assert cpuid == (tuple(data[0x188:0x18B]) if version >= 3 else (None, None, None))
    mit = (report.launch_mit_vector, report.current_mit_vector)
    assert mit == ((u64(0x1F8), u64(0x200)) if version >= 5 else (None, None))
    # key info
    assert report.author_key_en is bool(report.key_info & 1)
    assert report.mask_chip_key is bool(report.key_info & 2)
    assert report.signing_key_raw == report.key_info >> 2 & 7
    assert report.signing_key is {0: SigningKey.VCEK, 1: SigningKey.VLEK, 7: SigningKey.NONE}.get(
        report.signing_key_raw)
    # reserved ranges: exactly the non-zero ones are named
    named = {f"0x{s:03x}-0x{e - 1:03x}" for s, e in reserved_ranges(version) if any(data[s:e])}
    assert set(report.reserved_nonzero) == named
    # display never fails, whatever the product
    for product in (None, *Product):
        shown = report.as_dict(product)
        assert shown["version"] == version
    assert set(decode_platform_info(report.platform_info).values()) <= {True, False}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_reserved_ranges_cover_exactly_the_unused_bytes(version: int) -> None:
    used = set(range(0x000, 0x04C)) | set(range(0x050, 0x188)) | set(range(0x1A0, 0x1EB)) | set(range(0x1EC, 0x1EF))
    used |= set(range(0x1F0, 0x1F8)) | set(range(0x2A0, 0x330))
    if version >= 3:
        used |= set(range(0x188, 0x18B))
    if version >= 5:
        used |= set(range(0x1F8, 0x208))
    reserved = {offset for start, end in reserved_ranges(version) for offset in range(start, end)}
    assert reserved == set(range(REPORT_SIZE)) - used


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_zero_report_has_no_reserved_bytes(version: int) -> None:
    report = parse_report(_with_version(bytes(REPORT_SIZE), version))
    assert report.reserved_nonzero == ()
    assert report.chip_id_masked and report.product_from_cpuid is None


@pytest.mark.parametrize(("family", "model", "product"), [(0x19, 0x01, Product.MILAN), (0x19, 0x11, Product.GENOA),
                                                          (0x19, 0xA0, Product.GENOA), (0x1A, 0x02, Product.TURIN),
                                                          (0x17, 0x31, None)])
def test_product_from_cpuid_bytes(family: int, model: int, product: Product | None) -> None:
    data = bytearray(_with_version(bytes(REPORT_SIZE), 3))
    data[0x188:0x18B] = bytes([family, model, 1])
    assert parse_report(bytes(data)).product_from_cpuid is product
    data[0:4] = struct.pack("<I", 2)  # version 2 has no CPUID bytes: they are reserved
    v2 = parse_report(bytes(data))
    assert v2.product_from_cpuid is None and v2.reserved_nonzero == ("0x188-0x19f",)
