# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Synthetic OVMF images and an independent launch-digest model, for the unit tests.

Everything here is written from the reference facts (snp-formats.md §5), not from the
engine: GUIDs are laid out in EFI (``bytes_le``) order by hand, PAGE_INFO is packed
field by field, and VMSA pages are built from the per-VMM table of §5.6.  Tests compare
the engine against these, so a shared mistake would have to be made twice.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass, field

PAGE = 0x1000
FOUR_GB = 0x1_0000_0000

FOOTER_GUID = "96b582de-1fb2-45f7-baea-a366c55a082d"
METADATA_GUID = "dc886566-984a-4798-a75e-5585a7bf67cc"
HASH_TABLE_GUID = "7255371f-3a3b-4b04-927b-1da6efa8d454"
SECRET_GUID = "4c2eb361-7d9b-4cc3-8081-127c90d3d294"
RESET_BLOCK_GUID = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
SVSM_INFO_GUID = "a789a612-0597-4c4b-a49f-cbb1fe9d1ddd"
TDX_GUID = "e47a6535-984a-4798-865e-4685a7bf8ec2"

SEC_MEM, SECRETS, CPUID, SVSM_CAA, KERNEL_HASHES = 1, 2, 3, 4, 0x10

# The layout of the edk2-stable202405 AmdSev build (reference §5.4).
AMDSEV_SECTIONS: tuple[tuple[int, int, int], ...] = (
    (0x800000, 0x9000, SEC_MEM),
    (0x80A000, 0x3000, SEC_MEM),
    (0x80D000, 0x1000, SECRETS),
    (0x80E000, 0x1000, CPUID),
    (0x80F000, 0x1000, SVSM_CAA),
    (0x810000, 0x1000, KERNEL_HASHES),
    (0x811000, 0xF000, SEC_MEM),
)
# The same without the kernel-hashes section (an OvmfPkgX64-like build).
PLAIN_SECTIONS = tuple(s for s in AMDSEV_SECTIONS if s[2] != KERNEL_HASHES)
RESET_EIP = 0x80B004
HASH_TABLE_GPA = 0x810C00


def guid_le(text: str) -> bytes:
    """EFI byte order: first three fields little-endian, the rest as written (done by hand)."""
    raw = bytes.fromhex(text.replace("-", ""))
    return raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]


def footer_entry(guid: str, payload: bytes, length: int | None = None) -> bytes:
    """``[payload][u16 len][guid]`` with len = payload + 18 unless overridden."""
    return payload + struct.pack("<H", len(payload) + 18 if length is None else length) + guid_le(guid)


def metadata_block(
    sections, signature: bytes = b"ASEV", version: int = 1, length: int | None = None, count: int | None = None
) -> bytes:
    body = b"".join(struct.pack("<III", gpa, size, kind) for gpa, size, kind in sections)
    header_len = 16 + len(body) if length is None else length
    return struct.pack("<4sIII", signature, header_len, version, len(sections) if count is None else count) + body


@dataclass
class Image:
    """Knobs for one synthetic firmware image; ``build()`` returns its bytes."""

    size: int = 2 * PAGE
    sections: tuple[tuple[int, int, int], ...] | None = AMDSEV_SECTIONS
    reset_eip: int | None = RESET_EIP
    hash_table: tuple[int, int] | None = (HASH_TABLE_GPA, 0x400)
    secret: tuple[int, int] | None = (0x80F000, 0xC00)
    svsm_entry: int | None = None
    extra_entries: list[tuple[str, bytes]] = field(default_factory=list)
    footer_guid: str = FOOTER_GUID
    table_length: int | None = None  # override of the footer entry's u16 total length
    metadata_from_end: int = 0x800  # where the ASEV header goes (offset from the end)
    metadata_offset: int | None = None  # override of the u32 in the metadata entry
    metadata_bytes: bytes | None = None  # override of the whole ASEV block
    fill: int = 0x5A

    def entries(self) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        if self.sections is not None or self.metadata_bytes is not None or self.metadata_offset is not None:
            offset = self.metadata_from_end if self.metadata_offset is None else self.metadata_offset
            out.append((METADATA_GUID, struct.pack("<I", offset)))
        if self.hash_table is not None:
            out.append((HASH_TABLE_GUID, struct.pack("<II", *self.hash_table)))
        if self.secret is not None:
            out.append((SECRET_GUID, struct.pack("<II", *self.secret)))
        if self.svsm_entry is not None:
            out.append((SVSM_INFO_GUID, struct.pack("<I", self.svsm_entry)))
        if self.reset_eip is not None:
            out.append((RESET_BLOCK_GUID, struct.pack("<I", self.reset_eip)))
        return out + list(self.extra_entries)

    def table_bytes(self) -> bytes:
        return b"".join(footer_entry(guid, payload) for guid, payload in self.entries())

    def build(self) -> bytes:
        data = bytearray((i * 7 + self.fill) & 0xFF for i in range(self.size))
        n = self.size
        # The reset vector area: 0x20 bytes after the footer GUID.
        data[n - 0x20 :] = bytes.fromhex("90" * 16 + "e9" + "00" * 15)
        table = self.table_bytes()
        total = len(table) + 18 if self.table_length is None else self.table_length
        footer = struct.pack("<H", total) + guid_le(self.footer_guid)
        data[n - 0x32 : n - 0x20] = footer
        data[n - 0x32 - len(table) : n - 0x32] = table
        block = self.metadata_bytes
        if block is None and self.sections is not None:
            block = metadata_block(self.sections)
        if block is not None:
            start = n - self.metadata_from_end
            data[start : start + len(block)] = block
        return bytes(data)


# --- independent launch-digest model (reference §5.1, §5.5, §5.6, §5.9) ---


def page_info(digest: bytes, contents: bytes, page_type: int, gpa: int) -> bytes:
    """The 0x70-byte PAGE_INFO, field by field as in the reference table."""
    assert len(digest) == 48 and len(contents) == 48
    out = bytearray(0x70)
    out[0x00:0x30] = digest
    out[0x30:0x60] = contents
    out[0x60:0x62] = (0x70).to_bytes(2, "little")
    out[0x62] = page_type
    out[0x63] = 0  # IMI_PAGE
    out[0x64] = 0  # VMPL3_PERMS
    out[0x65] = 0  # VMPL2_PERMS
    out[0x66] = 0  # VMPL1_PERMS
    out[0x67] = 0  # reserved
    out[0x68:0x70] = gpa.to_bytes(8, "little")
    return bytes(out)


class RefDigest:
    """A straightforward model of the AMD-SP's launch digest."""

    def __init__(self, seed: bytes = bytes(48)) -> None:
        self.ld = seed

    def update(self, page_type: int, gpa: int, contents: bytes) -> None:
        self.ld = hashlib.sha384(page_info(self.ld, contents, page_type, gpa)).digest()

    def normal(self, gpa: int, data: bytes) -> None:
        for off in range(0, len(data), PAGE):
            self.update(1, gpa + off, hashlib.sha384(data[off : off + PAGE]).digest())

    def empty(self, page_type: int, gpa: int, size: int) -> None:
        for off in range(0, size, PAGE):
            self.update(page_type, gpa + off, bytes(48))

    def vmsa(self, page: bytes) -> None:
        self.update(2, 0xFFFFFFFFF000, hashlib.sha384(page).digest())


def _seg(page: bytearray, off: int, sel: int, attr: int, limit: int, base: int) -> None:
    page[off : off + 2] = sel.to_bytes(2, "little")
    page[off + 2 : off + 4] = attr.to_bytes(2, "little")
    page[off + 4 : off + 8] = limit.to_bytes(4, "little")
    page[off + 8 : off + 16] = base.to_bytes(8, "little")


def _u(page: bytearray, off: int, width: int, value: int) -> None:
    page[off : off + width] = value.to_bytes(width, "little")


def ref_vmsa(eip: int, features: int, vmm: str, sig: int, legacy_ec2: bool = False, legacy_kvm: bool = False) -> bytes:
    """A VMSA page per the §5.6 table (QEMU / ec2 / gce columns)."""
    page = bytearray(PAGE)
    cs_attr, ss_attr, tr_attr, g_pat = 0x9B, 0x93, 0x8B, 0x0007040600070406
    rdx, mxcsr, fcw = sig, 0x1F80, 0x37F
    if vmm == "ec2":
        cs_attr = 0x9A if eip == 0xFFFFFFF0 else 0x9B
        ss_attr, tr_attr, rdx, mxcsr, fcw = 0x92, 0x83, 0 if legacy_ec2 else 0x600, 0, 0
    elif vmm == "gce":
        g_pat, rdx, mxcsr, fcw = 0x00070106, 0x600, 0, 0
    elif legacy_kvm:
        mxcsr, fcw = 0, 0
    for off in (0x00, 0x30, 0x40, 0x50):  # ES DS FS GS
        _seg(page, off, 0, 0x93, 0xFFFF, 0)
    _seg(page, 0x10, 0xF000, cs_attr, 0xFFFF, eip & 0xFFFF0000)
    _seg(page, 0x20, 0, ss_attr, 0xFFFF, 0)
    _seg(page, 0x60, 0, 0, 0xFFFF, 0)  # GDTR
    _seg(page, 0x70, 0, 0x82, 0xFFFF, 0)  # LDTR
    _seg(page, 0x80, 0, 0, 0xFFFF, 0)  # IDTR
    _seg(page, 0x90, 0, tr_attr, 0xFFFF, 0)  # TR
    for off, value in (
        (0xD0, 0x1000),
        (0x148, 0x40),
        (0x158, 0x10),
        (0x160, 0x400),
        (0x168, 0xFFFF0FF0),
        (0x170, 0x2),
        (0x178, eip & 0xFFFF),
        (0x268, g_pat),
        (0x310, rdx),
        (0x3B0, features),
        (0x3E8, 0x1),
    ):
        _u(page, off, 8, value)
    _u(page, 0x408, 4, mxcsr)
    _u(page, 0x410, 2, fcw)
    return bytes(page)


def cmdline_hash(append: str | None) -> bytes:
    return hashlib.sha256(append.encode() + b"\x00" if append else b"\x00").digest()


def ref_hash_table(kernel: bytes, initrd: bytes, cmdline: bytes) -> bytes:
    """The 176-byte padded table (§5.5), entries cmdline, initrd, kernel."""
    table = guid_le("9438d606-4f22-4cc9-b479-a793d411fd21") + (168).to_bytes(2, "little")
    for guid, digest in (
        ("97d02dd8-bd20-4c94-aa78-e7714d36ab2a", cmdline),
        ("44baf731-3a2f-4bd7-9af1-41e29169781d", initrd),
        ("4de79437-abd2-427f-b835-d5b172d2045b", kernel),
    ):
        table += guid_le(guid) + (50).to_bytes(2, "little") + digest
    return table + bytes(8)


def ref_snp_digest(
    image: bytes,
    sections,
    reset_eip: int,
    vcpus: int,
    sig: int,
    features: int = 1,
    vmm: str = "QEMU",
    hashes: tuple[bytes, bytes, bytes] | None = None,
    hash_table_gpa: int = HASH_TABLE_GPA,
    seed: bytes | None = None,
    legacy_ec2: bool = False,
    legacy_kvm: bool = False,
) -> bytes:
    """The whole SNP launch sequence of §5.9."""
    ref = RefDigest()
    if seed is not None:
        ref.ld = seed
    else:
        ref.normal(FOUR_GB - len(image), image)
    for gpa, size, kind in sections:
        if kind == SEC_MEM:
            ref.empty(4 if vmm == "gce" else 3, gpa, size)
        elif kind == SECRETS:
            ref.empty(5, gpa, PAGE)
        elif kind == CPUID and vmm != "ec2":
            ref.empty(6, gpa, PAGE)
        elif kind == SVSM_CAA:
            ref.empty(3, gpa, size)
        elif kind == KERNEL_HASHES:
            if hashes is None:
                ref.empty(3, gpa, size)
            else:
                off = hash_table_gpa & 0xFFF
                table = ref_hash_table(*hashes)
                ref.normal(gpa, bytes(off) + table + bytes(PAGE - off - len(table)))
    if vmm == "ec2":
        for gpa, _size, kind in sections:
            if kind == CPUID:
                ref.empty(6, gpa, PAGE)
    for index in range(vcpus):
        eip = 0xFFFFFFF0 if index == 0 else reset_eip
        ref.vmsa(ref_vmsa(eip, features, vmm, sig, legacy_ec2, legacy_kvm))
    return ref.ld


def guid_str(raw: bytes) -> str:
    """Inverse of guid_le, used to check the helper itself."""
    return str(uuid.UUID(bytes_le=raw))
