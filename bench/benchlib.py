# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""What the bench scripts share: the working tree importable as ``ansible_collections.snpguard.cvm``,
and where their inputs are by default.

The scripts run as ``.venv/bin/python bench/<name>.py``, so this directory is first on
``sys.path`` and they ``import benchlib`` as it is.  tests/pytest/conftest.py keeps the
test side's copy of the same link.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVROOT = REPO / "build" / "devroot"


def import_collection() -> None:
    """Link the working tree as build/devroot/ansible_collections/snpguard/cvm and put build/devroot on sys.path."""
    link = DEVROOT / "ansible_collections" / "snpguard" / "cvm"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO, target_is_directory=True)
    sys.path.insert(0, str(DEVROOT))


def artifacts_default() -> Path:
    """$SNPGUARD_ARTIFACTS, else the Debian artifacts cached by scripts/fetch-artifacts."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("SNPGUARD_ARTIFACTS", cache / "snpguard" / "artifacts"))


def vectors_default() -> Path:
    """$SNPGUARD_VECTORS, else ../shared/vectors beside the checkout."""
    return Path(os.environ.get("SNPGUARD_VECTORS", REPO.parent / "shared" / "vectors"))
