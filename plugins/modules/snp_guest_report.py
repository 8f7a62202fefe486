#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: snp_guest_report
short_description: Get an attestation report from inside an AMD SEV-SNP guest
version_added: 0.1.0
description:
  - Asks the AMD Secure Processor for an attestation report carrying the given REPORT_DATA, through the kernel's
    configfs-tsm interface (Linux 6.7+) when present, else through C(/dev/sev-guest).
  - Also returns the certificate table the host attached (VCEK/VLEK, ASK, ARK), when there is one.
  - Fails with a clear message on a machine that is not an SEV-SNP guest.
  - Runs on the guest; verify the result on the controller with M(snpguard.cvm.snp_report_verify) or use the
    M(snpguard.cvm.attest) action, which does both.
author:
  - snpguard maintainers (@snpguard)
extends_documentation_fragment:
  - snpguard.cvm.attributes
  - snpguard.cvm.attributes.files
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
    details: Getting a report changes nothing on the guest; in check mode O(dest) is not written.
  diff_mode:
    support: none
    details: The only possible change is writing the raw report to O(dest); no diff is shown for it.
  idempotent:
    support: partial
    details:
      - Without O(dest) it always reports no change.
      - With O(dest) it writes a new report on every run and says so, because every report carries a fresh signature.
  safe_file_operations:
    support: full
    details: O(dest) is written to a temporary file beside it and renamed into place.
  platform:
    support: full
    platforms: posix
    details: Linux in an SEV-SNP guest (configfs-tsm or C(/dev/sev-guest)), or anywhere with O(simulated_amdsp).
options:
  report_data:
    description:
      - The 64 bytes to bind into the report, as 128 hex digits (typically a hash over a nonce and a key).
      - Shorter values are refused, so a nonce is never silently padded.
    type: str
    required: true
  vmpl:
    description: The VMPL to request the report for (0 to 3).
    type: int
    default: 0
  certificates:
    description: Also fetch the host's certificate table (extended report).
    type: bool
    default: true
  dest:
    description:
      - Also write the raw report to this file on the guest (mode V(0644) unless O(mode) says otherwise).
      - O(mode), O(owner), O(group) and the other file options apply to this file.
    type: path
  simulated_amdsp:
    description:
      - Directory of a SIMULATED AMD-SP (its chain, keys and recorded C(launch.json)) to sign the report instead of
        the hardware. For test labs without SEV-SNP only; verifiers refuse such reports unless its root is trusted
        explicitly.
      - C(snpguard sim init DIR) creates such a directory; its C(ark.pem) is the root to trust.
    type: path
  simulated_channel:
    description:
      - In a guest of a simulated launch (M(snpguard.cvm.snp_vm) with O(snpguard.cvm.snp_vm#module:simulate=true)),
        ask the host's simulated AMD-SP over its virtio-serial port - V(auto) finds the port named
        C(org.snpguard.amdsp.0), or give its device (C(/dev/vport0p1)).
      - The guest holds no key; the host signs with the simulated chain, which verifiers trust only when told.
    type: str
"""

EXAMPLES = r"""
- name: Get a report bound to a nonce
  snpguard.cvm.snp_guest_report:
    report_data: "{{ nonce_hash }}"
  register: guest_report

- name: Verify it on the controller
  snpguard.cvm.snp_report_verify:
    report_b64: "{{ guest_report.report_b64 }}"
    certs_b64: "{{ guest_report.certs_b64 | default(omit) }}"
    report_data: "{{ nonce_hash }}"
    measurements: ["{{ expected_measurement }}"]
  delegate_to: localhost
"""

RETURN = r"""
report_b64:
  description: The 1184-byte report, base64.
  returned: success
  type: str
certs_b64:
  description: The host's certificate table (GHCB format), base64.
  returned: when the host supplies certificates
  type: str
source:
  description: Which interface produced the report.
  returned: success
  type: str
  sample: configfs-tsm
changed:
  description: True only when O(dest) was (in check mode, would be) written.
  returned: always
  type: bool
"""

import base64
import binascii

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.report_sources import get_report
from ansible_collections.snpguard.cvm.plugins.module_utils.common.ansible_glue import run
from ansible_collections.snpguard.cvm.plugins.module_utils.common.fileio import atomic_write
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "report_data": {"type": "str", "required": True},
            "vmpl": {"type": "int", "default": 0},
            "certificates": {"type": "bool", "default": True},
            "dest": {"type": "path"},
            "simulated_amdsp": {"type": "path"},
            "simulated_channel": {"type": "str"},
        },
        mutually_exclusive=[("simulated_amdsp", "simulated_channel")],
        add_file_common_args=True,
        supports_check_mode=True,
    )

    def body() -> dict[str, object]:
        try:
            data = binascii.unhexlify(module.params["report_data"].strip())
        except (binascii.Error, ValueError) as exc:
            raise SnpError("must be 128 hex digits", field="report_data") from exc
        got = get_report(data, module.params["vmpl"], want_certs=module.params["certificates"],
                         simulated_amdsp=module.params["simulated_amdsp"],
                         channel=module.params["simulated_channel"])
        result: dict[str, object] = {"changed": False, "source": got.source,
                                     "report_b64": base64.b64encode(got.report).decode()}
        if got.certs:
            result["certs_b64"] = base64.b64encode(got.certs).decode()
        dest = module.params["dest"]
        if dest:
            if not module.check_mode:
                atomic_write(dest, got.report)
            result["changed"] = module.set_fs_attributes_if_different(
                module.load_file_common_arguments(module.params, path=dest), True)
        return result

    run(module, body)


if __name__ == "__main__":
    main()
