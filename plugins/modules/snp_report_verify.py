#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: snp_report_verify
short_description: Verify an AMD SEV-SNP attestation report completely
version_added: 0.1.0
description:
  - Decodes an SEV-SNP attestation report (versions 2, 3, 4 and 5) and verifies it - the AMD certificate chain
    from a pinned ARK (RSA-PSS), certificate validity, the CRL, the VCEK or VLEK extensions against the report
    (chip id, TCB), and the report's ECDSA P-384 signature.
  - Then checks every expectation given - measurement, host data, report data, key digests, policy, platform flags,
    minimum TCB, and more.
  - Fails naming the first check that refused, with expected and actual values; returns every check's result.
  - Runs where the certificates are, normally the controller (with C(delegate_to=localhost)).
author:
  - snpguard maintainers (@snpguard)
extends_documentation_fragment:
  - snpguard.cvm.attestation.EXPECTATIONS
  - snpguard.cvm.attestation.TRUST
  - snpguard.cvm.attributes
attributes:
  check_mode:
    support: full
    details: Verification changes nothing; check mode verifies the same way.
  diff_mode:
    support: none
    details: Nothing on the target changes, so there is nothing to diff.
  idempotent:
    support: full
    details: Verification always reports no change (a KDS answer may be cached under O(cache_dir)).
  platform:
    support: full
    platforms: posix
options:
  report:
    description: Path to the 1184-byte report. One of O(report) and O(report_b64) is required.
    type: path
  report_b64:
    description: The report, base64.
    type: str
  certs_b64:
    description: The certificate table of an extended report (configfs C(auxblob)), base64.
    type: str
requirements:
  - cryptography >= 41
seealso:
  - module: snpguard.cvm.snp_guest_report
  - module: snpguard.cvm.attest
"""

EXAMPLES = r"""
- name: Verify a report against AMD's roots and the expected measurement
  snpguard.cvm.snp_report_verify:
    report: /srv/attest/report.bin
    certs_dir: /srv/attest/certs
    offline: true
    measurements:
      - "{{ expected_measurement }}"
    min_tcb: {bootloader: 3, tee: 0, snp: 20, microcode: 209}
  delegate_to: localhost

- name: In a test lab without SEV-SNP hardware, trust the simulated AMD-SP explicitly
  snpguard.cvm.snp_report_verify:
    report: /tmp/report.bin
    certs_dir: /tmp/simulated-amdsp
    simulated_root: /tmp/simulated-amdsp/ark.pem
    offline: true
"""

RETURN = r"""
valid:
  description: True when every check passed; false when a check refused the report (the task then fails).
  returned: when the report was verified (also on refusal)
  type: bool
product:
  description: The AMD product the report comes from (null when it could not be decided).
  returned: when the report was verified (also on refusal)
  type: str
  sample: Milan
report:
  description: Every field of the report, decoded; TCBs decoded for the product.
  returned: when the report was verified (also on refusal)
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
  description: Every check, in order, with its status (pass, fail, skip), detail, and expected and actual values.
  returned: when the report was verified (also on refusal)
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
  description: The name of the first check that refused the report.
  returned: when a check refused the report
  type: str
field:
  description: The option that is wrong, when the input could not be used (nothing was verified).
  returned: on bad input
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.kds_fetch import https_get
from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.snp_report_verify import (
    EXPECTATION_ARGSPEC,
    TRUST_ARGSPEC,
    verify_from_options,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.common.ansible_glue import require_cryptography
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "report": {"type": "path"},
            "report_b64": {"type": "str"},
            "certs_b64": {"type": "str"},
            **EXPECTATION_ARGSPEC,
            **TRUST_ARGSPEC,
        },
        required_one_of=[("report", "report_b64")],
        mutually_exclusive=[("report", "report_b64")],
        supports_check_mode=True,
    )
    require_cryptography(module)
    try:
        attestation = verify_from_options(module.params, fetch=https_get, raise_on_failure=False)
    except SnpError as exc:
        module.fail_json(**exc.as_dict())
    result = attestation.as_dict()
    failures = [check for check in attestation.results if check.failed]
    if failures:
        first = failures[0]
        module.fail_json(msg=f"check {first.name} failed: {first.message()}", check=first.name, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
