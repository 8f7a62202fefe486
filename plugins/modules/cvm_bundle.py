#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cvm_bundle
short_description: Download a registered image's launch-artifacts bundle from the key-release server
version_added: 0.2.0
description:
  - Writes the launch bundle (C(tar.gz) - kernel, initrd, command line, firmware digest, C(launch.json), ID blocks)
    of an image registered on the key-release server to O(dest), for M(snpguard.cvm.snp_vm) to boot.
  - Idempotent by digest - a file at O(dest) with the SHA-256 the server announces for the image is left alone;
    otherwise the server's bundle is written through a temp file and a rename, after its SHA-256 was checked against
    the announced one.
  - A bundle holds no secret; it is written with mode V(0644).
author:
  - snpguard maintainers (@snpguard)
extends_documentation_fragment:
  - snpguard.cvm.keyrelease_server
  - snpguard.cvm.attributes
attributes:
  check_mode:
    support: full
    details: Check mode compares digests and writes nothing.
  diff_mode:
    support: full
    details: The bundle's SHA-256 before and after.
  idempotent:
    support: full
    details: The same bundle on disk is no change.
  platform:
    support: full
    platforms: posix
options:
  name:
    description: The image's name or id on the server.
    type: str
    required: true
  dest:
    description: Where to write the bundle (a file; its directory must exist).
    type: path
    required: true
requirements: []
seealso:
  - module: snpguard.cvm.cvm_register
  - module: snpguard.cvm.snp_vm
"""

EXAMPLES = r"""
- name: Fetch the bundle of the registered image
  snpguard.cvm.cvm_bundle:
    url: https://keys.example.com:8443
    ca_file: /etc/snpguard/ca.pem
    name: debian13-web
    dest: /var/lib/snpguard/bundles/debian13-web.tar.gz
  environment:
    SNPGUARD_TOKEN: "{{ vault_snpguard_token }}"
"""

RETURN = r"""
dest:
  description: The bundle's path.
  returned: success
  type: str
id:
  description: The image's id on the server.
  returned: success
  type: str
image:
  description: The image's name.
  returned: success
  type: str
sha256:
  description: SHA-256 of the bundle (as the server announces it).
  returned: success
  type: str
enabled:
  description: Whether the server releases the image's key (a disabled image's VMs are refused at boot).
  returned: success
  type: bool
measurements:
  description: The registered launch measurements (hex) by vCPU count, what a runtime attestation expects.
  returned: success
  type: dict
  sample: {"1": "5b8e0c...c31a"}
policy:
  description: The guest-policy constraints the server enforces for the image.
  returned: success
  type: dict
min_tcb:
  description: The minimum TCB the server enforces for the image, or V(null).
  returned: success
  type: dict
host_data:
  description: The HOST_DATA the image's launches carry (hex), or V(null).
  returned: success
  type: str
expect:
  description:
    - What the server enforces for the image, as the options of M(snpguard.cvm.snp_report_verify) and
      M(snpguard.cvm.attest) name it - C(allow_debug), C(policy) (guest-policy flags), C(min_abi), C(min_tcb),
      C(host_data) - for a runtime attestation that expects no less than key release does.
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snpguard.cvm.plugins.module_utils.common.ansible_glue import run
from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.cvm_bundle import apply
from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.module_args import SERVER_ARGSPEC


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **SERVER_ARGSPEC,
            "name": {"type": "str", "required": True},
            "dest": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    run(module, lambda: apply(module.params, check_mode=module.check_mode))


if __name__ == "__main__":
    main()
