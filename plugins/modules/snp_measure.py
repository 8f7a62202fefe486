#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: snp_measure
short_description: Compute AMD SEV-SNP launch measurements
version_added: 0.1.0
description:
  - Computes the launch digest that an AMD SEV-SNP guest reports as C(MEASUREMENT), from the firmware,
    kernel, initrd, command line, vCPU count and type, guest features and VMM type that launch it.
  - Gives byte-identical results to the C(sev-snp-measure) tool, and also the legacy SEV and SEV-ES digests.
  - Given several vCPU counts, returns one digest per count in a single pass.
  - With O(explain=true), returns every measured region in launch order, which shows why two launches differ.
  - Pure computation; never changes anything on the target.
author:
  - snpguard maintainers (@snpguard)
requirements:
  - python >= 3.11
extends_documentation_fragment:
  - snpguard.cvm.attributes
attributes:
  check_mode:
    support: full
    details: The module only reads files, so check mode computes the same result.
  diff_mode:
    support: none
    details: Nothing on the target changes, so there is nothing to diff.
  idempotent:
    support: full
    details: A pure computation; it always reports no change.
  platform:
    support: full
    platforms: posix
options:
  mode:
    description:
      - V(snp) is an SEV-SNP guest; V(seves) and V(sev) give the legacy SHA-256 digests.
      - V(snp:ovmf-hash) gives only the firmware's launch digest, to pass later as O(ovmf_hash).
      - V(snp:svsm) measures OVMF plus a Coconut-SVSM binary (pre-IGVM QEMU flow).
    type: str
    choices: [snp, seves, sev, 'snp:ovmf-hash', 'snp:svsm']
    default: snp
  ovmf:
    description:
      - Path to the firmware image QEMU boots with C(-bios), for example Debian's C(/usr/share/ovmf/OVMF.amdsev.fd).
      - Measuring a kernel needs an AmdSev build, which has the C(SNP_KERNEL_HASHES) metadata section.
      - Required unless O(ovmf_metadata) is given.
    type: path
  ovmf_metadata:
    description:
      - JSON description of a firmware (metadata sections, reset EIP and firmware digest), in the format of
        sev-snp-measure-go, for when the firmware binary is not at hand. Only for O(mode=snp).
    type: path
  ovmf_hash:
    description:
      - Precomputed firmware launch digest (96 hex digits), used instead of hashing the firmware pages.
        The firmware file is still read for its metadata. Only for O(mode=snp).
    type: str
  kernel:
    description: Path to the kernel given to QEMU with C(-kernel).
    type: path
  initrd:
    description: Path to the initrd given with C(-initrd). Needs O(kernel).
    type: path
  append:
    description: The kernel command line given with C(-append). Needs O(kernel).
    type: str
  vcpus:
    description:
      - Number of vCPUs; a list gives one digest per count in RV(measurements).
      - Each count must be between 1 and 512.
    type: list
    elements: int
    default: [1]
  vcpu_type:
    description:
      - The QEMU C(-cpu) model of the guest, which decides the CPU signature in every VMSA.
      - Required for QEMU guests unless O(vcpu_sig) or O(vcpu_family) is given.
    type: str
    choices: [EPYC, EPYC-v1, EPYC-v2, EPYC-IBPB, EPYC-v3, EPYC-v4, EPYC-Rome, EPYC-Rome-v1, EPYC-Rome-v2,
              EPYC-Rome-v3, EPYC-Milan, EPYC-Milan-v1, EPYC-Milan-v2, EPYC-Genoa, EPYC-Genoa-v1, EPYC-Turin]
  vcpu_sig:
    description: The guest CPU signature (CPUID(1).EAX), decimal or C(0x) hex. Overrides O(vcpu_type).
    type: str
  vcpu_family:
    description: Guest CPU family; with O(vcpu_model) and O(vcpu_stepping) it overrides the other vCPU options.
    type: int
  vcpu_model:
    description: Guest CPU model.
    type: int
  vcpu_stepping:
    description: Guest CPU stepping.
    type: int
  guest_features:
    description: The guest's SEV_FEATURES, decimal or C(0x) hex. Linux 6.8+ hosts use V(0x1).
    type: str
    default: '0x1'
  vmm_type:
    description: The VMM that launches the guest; each programs different start-up state.
    type: str
    choices: [QEMU, ec2, gce]
    default: QEMU
  ec2_vmsa:
    description:
      - EC2 changed its vCPU start-up state; V(current) has RDX=0x600, V(legacy) RDX=0 (older EC2 reports).
      - Only for O(vmm_type=ec2).
    type: str
    choices: [current, legacy]
    default: current
  kvm_init:
    description:
      - How the host kernel initialised the VM. V(init2) is KVM_SEV_INIT2 (Linux 6.10 and newer, every upstream
        SNP host), which sets MXCSR and FCW in the VMSA; V(legacy) is the older KVM_SEV_INIT.
      - Only for QEMU guests.
    type: str
    choices: [init2, legacy]
    default: init2
  svsm:
    description: Path to the Coconut-SVSM binary, for O(mode=snp:svsm).
    type: path
  vars_size:
    description: Size in bytes of the OVMF_VARS file, for O(mode=snp:svsm).
    type: int
  explain:
    description: Also return RV(explain), the measured regions in launch order with the digest after each.
    type: bool
    default: false
  cross_check:
    description:
      - Also compute every digest with the C(sev-snp-measure) Python package and fail on any disagreement.
      - Fails when that package is not installed on the target.
    type: bool
    default: false
seealso:
  - module: snpguard.cvm.snp_id_block
  - name: sev-snp-measure
    description: The reference tool this module agrees with byte for byte.
    link: https://github.com/virtee/sev-snp-measure
notes:
  - The firmware must be the single-file image QEMU loads with C(-bios); split CODE/VARS pflash setups do not apply
    to SNP.
"""

EXAMPLES = r"""
- name: Measure a direct-boot SNP guest for 1, 2 and 4 vCPUs
  snpguard.cvm.snp_measure:
    ovmf: /usr/share/ovmf/OVMF.amdsev.fd
    kernel: /srv/cvm/vmlinuz
    initrd: /srv/cvm/initrd.img
    append: "console=ttyS0 root=/dev/mapper/root ro"
    vcpus: [1, 2, 4]
    vcpu_type: EPYC-v4
  register: measured

- name: Show the digest for 2 vCPUs
  ansible.builtin.debug:
    msg: "{{ measured.measurements['2'] }}"

- name: Explain the digest, region by region
  snpguard.cvm.snp_measure:
    ovmf: /usr/share/ovmf/OVMF.amdsev.fd
    vcpus: 1
    vcpu_type: EPYC-Milan
    explain: true
  register: explained

- name: An EC2 guest measured as older EC2 hosts launched it
  snpguard.cvm.snp_measure:
    ovmf: /srv/ec2/ovmf_img.fd
    vmm_type: ec2
    ec2_vmsa: legacy
    vcpus: 2
"""

RETURN = r"""
measurement:
  description: The digest (hex) for the first count in O(vcpus), or the only digest for O(mode=sev).
  returned: success
  type: str
  sample: 6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa
measurements:
  description: One digest (hex) per vCPU count, keyed by the count as a string.
  returned: success
  type: dict
  sample: {"1": "6d28...08fa", "2": "3b19...e6ad"}
inputs:
  description:
    - What was measured - firmware size, SHA-384, sections and launch digest; kernel and initrd SHA-256 and
      size; the command line and its SHA-256; vCPU signature, guest features and VMM type.
    - Keep it next to the measurement; comparing two of them says why two launches differ.
  returned: success
  type: dict
  contains:
    mode:
      description: The guest mode measured.
      type: str
      returned: always
      sample: snp
    vmm_type:
      description: The VMM type (C(QEMU), C(ec2), C(gce)).
      type: str
      returned: with O(mode=snp)
    vcpus:
      description: The vCPU counts measured.
      type: list
      elements: int
      returned: with O(mode=snp) or O(mode=seves)
    vcpu_type:
      description: The vCPU type, when given.
      type: str
      returned: when O(vcpu_type) is given
    vcpu_sig:
      description: The vCPU signature (CPUID(1).EAX, hex).
      type: str
      returned: with O(mode=snp) or O(mode=seves)
      sample: 0x800f12
    guest_features:
      description: The SEV features of the VMSA (hex).
      type: str
      returned: with O(mode=snp)
      sample: 0x1
    append:
      description: The kernel command line.
      type: str
      returned: when O(kernel) is given
    cmdline_sha256:
      description: SHA-256 of the command line as hashed into the launch (hex).
      type: str
      returned: when O(kernel) is given
    kvm_init:
      description: How the host initialises SEV (C(init2) or C(legacy)).
      type: str
      returned: with O(mode=snp)
    ovmf:
      description: The firmware - C(path), C(size), C(sha384), C(sections) (type, GPA, size), C(launch_digest) of the
        firmware alone and C(reset_eip).
      type: dict
      returned: when O(ovmf) is given
    kernel:
      description: The kernel - C(path), C(sha256), C(size).
      type: dict
      returned: when O(kernel) is given
    initrd:
      description: The initrd - C(path), C(sha256), C(size).
      type: dict
      returned: when O(initrd) is given
explain:
  description: Every measured region in launch order, with its page type, GPA, page count and the digest after it.
  returned: when O(explain=true)
  type: list
  elements: dict
  contains:
    what:
      description: The region, for example C(firmware OVMF.amdsev.fd) or C(metadata SNP_SEC_MEM).
      type: str
      returned: always
      sample: metadata SNP_SEC_MEM
    page_type:
      description: The SNP page type (C(NORMAL), C(VMSA), C(ZERO), C(UNMEASURED), C(SECRETS), C(CPUID)).
      type: str
      returned: always
      sample: ZERO
    gpa:
      description: Guest physical address of the region (hex).
      type: str
      returned: always
      sample: 0x800000
    pages:
      description: Number of 4 KiB pages.
      type: int
      returned: always
      sample: 9
    digest_after:
      description: The launch digest after this region (hex).
      type: str
      returned: always
cross_check:
  description: The digests computed by sev-snp-measure, keyed by vCPU count.
  returned: when O(cross_check=true)
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snpguard.cvm.plugins.module_utils.common.ansible_glue import run
from ansible_collections.snpguard.cvm.plugins.module_utils.measurement.files import measure
from ansible_collections.snpguard.cvm.plugins.module_utils.measurement.snp_measure import build_config, cross_check
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.vcpu_types import CPU_SIGNATURES


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "default": "snp", "choices": ["snp", "seves", "sev", "snp:ovmf-hash", "snp:svsm"]},
            "ovmf": {"type": "path"},
            "ovmf_metadata": {"type": "path"},
            "ovmf_hash": {"type": "str"},
            "kernel": {"type": "path"},
            "initrd": {"type": "path"},
            "append": {"type": "str"},
            "vcpus": {"type": "list", "elements": "int", "default": [1]},
            "vcpu_type": {"type": "str", "choices": list(CPU_SIGNATURES)},
            "vcpu_sig": {"type": "str"},
            "vcpu_family": {"type": "int"},
            "vcpu_model": {"type": "int"},
            "vcpu_stepping": {"type": "int"},
            "guest_features": {"type": "str", "default": "0x1"},
            "vmm_type": {"type": "str", "default": "QEMU", "choices": ["QEMU", "ec2", "gce"]},
            "ec2_vmsa": {"type": "str", "default": "current", "choices": ["current", "legacy"]},
            "kvm_init": {"type": "str", "default": "init2", "choices": ["init2", "legacy"]},
            "svsm": {"type": "path"},
            "vars_size": {"type": "int"},
            "explain": {"type": "bool", "default": False},
            "cross_check": {"type": "bool", "default": False},
        },
        required_one_of=[("ovmf", "ovmf_metadata")],
        mutually_exclusive=[("ovmf_hash", "ovmf_metadata")],
        required_by={"initrd": "kernel", "append": "kernel", "vcpu_family": ("vcpu_model", "vcpu_stepping")},
        supports_check_mode=True,
    )

    def body() -> dict[str, object]:
        options = dict(module.params)
        if options["vmm_type"] != "ec2":
            options["ec2_vmsa"] = None
        if options["vmm_type"] != "QEMU" or options["mode"] == "snp:svsm":
            options["kvm_init"] = None
        config = build_config(options)
        result = measure(config)
        output = result.as_dict(explain=module.params["explain"])
        if module.params["cross_check"]:
            output["cross_check"] = cross_check(config, result)
        return dict(changed=False, **output)

    run(module, body)


if __name__ == "__main__":
    main()
