# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""OVMF firmware images: the GUIDed footer table and the SEV metadata sections.

SNP measures the firmware file mapped to end at 4 GiB, then each metadata section
in the order the binary lists it (the order changes between edk2 releases, so it is
always read, never assumed).  The footer table also gives the AP reset vector (which
lands in every AP's VMSA) and where QEMU puts the kernel-hashes table.
"""

from __future__ import annotations

import enum
import json
import struct
import uuid
from dataclasses import dataclass

from .errors import FormatError

FOUR_GB = 0x1_0000_0000

FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
SEV_METADATA_GUID = uuid.UUID("dc886566-984a-4798-a75e-5585a7bf67cc")
SEV_HASH_TABLE_GUID = uuid.UUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
SEV_SECRET_GUID = uuid.UUID("4c2eb361-7d9b-4cc3-8081-127c90d3d294")
SEV_ES_RESET_BLOCK_GUID = uuid.UUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
SVSM_INFO_GUID = uuid.UUID("a789a612-0597-4c4b-a49f-cbb1fe9d1ddd")

_ENTRY_TAIL = 18  # u16 length + 16-byte GUID
_METADATA_HEADER = struct.Struct("<4sIII")
_SECTION = struct.Struct("<III")


class SectionType(enum.IntEnum):
    SNP_SEC_MEM = 1
    SNP_SECRETS = 2
    CPUID = 3
    SVSM_CAA = 4
    SNP_KERNEL_HASHES = 0x10


@dataclass(frozen=True)
class Section:
    gpa: int
    size: int
    type: SectionType


@dataclass(frozen=True)
class FirmwareImage:
    """What the measurement needs to know about a firmware (OVMF or SVSM) binary."""

    data: bytes
    table: dict[uuid.UUID, bytes]
    sections: tuple[Section, ...]
    end_gpa: int = FOUR_GB
    path: str | None = None
    field: str = "ovmf"
    # Set when the image is described by metadata only (no firmware bytes).
    precomputed_reset_eip: int | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def gpa(self) -> int:
        return self.end_gpa - len(self.data)

    def _u32(self, guid: uuid.UUID, name: str) -> int:
        entry = self.table.get(guid)
        if entry is None:
            raise FormatError(f"firmware has no {name} entry in its footer table", field=self.field, path=self.path)
        if len(entry) < 4:
            raise FormatError(f"{name} entry is {len(entry)} bytes, expected at least 4", field=self.field,
                              path=self.path)
        return int.from_bytes(entry[:4], "little")

    def has_section(self, section_type: SectionType) -> bool:
        return any(section.type == section_type for section in self.sections)

    @property
    def sev_es_reset_eip(self) -> int:
        """The AP reset vector: AP CS.base = EIP & 0xFFFF0000, AP RIP = EIP & 0xFFFF."""
        if self.precomputed_reset_eip is not None:
            return self.precomputed_reset_eip
        return self._u32(SEV_ES_RESET_BLOCK_GUID, "SEV-ES reset block")

    @property
    def has_hash_table(self) -> bool:
        """True when QEMU can place a kernel-hashes table (SEV/SEV-ES check)."""
        entry = self.table.get(SEV_HASH_TABLE_GUID)
        return entry is not None and len(entry) >= 4 and int.from_bytes(entry[:4], "little") != 0

    @property
    def hash_table_gpa(self) -> int:
        return self._u32(SEV_HASH_TABLE_GUID, "SEV hash table")

    @property
    def svsm_entry_offset(self) -> int:
        return self._u32(SVSM_INFO_GUID, "SVSM info")

    def describe(self) -> dict[str, object]:
        return {
            "size": self.size,
            "gpa": f"0x{self.gpa:x}",
            "footer_table": sorted(str(guid) for guid in self.table),
            "sections": [
                {"type": s.type.name, "gpa": f"0x{s.gpa:x}", "size": f"0x{s.size:x}"} for s in self.sections
            ],
        }


def parse_footer_table(data: bytes, path: str | None = None, field: str = "ovmf") -> dict[uuid.UUID, bytes]:
    """Walk the GUIDed table that ends 0x20 bytes before the end of the image."""
    size = len(data)
    footer_at = size - 0x20 - _ENTRY_TAIL
    if footer_at < 0:
        raise FormatError(f"not an OVMF image: only {size} bytes", field=field, path=path)
    length = int.from_bytes(data[footer_at : footer_at + 2], "little")
    guid = uuid.UUID(bytes_le=bytes(data[footer_at + 2 : footer_at + _ENTRY_TAIL]))
    if guid != FOOTER_GUID:
        raise FormatError(
            "not an OVMF image: no GUIDed footer table 0x30 bytes before the end of the file",
            field=field,
            path=path,
        )
    if length < _ENTRY_TAIL or length - _ENTRY_TAIL > footer_at:
        raise FormatError(f"OVMF footer table length {length} is out of range", field=field, path=path)
    table: dict[uuid.UUID, bytes] = {}
    end = footer_at
    start = footer_at - (length - _ENTRY_TAIL)
    while end - start >= _ENTRY_TAIL:
        entry_len = int.from_bytes(data[end - _ENTRY_TAIL : end - 16], "little")
        entry_guid = uuid.UUID(bytes_le=bytes(data[end - 16 : end]))
        if entry_len < _ENTRY_TAIL or end - entry_len < start:
            raise FormatError(
                f"OVMF footer table entry {entry_guid} has invalid length {entry_len}", field=field, path=path
            )
        table[entry_guid] = bytes(data[end - entry_len : end - _ENTRY_TAIL])
        end -= entry_len
    return table


def parse_sev_metadata(
    data: bytes, table: dict[uuid.UUID, bytes], path: str | None = None, field: str = "ovmf"
) -> tuple[Section, ...]:
    """Read the ``ASEV`` section list the footer table points to (empty if there is none)."""
    entry = table.get(SEV_METADATA_GUID)
    if entry is None:
        return ()
    if len(entry) < 4:
        raise FormatError("SEV metadata entry is shorter than 4 bytes", field=field, path=path)
    offset = int.from_bytes(entry[:4], "little")
    start = len(data) - offset
    if offset > len(data) or start + _METADATA_HEADER.size > len(data):
        raise FormatError(f"SEV metadata offset 0x{offset:x} points outside the image", field=field, path=path)
    signature, length, version, count = _METADATA_HEADER.unpack_from(data, start)
    if signature != b"ASEV":
        raise FormatError("SEV metadata header signature is not 'ASEV'", field=field, path=path)
    if version != 1:
        raise FormatError(f"SEV metadata version {version} is not supported (expected 1)", field=field, path=path)
    if length < _METADATA_HEADER.size + count * _SECTION.size or start + length > len(data):
        raise FormatError(
            f"SEV metadata length {length} does not match {count} sections", field=field, path=path
        )
    sections = []
    for index in range(count):
        gpa, size, raw_type = _SECTION.unpack_from(data, start + _METADATA_HEADER.size + index * _SECTION.size)
        try:
            section_type = SectionType(raw_type)
        except ValueError:
            raise FormatError(
                f"SEV metadata section {index} has unknown type 0x{raw_type:x}", field=field, path=path
            ) from None
        if size % 0x1000 or gpa % 0x1000:
            raise FormatError(
                f"SEV metadata section {index} ({section_type.name}) is not page aligned: "
                f"gpa 0x{gpa:x} size 0x{size:x}",
                field=field,
                path=path,
            )
        sections.append(Section(gpa, size, section_type))
    return tuple(sections)


def parse_firmware(
    data: bytes, path: str | None = None, end_gpa: int = FOUR_GB, field: str = "ovmf"
) -> FirmwareImage:
    """Parse an OVMF (or SVSM) image; it must be page sized and carry a footer table."""
    if len(data) == 0 or len(data) % 0x1000:
        raise FormatError(
            f"not an OVMF image: size {len(data)} is not a non-zero multiple of 4096", field=field, path=path
        )
    if len(data) > end_gpa:
        raise FormatError(f"firmware of {len(data)} bytes does not fit below 0x{end_gpa:x}", field=field, path=path)
    table = parse_footer_table(data, path, field)
    return FirmwareImage(data, table, parse_sev_metadata(data, table, path, field), end_gpa, path, field)


def parse_metadata_wrapper(text: str, path: str | None = None) -> tuple[FirmwareImage, bytes]:
    """Read the JSON firmware description used by sev-snp-measure-go (no firmware bytes).

    It carries the metadata sections, the reset EIP and the firmware's launch digest,
    which is all an SNP measurement needs when the firmware itself is not at hand.
    Sections get the same range and alignment checks as sections read from a binary.
    """
    field = "ovmf_metadata"
    try:
        doc = json.loads(text)
        items = [(int(item["GPA"], 0), int(item["Size"], 0), int(item["SectionTypeInt"]))
                 for item in doc["MetadataItems"]]
        reset_eip = int(doc["ResetEIP"], 0)
        ovmf_hash = bytes.fromhex(doc["OVMFHash"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FormatError(f"not an OVMF metadata description: {exc}", field=field, path=path) from exc
    sections = []
    for index, (gpa, size, raw_type) in enumerate(items):
        try:
            section_type = SectionType(raw_type)
        except ValueError:
            raise FormatError(f"section {index} has unknown type 0x{raw_type:x}", field=field, path=path) from None
        if not (0 <= gpa <= 0xFFFFFFFF and 0 <= size <= 0xFFFFFFFF) or gpa % 0x1000 or size % 0x1000:
            raise FormatError(f"section {index} ({section_type.name}) is not a page-aligned 32-bit range: "
                              f"gpa {gpa:#x} size {size:#x}", field=field, path=path)
        sections.append(Section(gpa, size, section_type))
    if not 0 <= reset_eip <= 0xFFFFFFFF:
        raise FormatError(f"ResetEIP {reset_eip:#x} is not a 32-bit address", field=field, path=path)
    if len(ovmf_hash) != 48:
        raise FormatError("OVMFHash must be 48 bytes", field=field, path=path)
    return FirmwareImage(b"", {}, tuple(sections), FOUR_GB, path, field, precomputed_reset_eip=reset_eip), ovmf_hash
