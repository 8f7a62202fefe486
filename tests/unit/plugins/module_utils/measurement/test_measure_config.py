# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""LaunchConfig validation, option parsing, and whole measurements of synthetic firmware.

Digests are compared with the independent model in ``ovmf_synth`` (reference §5.9), so these
tests need no shared vectors and no reference tool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.measurement.files import firmware_digest, measure
from ansible_collections.snpguard.cvm.plugins.module_utils.measurement.snp_measure import (
    build_config,
    parse_hex,
    parse_int,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import FormatError, MeasurementError, SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.measure import MAX_VCPUS, LaunchConfig, Mode
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.measure_explain import (
    diff_launches,
    render_explain,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.vmsa import Ec2Vmsa, KvmInit, VmmType
from ansible_collections.snpguard.cvm.tests.unit.plugins.module_utils.snp.ovmf_synth import (
    AMDSEV_SECTIONS,
    FOUR_GB,
    PAGE,
    PLAIN_SECTIONS,
    RESET_EIP,
    SEC_MEM,
    SVSM_CAA,
    Image,
    RefDigest,
    cmdline_hash,
    ref_hash_table,
    ref_snp_digest,
    ref_vmsa,
)

SIG = 0x800F12
EMPTY256 = hashlib.sha256(b"").digest()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    paths = {
        "amdsev": Image().build(),
        "plain": Image(sections=PLAIN_SECTIONS).build(),
        "nometa": Image(sections=None).build(),
        "nohash": Image(sections=PLAIN_SECTIONS, hash_table=None).build(),
        "kernel": b"\x7fELF fake kernel" * 100,
        "initrd": b"initrd" * 333,
        "junk": b"not a firmware at all",
    }
    out = {}
    for name, data in paths.items():
        path = tmp_path / name
        path.write_bytes(data)
        out[name] = str(path)
    return out


def config(files: dict[str, str], **kwargs) -> LaunchConfig:
    base = {"ovmf": files["amdsev"], "vcpus": (1,), "vcpu_sig": SIG}
    base.update(kwargs)
    return LaunchConfig(**base)


def refuse(cfg: LaunchConfig, field: str, match: str | None = None) -> SnpError:
    with pytest.raises(SnpError, match=match) as info:
        measure(cfg)
    assert info.value.field == field, str(info.value)
    return info.value


# --- LaunchConfig.validate: every refusal names its field ---


@pytest.mark.parametrize("vcpus", [(0,), (MAX_VCPUS + 1,), (), (1, 0), (-1,), (2, 513)])
@pytest.mark.parametrize("mode", [Mode.SNP, Mode.SEV_ES])
def test_vcpu_counts(files, vcpus, mode) -> None:
    refuse(config(files, vcpus=vcpus, mode=mode), "vcpus")


def test_vcpu_count_limits_are_accepted(files) -> None:
    result = measure(config(files, vcpus=(1, MAX_VCPUS)))
    assert list(result.digests) == [1, MAX_VCPUS]


@pytest.mark.parametrize("mode", [Mode.SNP, Mode.SEV_ES, Mode.SNP_SVSM])
def test_qemu_needs_a_vcpu_type(files, mode) -> None:
    refuse(config(files, mode=mode, vcpu_sig=None, svsm=files["amdsev"], vars_size=PAGE), "vcpu_type", "QEMU")


@pytest.mark.parametrize("vmm", [VmmType.EC2, VmmType.GCE])
def test_ec2_and_gce_need_no_vcpu_type(files, vmm) -> None:
    assert measure(config(files, vmm=vmm, vcpu_sig=None)).digest


def test_initrd_without_kernel(files) -> None:
    refuse(config(files, initrd=files["initrd"]), "initrd", "needs a kernel")


def test_append_without_kernel(files) -> None:
    refuse(config(files, append="console=ttyS0"), "append", "needs a kernel")
    # An empty command line is the same as none.
    assert measure(config(files, append="")).digest == measure(config(files)).digest


@pytest.mark.parametrize("mode", [Mode.SEV_ES, Mode.SEV, Mode.SNP_OVMF_HASH, Mode.SNP_SVSM])
def test_ovmf_hash_only_in_snp_mode(files, mode) -> None:
    refuse(config(files, mode=mode, ovmf_hash=bytes(48), svsm=files["amdsev"], vars_size=PAGE), "ovmf_hash")


@pytest.mark.parametrize("size", [0, 32, 47, 49, 64])
def test_ovmf_hash_length(files, size) -> None:
    refuse(config(files, ovmf_hash=bytes(size)), "ovmf_hash", "48 bytes")


def test_ovmf_or_metadata_is_required(files) -> None:
    refuse(config(files, ovmf=None), "ovmf", "required")


@pytest.mark.parametrize("mode", [Mode.SEV_ES, Mode.SEV, Mode.SNP_OVMF_HASH])
def test_ovmf_metadata_only_in_snp_mode(files, mode) -> None:
    refuse(config(files, mode=mode, ovmf=None, ovmf_metadata="/nonexistent.json"), "ovmf_metadata")


def test_svsm_mode_refusals(files) -> None:
    svsm = {"mode": Mode.SNP_SVSM, "svsm": files["amdsev"], "vars_size": PAGE}
    refuse(config(files, **{**svsm, "svsm": None}), "svsm", "needs an SVSM binary")
    refuse(config(files, **svsm, vmm=VmmType.EC2), "vmm_type", "only defined for QEMU")
    refuse(config(files, **svsm, vmm=VmmType.GCE), "vmm_type", "only defined for QEMU")
    refuse(config(files, **svsm, kernel=files["kernel"]), "kernel", "does not measure a kernel")
    for bad in (0, -PAGE, 100, PAGE + 1):
        refuse(config(files, **{**svsm, "vars_size": bad}), "vars_size", "positive multiple of 4096")


@pytest.mark.parametrize("vmm", [VmmType.QEMU, VmmType.GCE])
def test_legacy_ec2_vmsa_needs_ec2(files, vmm) -> None:
    refuse(config(files, vmm=vmm, ec2_vmsa=Ec2Vmsa.LEGACY), "ec2_vmsa")


@pytest.mark.parametrize("vmm", [VmmType.EC2, VmmType.GCE])
def test_legacy_kvm_init_needs_qemu(files, vmm) -> None:
    refuse(config(files, vmm=vmm, kvm_init=KvmInit.LEGACY), "kvm_init")


def test_legacy_kvm_init_not_for_svsm(files) -> None:
    refuse(config(files, mode=Mode.SNP_SVSM, svsm=files["amdsev"], vars_size=PAGE, kvm_init=KvmInit.LEGACY),
           "kvm_init")


@pytest.mark.parametrize("features", [-1, 1 << 64, 1 << 70])
def test_guest_features_range(files, features) -> None:
    refuse(config(files, guest_features=features), "guest_features", "64-bit")


def test_guest_features_limits_are_accepted(files) -> None:
    low = measure(config(files, guest_features=0)).digest
    assert low != measure(config(files, guest_features=(1 << 64) - 1)).digest


# --- measure(): firmware capabilities ---


def test_kernel_needs_kernel_hashes_section(files) -> None:
    err = refuse(config(files, ovmf=files["plain"], kernel=files["kernel"]), "ovmf", "SNP_KERNEL_HASHES")
    assert err.path == files["plain"]
    # Without a kernel the same firmware measures fine.
    assert measure(config(files, ovmf=files["plain"])).digest


def test_snp_needs_sev_metadata(files) -> None:
    # Deliberate: sev-snp-measure measures such a firmware without complaint, but no SNP guest can boot it.
    err = refuse(config(files, ovmf=files["nometa"]), "ovmf", "no SEV metadata")
    assert err.path == files["nometa"]


@pytest.mark.parametrize("mode", [Mode.SEV, Mode.SEV_ES])
def test_sev_kernel_needs_hash_table(files, mode) -> None:
    err = refuse(config(files, mode=mode, ovmf=files["nohash"], kernel=files["kernel"]), "ovmf", "hash table")
    assert err.path == files["nohash"]


@pytest.mark.parametrize("mode", [Mode.SNP, Mode.SEV, Mode.SEV_ES, Mode.SNP_OVMF_HASH])
def test_not_a_firmware(files, mode) -> None:
    err = refuse(config(files, mode=mode, ovmf=files["junk"]), "ovmf", "not an OVMF image")
    assert isinstance(err, FormatError) and err.path == files["junk"]


@pytest.mark.parametrize("mode", [Mode.SNP, Mode.SEV, Mode.SNP_OVMF_HASH])
def test_missing_firmware_file(files, tmp_path, mode) -> None:
    missing = str(tmp_path / "nope.fd")
    err = refuse(config(files, mode=mode, ovmf=missing), "ovmf", "cannot read file")
    assert err.path == missing


@pytest.mark.parametrize("mode", [Mode.SNP, Mode.SEV])
@pytest.mark.parametrize("which", ["kernel", "initrd"])
def test_missing_kernel_or_initrd(files, tmp_path, mode, which) -> None:
    missing = str(tmp_path / which)
    kwargs = {"kernel": files["kernel"], "initrd": files["initrd"], which: missing + ".missing"}
    err = refuse(config(files, mode=mode, **kwargs), which, "cannot read file")
    assert err.path == missing + ".missing"


def test_firmware_without_reset_block(tmp_path, files) -> None:
    path = tmp_path / "noreset.fd"
    path.write_bytes(Image(reset_eip=None).build())
    refuse(config(files, ovmf=str(path)), "ovmf", "SEV-ES reset block")


def test_kernel_hashes_section_must_be_one_page(tmp_path, files) -> None:
    path = tmp_path / "bighash.fd"
    sections = tuple((g, 0x2000 if t == 0x10 else s, t) for g, s, t in AMDSEV_SECTIONS)
    path.write_bytes(Image(sections=sections).build())
    refuse(config(files, ovmf=str(path), kernel=files["kernel"]), "ovmf", "expected one page")
    assert measure(config(files, ovmf=str(path))).digest  # ZERO pages without a kernel


def test_kernel_hashes_without_hash_table_entry(tmp_path, files) -> None:
    path = tmp_path / "nohashentry.fd"
    path.write_bytes(Image(hash_table=None).build())
    refuse(config(files, ovmf=str(path), kernel=files["kernel"]), "ovmf", "SEV hash table")


def test_hash_table_crossing_a_page(tmp_path, files) -> None:
    path = tmp_path / "cross.fd"
    path.write_bytes(Image(hash_table=(0x810F80, 0x400)).build())
    refuse(config(files, ovmf=str(path), kernel=files["kernel"]), "ovmf", "page boundary")


# --- measure(): digests against the independent model ---


def _hashes(files, initrd=True, append=None) -> tuple[bytes, bytes, bytes]:
    kernel = hashlib.sha256(Path(files["kernel"]).read_bytes()).digest()
    init = hashlib.sha256(Path(files["initrd"]).read_bytes()).digest() if initrd else EMPTY256
    return kernel, init, cmdline_hash(append)


@pytest.mark.parametrize("vmm", ["QEMU", "ec2", "gce"])
@pytest.mark.parametrize("with_kernel", [False, True])
@pytest.mark.parametrize("vcpus", [1, 3])
def test_snp_digest_matches_model(files, vmm, with_kernel, vcpus) -> None:
    kwargs = {}
    if with_kernel:
        kwargs = {"kernel": files["kernel"], "initrd": files["initrd"], "append": "root=/dev/vda ro é"}
    result = measure(config(files, vmm=VmmType.parse(vmm), vcpus=(vcpus,), guest_features=0x21, **kwargs))
    expected = ref_snp_digest(Path(files["amdsev"]).read_bytes(), AMDSEV_SECTIONS, RESET_EIP, vcpus, SIG, 0x21, vmm,
                              _hashes(files, append="root=/dev/vda ro é") if with_kernel else None)
    assert result.digest == expected
    assert result.digests == {vcpus: expected}


def test_kernel_without_initrd_hashes_empty_initrd(files) -> None:
    result = measure(config(files, kernel=files["kernel"]))
    expected = ref_snp_digest(Path(files["amdsev"]).read_bytes(), AMDSEV_SECTIONS, RESET_EIP, 1, SIG, 1, "QEMU",
                              _hashes(files, initrd=False))
    assert result.digest == expected
    assert result.kernel_hashes is not None and result.kernel_hashes.initrd == EMPTY256


def test_legacy_vmsa_variants_match_model(files) -> None:
    image = Path(files["amdsev"]).read_bytes()
    legacy_kvm = measure(config(files, vcpus=(2,), kvm_init=KvmInit.LEGACY)).digest
    assert legacy_kvm == ref_snp_digest(image, AMDSEV_SECTIONS, RESET_EIP, 2, SIG, legacy_kvm=True)
    assert legacy_kvm != measure(config(files, vcpus=(2,))).digest
    legacy_ec2 = measure(config(files, vcpus=(2,), vmm=VmmType.EC2, ec2_vmsa=Ec2Vmsa.LEGACY)).digest
    assert legacy_ec2 == ref_snp_digest(image, AMDSEV_SECTIONS, RESET_EIP, 2, 0, vmm="ec2", legacy_ec2=True)


def test_ovmf_hash_seed_replaces_firmware_pages(files) -> None:
    seed = bytes(range(48))
    result = measure(config(files, ovmf_hash=seed, vcpus=(2,)))
    assert result.digest == ref_snp_digest(b"", AMDSEV_SECTIONS, RESET_EIP, 2, SIG, seed=seed)
    # With the firmware's own digest as seed, the result equals the full computation.
    own = firmware_digest(files["amdsev"])
    assert measure(config(files, ovmf_hash=own)).digest == measure(config(files)).digest
    assert result.inputs["ovmf"]["launch_digest"] == seed.hex()


def test_firmware_digest(files) -> None:
    image = Path(files["amdsev"]).read_bytes()
    ref = RefDigest()
    ref.normal(FOUR_GB - len(image), image)
    assert firmware_digest(files["amdsev"]) == ref.ld
    result = measure(LaunchConfig(ovmf=files["amdsev"], mode=Mode.SNP_OVMF_HASH))
    assert result.digests == {0: ref.ld}
    assert result.inputs["vcpus"] == [] and result.vmsa_pages == []


def test_ovmf_hash_mode_works_without_metadata(files) -> None:
    assert firmware_digest(files["nometa"])


def test_vcpu_list_keeps_order_and_equals_single_runs(files) -> None:
    kwargs = {"kernel": files["kernel"], "initrd": files["initrd"], "append": "a"}
    result = measure(config(files, vcpus=(4, 1, 2), **kwargs))
    assert list(result.digests) == [4, 1, 2]
    for count in (4, 1, 2):
        assert result.digests[count] == measure(config(files, vcpus=(count,), **kwargs)).digest
    assert len(set(result.digests.values())) == 3
    assert result.digest == result.digests[4]
    assert list(result.as_dict()["measurements"]) == ["4", "1", "2"]
    assert len(result.vmsa_pages) == 4
    assert result.vmsa_pages[1] == result.vmsa_pages[3] != result.vmsa_pages[0]


@pytest.mark.parametrize("vmm", ["QEMU", "ec2", "gce"])
def test_seves_digest_matches_model(files, vmm) -> None:
    result = measure(config(files, mode=Mode.SEV_ES, vmm=VmmType.parse(vmm), vcpus=(3, 1), kernel=files["kernel"],
                            initrd=files["initrd"], append="x", guest_features=0x21))
    image = Path(files["amdsev"]).read_bytes()
    digest = hashlib.sha256(image + ref_hash_table(*_hashes(files, append="x")))
    # SEV-ES VMSAs carry SEV_FEATURES 0 whatever guest_features says.
    digest.update(ref_vmsa(0xFFFFFFF0, 0, vmm, SIG))
    one = digest.digest()
    digest.update(ref_vmsa(RESET_EIP, 0, vmm, SIG) * 2)
    assert result.digests == {3: digest.digest(), 1: one}


def test_seves_legacy_kvm(files) -> None:
    result = measure(config(files, mode=Mode.SEV_ES, kvm_init=KvmInit.LEGACY))
    image = Path(files["amdsev"]).read_bytes()
    assert result.digest == hashlib.sha256(image + ref_vmsa(0xFFFFFFF0, 0, "QEMU", SIG, legacy_kvm=True)).digest()


def test_seves_legacy_ec2_vmsa_is_applied_or_refused(files) -> None:
    """ec2_vmsa=legacy (RDX=0) must change the SEV-ES EC2 VMSA too, or be refused; never be ignored."""
    cfg = config(files, mode=Mode.SEV_ES, vmm=VmmType.EC2, vcpu_sig=None, ec2_vmsa=Ec2Vmsa.LEGACY)
    try:
        result = measure(cfg)
    except MeasurementError as exc:
        assert exc.field == "ec2_vmsa"
        return
    image = Path(files["amdsev"]).read_bytes()
    expected = hashlib.sha256(image + ref_vmsa(0xFFFFFFF0, 0, "ec2", 0, legacy_ec2=True)).digest()
    assert result.inputs["ec2_vmsa"] == "legacy"
    assert result.digest == expected, "ec2_vmsa=legacy was silently ignored in mode seves"


def test_sev_digest(files) -> None:
    image = Path(files["amdsev"]).read_bytes()
    assert measure(config(files, mode=Mode.SEV)).digests == {0: hashlib.sha256(image).digest()}
    with_kernel = measure(config(files, mode=Mode.SEV, kernel=files["kernel"], vcpus=(7,)))
    assert with_kernel.digests == {0: hashlib.sha256(image + ref_hash_table(*_hashes(files, initrd=False))).digest()}
    assert with_kernel.inputs["vcpus"] == [] and with_kernel.vmsa_pages == []


def _svsm_vmsa(eip: int, sig: int) -> bytes:
    page = bytearray(PAGE)

    def seg(off, sel, attr, limit):
        page[off : off + 8] = struct.pack("<HHI", sel, attr, limit)

    for off in (0x00, 0x20, 0x30, 0x40):
        seg(off, 16, 0xC93, 0xFFFFFFFF)
    seg(0x10, 8, 0xC9B, 0xFFFFFFFF)
    seg(0x50, 0, 0x93, 0xFFFF)
    seg(0x60, 0, 0, 0xFFFF)
    seg(0x70, 0, 0x82, 0xFFFF)
    seg(0x80, 0, 0, 0xFFFF)
    seg(0x90, 0, 0x8B, 0xFFFF)
    for off, value in ((0xD0, 0x1000), (0x148, 0x40), (0x158, 0x11), (0x160, 0x400), (0x168, 0xFFFF0FF0),
                       (0x170, 2), (0x178, eip), (0x268, 0x0007040600070406), (0x310, sig), (0x3B0, 1),
                       (0x3E8, 1)):
        page[off : off + 8] = value.to_bytes(8, "little")
    page[0x408:0x40C] = (0x1F80).to_bytes(4, "little")
    return bytes(page)


def test_svsm_digest_matches_model(tmp_path, files) -> None:
    ovmf = Image(size=3 * PAGE, sections=None, fill=1).build()
    svsm_sections = ((0x800000, 0x2000, SEC_MEM), (0x802000, 0x1000, SVSM_CAA), (0x803000, 0x1000, 3),
                     (0x804000, 0x1000, 2))
    svsm = Image(size=2 * PAGE, sections=svsm_sections, svsm_entry=0x1230, fill=9).build()
    (tmp_path / "o.fd").write_bytes(ovmf)
    (tmp_path / "s.bin").write_bytes(svsm)
    vars_size = 5 * PAGE
    result = measure(config(files, ovmf=str(tmp_path / "o.fd"), mode=Mode.SNP_SVSM, svsm=str(tmp_path / "s.bin"),
                            vars_size=vars_size, vcpus=(2, 1), guest_features=0x21))
    ref = RefDigest()
    ovmf_gpa = FOUR_GB - len(ovmf)
    svsm_gpa = ovmf_gpa - vars_size - len(svsm)
    ref.normal(ovmf_gpa, ovmf)
    ref.normal(svsm_gpa, svsm)
    ref.empty(3, 0x800000, 0x2000)
    ref.empty(3, 0x802000, 0x1000)
    ref.empty(6, 0x803000, PAGE)
    ref.empty(5, 0x804000, PAGE)
    page = _svsm_vmsa(svsm_gpa + 0x1230, SIG)
    ref.vmsa(page)
    one = ref.ld
    ref.vmsa(page)
    assert result.digests == {2: ref.ld, 1: one}
    assert result.inputs["svsm"]["size"] == len(svsm) and result.inputs["vars_size"] == vars_size


def test_svsm_errors_name_the_svsm(tmp_path, files) -> None:
    (tmp_path / "junk.bin").write_bytes(bytes(PAGE))
    err = refuse(config(files, mode=Mode.SNP_SVSM, svsm=str(tmp_path / "junk.bin"), vars_size=PAGE), "svsm")
    assert err.path == str(tmp_path / "junk.bin")
    refuse(config(files, mode=Mode.SNP_SVSM, svsm=str(tmp_path / "missing.bin"), vars_size=PAGE), "svsm",
           "cannot read")
    # An SVSM without its SVSM-info footer entry.
    (tmp_path / "noinfo.bin").write_bytes(Image().build())
    refuse(config(files, mode=Mode.SNP_SVSM, svsm=str(tmp_path / "noinfo.bin"), vars_size=PAGE), "svsm",
           "SVSM info")


def test_metadata_wrapper_measurement(tmp_path) -> None:
    seed = hashlib.sha384(b"firmware").digest()
    doc = {"MetadataItems": [{"GPA": hex(g), "Size": hex(s), "SectionTypeInt": t} for g, s, t in PLAIN_SECTIONS],
           "ResetEIP": hex(RESET_EIP), "OVMFHash": seed.hex()}
    path = tmp_path / "wrapper.json"
    path.write_text(json.dumps(doc))
    result = measure(LaunchConfig(ovmf_metadata=str(path), vcpus=(2,), vmm=VmmType.EC2))
    assert result.digest == ref_snp_digest(b"", PLAIN_SECTIONS, RESET_EIP, 2, 0, vmm="ec2", seed=seed)
    assert result.inputs["ovmf"]["path"] == str(path)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(FormatError) as info:
        measure(LaunchConfig(ovmf_metadata=str(bad), vcpus=(1,), vmm=VmmType.EC2))
    assert info.value.field == "ovmf_metadata" and info.value.path == str(bad)
    with pytest.raises(MeasurementError) as info:
        measure(LaunchConfig(ovmf_metadata=str(tmp_path / "missing.json"), vcpus=(1,), vmm=VmmType.EC2))
    assert info.value.field == "ovmf_metadata"


# --- what a measurement reports ---


def test_inputs_and_steps(files) -> None:
    result = measure(config(files, kernel=files["kernel"], initrd=files["initrd"], append="quiet", vcpus=(1, 3)))
    inputs = result.inputs
    assert inputs["kernel"] == {"path": files["kernel"], "size": Path(files["kernel"]).stat().st_size,
                                "sha256": hashlib.sha256(Path(files["kernel"]).read_bytes()).hexdigest()}
    assert inputs["initrd"]["sha256"] == hashlib.sha256(Path(files["initrd"]).read_bytes()).hexdigest()
    assert inputs["cmdline_sha256"] == hashlib.sha256(b"quiet\x00").hexdigest()
    assert inputs["ovmf"]["sha384"] == hashlib.sha384(Path(files["amdsev"]).read_bytes()).hexdigest()
    assert inputs["ovmf"]["launch_digest"] == firmware_digest(files["amdsev"]).hex()
    assert inputs["ovmf"]["reset_eip"] == hex(RESET_EIP)
    assert inputs["vcpu_sig"] == "0x800f12" and inputs["kvm_init"] == "init2"
    json.dumps(result.as_dict(explain=True))
    names = [step.what for step in result.steps]
    assert names[0].startswith("firmware ")
    assert names[1:8] == ["metadata SNP_SEC_MEM", "metadata SNP_SEC_MEM", "metadata SNP_SECRETS", "metadata CPUID",
                          "metadata SVSM_CAA", "metadata SNP_KERNEL_HASHES", "metadata SNP_SEC_MEM"]
    assert names[8:] == ["VMSA vCPU 0 (BSP)", "VMSA vCPU 1 (AP)", "VMSA vCPU 2 (AP)"]
    assert result.steps[-1].digest_after == result.digests[3]
    assert result.steps[8].digest_after == result.digests[1]
    assert result.steps[6].detail["kernel_sha256"] == inputs["kernel"]["sha256"]


def test_ec2_defers_cpuid_in_steps(files) -> None:
    names = [step.what for step in measure(config(files, vmm=VmmType.EC2)).steps]
    assert "metadata CPUID" not in names
    assert names.index("metadata CPUID (EC2: after all sections)") == names.index("VMSA vCPU 0 (BSP)") - 1


def test_explain_text(files) -> None:
    result = measure(config(files, kernel=files["kernel"], append="quiet", vcpus=(1, 5)))
    text = render_explain(result)
    for name in ("SNP_SEC_MEM", "SNP_SECRETS", "CPUID", "SVSM_CAA", "SNP_KERNEL_HASHES"):
        assert f"metadata {name}" in text
    assert result.inputs["kernel"]["sha256"] in text
    assert "VMSA vCPUs 1..4 (APs)" in text  # identical AP pages collapse into one row
    assert f"measurement (5 vCPUs): {result.digests[5].hex()}" in text
    assert f"measurement (1 vCPU): {result.digests[1].hex()}" in text


def test_diff_launches(files) -> None:
    base = measure(config(files, kernel=files["kernel"], append="a")).as_dict()
    same = measure(config(files, kernel=files["kernel"], append="a")).as_dict()
    assert diff_launches(base, same) == []
    other_append = measure(config(files, kernel=files["kernel"], append="b")).as_dict()
    assert [d.field for d in diff_launches(base, other_append)] == ["cmdline_sha256"]
    other_kernel = measure(config(files, kernel=files["initrd"], append="a")).as_dict()
    assert [d.field for d in diff_launches(base, other_kernel)] == ["kernel.sha256"]
    with pytest.raises(SnpError) as info:
        diff_launches({"no": "inputs"}, base)
    assert info.value.field == "a"


# --- option parsing shared by the module and the CLI ---


@pytest.mark.parametrize(("value", "expected"), [(5, 5), ("5", 5), ("0x5", 5), (" 0x10 ", 16), ("0b11", 3),
                                                 (None, None), ("", None), (0, 0)])
def test_parse_int(value, expected) -> None:
    assert parse_int(value, "f") == expected


@pytest.mark.parametrize("value", [True, False, "abc", "1.5", "0xZZ", 1.5, "5 5"])
def test_parse_int_refusals(value) -> None:
    with pytest.raises(MeasurementError) as info:
        parse_int(value, "guest_features")
    assert info.value.field == "guest_features"


def test_parse_hex() -> None:
    assert parse_hex(None, "h", 2) is None and parse_hex("", "h", 2) is None
    assert parse_hex("0xABcd", "h", 2) == b"\xab\xcd"
    assert parse_hex(" abcd ", "h", 2) == b"\xab\xcd"
    for bad, match in (("abc", "must be 4 hex digits .2 bytes., got 3"), ("zzzz", "not hexadecimal"),
                       ("ab", "got 2"), ("abcdef", "got 6"), (b"abc", "must be 2 bytes, got 3")):
        with pytest.raises(MeasurementError, match=match) as info:
            parse_hex(bad, "ovmf_hash", 2)
        assert info.value.field == "ovmf_hash"


def test_build_config(files) -> None:
    cfg = build_config({"ovmf": files["amdsev"], "vcpus": "1,2,4", "vcpu_type": "EPYC-Milan",
                        "guest_features": "0x21", "vmm_type": "qemu", "kernel": "", "append": None})
    assert cfg.vcpus == (1, 2, 4) and cfg.vcpu_sig == 0xA00F11 and cfg.guest_features == 0x21
    assert cfg.vmm is VmmType.QEMU and cfg.kernel is None and cfg.mode is Mode.SNP
    assert build_config({"ovmf": "x", "vcpus": [3], "vcpu_family": "25", "vcpu_model": 17,
                         "vcpu_stepping": "0"}).vcpu_sig == 0xA10F10
    assert build_config({"ovmf": "x", "vcpu_sig": "0x800f12"}).vcpus == (1,)
    assert build_config({"ovmf": "x", "vcpu_sig": "1"}).guest_features == 1
    sev = build_config({"ovmf": "x", "mode": "sev", "vcpus": "0", "vcpu_type": "bogus"})
    assert sev.vcpus == () and sev.vcpu_sig is None
    assert build_config({"ovmf": "x", "mode": "snp:ovmf-hash"}).vcpus == ()
    ec2 = build_config({"ovmf": "x", "vmm_type": "EC2", "ec2_vmsa": "LEGACY", "ovmf_hash": "0x" + "ab" * 48})
    assert ec2.vmm is VmmType.EC2 and ec2.ec2_vmsa is Ec2Vmsa.LEGACY and ec2.ovmf_hash == b"\xab" * 48


@pytest.mark.parametrize(("options", "field"), [
    ({"mode": "snp-es"}, "mode"),
    ({"vmm_type": "kvm"}, "vmm_type"),
    ({"vcpus": "1,1"}, "vcpus"),
    ({"vcpus": [2, 2]}, "vcpus"),
    ({"vcpus": "1,,2"}, "vcpus"),
    ({"vcpus": ""}, "vcpus"),
    ({"vcpus": "two"}, "vcpus"),
    ({"vcpus": "0"}, "vcpus"),
    ({"vcpus": []}, "vcpus"),
    ({"vcpu_type": "EPYC-v9"}, "vcpu_type"),
    ({"vcpu_sig": "0x1x"}, "vcpu_sig"),
    ({"vcpu_family": 23}, "vcpu_family"),
    ({"vcpu_family": 23, "vcpu_model": 1, "vcpu_stepping": 16}, "vcpu_stepping"),
    ({"guest_features": "snp"}, "guest_features"),
    ({"guest_features": "-1"}, "guest_features"),
    ({"ec2_vmsa": "old", "vmm_type": "ec2"}, "ec2_vmsa"),
    ({"kvm_init": "init3"}, "kvm_init"),
    ({"ovmf_hash": "abc"}, "ovmf_hash"),
    ({"ovmf_hash": "ab" * 32}, "ovmf_hash"),
    ({"vars_size": "big", "mode": "snp:svsm"}, "vars_size"),
    ({"initrd": "/i"}, "initrd"),
    ({"append": "quiet"}, "append"),
    ({"ovmf": None}, "ovmf"),
])
def test_build_config_refusals(options, field) -> None:
    full = {"ovmf": "/fw.fd", "vcpu_type": "EPYC-v4", **options}
    with pytest.raises(SnpError) as info:
        build_config(full)
    assert info.value.field == field, str(info.value)


def test_config_is_frozen() -> None:
    cfg = LaunchConfig(ovmf="x", vcpu_sig=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.vcpus = (2,)  # type: ignore[misc]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.fixed_dictionaries({
    "GPA": st.one_of(st.integers(-0x2000, 0x10_0000_2000), st.sampled_from([0x800000, 0x80D000])).map(hex),
    "Size": st.one_of(st.integers(-0x2000, 0x4000), st.sampled_from([0x1000, 0x3000])).map(hex),
    "SectionTypeInt": st.sampled_from([1, 2, 3, 4, 0x10]),
}), max_size=4), eip=st.integers(-1, 1 << 33).map(hex), vmm=st.sampled_from(list(VmmType)))
def test_metadata_wrapper_measures_or_raises_snperror(tmp_path, items, eip, vmm) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"MetadataItems": items, "ResetEIP": eip, "OVMFHash": "cd" * 48}))
    with contextlib.suppress(SnpError):
        measure(LaunchConfig(ovmf_metadata=str(path), vcpus=(2,), vcpu_sig=SIG, vmm=vmm))
