# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Guest vCPU signatures: CPUID(1).EAX of the QEMU ``-cpu`` model, which lands in RDX of every VMSA.

The signature belongs to the *guest* CPU model, not the host; choosing the wrong
``-cpu`` is a classic cause of a measurement mismatch.
"""

from __future__ import annotations

from .errors import MeasurementError


def cpu_signature(family: int, model: int, stepping: int) -> int:
    """Encode family/model/stepping as CPUID Fn0000_0001_EAX (AMD pub. #25481)."""
    for name, value, limit in (("vcpu_family", family, 0xFF + 0xF), ("vcpu_model", model, 0xFF),
                               ("vcpu_stepping", stepping, 0xF)):
        if not 0 <= value <= limit:
            raise MeasurementError(f"{value} is out of range 0..{limit}", field=name)
    if family > 0xF:
        base_family, ext_family = 0xF, family - 0xF
    else:
        base_family, ext_family = family, 0
    return (ext_family << 20) | ((model >> 4) << 16) | (base_family << 8) | ((model & 0xF) << 4) | stepping


_EPYC = cpu_signature(23, 1, 2)
_ROME = cpu_signature(23, 49, 0)
_MILAN = cpu_signature(25, 1, 1)
_GENOA = cpu_signature(25, 17, 0)
_TURIN = cpu_signature(26, 0, 0)

CPU_SIGNATURES: dict[str, int] = {
    "EPYC": _EPYC,
    "EPYC-v1": _EPYC,
    "EPYC-v2": _EPYC,
    "EPYC-IBPB": _EPYC,
    "EPYC-v3": _EPYC,
    "EPYC-v4": _EPYC,
    "EPYC-Rome": _ROME,
    "EPYC-Rome-v1": _ROME,
    "EPYC-Rome-v2": _ROME,
    "EPYC-Rome-v3": _ROME,
    "EPYC-Milan": _MILAN,
    "EPYC-Milan-v1": _MILAN,
    "EPYC-Milan-v2": _MILAN,
    "EPYC-Genoa": _GENOA,
    "EPYC-Genoa-v1": _GENOA,
    "EPYC-Turin": _TURIN,
}


def resolve_signature(
    vcpu_type: str | None = None,
    vcpu_sig: int | None = None,
    family: int | None = None,
    model: int | None = None,
    stepping: int | None = None,
) -> int | None:
    """Pick the signature the way sev-snp-measure does: family/model/stepping, then sig, then type."""
    if family is not None:
        if model is None or stepping is None:
            raise MeasurementError("needs vcpu_model and vcpu_stepping too", field="vcpu_family")
        return cpu_signature(family, model, stepping)
    if vcpu_sig is not None:
        if not 0 <= vcpu_sig <= 0xFFFFFFFF:
            raise MeasurementError(f"0x{vcpu_sig:x} is not a 32-bit value", field="vcpu_sig")
        return vcpu_sig
    if vcpu_type is not None:
        try:
            return CPU_SIGNATURES[vcpu_type]
        except KeyError:
            raise MeasurementError(
                f"unknown vCPU type {vcpu_type!r}; known: {', '.join(CPU_SIGNATURES)}", field="vcpu_type"
            ) from None
    return None
