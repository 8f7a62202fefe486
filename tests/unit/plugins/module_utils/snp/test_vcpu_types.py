# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Guest vCPU signatures (reference §5.7, AMD CPUID Fn0000_0001_EAX)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import MeasurementError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.vcpu_types import (
    CPU_SIGNATURES,
    cpu_signature,
    resolve_signature,
)

# Reference §5.7; these are QEMU's builtin_x86_defs models.
EXPECTED = {
    "EPYC": 0x800F12, "EPYC-v1": 0x800F12, "EPYC-v2": 0x800F12, "EPYC-IBPB": 0x800F12, "EPYC-v3": 0x800F12,
    "EPYC-v4": 0x800F12,
    "EPYC-Rome": 0x830F10, "EPYC-Rome-v1": 0x830F10, "EPYC-Rome-v2": 0x830F10, "EPYC-Rome-v3": 0x830F10,
    "EPYC-Milan": 0xA00F11, "EPYC-Milan-v1": 0xA00F11, "EPYC-Milan-v2": 0xA00F11,
    "EPYC-Genoa": 0xA10F10, "EPYC-Genoa-v1": 0xA10F10,
    "EPYC-Turin": 0xB00F00,
}


def test_table_is_exactly_the_reference() -> None:
    assert CPU_SIGNATURES == EXPECTED


@pytest.mark.parametrize(("family", "model", "stepping", "sig"), [
    (23, 1, 2, 0x800F12), (23, 49, 0, 0x830F10), (25, 1, 1, 0xA00F11), (25, 17, 0, 0xA10F10),
    (26, 0, 0, 0xB00F00), (15, 0, 0, 0x000F00), (6, 0xF, 0xF, 0x6FF), (0, 0, 0, 0),
    (0xFF + 0xF, 0xFF, 0xF, 0x0FFF0FFF),
])
def test_known_values(family: int, model: int, stepping: int, sig: int) -> None:
    assert cpu_signature(family, model, stepping) == sig


def decode(sig: int) -> tuple[int, int, int]:
    """AMD's decoding: Family = BaseFamily (+ ExtFamily when BaseFamily is 0xF);
    Model = ExtModel:BaseModel when BaseFamily is 0xF, else BaseModel."""
    base_family = (sig >> 8) & 0xF
    ext_family = (sig >> 20) & 0xFF
    base_model = (sig >> 4) & 0xF
    ext_model = (sig >> 16) & 0xF
    stepping = sig & 0xF
    if base_family == 0xF:
        return base_family + ext_family, (ext_model << 4) | base_model, stepping
    return base_family, base_model, stepping


@given(st.integers(0, 0xFF + 0xF), st.integers(0, 0xFF), st.integers(0, 0xF))
def test_round_trip(family: int, model: int, stepping: int) -> None:
    sig = cpu_signature(family, model, stepping)
    assert 0 <= sig < 1 << 28
    assert sig & 0xF000F000 == 0  # reserved bits 31:28 and 15:12
    decoded_family, decoded_model, decoded_stepping = decode(sig)
    assert decoded_family == family and decoded_stepping == stepping
    if family >= 0xF:
        assert decoded_model == model
    else:
        # Below family 0xF only the base model is architectural; the extended nibble is still
        # written (as sev-snp-measure does), so it can be read back from bits 19:16.
        assert decoded_model == model & 0xF
        assert (sig >> 16) & 0xF == model >> 4


@pytest.mark.parametrize(("family", "model", "stepping", "field"), [
    (-1, 0, 0, "vcpu_family"), (0xFF + 0x10, 0, 0, "vcpu_family"), (23, -1, 0, "vcpu_model"),
    (23, 0x100, 0, "vcpu_model"), (23, 1, -1, "vcpu_stepping"), (23, 1, 0x10, "vcpu_stepping"),
])
def test_out_of_range(family: int, model: int, stepping: int, field: str) -> None:
    with pytest.raises(MeasurementError, match="out of range") as info:
        cpu_signature(family, model, stepping)
    assert info.value.field == field


def test_resolve_precedence() -> None:
    # family/model/stepping, then the signature, then the type (as sev-snp-measure).
    assert resolve_signature("EPYC-Milan", 0x123, 23, 1, 2) == 0x800F12
    assert resolve_signature("EPYC-Milan", 0x123) == 0x123
    assert resolve_signature("EPYC-Milan") == 0xA00F11
    assert resolve_signature() is None
    assert resolve_signature(vcpu_sig=0) == 0
    assert resolve_signature(vcpu_sig=0xFFFFFFFF) == 0xFFFFFFFF


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"family": 23}, "vcpu_family"),
    ({"family": 23, "model": 1}, "vcpu_family"),
    ({"family": 23, "stepping": 1}, "vcpu_family"),
    ({"vcpu_sig": -1}, "vcpu_sig"),
    ({"vcpu_sig": 1 << 32}, "vcpu_sig"),
    ({"vcpu_type": "EPYC-v5"}, "vcpu_type"),
    ({"vcpu_type": "epyc"}, "vcpu_type"),
    ({"vcpu_type": ""}, "vcpu_type"),
])
def test_resolve_refusals(kwargs: dict, field: str) -> None:
    with pytest.raises(MeasurementError) as info:
        resolve_signature(**kwargs)
    assert info.value.field == field


def test_unknown_type_lists_known_types() -> None:
    with pytest.raises(MeasurementError) as info:
        resolve_signature("Skylake")
    assert "EPYC-Genoa" in info.value.message and "'Skylake'" in info.value.message
