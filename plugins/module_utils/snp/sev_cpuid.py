# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""CPUID leaf 0x8000001F (AMD Memory Encryption Capabilities), decoded.

EAX says what the processor supports (bit 1 SEV, bit 3 SEV-ES, bit 4 SEV-SNP); EBX bits
5:0 give the C-bit's position in a page-table entry and bits 11:6 how many physical
address bits memory encryption takes away — the two numbers QEMU's ``sev-snp-guest``
needs as ``cbitpos`` and ``reduced-phys-bits``.  (AMD APM vol. 3, "CPUID Fn8000_001F".)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import SnpError

LEAF = 0x8000001F
SEV_BIT, SEV_ES_BIT, SNP_BIT = 1, 3, 4


@dataclass(frozen=True)
class SevCapabilities:
    sev: bool
    sev_es: bool
    snp: bool
    cbitpos: int
    reduced_phys_bits: int

    @classmethod
    def from_registers(cls, eax: int, ebx: int) -> SevCapabilities:
        return cls(sev=bool(eax >> SEV_BIT & 1), sev_es=bool(eax >> SEV_ES_BIT & 1), snp=bool(eax >> SNP_BIT & 1),
                   cbitpos=ebx & 0x3F, reduced_phys_bits=ebx >> 6 & 0x3F)

    @classmethod
    def from_bytes(cls, data: bytes) -> SevCapabilities:
        """From the 16 bytes (EAX, EBX, ECX, EDX, little-endian) that /dev/cpu/N/cpuid returns for the leaf."""
        if len(data) != 16:
            raise SnpError(f"a CPUID leaf is 16 bytes, got {len(data)}", field="cpuid")
        eax, ebx, _ecx, _edx = struct.unpack("<4I", data)
        return cls.from_registers(eax, ebx)

    def as_dict(self) -> dict[str, object]:
        return {"sev": self.sev, "sev_es": self.sev_es, "snp": self.snp, "cbitpos": self.cbitpos,
                "reduced_phys_bits": self.reduced_phys_bits}
