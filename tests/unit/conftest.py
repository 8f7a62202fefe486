# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Make ``ansible_collections.snpguard.cvm`` importable for a plain ``pytest tests/unit`` run.

Under ``ansible-test units`` (and with ``PYTHONPATH=build/devroot``) the import already
works and this file does nothing.  Otherwise it links the checkout as
``build/devroot/ansible_collections/snpguard/cvm`` and puts ``build/devroot`` on sys.path.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

_PROBE = "ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors"

try:
    importlib.import_module(_PROBE)
except ImportError:
    _repo = Path(__file__).resolve().parents[2]
    _devroot = _repo / "build" / "devroot"
    _link = _devroot / "ansible_collections" / "snpguard" / "cvm"
    if not _link.exists():
        _link.parent.mkdir(parents=True, exist_ok=True)
        _link.symlink_to(_repo, target_is_directory=True)
    if str(_devroot) not in sys.path:
        sys.path.insert(0, str(_devroot))
    importlib.invalidate_caches()
    importlib.import_module(_PROBE)
