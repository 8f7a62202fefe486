# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""OVMF footer table and SEV metadata (reference §5.3, §5.4): parsing, every refusal, fuzzing."""

from __future__ import annotations

import contextlib
import json
import struct
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp import ovmf
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import FormatError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.ovmf import (
    FirmwareImage,
    Section,
    SectionType,
    parse_firmware,
    parse_footer_table,
    parse_metadata_wrapper,
    parse_sev_metadata,
)
from ansible_collections.snpguard.cvm.tests.unit.plugins.module_utils.snp.ovmf_synth import (
    AMDSEV_SECTIONS,
    CPUID,
    FOOTER_GUID,
    HASH_TABLE_GPA,
    KERNEL_HASHES,
    METADATA_GUID,
    PAGE,
    RESET_BLOCK_GUID,
    RESET_EIP,
    SEC_MEM,
    SVSM_INFO_GUID,
    TDX_GUID,
    Image,
    footer_entry,
    guid_le,
    guid_str,
    metadata_block,
)

FIELDS = ("ovmf", "svsm")


def test_helper_guid_layout_is_efi_byte_order() -> None:
    # The footer GUID as it sits in the file (reference §5.3): de82b596 b21f f745 baea a366c55a082d.
    assert guid_le(FOOTER_GUID).hex() == "de82b596b21ff745baeaa366c55a082d"
    assert guid_str(guid_le(FOOTER_GUID)) == FOOTER_GUID


def test_engine_guid_constants_match_reference() -> None:
    assert str(ovmf.FOOTER_GUID) == FOOTER_GUID
    assert str(ovmf.SEV_METADATA_GUID) == METADATA_GUID
    assert str(ovmf.SEV_ES_RESET_BLOCK_GUID) == RESET_BLOCK_GUID
    assert str(ovmf.SEV_HASH_TABLE_GUID) == "7255371f-3a3b-4b04-927b-1da6efa8d454"
    assert str(ovmf.SVSM_INFO_GUID) == SVSM_INFO_GUID
    assert [t.value for t in SectionType] == [1, 2, 3, 4, 0x10]


# --- parsing a valid image ---


def test_parse_amdsev_like_image() -> None:
    data = Image(size=3 * PAGE).build()
    fw = parse_firmware(data, path="/x/OVMF.fd")
    assert fw.size == 3 * PAGE
    assert fw.gpa == 0x1_0000_0000 - 3 * PAGE
    assert fw.path == "/x/OVMF.fd" and fw.field == "ovmf"
    assert [(s.gpa, s.size, s.type.value) for s in fw.sections] == list(AMDSEV_SECTIONS)
    assert fw.sev_es_reset_eip == RESET_EIP
    assert fw.hash_table_gpa == HASH_TABLE_GPA
    assert fw.has_hash_table
    assert fw.has_section(SectionType.SNP_KERNEL_HASHES)
    assert fw.table[uuid.UUID(RESET_BLOCK_GUID)] == struct.pack("<I", RESET_EIP)
    assert fw.table[uuid.UUID(METADATA_GUID)] == struct.pack("<I", 0x800)
    assert set(map(str, fw.table)) == {METADATA_GUID, RESET_BLOCK_GUID, "7255371f-3a3b-4b04-927b-1da6efa8d454",
                                       "4c2eb361-7d9b-4cc3-8081-127c90d3d294"}


def test_sections_keep_binary_order() -> None:
    # edk2 releases list sections in different orders; the parser must not sort them.
    shuffled = (AMDSEV_SECTIONS[5], AMDSEV_SECTIONS[0], AMDSEV_SECTIONS[3], AMDSEV_SECTIONS[2])
    fw = parse_firmware(Image(sections=shuffled).build())
    assert [(s.gpa, s.size, s.type.value) for s in fw.sections] == list(shuffled)


def test_footer_entries_of_any_length_and_unknown_guids() -> None:
    extra = [(TDX_GUID, struct.pack("<I", 0x840)), ("12345678-1234-5678-9abc-def012345678", b"\x01\x02\x03" * 7)]
    fw = parse_firmware(Image(extra_entries=extra).build())
    assert fw.table[uuid.UUID(TDX_GUID)] == struct.pack("<I", 0x840)
    assert fw.table[uuid.UUID("12345678-1234-5678-9abc-def012345678")] == b"\x01\x02\x03" * 7


def test_empty_payload_entry_is_kept() -> None:
    fw = parse_firmware(Image(extra_entries=[(TDX_GUID, b"")]).build())
    assert fw.table[uuid.UUID(TDX_GUID)] == b""


def test_no_metadata_entry_gives_no_sections() -> None:
    fw = parse_firmware(Image(sections=None).build())
    assert fw.sections == ()
    assert uuid.UUID(METADATA_GUID) not in fw.table


def test_zero_sections() -> None:
    fw = parse_firmware(Image(sections=()).build())
    assert fw.sections == ()


def test_footer_table_with_only_the_footer_entry() -> None:
    image = Image(sections=None, reset_eip=None, hash_table=None, secret=None)
    assert parse_firmware(image.build()).table == {}


def test_hash_table_presence() -> None:
    assert not parse_firmware(Image(hash_table=None).build()).has_hash_table
    # A zero base GPA means "no table" (as sev-snp-measure's is_sev_hashes_table_supported).
    assert not parse_firmware(Image(hash_table=(0, 0x400)).build()).has_hash_table
    assert parse_firmware(Image(hash_table=(0x1000, 0)).build()).has_hash_table


def test_svsm_entry_and_end_gpa() -> None:
    data = Image(svsm_entry=0x1234).build()
    fw = parse_firmware(data, end_gpa=0xFF000000, field="svsm")
    assert fw.svsm_entry_offset == 0x1234
    assert fw.gpa == 0xFF000000 - len(data)
    assert fw.field == "svsm"


def test_metadata_at_offset_equal_to_file_size() -> None:
    # offset-from-end == file size puts the header at file offset 0.
    image = Image(size=PAGE, metadata_from_end=PAGE)
    assert len(parse_firmware(image.build()).sections) == len(AMDSEV_SECTIONS)


def test_metadata_length_may_exceed_the_descriptors() -> None:
    block = metadata_block(AMDSEV_SECTIONS[:2], length=16 + 2 * 12 + 40)
    fw = parse_firmware(Image(sections=None, metadata_bytes=block).build())
    assert len(fw.sections) == 2


def test_describe() -> None:
    fw = parse_firmware(Image().build())
    doc = fw.describe()
    json.dumps(doc)
    assert doc["size"] == 2 * PAGE
    assert doc["gpa"] == "0xffffe000"
    assert doc["sections"][0] == {"type": "SNP_SEC_MEM", "gpa": "0x800000", "size": "0x9000"}
    assert doc["sections"][5]["type"] == "SNP_KERNEL_HASHES"
    assert METADATA_GUID in doc["footer_table"]


# --- every refusal, with its message and field ---


def _refusal(data: bytes, field: str, match: str) -> FormatError:
    with pytest.raises(FormatError, match=match) as info:
        parse_firmware(data, path="/fw.bin", field=field)
    assert info.value.field == field
    assert info.value.path == "/fw.bin"
    assert field in str(info.value) and "/fw.bin" in str(info.value)
    return info.value


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("size", [0, 1, 50, 4095, 4097, 8191])
def test_size_not_a_page_multiple(field: str, size: int) -> None:
    _refusal(bytes(size), field, rf"size {size} is not a non-zero multiple of 4096")


@pytest.mark.parametrize("field", FIELDS)
def test_too_small_for_a_footer(field: str) -> None:
    for size in (0, 10, 49):
        with pytest.raises(FormatError, match=rf"not an OVMF image: only {size} bytes") as info:
            parse_footer_table(bytes(size), path="/p", field=field)
        assert info.value.field == field and info.value.path == "/p"


@pytest.mark.parametrize("field", FIELDS)
def test_does_not_fit_below_end_gpa(field: str) -> None:
    with pytest.raises(FormatError, match="does not fit below 0x1000") as info:
        parse_firmware(Image().build(), end_gpa=PAGE, field=field)
    assert info.value.field == field


@pytest.mark.parametrize("field", FIELDS)
def test_negative_end_gpa_is_refused(field: str) -> None:
    with pytest.raises(FormatError) as info:
        parse_firmware(Image().build(), end_gpa=-PAGE, field=field)
    assert info.value.field == field


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("data", [bytes(PAGE), b"\xff" * PAGE, Image(footer_guid=METADATA_GUID).build()],
                         ids=["zeros", "ones", "other-guid"])
def test_no_footer_guid(field: str, data: bytes) -> None:
    _refusal(data, field, "no GUIDed footer table 0x30 bytes before the end")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("length", [0, 1, 17, PAGE, 0xFFFF])
def test_table_length_out_of_range(field: str, length: int) -> None:
    _refusal(Image(size=PAGE, table_length=length).build(), field, rf"footer table length {length} is out of range")


def test_table_length_at_the_limit_is_accepted_then_entries_checked() -> None:
    # A length that reaches file offset 0 is in range; the entries inside must still be valid.
    n = PAGE
    length = (n - 0x32) + 18
    data = bytearray(Image(size=n, table_length=length).build())
    data[: n - 0x32 - len(Image().table_bytes())] = bytes(n - 0x32 - len(Image().table_bytes()))
    with pytest.raises(FormatError, match="has invalid length 0"):
        parse_firmware(bytes(data))


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("entry_len", [0, 17, 0xFFFF, 18 + 4 + 1])
def test_bad_entry_length(field: str, entry_len: int) -> None:
    # One entry whose own u16 length is too short or longer than the table.
    entry = footer_entry(RESET_BLOCK_GUID, struct.pack("<I", RESET_EIP), length=entry_len)
    image = Image(sections=None, reset_eip=None, hash_table=None, secret=None)
    data = bytearray(image.build())
    n = len(data)
    data[n - 0x32 - len(entry) : n - 0x32] = entry
    data[n - 0x32 : n - 0x30] = struct.pack("<H", len(entry) + 18)
    err = _refusal(bytes(data), field, rf"entry {RESET_BLOCK_GUID} has invalid length {entry_len}")
    assert str(entry_len) in err.message


@pytest.mark.parametrize("field", FIELDS)
def test_metadata_entry_shorter_than_4_bytes(field: str) -> None:
    data = Image(sections=None, extra_entries=[(METADATA_GUID, b"\x00\x08")]).build()
    _refusal(data, field, "SEV metadata entry is shorter than 4 bytes")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("offset", [0, 8, 15, 2 * PAGE + 1, 0xFFFFFFFF])
def test_metadata_offset_outside(field: str, offset: int) -> None:
    data = Image(metadata_offset=offset).build()
    _refusal(data, field, rf"SEV metadata offset 0x{offset:x} points outside the image")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("signature", [b"ASEX", b"asev", b"\x00\x00\x00\x00", b"VESA"])
def test_bad_asev_signature(field: str, signature: bytes) -> None:
    data = Image(sections=None, metadata_bytes=metadata_block(AMDSEV_SECTIONS, signature=signature)).build()
    _refusal(data, field, "signature is not 'ASEV'")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("version", [0, 2, 0xFFFFFFFF])
def test_bad_metadata_version(field: str, version: int) -> None:
    data = Image(sections=None, metadata_bytes=metadata_block(AMDSEV_SECTIONS, version=version)).build()
    _refusal(data, field, rf"SEV metadata version {version} is not supported")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize(("length", "count"), [(16, 1), (16 + 7 * 12 - 1, 7), (0, 0x7FFFFFFF), (16, 0xFFFFFFFF)])
def test_metadata_length_too_short_for_count(field: str, length: int, count: int) -> None:
    block = metadata_block(AMDSEV_SECTIONS, length=length, count=count)
    data = Image(sections=None, metadata_bytes=block).build()
    _refusal(data, field, rf"SEV metadata length {length} does not match {count} sections")


@pytest.mark.parametrize("field", FIELDS)
def test_metadata_length_past_end_of_file(field: str) -> None:
    block = metadata_block(AMDSEV_SECTIONS[:1], length=0x900)
    data = Image(sections=None, metadata_bytes=block, metadata_from_end=0x800).build()
    _refusal(data, field, "SEV metadata length 2304 does not match 1 sections")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("kind", [0, 5, 0xF, 0x11, 0xFFFFFFFF])
def test_unknown_section_type(field: str, kind: int) -> None:
    sections = (AMDSEV_SECTIONS[0], (0x900000, 0x1000, kind))
    err = _refusal(Image(sections=sections).build(), field, rf"section 1 has unknown type 0x{kind:x}")
    assert err.__cause__ is None


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize(("gpa", "size"), [(0x800001, 0x1000), (0x800000, 0xFFF), (0x800800, 0x800), (0x800000, 1)])
def test_unaligned_section(field: str, gpa: int, size: int) -> None:
    sections = ((gpa, size, SEC_MEM),)
    _refusal(Image(sections=sections).build(), field,
             rf"section 0 \(SNP_SEC_MEM\) is not page aligned: gpa 0x{gpa:x} size 0x{size:x}")


def test_parse_sev_metadata_directly_without_entry() -> None:
    assert parse_sev_metadata(b"", {}) == ()


@pytest.mark.parametrize("field", FIELDS)
def test_missing_footer_entries_are_named(field: str) -> None:
    fw = parse_firmware(Image(reset_eip=None, hash_table=None).build(), path="/f", field=field)
    for attribute, name in (("sev_es_reset_eip", "SEV-ES reset block"), ("hash_table_gpa", "SEV hash table"),
                            ("svsm_entry_offset", "SVSM info")):
        with pytest.raises(FormatError, match=f"firmware has no {name} entry") as info:
            getattr(fw, attribute)
        assert info.value.field == field and info.value.path == "/f"


@pytest.mark.parametrize("field", FIELDS)
def test_short_footer_entries_are_named(field: str) -> None:
    data = Image(reset_eip=None, extra_entries=[(RESET_BLOCK_GUID, b"\x04\xb0")]).build()
    fw = parse_firmware(data, field=field)
    with pytest.raises(FormatError, match="SEV-ES reset block entry is 2 bytes, expected at least 4") as info:
        _reset_eip = fw.sev_es_reset_eip
    assert info.value.field == field


def test_precomputed_reset_eip_wins() -> None:
    fw = FirmwareImage(b"", {}, (), precomputed_reset_eip=0x1234)
    assert fw.sev_es_reset_eip == 0x1234


# --- the metadata wrapper (sev-snp-measure-go JSON) ---

WRAPPER = {
    "MetadataItems": [
        {"GPA": "0x800000", "SectionTypeInt": 1, "Size": "0x9000"},
        {"GPA": "0x80d000", "SectionTypeInt": 2, "Size": "0x1000"},
        {"GPA": "0x80e000", "SectionTypeInt": 3, "Size": "0x1000"},
    ],
    "ResetEIP": "0x80b004",
    "OVMFHash": "ab" * 48,
}


def test_metadata_wrapper() -> None:
    fw, digest = parse_metadata_wrapper(json.dumps(WRAPPER), "/w.json")
    assert digest == bytes.fromhex("ab" * 48)
    assert fw.sections == (Section(0x800000, 0x9000, SectionType.SNP_SEC_MEM),
                           Section(0x80D000, 0x1000, SectionType.SNP_SECRETS),
                           Section(0x80E000, 0x1000, SectionType.CPUID))
    assert fw.sev_es_reset_eip == 0x80B004
    assert fw.data == b"" and fw.path == "/w.json"


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        "[]",
        "{}",
        json.dumps({**WRAPPER, "ResetEIP": "zz"}),
        json.dumps({**WRAPPER, "ResetEIP": 5}),
        json.dumps({**WRAPPER, "OVMFHash": "xyz"}),
        json.dumps({**WRAPPER, "OVMFHash": "ab" * 47}),
        json.dumps({**WRAPPER, "MetadataItems": [{"GPA": "0x0", "Size": "0x1000", "SectionTypeInt": 9}]}),
        json.dumps({**WRAPPER, "MetadataItems": [{"GPA": "0x0", "Size": "0x1000"}]}),
        json.dumps({**WRAPPER, "MetadataItems": None}),
    ],
)
def test_metadata_wrapper_refusals(doc: str) -> None:
    with pytest.raises(FormatError) as info:
        parse_metadata_wrapper(doc, "/w.json")
    assert info.value.field == "ovmf_metadata" and info.value.path == "/w.json"


# --- fuzzing: only FormatError, never another exception ---


def _parse_or_format_error(data: bytes) -> FirmwareImage | None:
    try:
        fw = parse_firmware(data)
    except FormatError as exc:
        assert exc.field == "ovmf"
        return None
    # A parsed image is internally consistent.
    for section in fw.sections:
        assert isinstance(section.type, SectionType)
        assert section.gpa % PAGE == 0 and section.size % PAGE == 0
    for attribute in ("sev_es_reset_eip", "hash_table_gpa", "svsm_entry_offset"):
        with contextlib.suppress(FormatError):
            assert 0 <= getattr(fw, attribute) < 1 << 32
    fw.describe()
    return fw


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3 * PAGE))
def test_arbitrary_bytes(data: bytes) -> None:
    _parse_or_format_error(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2), st.binary(min_size=50, max_size=400))
def test_arbitrary_tail_on_page_sized_image(pages: int, tail: bytes) -> None:
    data = bytes(pages * PAGE - len(tail)) + tail
    _parse_or_format_error(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2), st.binary(min_size=0, max_size=300))
def test_arbitrary_footer_table_behind_a_valid_footer(pages: int, table: bytes) -> None:
    data = bytearray(pages * PAGE)
    n = len(data)
    data[n - 0x32 : n - 0x20] = struct.pack("<H", len(table) + 18) + guid_le(FOOTER_GUID)
    data[n - 0x32 - len(table) : n - 0x32] = table
    _parse_or_format_error(bytes(data))


_VALID = Image(sections=(*AMDSEV_SECTIONS, (0x900000, 0x2000, CPUID), (0x902000, 0x1000, KERNEL_HASHES))).build()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(len(_VALID) - 0x800, len(_VALID) - 1), st.integers(0, 255)),
                min_size=1, max_size=8))
def test_mutated_valid_image(mutations: list[tuple[int, int]]) -> None:
    data = bytearray(_VALID)
    for index, value in mutations:
        data[index] = value
    _parse_or_format_error(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0x800), st.sampled_from([0, 1, 2, 4, 0xFF, 0xFFFF, 0xFFFFFFFF]), st.integers(0, 3))
def test_mutated_words_in_valid_image(offset_from_end: int, value: int, width_index: int) -> None:
    width = (1, 2, 4, 4)[width_index]
    data = bytearray(_VALID)
    start = len(data) - 1 - offset_from_end
    chunk = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    data[start : start + width] = chunk[: len(data) - start]
    _parse_or_format_error(bytes(data))


@pytest.mark.parametrize(
    "item",
    [
        {"GPA": "0x800000", "Size": "0x800", "SectionTypeInt": 1},
        {"GPA": "0x800800", "Size": "0x1000", "SectionTypeInt": 1},
        {"GPA": "-0x1000", "Size": "0x1000", "SectionTypeInt": 1},
        {"GPA": "0x800000", "Size": "-0x1000", "SectionTypeInt": 2},
        {"GPA": "0x100000000", "Size": "0x1000", "SectionTypeInt": 3},
    ],
    ids=["unaligned-size", "unaligned-gpa", "negative-gpa", "negative-size", "gpa-above-u32"],
)
def test_metadata_wrapper_sections_are_checked_like_the_binary_ones(item: dict) -> None:
    """The JSON description carries the same u32, page-aligned sections as the ASEV table; it must be refused
    the same way (FormatError naming ovmf_metadata), not accepted and left to crash the measurement."""
    doc = json.dumps({**WRAPPER, "MetadataItems": [item]})
    with pytest.raises(FormatError) as info:
        parse_metadata_wrapper(doc, "/w.json")
    assert info.value.field == "ovmf_metadata"


@pytest.mark.parametrize("eip", ["-0x1", "0x100000000"])
def test_metadata_wrapper_reset_eip_is_a_u32(eip: str) -> None:
    with pytest.raises(FormatError) as info:
        parse_metadata_wrapper(json.dumps({**WRAPPER, "ResetEIP": eip}), "/w.json")
    assert info.value.field == "ovmf_metadata"
