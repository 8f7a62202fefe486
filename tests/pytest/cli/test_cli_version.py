# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard --version``: galaxy.yml's version, from the working tree and from an installed wheel.

The fallbacks are tested on copies: a collection root with only MANIFEST.json (what
``ansible-galaxy collection install`` leaves), and one with neither, which must fall back to
the installed distribution's metadata.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import cryptography
import pytest

from ansible_collections.snpguard.cvm.cli import version as cli_version

REPO = Path(__file__).resolve().parents[3]
DEVROOT = REPO / "build" / "devroot"


def galaxy_version() -> str:
    match = re.search(r"^version:\s*(\S+)", (REPO / "galaxy.yml").read_text(), re.MULTILINE)
    assert match
    return match.group(1).strip("'\"")


def test_version_from_the_working_tree() -> None:
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.snpguard.cvm.cli", "--version"],
                          env=dict(os.environ, PYTHONPATH=str(DEVROOT)), capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first.startswith(f"snpguard {galaxy_version()} (collection snpguard.cvm, galaxy.yml, ")
    assert second == (f"Python {platform.python_version()} ({platform.python_implementation()}), "
                      f"cryptography {cryptography.__version__}")


def test_manifest_json_when_there_is_no_galaxy_yml(tmp_path: Path) -> None:
    (tmp_path / "MANIFEST.json").write_text('{"collection_info": {"namespace": "snpguard", "name": "cvm", '
                                            '"version": "9.8.7"}}')
    assert cli_version.collection_version(str(tmp_path)) == ("9.8.7", "MANIFEST.json")
    (tmp_path / "galaxy.yml").write_text("namespace: snpguard\nname: cvm\nversion: '1.2.3'  # comment\n")
    assert cli_version.collection_version(str(tmp_path)) == ("1.2.3", "galaxy.yml")


def test_distribution_metadata_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"snpguard-cvm": "4.5.6"}[name])
    assert cli_version.collection_version(str(tmp_path)) == ("4.5.6", "snpguard-cvm metadata")

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert cli_version.collection_version(str(tmp_path))[0] == "unknown"


@pytest.mark.slow
def test_version_from_an_installed_wheel(tmp_path: Path) -> None:
    """Build the wheel, install it into a bare target directory, and ask the installed copy."""
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(REPO)]
    if importlib.util.find_spec("hatchling") is not None:
        argv.insert(4, "--no-build-isolation")
    subprocess.run(argv, cwd=tmp_path, check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("snpguard_cvm-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.snpguard.cvm.cli", "--version"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    installed = target / "ansible_collections" / "snpguard" / "cvm"
    assert proc.stdout.startswith(f"snpguard {galaxy_version()} (collection snpguard.cvm, galaxy.yml, {installed})")
    # Without galaxy.yml, the installed copy reads its distribution's metadata.
    (installed / "galaxy.yml").unlink()
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.snpguard.cvm.cli", "--version"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"snpguard {galaxy_version()} (collection snpguard.cvm, snpguard-cvm metadata")
