# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Initial VMSA pages: the register state of each vCPU at launch, measured one page per vCPU.

Only a handful of fields are non-zero, and they differ per VMM (QEMU, EC2, GCE):
segment attributes, G_PAT, RDX (the vCPU signature, or 0x600), the x87/SSE control
words (set by KVM_SEV_INIT2 hosts), and SEV_FEATURES (the guest features).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .errors import MeasurementError

BSP_EIP = 0xFFFFFFF0
_SEG = struct.Struct("<HHIQ")

# Offsets in the VMSA (SEV-ES save area), AMD APM vol. 2, table B-4.
_SEGMENTS = {"es": 0x00, "cs": 0x10, "ss": 0x20, "ds": 0x30, "fs": 0x40, "gs": 0x50,
             "gdtr": 0x60, "ldtr": 0x70, "idtr": 0x80, "tr": 0x90}
_U64 = {"efer": 0xD0, "cr4": 0x148, "cr0": 0x158, "dr7": 0x160, "dr6": 0x168, "rflags": 0x170,
        "rip": 0x178, "g_pat": 0x268, "rdx": 0x310, "sev_features": 0x3B0, "xcr0": 0x3E8}
_MXCSR = 0x408
_X87_FCW = 0x410

DEFAULT_G_PAT = 0x0007040600070406


class VmmType(enum.Enum):
    QEMU = "QEMU"
    EC2 = "ec2"
    GCE = "gce"

    @classmethod
    def parse(cls, value: str) -> VmmType:
        for member in cls:
            if value.lower() == member.value.lower():
                return member
        raise MeasurementError(f"unknown VMM type {value!r}; known: QEMU, ec2, gce", field="vmm_type")


class Ec2Vmsa(enum.Enum):
    """EC2 changed its vCPU start-up state: RDX was 0, it is now 0x600 (sev-snp-measure 0.0.13)."""

    CURRENT = "current"
    LEGACY = "legacy"


class KvmInit(enum.Enum):
    """How the host kernel initialised the SEV VM: it decides the x87/SSE state of QEMU vCPUs.

    KVM_SEV_INIT2 (Linux 6.10 and newer; every upstream SNP host) sets MXCSR=0x1F80 and
    FCW=0x37F in the VMSA; the older KVM_SEV_INIT left both zero.
    """

    INIT2 = "init2"
    LEGACY = "legacy"


@dataclass(frozen=True)
class VmsaState:
    """The launch register state of one vCPU; ``page()`` serialises it."""

    eip: int
    sev_features: int
    rdx: int
    cs_attr: int = 0x9B
    ss_attr: int = 0x93
    tr_attr: int = 0x8B
    g_pat: int = DEFAULT_G_PAT
    mxcsr: int = 0x1F80
    x87_fcw: int = 0x37F
    # Coconut-SVSM starts in 32-bit protected mode with flat segments.
    flat_protected_mode: bool = False

    def page(self) -> bytes:
        page = bytearray(0x1000)
        if self.flat_protected_mode:
            for name in ("es", "ss", "ds", "fs"):
                _SEG.pack_into(page, _SEGMENTS[name], 16, 0xC93, 0xFFFFFFFF, 0)
            _SEG.pack_into(page, _SEGMENTS["cs"], 8, 0xC9B, 0xFFFFFFFF, 0)
            _SEG.pack_into(page, _SEGMENTS["gs"], 0, 0x93, 0xFFFF, 0)
            cr0, rip = 0x11, self.eip
        else:
            for name in ("es", "ds", "fs", "gs"):
                _SEG.pack_into(page, _SEGMENTS[name], 0, 0x93, 0xFFFF, 0)
            _SEG.pack_into(page, _SEGMENTS["cs"], 0xF000, self.cs_attr, 0xFFFF, self.eip & 0xFFFF0000)
            _SEG.pack_into(page, _SEGMENTS["ss"], 0, self.ss_attr, 0xFFFF, 0)
            cr0, rip = 0x10, self.eip & 0xFFFF
        _SEG.pack_into(page, _SEGMENTS["gdtr"], 0, 0, 0xFFFF, 0)
        _SEG.pack_into(page, _SEGMENTS["idtr"], 0, 0, 0xFFFF, 0)
        _SEG.pack_into(page, _SEGMENTS["ldtr"], 0, 0x82, 0xFFFF, 0)
        _SEG.pack_into(page, _SEGMENTS["tr"], 0, self.tr_attr, 0xFFFF, 0)
        values = {"efer": 0x1000, "cr4": 0x40, "cr0": cr0, "dr7": 0x400, "dr6": 0xFFFF0FF0, "rflags": 0x2,
                  "rip": rip, "g_pat": self.g_pat, "rdx": self.rdx, "sev_features": self.sev_features, "xcr0": 0x1}
        for name, value in values.items():
            struct.pack_into("<Q", page, _U64[name], value)
        struct.pack_into("<I", page, _MXCSR, self.mxcsr)
        struct.pack_into("<H", page, _X87_FCW, self.x87_fcw)
        return bytes(page)


def vcpu_state(
    eip: int,
    sev_features: int,
    vcpu_sig: int,
    vmm: VmmType,
    ec2_vmsa: Ec2Vmsa = Ec2Vmsa.CURRENT,
    kvm_init: KvmInit = KvmInit.INIT2,
) -> VmsaState:
    """The start-up state a given VMM programs for a vCPU starting at ``eip``."""
    if vmm is VmmType.QEMU:
        if kvm_init is KvmInit.LEGACY:
            return VmsaState(eip, sev_features, vcpu_sig, mxcsr=0, x87_fcw=0)
        return VmsaState(eip, sev_features, vcpu_sig)
    if vmm is VmmType.EC2:
        return VmsaState(
            eip, sev_features, 0x600 if ec2_vmsa is Ec2Vmsa.CURRENT else 0,
            cs_attr=0x9A if eip == BSP_EIP else 0x9B, ss_attr=0x92, tr_attr=0x83, mxcsr=0, x87_fcw=0,
        )
    return VmsaState(eip, sev_features, 0x600, g_pat=0x00070106, mxcsr=0, x87_fcw=0)


def svsm_state(eip: int, vcpu_sig: int) -> VmsaState:
    """Coconut-SVSM (pre-IGVM QEMU flow): every vCPU starts at the SVSM entry.

    FCW stays 0 while MXCSR is 0x1F80, as the reference tool measures it.
    """
    return VmsaState(eip, 0x1, vcpu_sig, mxcsr=0x1F80, x87_fcw=0, flat_protected_mode=True)
