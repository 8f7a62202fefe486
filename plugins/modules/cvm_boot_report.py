#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cvm_boot_report
short_description: Read the SSH host key and SEV-SNP report a verity VM printed at boot
version_added: 0.2.0
description:
  - A C(mode=verity) image (M(snpguard.cvm.cvm_image)) makes its SSH host key at each boot and prints it with an
    attestation report whose REPORT_DATA binds it, C(SHA-512("snpguard/ssh-host-key/v1" || key blob)).
  - This module reads the last complete such report from the VM's serial log on its host (the state directory of
    M(snpguard.cvm.snp_vm)), waiting up to O(timeout) seconds for the VM to print it.
  - It returns the key, the report and the REPORT_DATA the report must carry, recomputed from the key. Verify the
    report with M(snpguard.cvm.snp_report_verify) (O(snpguard.cvm.snp_report_verify#module:report_data) set to
    RV(report_data)) before trusting the key, then pin the key for SSH so that the connection reaches only that VM.
  - The console is read on the VM's host, not over SSH, because the key must be known before the first connection.
author:
  - snpguard maintainers (@snpguard)
extends_documentation_fragment:
  - snpguard.cvm.attributes
attributes:
  check_mode:
    support: full
    details: Reading changes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Always reports no change.
  platform:
    support: full
    platforms: posix
options:
  name:
    description: The VM's name as M(snpguard.cvm.snp_vm) launched it (its state directory is found from it).
    type: str
  state_dir:
    description: The VM's state directory (default C(/var/lib/snpguard/vms/<name>)).
    type: path
  serial_log:
    description: The serial log itself, instead of O(name) or O(state_dir).
    type: path
  timeout:
    description: Seconds to wait for the report to appear (a VM under emulation boots slowly).
    type: int
    default: 600
requirements: []
seealso:
  - module: snpguard.cvm.snp_report_verify
  - module: snpguard.cvm.attest
"""

EXAMPLES = r"""
- name: Read the boot report on the VM's host
  snpguard.cvm.cvm_boot_report:
    name: web-1
  delegate_to: "{{ snpguard_vm_host }}"
  register: boot_report

- name: Verify it on the controller
  snpguard.cvm.snp_report_verify:
    report_b64: "{{ boot_report.report_b64 }}"
    report_data: "{{ boot_report.report_data }}"
    measurements: ["{{ expected_measurement }}"]
  delegate_to: localhost

- name: Pin the key for SSH
  ansible.builtin.known_hosts:
    path: /etc/ssh/ssh_known_hosts
    name: "[{{ ansible_host }}]:{{ ansible_port }}"
    key: "[{{ ansible_host }}]:{{ ansible_port }} {{ boot_report.host_key }}"
  delegate_to: localhost
"""

RETURN = r"""
serial_log:
  description: The serial log read.
  returned: success
  type: str
host_key:
  description: The SSH host public key the VM bound, C(ssh-ed25519 AAAA...).
  returned: success
  type: str
host_key_type:
  description: Its type, C(ssh-ed25519).
  returned: success
  type: str
host_key_b64:
  description: Its base64 blob.
  returned: success
  type: str
fingerprint:
  description: OpenSSH's SHA-256 fingerprint of the key (as C(ssh-keygen -l) prints it).
  returned: success
  type: str
report_b64:
  description: The attestation report (1184 bytes), base64.
  returned: success
  type: str
report_data:
  description: The REPORT_DATA the report must carry for this key (hex), recomputed from the key.
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.cvm_boot_report import apply
from ansible_collections.snpguard.cvm.plugins.module_utils.common.ansible_glue import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str"},
            "state_dir": {"type": "path"},
            "serial_log": {"type": "path"},
            "timeout": {"type": "int", "default": 600},
        },
        required_one_of=[("name", "state_dir", "serial_log")],
        mutually_exclusive=[("state_dir", "serial_log")],
        supports_check_mode=True,
    )
    run(module, lambda: apply(module.params))


if __name__ == "__main__":
    main()
