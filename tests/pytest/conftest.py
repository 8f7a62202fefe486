# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Locations of real artifacts for the pytest suite.

* ``vectors``: ../shared/vectors beside the checkout (or $SNPGUARD_VECTORS), read in place.
* ``artifacts``: Debian firmware/kernel/initrd cached by scripts/fetch-artifacts
  (or $SNPGUARD_ARTIFACTS). Tests that need them fail, not skip, when they are
  missing under CI=true, so a broken download can never turn into a green run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEVROOT = REPO / "build" / "devroot"


def _ensure_importable() -> None:
    """Import the working tree as ``ansible_collections.snpguard.cvm``."""
    link = DEVROOT / "ansible_collections" / "snpguard" / "cvm"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO, target_is_directory=True)
    if str(DEVROOT) not in sys.path:
        sys.path.insert(0, str(DEVROOT))


_ensure_importable()

#: Real servers, simulated agents, private PostgreSQL clusters (tests/pytest/servers.py).
pytest_plugins = ["servers"]


def vectors_dir() -> Path:
    return Path(os.environ.get("SNPGUARD_VECTORS", REPO.parent / "shared" / "vectors"))


def artifacts_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "snpguard" / "artifacts"
    return Path(os.environ.get("SNPGUARD_ARTIFACTS", default))


def _need(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must provide it)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def vectors() -> Path:
    return _need(vectors_dir(), "shared test vectors")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    return _need(artifacts_dir() / "manifest.json", "Debian artifacts (run scripts/fetch-artifacts)").parent


@pytest.fixture(scope="session")
def artifacts_manifest(artifacts: Path) -> dict:
    return json.loads((artifacts / "manifest.json").read_text())
