#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: snp_host_info
short_description: Report whether a host can launch AMD SEV-SNP guests, and why not
version_added: 0.2.0
description:
  - Reads what SEV-SNP needs from the host itself - CPUID 0x8000001F (SEV, SEV-ES, SNP, C-bit position, reduced
    physical address bits; through C(/dev/cpu/0/cpuid), the C(cpuid) kernel module), C(kvm_amd) loaded with
    C(sev_snp=Y), C(/dev/sev), C(/dev/kvm), the kernel, memory, a QEMU with the C(sev-snp-guest) object, and the SNP
    firmware (Debian's C(ovmf-amdsev)).
  - Never changes anything; RV(problems) lists every reason the host is not SNP-capable.
author:
  - snpguard maintainers (@snpguard)
extends_documentation_fragment:
  - snpguard.cvm.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
  platform:
    support: full
    platforms: posix
options:
  qemu:
    description: The QEMU binary to ask.
    type: str
    default: qemu-system-x86_64
  firmware:
    description: The SNP firmware image to look for (default - Debian's C(ovmf-amdsev) paths).
    type: path
seealso:
  - module: snpguard.cvm.snp_vm
"""

EXAMPLES = r"""
- name: Is this an SNP host?
  snpguard.cvm.snp_host_info:
  register: host

- name: Say why not
  ansible.builtin.debug:
    msg: "{{ host.problems }}"
  when: not host.snp_capable
"""

RETURN = r"""
snp_capable:
  description: Everything an SEV-SNP launch needs is there.
  returned: always
  type: bool
problems:
  description: Each reason the host is not SNP-capable.
  returned: always
  type: list
  elements: str
cpu:
  description: CPUID 0x8000001F, decoded (null when it could not be read).
  returned: always
  type: dict
  contains:
    sev:
      description: SEV supported.
      type: bool
    sev_es:
      description: SEV-ES supported.
      type: bool
    snp:
      description: SEV-SNP supported.
      type: bool
    cbitpos:
      description: C-bit position.
      type: int
    reduced_phys_bits:
      description: Physical address bits taken by memory encryption.
      type: int
cpu_source:
  description: Where CPUID was read, or why it could not be.
  returned: always
  type: str
kvm_amd_sev_snp:
  description: C(kvm_amd)'s C(sev_snp) parameter (null when kvm_amd is not loaded).
  returned: always
  type: bool
dev_sev:
  description: C(/dev/sev) exists.
  returned: always
  type: bool
dev_kvm:
  description: C(/dev/kvm) exists.
  returned: always
  type: bool
kernel:
  description: The running kernel's release.
  returned: always
  type: str
memory_mb:
  description: Total memory in MiB.
  returned: always
  type: int
qemu:
  description: The QEMU binary found.
  returned: always
  type: str
qemu_version:
  description: Its version line.
  returned: always
  type: str
qemu_sev_snp_guest:
  description: That QEMU has the C(sev-snp-guest) object.
  returned: always
  type: bool
firmware:
  description: The SNP firmware image found.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snpguard.cvm.plugins.module_utils.common.process import module_runner
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.host import gather


def main() -> None:
    module = AnsibleModule(
        argument_spec={"qemu": {"type": "str", "default": "qemu-system-x86_64"}, "firmware": {"type": "path"}},
        supports_check_mode=True,
    )
    facts = gather(module_runner(module), module.params["qemu"], module.params["firmware"])
    module.exit_json(changed=False, **facts.as_dict())


if __name__ == "__main__":
    main()
