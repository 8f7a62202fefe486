# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Human explanations of a launch digest, and the input that makes two launches differ.

A mismatched measurement is the most common pain in confidential computing: the
digest is opaque, so this module shows every region in launch order and, given
two measured configurations, names the inputs that differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SnpError
from .launch_digest import PageType
from .measure import Measurement


def _short(value: str, keep: int = 16) -> str:
    return value if len(value) <= keep * 2 else f"{value[:keep]}…{value[-8:]}"


def render_explain(measurement: Measurement) -> str:
    """A table of every measured region, in the order the AMD-SP saw them."""
    inputs = measurement.inputs
    lines = [
        f"mode {inputs['mode']}, VMM {inputs['vmm_type']}, vCPUs {', '.join(map(str, inputs['vcpus'])) or '-'}, "
        f"vCPU type {inputs.get('vcpu_type') or '-'} (signature {inputs.get('vcpu_sig') or '-'}), "
        f"guest features {inputs['guest_features']}"
        + (f", EC2 VMSA {inputs['ec2_vmsa']}" if "ec2_vmsa" in inputs else "")
        + (f", KVM {inputs['kvm_init']}" if "kvm_init" in inputs else ""),
    ]
    ovmf = inputs.get("ovmf") or {}
    if isinstance(ovmf, dict) and "sha384" in ovmf:
        lines.append(f"firmware {ovmf['path']}: {ovmf['size']} bytes, sha384 {ovmf['sha384']}")
    if isinstance(ovmf, dict) and "launch_digest" in ovmf:
        lines.append(f"firmware launch digest (--snp-ovmf-hash): {ovmf['launch_digest']}")
    for name in ("kernel", "initrd"):
        item = inputs.get(name)
        if isinstance(item, dict):
            lines.append(f"{name} {item['path']}: {item['size']} bytes, sha256 {item['sha256']}")
    if inputs.get("cmdline_sha256"):
        lines.append(f"cmdline {inputs.get('append')!r} + NUL: sha256 {inputs['cmdline_sha256']}")
    lines.append("")
    lines.append(f"{'#':>3}  {'region':<44} {'page type':<10} {'gpa':<18} {'pages':>5}  digest after")
    steps = measurement.steps
    index = 0
    number = 0
    while index < len(steps):
        step = steps[index]
        # Collapse runs of identical AP VMSAs: they are one page measured N times.
        run = 1
        if step.page_type is PageType.VMSA and step.detail.get("vcpu", 0) != 0:
            while (index + run < len(steps) and steps[index + run].page_type is PageType.VMSA
                   and steps[index + run].detail.get("vmsa_sha384") == step.detail.get("vmsa_sha384")):
                run += 1
        last = steps[index + run - 1]
        number += 1
        what = step.what if run == 1 else f"VMSA vCPUs {step.detail['vcpu']}..{last.detail['vcpu']} (APs)"
        lines.append(f"{number:>3}  {what[:44]:<44} {step.page_type.name:<10} {step.gpa:#018x} "
                     f"{step.pages * run:>5}  {_short(last.digest_after.hex())}")
        for key in ("kernel_sha256", "initrd_sha256", "cmdline_sha256", "table_gpa", "vmsa_sha384",
                    "eip", "guest_features", "rdx", "ovmf_hash", "hash"):
            if key in step.detail and not (key in ("guest_features", "rdx") and number > 1 and run == 1
                                           and step.detail.get("vcpu", 0) != 0):
                lines.append(f"{'':>5} {key}: {step.detail[key]}")
        index += run
    lines.append("")
    for count, digest in measurement.digests.items():
        label = f"{count} vCPU{'s' if count != 1 else ''}" if count else inputs["mode"]
        lines.append(f"measurement ({label}): {digest.hex()}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Difference:
    field: str
    left: object
    right: object
    why: str

    def as_dict(self) -> dict[str, object]:
        return {"field": self.field, "a": self.left, "b": self.right, "why": self.why}


_WHY = {
    "mode": "a different SEV mode measures different things",
    "vmm_type": "each VMM programs different start-up registers (VMSA) and page types",
    "ec2_vmsa": "EC2 changed its vCPU start-up state (RDX 0 vs 0x600)",
    "kvm_init": "hosts with KVM_SEV_INIT2 (Linux >= 6.10) set MXCSR/FCW in the VMSA",
    "vcpus": "one VMSA page is measured per vCPU",
    "vcpu_sig": "the guest -cpu model's CPUID signature is in every VMSA (RDX)",
    "guest_features": "SEV_FEATURES are in every VMSA",
    "ovmf.sha384": "the firmware image differs, and every firmware page is measured",
    "ovmf.launch_digest": "the firmware pages measure differently",
    "ovmf.sections": "the firmware's SEV metadata sections differ",
    "ovmf.reset_eip": "the AP reset vector is in every AP's VMSA",
    "kernel.sha256": "the kernel differs; its SHA-256 is in the kernel-hashes table",
    "initrd.sha256": "the initrd differs; its SHA-256 is in the kernel-hashes table",
    "cmdline_sha256": "the kernel command line differs; its SHA-256 (with NUL) is in the kernel-hashes table",
    "svsm.sha384": "the SVSM image differs",
    "vars_size": "the OVMF_VARS size moves the SVSM's address",
}


def _lookup(doc: dict[str, object], dotted: str) -> object:
    value: object = doc
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def diff_launches(left: dict[str, object], right: dict[str, object]) -> list[Difference]:
    """Compare two ``snpguard measure --json`` documents input by input."""
    for name, doc in (("a", left), ("b", right)):
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
            raise SnpError("not a 'snpguard measure --json' document (no 'inputs' object)", field=name)
    a_inputs: dict[str, object] = left["inputs"]  # type: ignore[assignment]  # checked just above
    b_inputs: dict[str, object] = right["inputs"]  # type: ignore[assignment]
    found = []
    for key, why in _WHY.items():
        a_value, b_value = _lookup(a_inputs, key), _lookup(b_inputs, key)
        if key == "cmdline_sha256" and a_value != b_value:
            a_value = {"append": a_inputs.get("append"), "sha256": a_value}
            b_value = {"append": b_inputs.get("append"), "sha256": b_value}
        if a_value != b_value:
            found.append(Difference(key, a_value, b_value, why))
    for name in ("kernel", "initrd"):
        if (name in a_inputs) != (name in b_inputs):
            article = "an" if name == "initrd" else "a"
            found.append(Difference(name, name in a_inputs, name in b_inputs,
                                    f"one launch has {article} {name} and the other has none"))
    return found
