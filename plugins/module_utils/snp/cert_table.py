# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The GHCB certificate table that extended reports carry (SNP_GET_EXT_REPORT, configfs ``auxblob``).

Entries are ``{guid[16], offset u32, length u32}`` (GUIDs in RFC 4122 byte order),
terminated by an all-zero entry; offsets count from the start of the table.
"""

from __future__ import annotations

import struct
import uuid

from .errors import FormatError

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
NAMES = {VCEK_GUID: "vcek", VLEK_GUID: "vlek", ASK_GUID: "ask", ARK_GUID: "ark"}
_ENTRY = struct.Struct("<16sII")


def parse_cert_table(data: bytes, *, field: str = "certs") -> dict[str, bytes]:
    """Map ``vcek``/``vlek``/``ask``/``ark`` (and unknown GUIDs as strings) to DER bytes."""
    out: dict[str, bytes] = {}
    offset = 0
    while True:
        if offset + _ENTRY.size > len(data):
            raise FormatError("certificate table has no terminating entry", field=field)
        guid_bytes, cert_offset, length = _ENTRY.unpack_from(data, offset)
        offset += _ENTRY.size
        if guid_bytes == bytes(16) and cert_offset == 0 and length == 0:
            return out
        if cert_offset < offset or cert_offset + length > len(data) or length == 0:
            raise FormatError(f"certificate table entry at 0x{offset - _ENTRY.size:x} points outside the table",
                              field=field)
        guid = uuid.UUID(bytes=guid_bytes)
        name = NAMES.get(guid, str(guid))
        if name in out:
            raise FormatError(f"certificate table lists {name} twice", field=field)
        out[name] = bytes(data[cert_offset:cert_offset + length])


def build_cert_table(certs: dict[str, bytes]) -> bytes:
    """Inverse of ``parse_cert_table`` (for the simulated AMD-SP and tests)."""
    guids = {name: guid for guid, name in NAMES.items()}
    entries = [(guids[name] if name in guids else uuid.UUID(name), der) for name, der in certs.items()]
    header = (len(entries) + 1) * _ENTRY.size
    table, blobs, offset = b"", b"", header
    for guid, der in entries:
        table += _ENTRY.pack(guid.bytes, offset, len(der))
        blobs += der
        offset += len(der)
    return table + bytes(_ENTRY.size) + blobs
