#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cvm_api_token
short_description: Create or revoke API tokens of the snpguard key-release server
version_added: 0.1.0
description:
  - Makes sure an active API token of the given O(name) exists (O(state=present)) or that none does (O(state=absent),
    every active token of that name is revoked).
  - The server stores tokens only hashed, so a token's secret exists only in the answer that created it. This
    module returns it in RV(token) only when it created the token; run the task with C(no_log) or give
    O(token_file), where the secret is written 0600.
  - With O(token_file), the token in that file is what must exist - when the file holds a token of this name that
    is still active, nothing changes; otherwise a new token is created and written there.
  - A fresh server has no API token yet. Its first token is created with O(master_password) (and O(token_file)),
    which the server accepts for creating tokens only.
author:
  - snpguard maintainers (@snpguard)
extends_documentation_fragment:
  - snpguard.cvm.keyrelease_server
  - snpguard.cvm.attributes
  - snpguard.cvm.attributes.actiongroup_keyrelease
  - snpguard.cvm.attributes.files
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
    details: Lists the tokens and reports what would be created or revoked; changes nothing.
  diff_mode:
    support: none
    details: The only state is the list of tokens, returned in RV(tokens).
  idempotent:
    support: full
    details:
      - An active token of O(name) (with O(token_file), the one in that file) is kept; a second run changes nothing.
  safe_file_operations:
    support: full
    details: O(token_file) is written to a temporary file and renamed into place.
  platform:
    support: full
    platforms: posix
options:
  name:
    description: Name of the token (several tokens may share a name; the name identifies them here).
    type: str
    required: true
  state:
    description: Whether an active token of this name exists (V(present)) or all of them are revoked (V(absent)).
    type: str
    choices: [present, absent]
    default: present
  expires_at:
    description:
      - Expiry of a new token, ISO 8601 (naive times are UTC). Existing tokens keep theirs.
      - A token minted with another token never outlives it; without O(expires_at) it inherits that expiry.
    type: str
  scope:
    description:
      - What a new token may do. V(operator) registers, changes and reads images and reads the audit log;
        V(admin) can also mint and revoke tokens.
      - Minting needs O(master_password) or an O(token) with scope V(admin); a token never mints above its own scope.
    type: str
    choices: [operator, admin]
    default: operator
  master_password:
    description:
      - The server's master password, to create a token without an API token (the first one of a fresh server).
      - Needs O(token_file), where the new token is kept, so that the next run can tell that it exists.
    type: str
  token_file:
    description:
      - File that holds this token (C(sgt_...)). A valid active token of this name there means nothing to do;
        otherwise the new token's secret is written there, mode V(0600) unless O(mode) says otherwise.
      - O(mode), O(owner), O(group) and the other file options apply to this file (with O(state=present)).
      - With O(state=absent) the file is removed after the tokens are revoked.
    type: path
requirements: []
seealso:
  - module: snpguard.cvm.cvm_register
"""

EXAMPLES = r"""
- name: First API token of a fresh server, from its master password
  snpguard.cvm.cvm_api_token:
    url: https://keys.example.com:8443
    ca_file: /etc/snpguard/ca.pem
    name: ansible
    master_password: "{{ vault_snpguard_master_password }}"
    token_file: /etc/snpguard/ansible.token
  delegate_to: localhost

- name: A token for CI that expires, created with an existing API token
  snpguard.cvm.cvm_api_token:
    url: https://keys.example.com:8443
    ca_file: /etc/snpguard/ca.pem
    token: "{{ lookup('ansible.builtin.file', '/etc/snpguard/ansible.token') }}"
    name: ci-pipeline
    expires_at: "2027-01-31T00:00:00Z"
  register: ci_token
  no_log: true

- name: Revoke every token named ci-pipeline
  snpguard.cvm.cvm_api_token:
    url: https://keys.example.com:8443
    ca_file: /etc/snpguard/ca.pem
    token: "{{ lookup('ansible.builtin.file', '/etc/snpguard/ansible.token') }}"
    name: ci-pipeline
    state: absent
"""

RETURN = r"""
token:
  description: The new token's secret (C(sgt_<id>_<secret>)); the only time it is ever shown.
  returned: when a token was created (not in check mode)
  type: str
id:
  description: Id of the token that was created, or that O(token_file) holds.
  returned: when a token was created or found
  type: str
  sample: 3f2a9c0d11e4b5a6
revoked:
  description: Ids of the tokens that were (in check mode, would be) revoked.
  returned: O(state=absent)
  type: list
  elements: str
tokens:
  description:
    - The active tokens of this name (id, name, created_at, expires_at, last_used_at, state, scope, parent_id).
    - Never their secrets.
  returned: when the module could list tokens
  type: list
  elements: dict
  contains:
    id:
      description: Id of the token (the C(<id>) of C(sgt_<id>_<secret>)).
      type: str
      returned: always
      sample: 3f2a9c0d11e4b5a6
    name:
      description: Name of the token.
      type: str
      returned: always
    created_at:
      description: When it was created (ISO 8601).
      type: str
      returned: always
    expires_at:
      description: When it expires (ISO 8601), or V(null).
      type: str
      returned: always
    last_used_at:
      description: When it was last used (ISO 8601), or V(null).
      type: str
      returned: for listed tokens
    state:
      description: V(active) for the tokens listed here.
      type: str
      returned: for listed tokens
      sample: active
    scope:
      description: V(operator) or V(admin).
      type: str
      returned: always
      sample: operator
    parent_id:
      description: Id of the token that minted it, V(null) when minted with the master password.
      type: str
      returned: always
field:
  description: The option (or server field) that is wrong.
  returned: failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.cvm_api_token import apply
from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.module_args import SERVER_ARGSPEC
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **SERVER_ARGSPEC,
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "expires_at": {"type": "str"},
            "scope": {"type": "str", "choices": ["operator", "admin"], "default": "operator"},
            "master_password": {"type": "str", "no_log": True},
            "token_file": {"type": "path", "no_log": False},
        },
        required_by={"master_password": ("token_file",)},
        add_file_common_args=True,
        supports_check_mode=True,
    )
    try:
        result = apply(module.params, check_mode=module.check_mode)
    except SnpError as exc:
        module.fail_json(**exc.as_dict())
    token_file = module.params["token_file"]
    if token_file and module.params["state"] == "present":
        result["changed"] = module.set_fs_attributes_if_different(
            module.load_file_common_arguments(module.params, path=token_file), result["changed"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
