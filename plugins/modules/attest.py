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
  - snpguard.cvm.attributes
attributes:
  action:
    support: full
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the
      controller.
    details: Runs on the controller and executes M(snpguard.cvm.snp_guest_report) on the target.
  check_mode:
    support: full
    details: Attestation changes nothing.
  diff_mode:
    support: none
    details: Nothing on the target changes, so there is nothing to diff.
  idempotent:
    support: full
    details: Attestation always reports no change (every run attests afresh, with a new nonce).
  platform:
    support: full
    platforms: posix
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
      - C(snpguard sim init DIR) creates one; pass its C(ark.pem) as O(simulated_root).
    type: path
  guest_simulated_channel:
    description:
      - In a guest of a simulated launch, ask the host's simulated AMD-SP over its virtio-serial port (V(auto), or
        the port's device); see M(snpguard.cvm.snp_guest_report).
    type: str
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
  contains:
    version:
      description: Report version (2 to 5).
      type: int
      returned: always
    guest_svn:
      description: GUEST_SVN.
      type: int
      returned: always
    policy:
      description: Guest policy (hex).
      type: str
      returned: always
    family_id:
      description: FAMILY_ID (hex).
      type: str
      returned: always
    image_id:
      description: IMAGE_ID (hex).
      type: str
      returned: always
    vmpl:
      description: VMPL the report was requested at.
      type: int
      returned: always
    signature_algo:
      description: Signature algorithm (1 is ECDSA P-384 with SHA-384).
      type: int
      returned: always
    platform_info:
      description: PLATFORM_INFO (hex).
      type: str
      returned: always
    platform_info_flags:
      description: PLATFORM_INFO decoded into named flags (C(smt_enabled), C(tsme_enabled), ...).
      type: dict
      returned: always
    key_info:
      description: KEY_INFO word (hex).
      type: str
      returned: always
    author_key_en:
      description: Whether the ID auth carried an author key (AUTHOR_KEY_EN).
      type: bool
      returned: always
    mask_chip_key:
      description: MASK_CHIP_KEY.
      type: bool
      returned: always
    signing_key:
      description: Which key signed the report - C(VCEK), C(VLEK) or C(NONE).
      type: str
      returned: always
    report_data:
      description: REPORT_DATA (hex).
      type: str
      returned: always
    measurement:
      description: MEASUREMENT, the launch digest (hex).
      type: str
      returned: always
    host_data:
      description: HOST_DATA (hex).
      type: str
      returned: always
    id_key_digest:
      description: ID_KEY_DIGEST (hex).
      type: str
      returned: always
    author_key_digest:
      description: AUTHOR_KEY_DIGEST (hex).
      type: str
      returned: always
    report_id:
      description: REPORT_ID (hex).
      type: str
      returned: always
    report_id_ma:
      description: REPORT_ID_MA (hex).
      type: str
      returned: always
    chip_id:
      description: CHIP_ID (hex).
      type: str
      returned: always
    current_version:
      description: Current firmware version, C(MAJOR.MINOR.BUILD).
      type: str
      returned: always
    committed_version:
      description: Committed firmware version, C(MAJOR.MINOR.BUILD).
      type: str
      returned: always
    cpuid:
      description: Family, model and stepping of the CPU (C(null) before report version 3).
      type: dict
      returned: always
    launch_mit_vector:
      description: LAUNCH_MIT_VECTOR (hex; C(null) before report version 5).
      type: str
      returned: always
    current_mit_vector:
      description: CURRENT_MIT_VECTOR (hex; C(null) before report version 5).
      type: str
      returned: always
    signature_r:
      description: Signature R component (hex).
      type: str
      returned: always
    signature_s:
      description: Signature S component (hex).
      type: str
      returned: always
    reserved_nonzero:
      description: Reserved byte ranges that are not zero (empty for a well-formed report).
      type: list
      elements: str
      returned: always
    current_tcb:
      description: Decoded TCB - C(bootloader), C(tee), C(snp), C(microcode) (and C(fmc) on Turin) SVNs and C(raw);
        only C(raw) when the product is unknown.
      type: dict
      returned: always
    reported_tcb:
      description: Decoded TCB - C(bootloader), C(tee), C(snp), C(microcode) (and C(fmc) on Turin) SVNs and C(raw);
        only C(raw) when the product is unknown.
      type: dict
      returned: always
    committed_tcb:
      description: Decoded TCB - C(bootloader), C(tee), C(snp), C(microcode) (and C(fmc) on Turin) SVNs and C(raw);
        only C(raw) when the product is unknown.
      type: dict
      returned: always
    launch_tcb:
      description: Decoded TCB - C(bootloader), C(tee), C(snp), C(microcode) (and C(fmc) on Turin) SVNs and C(raw);
        only C(raw) when the product is unknown.
      type: dict
      returned: always
    product:
      description: The product the TCBs were decoded for.
      type: str
      returned: when the product is known
checks:
  description: Every check with status, detail, expected and actual.
  returned: when the guest produced a report
  type: list
  elements: dict
  contains:
    check:
      description: Name of the check, for example C(report.signature) or C(measurement).
      type: str
      returned: always
      sample: report.signature
    status:
      description: V(pass), V(fail) or V(skip).
      type: str
      returned: always
      sample: pass
    detail:
      description: What was checked, or why it was skipped.
      type: str
      returned: always
    expected:
      description: The expected value.
      type: raw
      returned: when the check compares values
    actual:
      description: The value found.
      type: raw
      returned: when the check compares values
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
