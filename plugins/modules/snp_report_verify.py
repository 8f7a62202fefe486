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
attributes:
  check_mode:
    support: full
    description: Verification changes nothing; check mode verifies the same way.
  diff_mode:
    support: none
    description: Nothing on the target changes, so there is nothing to diff.
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
checks:
  description: Every check, in order, with its status (pass, fail, skip), detail, and expected and actual values.
  returned: when the report was verified (also on refusal)
  type: list
  elements: dict
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
