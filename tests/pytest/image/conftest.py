# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the image tests: stock Debian 13 cloud images built by scripts/cloud_image.py.

``cloud_image`` (initramfs-tools) and ``cloud_image_dracut`` are session-scoped
:class:`CloudImage` values: the cached qcow2 (never modify it: boot or convert a copy or a
copy-on-write overlay) and its manifest (schema in the script's docstring).  The first run
builds them (~2.5 min each, needs root); later runs reuse the cache until the recipe
changes.  When an image cannot be built the tests using it skip, or fail under CI=true.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "cloud_image.py"


def load_script() -> ModuleType:
    """scripts/cloud_image.py as a module (it is not part of the collection)."""
    if "cloud_image" in sys.modules:
        return sys.modules["cloud_image"]
    spec = importlib.util.spec_from_file_location("cloud_image", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cloud_image"] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class CloudImage:
    """A built stock image: ``path`` (image.qcow2, read-only by convention) and its ``manifest``."""

    path: Path
    manifest: dict

    @property
    def variant(self) -> str:
        return self.manifest["variant"]


def _need_image(variant: str) -> CloudImage:
    script = load_script()
    try:
        path = script.build(variant)
    except (script.CloudImageError, OSError) as exc:
        message = f"cannot build the {variant} cloud image: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must be able to build it)")
        pytest.skip(message)
    manifest = script.load_manifest(path.parent)
    if manifest is None:
        pytest.fail(f"{path.parent} has no valid manifest right after the build")
    return CloudImage(path, manifest)


@pytest.fixture(scope="session")
def cloud_image() -> CloudImage:
    return _need_image("initramfs-tools")


@pytest.fixture(scope="session")
def cloud_image_dracut() -> CloudImage:
    return _need_image("dracut")
