#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

# This file only documents the action plugin plugins/action/attest.py.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: attest
short_description: Attest a running AMD SEV-SNP guest before trusting it
version_added: 0.1.0
description:
  - Runtime attestation of a running confidential VM over the normal Ansible connection.
  - The controller chooses a fresh 32-byte nonce; the guest asks its AMD Secure Processor for a report whose
    REPORT_DATA is C(SHA-512("snpguard/report-data/v1" || nonce || bind_public_key)); the controller verifies the
    report against AMD's pinned roots and every expected value given, and fails the play on any mismatch.
  - Run it before deploying secrets to a host, so that secrets only reach the VM you built.
author:
  - snpguard maintainers (@snpguard)
extends_documentation_fragment:
  - snpguard.cvm.attestation.EXPECTATIONS
  - snpguard.cvm.attestation.TRUST
attributes:
  action:
    support: full
    description: Runs on the controller and executes M(snpguard.cvm.snp_guest_report) on the target.
  check_mode:
    support: full
    description: Attestation changes nothing.
  diff_mode:
    support: none
    description: Nothing on the target changes, so there is nothing to diff.
options:
  bind_public_key:
    description: A public key (hex) to bind into REPORT_DATA with the nonce, for a later key exchange.
    type: str
  guest_vmpl:
    description: VMPL to request the report at.
    type: int
    default: 0
  report_dest:
    description: Also save the raw report on the controller at this path (not in check mode).
    type: path
  guest_simulated_amdsp:
    description:
      - Directory on the guest of a SIMULATED AMD-SP to sign the report (test labs only). Verification still refuses
        it unless O(simulated_root) is set.
    type: path
seealso:
  - module: snpguard.cvm.snp_guest_report
  - module: snpguard.cvm.snp_report_verify
"""

EXAMPLES = r"""
- name: Attest the CVM before deploying secrets
  snpguard.cvm.attest:
    measurements: "{{ cvm_expected_measurements }}"
    min_tcb: {bootloader: 3, tee: 0, snp: 20, microcode: 209}
    policy: {smt: false}
    cache_dir: /var/cache/snpguard/kds

- name: Deploy the secret only after the attest task passed
  ansible.builtin.copy:
    content: "{{ vault_app_secret }}"
    dest: /run/app/secret
    mode: "0400"
"""

RETURN = r"""
valid:
  description: True when every check passed (the task fails otherwise).
  returned: when the guest produced a report
  type: bool
nonce:
  description: The nonce the controller chose (hex).
  returned: when the guest produced a report
  type: str
report_data:
  description: The REPORT_DATA the report had to carry (hex).
  returned: when the guest produced a report
  type: str
product:
  description: The AMD product.
  returned: when the guest produced a report
  type: str
report:
  description: Every field of the report, decoded.
  returned: when the guest produced a report
  type: dict
checks:
  description: Every check with status, detail, expected and actual.
  returned: when the guest produced a report
  type: list
  elements: dict
check:
  description: The first check that refused the report.
  returned: when a check refused the report
  type: str
field:
  description: The option or input that is wrong, when the play's input or the guest's answer could not be used.
  returned: on bad input or when the guest could not produce a report
  type: str
source:
  description: Which interface produced the report on the guest.
  returned: when the guest produced a report
  type: str
"""
