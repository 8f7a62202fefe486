# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The SEV kernel-hashes table QEMU writes into firmware memory, and OVMF checks before booting.

With ``kernel-hashes=on`` QEMU builds a table of SHA-256(kernel), SHA-256(initrd) and
SHA-256(cmdline + NUL); the page holding it is part of the launch digest, so the
measurement pins the exact kernel, initrd and command line.  GUIDs are stored in EFI
(mixed-endian) byte order.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

from .errors import MeasurementError

TABLE_GUID = uuid.UUID("9438d606-4f22-4cc9-b479-a793d411fd21")
CMDLINE_GUID = uuid.UUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
INITRD_GUID = uuid.UUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
KERNEL_GUID = uuid.UUID("4de79437-abd2-427f-b835-d5b172d2045b")

_ENTRY = struct.Struct("<16sH32s")  # 50 bytes
_HEADER = struct.Struct("<16sH")  # 18 bytes
TABLE_SIZE = _HEADER.size + 3 * _ENTRY.size  # 168
PADDED_TABLE_SIZE = (TABLE_SIZE + 15) & ~15  # 176


def cmdline_bytes(append: str | None) -> bytes:
    """The bytes QEMU hashes for the command line: the text plus its NUL, or a lone NUL.

    A command line that came from argv as undecodable bytes (surrogate escapes) is
    hashed as those raw bytes, exactly as QEMU receives it.
    """
    return append.encode("utf-8", "surrogateescape") + b"\x00" if append else b"\x00"


@dataclass(frozen=True)
class KernelHashes:
    kernel: bytes
    initrd: bytes
    cmdline: bytes

    @classmethod
    def from_digests(cls, kernel: bytes, initrd: bytes | None, append: str | None) -> KernelHashes:
        return cls(kernel, initrd if initrd is not None else hashlib.sha256(b"").digest(),
                   hashlib.sha256(cmdline_bytes(append)).digest())

    def table(self) -> bytes:
        """The 176-byte padded table, entries in QEMU's order: cmdline, initrd, kernel."""
        body = _HEADER.pack(TABLE_GUID.bytes_le, TABLE_SIZE)
        for guid, digest in ((CMDLINE_GUID, self.cmdline), (INITRD_GUID, self.initrd), (KERNEL_GUID, self.kernel)):
            body += _ENTRY.pack(guid.bytes_le, _ENTRY.size, digest)
        return body + bytes(PADDED_TABLE_SIZE - TABLE_SIZE)

    def page(self, table_gpa: int) -> bytes:
        """The 4 KiB page measured for the SNP_KERNEL_HASHES section."""
        offset = table_gpa & 0xFFF
        table = self.table()
        if offset + len(table) > 0x1000:
            raise MeasurementError(
                f"kernel-hashes table at 0x{table_gpa:x} would cross a page boundary", field="ovmf"
            )
        return bytes(offset) + table + bytes(0x1000 - offset - len(table))

    def as_dict(self) -> dict[str, str]:
        return {"kernel_sha256": self.kernel.hex(), "initrd_sha256": self.initrd.hex(),
                "cmdline_sha256": self.cmdline.hex()}
