# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard --version``: the collection's version and the Python and cryptography it runs on.

The version is read from the collection that is running, wherever it lives:

1. ``galaxy.yml`` at the collection root beside ``cli/`` (the working tree, and the wheel,
   which ships galaxy.yml in ``ansible_collections/snpguard/cvm/``);
2. ``MANIFEST.json`` there (a collection installed by ``ansible-galaxy``, whose tarball
   carries MANIFEST.json instead of galaxy.yml);
3. the installed ``snpguard-cvm`` distribution's metadata (importlib.metadata).

galaxy.yml comes first because the distribution metadata may belong to another copy
(a wheel installed in the venv while the working tree runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from typing import Any

DISTRIBUTION = "snpguard-cvm"
COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_VERSION_LINE = re.compile(r"""^version:[ \t]*["']?([^"'\s#]+)""", re.MULTILINE)


def collection_version(root: str = COLLECTION_ROOT) -> tuple[str, str]:
    """``(version, source)``; version ``unknown`` when no source has one."""
    try:
        with open(os.path.join(root, "galaxy.yml"), encoding="utf-8") as handle:
            match = _VERSION_LINE.search(handle.read())
        if match:
            return match.group(1), "galaxy.yml"
    except OSError:
        pass
    try:
        with open(os.path.join(root, "MANIFEST.json"), encoding="utf-8") as handle:
            version = json.load(handle)["collection_info"]["version"]
        if isinstance(version, str) and version:
            return version, "MANIFEST.json"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        return dist_version(DISTRIBUTION), f"{DISTRIBUTION} metadata"
    except PackageNotFoundError:
        return "unknown", "no galaxy.yml, MANIFEST.json or installed distribution"


def version_text(root: str = COLLECTION_ROOT) -> str:
    version, source = collection_version(root)
    try:
        import cryptography

        crypto = cryptography.__version__
    except ImportError:  # pragma: no cover - a dependency of the wheel
        crypto = "not installed"
    return (f"snpguard {version} (collection snpguard.cvm, {source}, {root})\n"
            f"Python {platform.python_version()} ({platform.python_implementation()}), cryptography {crypto}")


class VersionAction(argparse.Action):
    """Like argparse's ``version`` action, but computed only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the collection version and the Python and cryptography versions, then exit")
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(version_text())
        sys.stdout.flush()
        parser.exit(0)
