# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""VMSA pages (reference §5.6, §5.10): every field at its offset, per VMM and host KVM init."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import MeasurementError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.vmsa import (
    BSP_EIP,
    Ec2Vmsa,
    KvmInit,
    VmmType,
    svsm_state,
    vcpu_state,
)
from ansible_collections.snpguard.cvm.tests.unit.plugins.module_utils.snp.ovmf_synth import ref_vmsa

AP_EIP = 0x80B004
SIG = 0x800F12


def seg(page: bytes, off: int) -> tuple[int, int, int, int]:
    return struct.unpack_from("<HHIQ", page, off)


def u64(page: bytes, off: int) -> int:
    return struct.unpack_from("<Q", page, off)[0]


# (offset, width) of every field the reference lists; everything else must be zero.
FIELDS = {**{name: (off, 16) for name, off in (("es", 0x00), ("cs", 0x10), ("ss", 0x20), ("ds", 0x30),
                                               ("fs", 0x40), ("gs", 0x50), ("gdtr", 0x60), ("ldtr", 0x70),
                                               ("idtr", 0x80), ("tr", 0x90))},
          **{name: (off, 8) for name, off in (("efer", 0xD0), ("cr4", 0x148), ("cr0", 0x158), ("dr7", 0x160),
                                              ("dr6", 0x168), ("rflags", 0x170), ("rip", 0x178),
                                              ("g_pat", 0x268), ("rdx", 0x310), ("sev_features", 0x3B0),
                                              ("xcr0", 0x3E8))},
          "mxcsr": (0x408, 4), "x87_fcw": (0x410, 2)}


def assert_only_listed_fields(page: bytes) -> None:
    rest = bytearray(page)
    for off, width in FIELDS.values():
        rest[off : off + width] = bytes(width)
    assert rest == bytes(len(page))


def common_fields(page: bytes, eip: int) -> None:
    assert len(page) == 0x1000
    for name in ("es", "ds", "fs", "gs"):
        assert seg(page, FIELDS[name][0]) == (0, 0x93, 0xFFFF, 0), name
    assert seg(page, 0x60) == (0, 0, 0xFFFF, 0)  # GDTR
    assert seg(page, 0x80) == (0, 0, 0xFFFF, 0)  # IDTR
    assert seg(page, 0x70) == (0, 0x82, 0xFFFF, 0)  # LDTR
    assert u64(page, 0xD0) == 0x1000
    assert u64(page, 0x148) == 0x40
    assert u64(page, 0x158) == 0x10
    assert u64(page, 0x160) == 0x400
    assert u64(page, 0x168) == 0xFFFF0FF0
    assert u64(page, 0x170) == 0x2
    assert u64(page, 0x178) == eip & 0xFFFF
    assert u64(page, 0x3E8) == 0x1
    assert seg(page, 0x10)[0] == 0xF000 and seg(page, 0x10)[2:] == (0xFFFF, eip & 0xFFFF0000)
    assert_only_listed_fields(page)


@pytest.mark.parametrize("eip", [BSP_EIP, AP_EIP])
@pytest.mark.parametrize("kvm_init", list(KvmInit))
def test_qemu(eip: int, kvm_init: KvmInit) -> None:
    page = vcpu_state(eip, 0x21, SIG, VmmType.QEMU, kvm_init=kvm_init).page()
    common_fields(page, eip)
    assert seg(page, 0x10)[1] == 0x9B
    assert seg(page, 0x20) == (0, 0x93, 0xFFFF, 0)
    assert seg(page, 0x90) == (0, 0x8B, 0xFFFF, 0)
    assert u64(page, 0x268) == 0x0007040600070406
    assert u64(page, 0x310) == SIG
    assert u64(page, 0x3B0) == 0x21
    mxcsr, fcw = (0x1F80, 0x37F) if kvm_init is KvmInit.INIT2 else (0, 0)
    assert struct.unpack_from("<I", page, 0x408)[0] == mxcsr
    assert struct.unpack_from("<H", page, 0x410)[0] == fcw
    assert page == ref_vmsa(eip, 0x21, "QEMU", SIG, legacy_kvm=kvm_init is KvmInit.LEGACY)


@pytest.mark.parametrize("eip", [BSP_EIP, AP_EIP])
@pytest.mark.parametrize("ec2_vmsa", list(Ec2Vmsa))
def test_ec2(eip: int, ec2_vmsa: Ec2Vmsa) -> None:
    page = vcpu_state(eip, 0x1, SIG, VmmType.EC2, ec2_vmsa=ec2_vmsa).page()
    common_fields(page, eip)
    assert seg(page, 0x10)[1] == (0x9A if eip == BSP_EIP else 0x9B)
    assert seg(page, 0x20) == (0, 0x92, 0xFFFF, 0)
    assert seg(page, 0x90) == (0, 0x83, 0xFFFF, 0)
    assert u64(page, 0x268) == 0x0007040600070406
    # EC2 ignores the vCPU signature: RDX is 0x600 now, 0 on older EC2 hosts.
    assert u64(page, 0x310) == (0x600 if ec2_vmsa is Ec2Vmsa.CURRENT else 0)
    assert struct.unpack_from("<I", page, 0x408)[0] == 0
    assert struct.unpack_from("<H", page, 0x410)[0] == 0
    assert page == ref_vmsa(eip, 0x1, "ec2", SIG, legacy_ec2=ec2_vmsa is Ec2Vmsa.LEGACY)


@pytest.mark.parametrize("eip", [BSP_EIP, AP_EIP])
def test_gce(eip: int) -> None:
    page = vcpu_state(eip, 0x1, SIG, VmmType.GCE).page()
    common_fields(page, eip)
    assert seg(page, 0x10)[1] == 0x9B
    assert seg(page, 0x20)[1] == 0x93
    assert seg(page, 0x90)[1] == 0x8B
    assert u64(page, 0x268) == 0x00070106
    assert u64(page, 0x310) == 0x600
    assert struct.unpack_from("<I", page, 0x408)[0] == 0
    assert page == ref_vmsa(eip, 0x1, "gce", SIG)


def test_kvm_init_does_not_change_ec2_or_gce() -> None:
    for vmm in (VmmType.EC2, VmmType.GCE):
        a = vcpu_state(AP_EIP, 1, SIG, vmm, kvm_init=KvmInit.INIT2).page()
        b = vcpu_state(AP_EIP, 1, SIG, vmm, kvm_init=KvmInit.LEGACY).page()
        assert a == b


def test_svsm_state() -> None:
    eip = 0xFFC4_0000 + 0x1234
    page = svsm_state(eip, SIG).page()
    assert seg(page, 0x10) == (8, 0xC9B, 0xFFFFFFFF, 0)
    for name in ("es", "ss", "ds", "fs"):
        assert seg(page, FIELDS[name][0]) == (16, 0xC93, 0xFFFFFFFF, 0), name
    assert seg(page, 0x50) == (0, 0x93, 0xFFFF, 0)
    assert seg(page, 0x90) == (0, 0x8B, 0xFFFF, 0)
    assert u64(page, 0x158) == 0x11
    assert u64(page, 0x178) == eip  # the full entry address, not EIP & 0xFFFF
    assert u64(page, 0x310) == SIG
    assert u64(page, 0x3B0) == 0x1
    assert u64(page, 0x268) == 0x0007040600070406
    # sev-snp-measure's VMSA_SVSM passes fcw= (not x87_fcw=): FCW stays 0 while MXCSR is set.
    assert struct.unpack_from("<I", page, 0x408)[0] == 0x1F80
    assert struct.unpack_from("<H", page, 0x410)[0] == 0
    assert_only_listed_fields(page)


@settings(max_examples=100, deadline=None)
@given(eip=st.integers(0, 0xFFFFFFFF), features=st.integers(0, (1 << 64) - 1), sig=st.integers(0, 0xFFFFFFFF),
       vmm=st.sampled_from(["QEMU", "ec2", "gce"]), legacy=st.booleans())
def test_any_state_matches_reference_table(eip: int, features: int, sig: int, vmm: str, legacy: bool) -> None:
    kind = VmmType.parse(vmm)
    kwargs = {"ec2_vmsa": Ec2Vmsa.LEGACY} if legacy and kind is VmmType.EC2 else {}
    if legacy and kind is VmmType.QEMU:
        kwargs = {"kvm_init": KvmInit.LEGACY}
    page = vcpu_state(eip, features, sig, kind, **kwargs).page()
    assert page == ref_vmsa(eip, features, vmm, sig, legacy_ec2=legacy and vmm == "ec2",
                            legacy_kvm=legacy and vmm == "QEMU")


@pytest.mark.parametrize(("text", "member"), [("QEMU", VmmType.QEMU), ("qemu", VmmType.QEMU), ("ec2", VmmType.EC2),
                                              ("EC2", VmmType.EC2), ("gce", VmmType.GCE), ("GCE", VmmType.GCE)])
def test_vmm_parse(text: str, member: VmmType) -> None:
    assert VmmType.parse(text) is member


@pytest.mark.parametrize("text", ["", "kvm", "krun", "QEMU "])
def test_vmm_parse_refuses(text: str) -> None:
    with pytest.raises(MeasurementError) as info:
        VmmType.parse(text)
    assert info.value.field == "vmm_type"
