#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: snp_id_block
short_description: Create and sign the SEV-SNP ID block and ID authentication block of a guest
version_added: 0.1.0
description:
  - Builds the 96-byte SEV-SNP ID block (expected launch digest, family ID, image ID, guest SVN, guest policy)
    and the 4096-byte ID authentication block that signs it with an ECDSA P-384 O(id_key) and, optionally,
    signs the ID key with an O(author_key).
  - QEMU passes both to the AMD secure processor with the C(id-block), C(id-auth) and C(author-key-enabled)
    properties of C(-object sev-snp-guest); the firmware then refuses to launch a guest whose measurement or
    policy differs, and every attestation report of the guest carries the family ID, image ID, guest SVN and
    the SHA-384 digests of both public keys.
  - Idempotent on verified content, not bytes. ECDSA signatures differ on every run, so an existing
    O(id_auth_path) is kept when it parses, its signatures verify over the wanted ID block and its embedded
    public keys are the current keys; otherwise it is re-signed and replaced atomically.
  - Private keys are never overwritten. With O(generate_keys=true), a missing key file is created as a new
    P-384 key with mode V(0600).
  - Files are written as base64 text, the form QEMU takes; raw binary files are accepted when read.
  - O(mode), O(owner), O(group) and the other file options apply to O(id_block_path) and O(id_auth_path) (written
    V(0644) otherwise). They never apply to the private keys, which are created V(0600) and never loosened.
author:
  - snpguard maintainers (@snpguard)
extends_documentation_fragment:
  - snpguard.cvm.attributes
  - snpguard.cvm.attributes.files
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
    details:
      - In check mode nothing is written; the ID block is still computed and the ID auth is signed in memory,
        except when a key would first have to be generated.
  diff_mode:
    support: full
    details:
      - The diff shows public facts only (launch digest, IDs, SVN, policy, key digests), never key material.
  idempotent:
    support: full
    details: Decided on verified content - an existing ID auth that still verifies for the same block and keys is kept.
  safe_file_operations:
    support: full
    details: Blocks are written to a temporary file and renamed into place; keys are linked into place, never replaced.
  platform:
    support: full
    platforms: posix
requirements:
  - cryptography
options:
  id_key:
    description:
      - Path of the ID private key (PEM, ECDSA P-384; PKCS#8 or SEC1 C(EC PRIVATE KEY)).
      - Its SHA-384 public-key digest appears as ID_KEY_DIGEST in attestation reports.
    type: path
    required: true
  id_key_passphrase:
    description:
      - Passphrase of O(id_key), if it is encrypted. A key created by O(generate_keys) is encrypted with it.
    type: str
  author_key:
    description:
      - Path of the author private key (PEM, ECDSA P-384), which signs the ID key.
      - Its digest appears as AUTHOR_KEY_DIGEST in attestation reports. Without it the author fields of the ID
        auth block are zero and RV(author_key_enabled) is V(false).
      - Must be a different file than O(id_key).
    type: path
  author_key_passphrase:
    description:
      - Passphrase of O(author_key), if it is encrypted. A key created by O(generate_keys) is encrypted with it.
    type: str
  generate_keys:
    description:
      - Create O(id_key) and O(author_key) as new P-384 keys (mode V(0600)) when the files do not exist.
      - Existing keys are never replaced. When V(false), a missing key file is an error.
    type: bool
    default: false
  measurement:
    description:
      - The expected launch digest (LD) of the guest, 48 bytes as 96 hex characters, for example the
        C(measurement) returned by M(snpguard.cvm.snp_measure).
      - It must equal the digest the firmware computes, or the launch fails.
    type: str
    required: true
  family_id:
    description:
      - FAMILY_ID, 16 bytes as 32 hex characters. Not interpreted by the firmware; copied into reports.
    type: str
    default: '00000000000000000000000000000000'
  image_id:
    description:
      - IMAGE_ID, 16 bytes as 32 hex characters. Not interpreted by the firmware; copied into reports.
    type: str
    default: '00000000000000000000000000000000'
  guest_svn:
    description:
      - Security version number of the guest (u32), copied into reports as GUEST_SVN.
    type: int
    default: 0
  policy:
    description:
      - The guest policy. It must equal the C(policy) QEMU launches the guest with.
      - An integer (V(196608) is V(0x30000)), a decimal or V(0x)-hex string, a string of assignments such as
        V(smt=1,debug=0), or a dictionary with the keys C(abi_minor), C(abi_major) (0..255) and the booleans
        C(smt), C(migrate_ma), C(debug), C(single_socket), C(cxl_allow), C(mem_aes_256_xts), C(rapl_dis),
        C(ciphertext_hiding), C(page_swap_disable). Keys left out of a dictionary keep the values of
        V(0x30000) (SMT allowed, everything else off).
      - Bit 17 must be set and bits 63:26 must be clear; other values are refused.
    type: raw
    default: 196608
  id_block_path:
    description:
      - Write the ID block (base64) to this file.
    type: path
  id_auth_path:
    description:
      - Write the ID authentication block (base64) to this file. An existing valid file for the same ID block
        and keys is kept unchanged.
    type: path
notes:
  - The key digests can be recomputed from the keys at any time; the private keys are the only secrets here.
seealso:
  - name: SEV-SNP ID block guide
    description: What the ID block and ID auth are and how QEMU and the attestation report use them.
    link: https://github.com/snpguard/cvm/blob/main/docs/docsite/rst/id_block.rst
"""

EXAMPLES = r"""
- name: Sign the ID block of an image with keys created on first use
  snpguard.cvm.snp_id_block:
    id_key: /etc/snpguard/keys/id-key.pem
    author_key: /etc/snpguard/keys/author-key.pem
    generate_keys: true
    measurement: "{{ measured.measurement }}"
    family_id: "{{ '%032x' % 1 }}"
    guest_svn: 2
    policy:
      smt: true
      debug: false
    id_block_path: /var/lib/snpguard/images/debian13/id_block.b64
    id_auth_path: /var/lib/snpguard/images/debian13/id_auth.b64
  register: id_block

- name: Pass the ID block to QEMU
  ansible.builtin.debug:
    msg: >-
      -object sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy={{ id_block.policy }},
      id-block={{ id_block.qemu.id_block }},id-auth={{ id_block.qemu.id_auth }},
      author-key-enabled={{ id_block.qemu.author_key_enabled }}

- name: ID key only (no author key), policy as hex
  snpguard.cvm.snp_id_block:
    id_key: /etc/snpguard/keys/id-key.pem
    measurement: 076f052d08bda7a700aa2a608c5caa6b00ebad297b6d68a85a45b1e669a558b67e1b91d284a301fe63c4fa0750467eed
    policy: "0x30000"
"""

RETURN = r"""
id_block:
  description: The 96-byte ID block, base64-encoded (QEMU C(id-block)).
  returned: success
  type: str
  sample: >-
    B28FLQi9p6cAqipgjFyqawDrrSl7bWioWkWx5mmlWLZ+G5HShKMB/mPE+gdQRn7t
    AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAwAAAAAA
id_auth:
  description:
    - The 4096-byte ID authentication block, base64-encoded (QEMU C(id-auth)).
    - V(null) in check mode when a key would first have to be generated.
  returned: success
  type: str
id_key_digest:
  description:
    - SHA-384 of the ID key's SEV public-key structure, hex; the ID_KEY_DIGEST of attestation reports.
    - V(null) in check mode when the key would be generated.
  returned: success
  type: str
  sample: 870b7e35c53f8a72d0d322f75ab2af8262792aaf6579622ce4131c3f21f289e77cb0560a5e3b90b3932e674ec709cb14
author_key_digest:
  description:
    - SHA-384 of the author key's SEV public-key structure, hex; the AUTHOR_KEY_DIGEST of attestation reports.
    - V(null) without O(author_key), or in check mode when the key would be generated.
  returned: success
  type: str
  sample: 63111c34bbfc0a4938f9a009bd074980d8172323e61599c9fd336da8673248e1dca98d0be8f76376a106b8afd4c0a057
author_key_enabled:
  description: Whether the ID auth block carries an author key (QEMU C(author-key-enabled)).
  returned: success
  type: bool
  sample: true
policy:
  description: The guest policy as an integer, for QEMU's C(policy) property.
  returned: success
  type: int
  sample: 196608
qemu:
  description:
    - The values of the C(sev-snp-guest) properties, ready to join into C(-object sev-snp-guest,...).
    - The keys are the QEMU property names with C(_) for C(-) (RV(qemu.id_block) is C(id-block)).
    - V(null) in check mode when a key would first have to be generated.
  returned: success
  type: dict
  contains:
    id_block:
      description: The value of QEMU's C(id-block) property; same as RV(id_block).
      type: str
      returned: success
    id_auth:
      description: The value of QEMU's C(id-auth) property; same as RV(id_auth).
      type: str
      returned: success
    author_key_enabled:
      description: The value of QEMU's C(author-key-enabled) property, V(on) or V(off).
      type: str
      returned: success
      sample: "on"
keys_created:
  description: Key files created by this run (or that would be created, in check mode).
  returned: success
  type: list
  elements: str
files_written:
  description: ID block and ID auth files written by this run (or that would be written, in check mode).
  returned: success
  type: list
  elements: str
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snpguard.cvm.plugins.module_utils.common.ansible_glue import require_cryptography, run
from ansible_collections.snpguard.cvm.plugins.module_utils.idblock.snp_id_block import IdBlockRequest, ensure_id_block

ARGUMENT_SPEC: dict[str, Any] = {
    "id_key": {"type": "path", "required": True},
    "id_key_passphrase": {"type": "str", "no_log": True},
    "author_key": {"type": "path"},
    "author_key_passphrase": {"type": "str", "no_log": True},
    "generate_keys": {"type": "bool", "default": False},
    "measurement": {"type": "str", "required": True},
    "family_id": {"type": "str", "default": "0" * 32},
    "image_id": {"type": "str", "default": "0" * 32},
    "guest_svn": {"type": "int", "default": 0},
    "policy": {"type": "raw", "default": 0x30000},
    "id_block_path": {"type": "path"},
    "id_auth_path": {"type": "path"},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, add_file_common_args=True, supports_check_mode=True)
    require_cryptography(module)
    params = module.params
    request = IdBlockRequest(
        id_key=params["id_key"],
        id_key_passphrase=params["id_key_passphrase"],
        author_key=params["author_key"],
        author_key_passphrase=params["author_key_passphrase"],
        generate_keys=params["generate_keys"],
        measurement=params["measurement"],
        family_id=params["family_id"],
        image_id=params["image_id"],
        guest_svn=params["guest_svn"],
        policy=params["policy"],
        id_block_path=params["id_block_path"],
        id_auth_path=params["id_auth_path"],
        check_mode=module.check_mode,
    )

    def body() -> dict[str, Any]:
        result = ensure_id_block(request)
        diff = result.pop("diff")
        if result["qemu"] is not None:  # QEMU's property names, as identifiers (id-block -> id_block)
            result["qemu"] = {key.replace("-", "_"): value for key, value in result["qemu"].items()}
        for path in filter(None, (params["id_block_path"], params["id_auth_path"])):
            result["changed"] = module.set_fs_attributes_if_different(
                module.load_file_common_arguments(params, path=path), result["changed"])
        if module._diff:
            result["diff"] = diff
        return result

    run(module, body)


if __name__ == "__main__":
    main()
