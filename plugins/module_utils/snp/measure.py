# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Launch measurements for SEV-SNP (and the legacy SEV / SEV-ES digests), with an explanation.

``measure(LaunchConfig, inputs)`` replays what the VMM and the AMD-SP do at launch:
firmware pages, the firmware's metadata sections (with the kernel-hashes page), then
one VMSA per vCPU.  Because VMSAs come last and APs share one page, the digests for
several vCPU counts are prefixes of one chain, so a list of counts costs one pass.

Pure: the paths in ``LaunchConfig`` are names, and ``inputs`` (an ``Inputs``) supplies
their bytes and the SHA-256 of kernel and initrd.  ``measurement/files.py`` reads real
files (and hashes the initrd on a second core while the firmware is measured);
``BytesInputs`` here serves bytes already in memory.
"""

from __future__ import annotations

import enum
import hashlib
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .errors import MeasurementError
from .kernel_hashes import KernelHashes, cmdline_bytes
from .launch_digest import LaunchDigest, PageType, Step
from .ovmf import FirmwareImage, SectionType, parse_firmware, parse_metadata_wrapper
from .vcpu_types import CPU_SIGNATURES
from .vmsa import BSP_EIP, Ec2Vmsa, KvmInit, VmmType, svsm_state, vcpu_state

MAX_VCPUS = 512


class Mode(enum.Enum):
    SNP = "snp"
    SEV_ES = "seves"
    SEV = "sev"
    SNP_OVMF_HASH = "snp:ovmf-hash"
    SNP_SVSM = "snp:svsm"

    @classmethod
    def parse(cls, value: str) -> Mode:
        for member in cls:
            if member.value == value:
                return member
        raise MeasurementError(
            f"unknown mode {value!r}; known: {', '.join(m.value for m in cls)}", field="mode"
        )


@dataclass(frozen=True)
class LaunchConfig:
    """Everything that determines a launch digest.  Paths are read, never written."""

    ovmf: str | None = None
    mode: Mode = Mode.SNP
    vcpus: tuple[int, ...] = (1,)
    vcpu_sig: int | None = None
    vcpu_type: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    guest_features: int = 0x1
    vmm: VmmType = VmmType.QEMU
    ec2_vmsa: Ec2Vmsa = Ec2Vmsa.CURRENT
    kvm_init: KvmInit = KvmInit.INIT2
    ovmf_hash: bytes | None = None
    ovmf_metadata: str | None = None
    svsm: str | None = None
    vars_size: int = 0

    def validate(self) -> None:
        """Refuse combinations that no VMM can launch, naming the option."""
        if self.ovmf is None and self.ovmf_metadata is None:
            raise MeasurementError("is required", field="ovmf")
        if self.mode in (Mode.SNP, Mode.SEV_ES, Mode.SNP_SVSM):
            if not self.vcpus:
                raise MeasurementError("at least one vCPU count is required", field="vcpus")
            for count in self.vcpus:
                if not 1 <= count <= MAX_VCPUS:
                    raise MeasurementError(f"{count} is out of range 1..{MAX_VCPUS}", field="vcpus")
            if self.vcpu_sig is None and self.vmm is VmmType.QEMU:
                raise MeasurementError(
                    f"QEMU guests need vcpu_type, vcpu_sig or vcpu_family (mode {self.mode.value})",
                    field="vcpu_type",
                )
        if not 0 <= self.guest_features < 1 << 64:
            raise MeasurementError("must be a 64-bit value", field="guest_features")
        if self.initrd is not None and self.kernel is None:
            raise MeasurementError("needs a kernel", field="initrd")
        if self.append and self.kernel is None:
            raise MeasurementError("needs a kernel", field="append")
        if self.ovmf_hash is not None:
            if self.mode is not Mode.SNP:
                raise MeasurementError("only applies to mode snp", field="ovmf_hash")
            if len(self.ovmf_hash) != 48:
                raise MeasurementError(f"must be 48 bytes (96 hex digits), got {len(self.ovmf_hash)}",
                                       field="ovmf_hash")
        if self.ovmf_metadata is not None and self.mode is not Mode.SNP:
            raise MeasurementError("only applies to mode snp", field="ovmf_metadata")
        if self.mode is Mode.SNP_SVSM:
            if self.svsm is None:
                raise MeasurementError("mode snp:svsm needs an SVSM binary", field="svsm")
            if self.vmm is not VmmType.QEMU:
                raise MeasurementError("mode snp:svsm is only defined for QEMU", field="vmm_type")
            if self.kernel is not None:
                raise MeasurementError("mode snp:svsm does not measure a kernel", field="kernel")
            if self.vars_size <= 0 or self.vars_size % 0x1000:
                raise MeasurementError("must be a positive multiple of 4096", field="vars_size")
        if self.ec2_vmsa is Ec2Vmsa.LEGACY and self.vmm is not VmmType.EC2:
            raise MeasurementError("the legacy VMSA only exists for vmm_type ec2", field="ec2_vmsa")
        if self.kvm_init is KvmInit.LEGACY and (self.vmm is not VmmType.QEMU or self.mode is Mode.SNP_SVSM):
            raise MeasurementError("only applies to QEMU guests (snp, seves)", field="kvm_init")


@dataclass
class Measurement:
    """Digests per vCPU count, the inputs' identities, and the ordered steps."""

    config: LaunchConfig
    digests: dict[int, bytes]
    inputs: dict[str, object]
    steps: list[Step] = field(default_factory=list)
    kernel_hashes: KernelHashes | None = None
    # The VMSA pages measured for the largest vCPU count, BSP first.
    vmsa_pages: list[bytes] = field(default_factory=list)

    @property
    def digest(self) -> bytes:
        """The digest for the first requested vCPU count."""
        return self.digests[self.config.vcpus[0] if self.config.vcpus else 0]

    def as_dict(self, explain: bool = False) -> dict[str, object]:
        out: dict[str, object] = {
            "measurement": self.digest.hex(),
            "measurements": {str(count): value.hex() for count, value in self.digests.items()},
            "inputs": self.inputs,
        }
        if explain:
            out["explain"] = [step.as_dict() for step in self.steps]
        return out


def _required(value: str | None, field_name: str) -> str:
    """A path the validated config must have; a missing one is an error naming the option."""
    if value is None:
        raise MeasurementError("is required", field=field_name)
    return value


class Inputs(Protocol):
    """Where a measurement's input bytes come from (files, memory, an archive)."""

    def read(self, path: str, field: str) -> bytes:
        """The whole content of ``path``; an unreadable one is a ``MeasurementError`` naming ``field``."""

    def size(self, path: str) -> int: ...

    def start_hashes(self, kernel: str, initrd: str | None) -> Callable[[], tuple[bytes, bytes | None]]:
        """Begin hashing kernel and initrd (maybe in the background); the result is SHA-256 of each."""


class BytesInputs:
    """``Inputs`` from a mapping of names to bytes (tests, bundles, anything already in memory)."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = files

    def read(self, path: str, field: str) -> bytes:
        try:
            return bytes(self.files[path])
        except KeyError:
            raise MeasurementError("no such input", field=field, path=path) from None

    def size(self, path: str) -> int:
        return len(self.files[path])

    def start_hashes(self, kernel: str, initrd: str | None) -> Callable[[], tuple[bytes, bytes | None]]:
        kernel_sha = hashlib.sha256(self.read(kernel, "kernel")).digest()
        initrd_sha = hashlib.sha256(self.read(initrd, "initrd")).digest() if initrd is not None else None
        return lambda: (kernel_sha, initrd_sha)


def _file_identity(inputs: Inputs, path: str, sha256: bytes) -> dict[str, object]:
    return {"path": path, "sha256": sha256.hex(), "size": inputs.size(path)}


class _Hashes:
    """Kernel and initrd hashes, started before the firmware is measured and collected after it."""

    def __init__(self, config: LaunchConfig, inputs: Inputs) -> None:
        self.inputs = inputs
        self.pending = inputs.start_hashes(config.kernel, config.initrd) if config.kernel is not None else None

    def result(self, config: LaunchConfig) -> tuple[KernelHashes | None, dict[str, object]]:
        if config.kernel is None or self.pending is None:
            return None, {}
        kernel, initrd = self.pending()
        hashes = KernelHashes.from_digests(kernel, initrd, config.append)
        described: dict[str, object] = {"kernel": _file_identity(self.inputs, config.kernel, kernel)}
        if config.initrd is not None and initrd is not None:
            described["initrd"] = _file_identity(self.inputs, config.initrd, initrd)
        return hashes, described


def _load_firmware(config: LaunchConfig, inputs: Inputs) -> tuple[FirmwareImage, bytes | None]:
    if config.ovmf_metadata is not None:
        text = inputs.read(config.ovmf_metadata, "ovmf_metadata").decode("utf-8", "replace")
        return parse_metadata_wrapper(text, config.ovmf_metadata)
    ovmf = _required(config.ovmf, "ovmf")
    return parse_firmware(inputs.read(ovmf, "ovmf"), ovmf), None


def _describe_common(config: LaunchConfig, firmware: FirmwareImage) -> dict[str, object]:
    inputs: dict[str, object] = {
        "mode": config.mode.value,
        "vmm_type": config.vmm.value,
        "vcpus": list(config.vcpus),
        "vcpu_type": config.vcpu_type,
        "vcpu_sig": None if config.vcpu_sig is None else f"0x{config.vcpu_sig:x}",
        "guest_features": f"0x{config.guest_features:x}",
        "append": config.append,
        "cmdline_sha256": hashlib.sha256(cmdline_bytes(config.append)).hexdigest() if config.kernel else None,
    }
    if config.vmm is VmmType.EC2:
        inputs["ec2_vmsa"] = config.ec2_vmsa.value
    if config.vmm is VmmType.QEMU and config.mode in (Mode.SNP, Mode.SEV_ES):
        inputs["kvm_init"] = config.kvm_init.value
    if firmware.data:
        inputs["ovmf"] = {
            "path": config.ovmf,
            "size": firmware.size,
            "sha384": hashlib.sha384(firmware.data).hexdigest(),
            "sections": firmware.describe()["sections"],
        }
    else:
        inputs["ovmf"] = {"path": config.ovmf_metadata, "sections": firmware.describe()["sections"]}
    return inputs


def _measure_sections(ld: LaunchDigest, firmware: FirmwareImage, hashes: KernelHashes | None,
                      vmm: VmmType) -> None:
    """Metadata sections in binary order; EC2 defers CPUID pages, GCE leaves SEC_MEM unmeasured."""
    for section in firmware.sections:
        name = f"metadata {section.type.name}"
        if section.type is SectionType.SNP_SEC_MEM:
            page_type = PageType.UNMEASURED if vmm is VmmType.GCE else PageType.ZERO
            ld.empty_pages(name, page_type, section.gpa, section.size)
        elif section.type is SectionType.SNP_SECRETS:
            ld.empty_pages(name, PageType.SECRETS, section.gpa, 0x1000)
        elif section.type is SectionType.CPUID:
            if vmm is not VmmType.EC2:
                ld.empty_pages(name, PageType.CPUID, section.gpa, 0x1000)
        elif section.type is SectionType.SVSM_CAA:
            ld.empty_pages(name, PageType.ZERO, section.gpa, section.size)
        elif section.type is SectionType.SNP_KERNEL_HASHES:
            if hashes is None:
                ld.empty_pages(name + " (no kernel)", PageType.ZERO, section.gpa, section.size)
            else:
                table_gpa = firmware.hash_table_gpa
                page = hashes.page(table_gpa)
                if section.size != len(page):
                    raise MeasurementError(
                        f"SNP_KERNEL_HASHES section is 0x{section.size:x} bytes, expected one page",
                        field="ovmf", path=firmware.path)
                ld.normal_pages(name, section.gpa, page, table_gpa=f"0x{table_gpa:x}", **hashes.as_dict())
    if vmm is VmmType.EC2:
        for section in firmware.sections:
            if section.type is SectionType.CPUID:
                ld.empty_pages("metadata CPUID (EC2: after all sections)", PageType.CPUID, section.gpa, 0x1000)


def _vmsa_chain(ld: LaunchDigest, counts: tuple[int, ...], bsp: bytes, ap: bytes,
                detail: dict[str, object], ap_eip: int | None = None) -> dict[int, bytes]:
    wanted = set(counts)
    digests: dict[int, bytes] = {}
    for index in range(max(counts)):
        if index == 0:
            ld.vmsa_page("VMSA vCPU 0 (BSP)", bsp, vcpu=0, eip=f"0x{BSP_EIP:x}" if ap_eip else "svsm", **detail)
        else:
            ld.vmsa_page(f"VMSA vCPU {index} (AP)", ap, vcpu=index, eip=f"0x{ap_eip:x}" if ap_eip else "svsm",
                         **detail)
        if index + 1 in wanted:
            digests[index + 1] = ld.value
    return {count: digests[count] for count in counts}


def _measure_snp(config: LaunchConfig, inputs: Inputs) -> Measurement:
    hasher = _Hashes(config, inputs)
    # Kernel and initrd are hashed (maybe in the background) while the firmware is measured.
    firmware, wrapper_hash = _load_firmware(config, inputs)
    if not firmware.sections:
        raise MeasurementError(
            "firmware has no SEV metadata (no 'ASEV' section list): it is not an SNP-capable OVMF build",
            field="ovmf", path=config.ovmf)
    if config.kernel is not None and not firmware.has_section(SectionType.SNP_KERNEL_HASHES):
        raise MeasurementError(
            "a kernel is given, but the firmware has no SNP_KERNEL_HASHES metadata section "
            "(use an AmdSev OVMF build, such as Debian's ovmf-amdsev OVMF.amdsev.fd)",
            field="ovmf", path=config.ovmf)
    seed = config.ovmf_hash or wrapper_hash
    if seed is not None:
        ld = LaunchDigest(seed)
        ld.add_seeded("firmware (precomputed digest)", {"ovmf_hash": seed.hex()})
    else:
        ld = LaunchDigest()
        ld.normal_pages(f"firmware {posixpath.basename(config.ovmf or '')}", firmware.gpa, firmware.data)
    firmware_digest = ld.value
    # Describe the firmware (SHA-384 of the image) while the worker threads still hash.
    described_inputs = _describe_common(config, firmware)
    hashes, described = hasher.result(config)
    _measure_sections(ld, firmware, hashes, config.vmm)
    sig = config.vcpu_sig or 0
    bsp = vcpu_state(BSP_EIP, config.guest_features, sig, config.vmm, config.ec2_vmsa, config.kvm_init).page()
    ap = vcpu_state(firmware.sev_es_reset_eip, config.guest_features, sig, config.vmm, config.ec2_vmsa,
                    config.kvm_init).page()
    detail: dict[str, object] = {"guest_features": f"0x{config.guest_features:x}", "rdx": f"0x{sig:x}"
                                 if config.vmm is VmmType.QEMU else "vmm-defined"}
    digests = _vmsa_chain(ld, config.vcpus, bsp, ap, detail, firmware.sev_es_reset_eip)
    pages = [bsp] + [ap] * (max(config.vcpus) - 1)
    described_inputs.update(described)
    described_inputs["ovmf"]["launch_digest"] = firmware_digest.hex()  # type: ignore[index]
    described_inputs["ovmf"]["reset_eip"] = f"0x{firmware.sev_es_reset_eip:x}"  # type: ignore[index]
    return Measurement(config, digests, described_inputs, ld.steps, hashes, pages)


def _measure_svsm(config: LaunchConfig, source: Inputs) -> Measurement:
    ovmf_path, svsm_path = _required(config.ovmf, "ovmf"), _required(config.svsm, "svsm")
    ovmf = parse_firmware(source.read(ovmf_path, "ovmf"), ovmf_path)
    svsm = parse_firmware(source.read(svsm_path, "svsm"), svsm_path, end_gpa=ovmf.gpa - config.vars_size, field="svsm")
    ld = LaunchDigest()
    ld.normal_pages(f"firmware {posixpath.basename(ovmf_path)}", ovmf.gpa, ovmf.data)
    ld.normal_pages(f"SVSM {posixpath.basename(svsm_path)}", svsm.gpa, svsm.data)
    _measure_sections(ld, svsm, None, VmmType.QEMU)
    sig = config.vcpu_sig or 0
    page = svsm_state(svsm.svsm_entry_offset + svsm.gpa, sig).page()
    digests = _vmsa_chain(ld, config.vcpus, page, page, {"guest_features": "0x1", "rdx": f"0x{sig:x}"})
    pages = [page] * max(config.vcpus)
    inputs = _describe_common(config, ovmf)
    inputs["svsm"] = {"path": svsm_path, "size": svsm.size, "sha384": hashlib.sha384(svsm.data).hexdigest()}
    inputs["vars_size"] = config.vars_size
    return Measurement(config, digests, inputs, ld.steps, vmsa_pages=pages)


def _measure_sev(config: LaunchConfig, source: Inputs) -> Measurement:
    """SEV and SEV-ES: SHA-256 over firmware, padded hashes table, and (SEV-ES) the VMSAs."""
    hasher = _Hashes(config, source)
    # Kernel and initrd are hashed (maybe in the background) while the firmware is hashed.
    ovmf_path = _required(config.ovmf, "ovmf")
    firmware = parse_firmware(source.read(ovmf_path, "ovmf"), ovmf_path)
    if config.kernel is not None and not firmware.has_hash_table:
        raise MeasurementError(
            "a kernel is given, but the firmware cannot measure kernel/initrd/cmdline (no SEV hash table)",
            field="ovmf", path=config.ovmf)
    digest = hashlib.sha256(firmware.data)
    hashes, described = hasher.result(config)
    steps = [Step(f"firmware {posixpath.basename(ovmf_path)}", PageType.NORMAL, firmware.gpa, firmware.size // 0x1000,
                  digest.digest(), {"hash": "sha256"})]
    if hashes is not None:
        digest.update(hashes.table())
        steps.append(Step("kernel hashes table", PageType.NORMAL, firmware.hash_table_gpa, 0, digest.digest(),
                          dict(hashes.as_dict())))
    if config.mode is Mode.SEV:
        digests = {0: digest.digest()}
        config_vcpus: tuple[int, ...] = ()
        pages: list[bytes] = []
    else:
        sig = config.vcpu_sig or 0
        bsp = vcpu_state(BSP_EIP, 0, sig, config.vmm, config.ec2_vmsa, config.kvm_init).page()
        ap = vcpu_state(firmware.sev_es_reset_eip, 0, sig, config.vmm, config.ec2_vmsa, config.kvm_init).page()
        digests = {}
        for index in range(max(config.vcpus)):
            digest.update(bsp if index == 0 else ap)
            steps.append(Step(f"VMSA vCPU {index}", PageType.VMSA, 0, 1, digest.digest(), {"vcpu": index}))
            if index + 1 in config.vcpus:
                digests[index + 1] = digest.digest()
        digests = {count: digests[count] for count in config.vcpus}
        config_vcpus = config.vcpus
        pages = [bsp] + [ap] * (max(config.vcpus) - 1)
    inputs = _describe_common(config, firmware)
    inputs["vcpus"] = list(config_vcpus)
    inputs.update(described)
    return Measurement(config, digests, inputs, steps, hashes, pages)


def measure(config: LaunchConfig, inputs: Inputs) -> Measurement:
    """Compute the launch digest(s) for ``config``; raises ``SnpError`` naming the bad input."""
    if config.mode is Mode.SEV:
        config = LaunchConfig(**{**config.__dict__, "vcpus": ()})
    config.validate()
    if config.mode is Mode.SNP:
        return _measure_snp(config, inputs)
    if config.mode is Mode.SNP_SVSM:
        return _measure_svsm(config, inputs)
    if config.mode is Mode.SNP_OVMF_HASH:
        ovmf_path = _required(config.ovmf, "ovmf")
        firmware = parse_firmware(inputs.read(ovmf_path, "ovmf"), ovmf_path)
        ld = LaunchDigest()
        ld.normal_pages(f"firmware {posixpath.basename(config.ovmf or '')}", firmware.gpa, firmware.data)
        described = _describe_common(config, firmware)
        described["vcpus"] = []
        return Measurement(LaunchConfig(**{**config.__dict__, "vcpus": ()}), {0: ld.value}, described, ld.steps)
    return _measure_sev(config, inputs)


def firmware_digest(ovmf: bytes, name: str = "ovmf") -> bytes:
    """The firmware-only SNP launch digest of the image ``ovmf`` (what ``--snp-ovmf-hash`` takes)."""
    return measure(LaunchConfig(ovmf=name, mode=Mode.SNP_OVMF_HASH), BytesInputs({name: ovmf})).digest


__all__ = ["CPU_SIGNATURES", "MAX_VCPUS", "BytesInputs", "Inputs", "LaunchConfig", "Measurement", "Mode",
           "firmware_digest", "measure"]
