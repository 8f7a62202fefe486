# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations


class ModuleDocFragment:
    # The attributes every module of the collection states (each module sets their support).
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in C(check_mode)), when in diff
      mode.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
      - This assumes that the system controlled or queried by the module has not changed in a relevant way.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
"""

    # Modules that write files on the target.
    FILES = r"""
options: {}
attributes:
  safe_file_operations:
    description: Uses Ansible's strict file operation functions to ensure proper permissions and avoid data corruption.
"""

    # The modules that talk to the key-release server (meta/runtime.yml action group keyrelease).
    ACTIONGROUP_KEYRELEASE = r"""
options: {}
attributes:
  action_group:
    description:
      - Use C(group/snpguard.cvm.keyrelease) (or C(group/keyrelease) with the collection in C(collections)) in
        C(module_defaults) to set the server's O(url), O(ca_file), O(token) and the other connection options once.
    support: full
    membership:
      - snpguard.cvm.keyrelease
"""
