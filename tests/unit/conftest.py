# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Make ``ansible_collections.snpguard.cvm`` import *this* checkout for a plain ``pytest tests/unit`` run.

Under ``ansible-test units`` (and with ``PYTHONPATH=build/devroot``) the collection already
imports from the tree this file is in, and this file does nothing.  Otherwise, when the import
fails or resolves to another copy (the package pip-installed into the venv, which goes stale
as soon as the working tree changes), it links the checkout as
``build/devroot/ansible_collections/snpguard/cvm``, puts ``build/devroot`` first on sys.path
and drops the other copy's already-imported modules.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

_PROBE = "ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors"
_REPO = Path(__file__).resolve().parents[2]


def _imported_tree() -> Path | None:
    try:
        module = importlib.import_module(_PROBE)
    except ImportError:
        return None
    # errors.py -> snp -> module_utils -> plugins -> collection root
    return Path(module.__file__).resolve().parents[3]


if _imported_tree() != _REPO:
    _devroot = _REPO / "build" / "devroot"
    _link = _devroot / "ansible_collections" / "snpguard" / "cvm"
    if not _link.exists():
        _link.parent.mkdir(parents=True, exist_ok=True)
        _link.symlink_to(_REPO, target_is_directory=True)
    if str(_devroot) in sys.path:
        sys.path.remove(str(_devroot))
    sys.path.insert(0, str(_devroot))
    for _name in [name for name in sys.modules if name == "ansible_collections" or name.startswith(
            "ansible_collections.")]:
        del sys.modules[_name]
    importlib.invalidate_caches()
    assert _imported_tree() == _REPO, f"cannot import this checkout ({_REPO}) as ansible_collections.snpguard.cvm"
