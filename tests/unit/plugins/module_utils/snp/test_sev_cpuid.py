# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""snp/sev_cpuid.py: CPUID 0x8000001F decoding (AMD APM vol. 3, Fn8000_001F)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.sev_cpuid import SevCapabilities


def test_an_snp_capable_leaf() -> None:
    # EAX bits 0 SME, 1 SEV, 3 SEV-ES, 4 SNP; EBX bits 5:0 cbitpos 51 (0x33), 11:6 one reduced bit (0x40).
    caps = SevCapabilities.from_bytes(struct.pack("<4I", 0x1B, 0x73, 509, 100))
    assert (caps.sev, caps.sev_es, caps.snp, caps.cbitpos, caps.reduced_phys_bits) == (True, True, True, 51, 1)


def test_an_intel_leaf_is_all_clear() -> None:
    caps = SevCapabilities.from_bytes(bytes(16))
    assert not (caps.sev or caps.sev_es or caps.snp) and caps.cbitpos == 0


@given(st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 32) - 1))
def test_fields_are_the_documented_bits(eax: int, ebx: int) -> None:
    caps = SevCapabilities.from_registers(eax, ebx)
    assert caps.snp == bool(eax & 0x10) and caps.sev == bool(eax & 0x2) and caps.sev_es == bool(eax & 0x8)
    assert caps.cbitpos == ebx & 0x3F and caps.reduced_phys_bits == (ebx >> 6) & 0x3F


def test_a_short_leaf_is_refused() -> None:
    with pytest.raises(SnpError, match="16 bytes"):
        SevCapabilities.from_bytes(b"\0" * 8)
