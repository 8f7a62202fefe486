# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The thin layer every module uses between ``AnsibleModule`` and module_utils.

Domain errors become ``fail_json`` here and nowhere else, with ``msg`` naming the
field and extra keys (``field=``, ``path=``) for playbooks that inspect them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ..snp.crypto_guard import CRYPTOGRAPHY_IMPORT_ERROR, HAS_CRYPTOGRAPHY
from ..snp.errors import SnpError


def require_cryptography(module: AnsibleModule) -> None:
    """Fail the task cleanly when ``cryptography`` is missing on the target."""
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)


def run(module: AnsibleModule, body: Callable[[], dict[str, Any]]) -> None:
    """Run the module body and exit; an ``SnpError`` becomes a named failure."""
    try:
        result = body()
    except SnpError as exc:
        module.fail_json(**exc.as_dict())
    module.exit_json(**result)
