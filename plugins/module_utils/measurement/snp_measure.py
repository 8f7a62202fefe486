# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Turns module options or CLI flags into a ``LaunchConfig``, and cross-checks with sev-snp-measure.

The module, the CLI and later the server all accept the same option names, so the
parsing (and its error messages, which name the option) lives here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..snp import options
from ..snp.errors import MeasurementError
from ..snp.measure import LaunchConfig, Measurement, Mode
from ..snp.vcpu_types import resolve_signature
from ..snp.vmsa import Ec2Vmsa, KvmInit, VmmType


def parse_int(value: Any, field: str) -> int | None:
    """Accept 5, "5", "0x5"; refuse anything else naming ``field`` (``snp.options``)."""
    return options.parse_int(value, field, error=MeasurementError)


def parse_hex(value: Any, field: str, size: int) -> bytes | None:
    return options.parse_hex(value, field, size=size, error=MeasurementError)


def _enum(kind: Any, value: Any, field: str, default: Any) -> Any:
    return options.parse_enum(kind, value, field, default=default, error=MeasurementError)


def vcpu_counts(value: Any) -> tuple[int, ...]:
    """vCPU counts from a list or 'N,N' text (default 1), refusing empty and duplicate entries."""
    if value is None:
        return (1,)
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    counts = []
    for item in items:
        count = parse_int(item, "vcpus")
        if count is None:
            raise MeasurementError(f"empty entry in {value!r}", field="vcpus")
        counts.append(count)
    if len(set(counts)) != len(counts):
        raise MeasurementError(f"duplicate vCPU counts in {value!r}", field="vcpus")
    return tuple(counts)


def build_config(options: Mapping[str, Any]) -> LaunchConfig:
    """Build and validate a launch configuration from option names shared by every front end."""
    mode = Mode.parse(options.get("mode") or "snp")
    vmm = VmmType.parse(options.get("vmm_type") or "QEMU")
    vcpu_type = options.get("vcpu_type")
    signature = None
    if mode is not Mode.SEV:
        signature = resolve_signature(
            vcpu_type,
            parse_int(options.get("vcpu_sig"), "vcpu_sig"),
            parse_int(options.get("vcpu_family"), "vcpu_family"),
            parse_int(options.get("vcpu_model"), "vcpu_model"),
            parse_int(options.get("vcpu_stepping"), "vcpu_stepping"),
        )
    features = parse_int(options.get("guest_features"), "guest_features")
    config = LaunchConfig(
        ovmf=options.get("ovmf"),
        mode=mode,
        vcpus=vcpu_counts(options.get("vcpus")) if mode in (Mode.SNP, Mode.SEV_ES, Mode.SNP_SVSM) else (),
        vcpu_sig=signature,
        vcpu_type=vcpu_type,
        kernel=options.get("kernel") or None,
        initrd=options.get("initrd") or None,
        append=options.get("append"),
        guest_features=0x1 if features is None else features,
        vmm=vmm,
        ec2_vmsa=_enum(Ec2Vmsa, options.get("ec2_vmsa"), "ec2_vmsa", Ec2Vmsa.CURRENT),
        kvm_init=_enum(KvmInit, options.get("kvm_init"), "kvm_init", KvmInit.INIT2),
        ovmf_hash=parse_hex(options.get("ovmf_hash"), "ovmf_hash", 48),
        ovmf_metadata=options.get("ovmf_metadata") or None,
        svsm=options.get("svsm") or None,
        vars_size=parse_int(options.get("vars_size"), "vars_size") or 0,
    )
    config.validate()
    return config


def cross_check(config: LaunchConfig, measurement: Measurement) -> dict[str, str]:
    """Recompute with the ``sev-snp-measure`` package, if installed, and fail on any disagreement."""
    try:
        from sevsnpmeasure import guest  # type: ignore[import-not-found]
        from sevsnpmeasure.sev_mode import SevMode  # type: ignore[import-not-found]
        from sevsnpmeasure.vmm_types import VMMType  # type: ignore[import-not-found]
    except ImportError:
        raise MeasurementError("cross_check needs the sev-snp-measure Python package on this host",
                               field="cross_check") from None
    if config.ec2_vmsa is Ec2Vmsa.LEGACY or config.kvm_init is KvmInit.LEGACY or config.ovmf_metadata:
        raise MeasurementError("sev-snp-measure cannot compute legacy VMSAs or metadata-only firmware",
                               field="cross_check")
    modes = {Mode.SNP: SevMode.SEV_SNP, Mode.SEV_ES: SevMode.SEV_ES, Mode.SEV: SevMode.SEV,
             Mode.SNP_SVSM: SevMode.SEV_SNP_SVSM}
    results = {}
    for count, ours in measurement.digests.items():
        if config.mode is Mode.SNP_OVMF_HASH:
            theirs = guest.calc_snp_ovmf_hash(config.ovmf)
        else:
            theirs = guest.calc_launch_digest(
                modes[config.mode], count, config.vcpu_sig or 0, config.ovmf, config.kernel, config.initrd,
                config.append, config.guest_features, config.ovmf_hash.hex() if config.ovmf_hash else "",
                VMMType[config.vmm.value], False, config.svsm or "", config.vars_size)
        if theirs != ours:
            raise MeasurementError(
                f"sev-snp-measure disagrees for {count} vCPU(s): ours {ours.hex()}, theirs {theirs.hex()}",
                field="cross_check")
        results[str(count)] = theirs.hex()
    return results
