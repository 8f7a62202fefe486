#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: snp_simulated_amdsp
short_description: Create a SIMULATED AMD-SP directory for hosts without SEV-SNP (test labs only)
version_added: 0.2.0
description:
  - Creates a directory (0700) with a simulated AMD-SP - a test certificate chain with AMD's names and extensions
    (organisation C(SIMULATED AMD-SP ...)) and its private keys (0600) - that M(snpguard.cvm.snp_vm) with
    O(snpguard.cvm.snp_vm#module:simulate=true) signs its guests' reports with.
  - An existing simulator is kept (its root is what verifiers were told to trust); it is replaced only with
    O(force=true).
  - Verifiers trust it only when its C(ark.pem) is configured explicitly (C(simulated_root)); never in production.
  - The same as C(snpguard sim init DIR).
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
    details: An existing simulator is no change.
  platform:
    support: full
    platforms: posix
options:
  path:
    description: The directory.
    type: path
    required: true
  product:
    description: The processor line the chain claims.
    type: str
    choices: [milan, genoa, turin]
    default: milan
  force:
    description: Replace an existing simulator (reports it signed no longer verify against the new root).
    type: bool
    default: false
seealso:
  - module: snpguard.cvm.snp_vm
"""

EXAMPLES = r"""
- name: A simulated AMD-SP for this lab host
  snpguard.cvm.snp_simulated_amdsp:
    path: /var/lib/snpguard/simulated-amdsp
"""

RETURN = r"""
root:
  description: The simulated root certificate to give verifiers (C(simulated_root)).
  returned: success
  type: str
root_sha256:
  description: SHA-256 of the root certificate (DER).
  returned: success, unless in check mode before creation
  type: str
product:
  description: The product of the simulator in O(path).
  returned: success, unless in check mode before creation
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.simulator_store import (
    load_simulated_amdsp,
    save_simulated_amdsp,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.common.ansible_glue import require_cryptography
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.amd_certs import fingerprint
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import SimulatedAmdSp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product


def main() -> None:
    module = AnsibleModule(
        argument_spec={"path": {"type": "path", "required": True},
                       "product": {"type": "str", "choices": ["milan", "genoa", "turin"], "default": "milan"},
                       "force": {"type": "bool", "default": False}},
        supports_check_mode=True,
    )
    require_cryptography(module)
    path = module.params["path"]
    root = os.path.join(path, "ark.pem")
    try:
        existing = None
        if os.path.exists(os.path.join(path, "simulated-amdsp.txt")):
            existing = load_simulated_amdsp(path)
        if existing is not None and not module.params["force"]:
            module.exit_json(changed=False, root=root, root_sha256=fingerprint(existing.ark),
                             product=existing.product.value)
        if module.check_mode:
            module.exit_json(changed=True, root=root)
        sim = SimulatedAmdSp.create(Product.parse(module.params["product"]))
        save_simulated_amdsp(sim, path)
        os.chmod(path, 0o700)
    except SnpError as exc:
        module.fail_json(**exc.as_dict())
    module.exit_json(changed=True, root=root, root_sha256=fingerprint(sim.ark), product=sim.product.value)


if __name__ == "__main__":
    main()
