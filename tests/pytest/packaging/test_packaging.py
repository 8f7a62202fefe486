# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The two ways the collection ships: a wheel and a Galaxy tarball.

* The wheel (hatchling, ``pip install .``) puts the repository root at
  ``ansible_collections/snpguard/cvm`` in site-packages, where Ansible finds it, and
  installs the ``snpguard`` console script.
* ``ansible-galaxy collection build`` honours galaxy.yml's build_ignore: no virtualenv,
  build output or caches in the tarball.
"""

from __future__ import annotations

import configparser
import importlib.util
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PREFIX = "ansible_collections/snpguard/cvm/"

pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)]
    if importlib.util.find_spec("hatchling") is not None:
        argv.insert(4, "--no-build-isolation")  # the backend is here: no download needed
    _run(argv, cwd=out)
    wheels = sorted(out.glob("snpguard_cvm-*.whl"))
    assert len(wheels) == 1, f"expected one wheel, found {wheels}"
    with zipfile.ZipFile(wheels[0]) as archive:
        yield archive


@pytest.mark.parametrize(
    "member",
    ["galaxy.yml", "meta/runtime.yml", "plugins/modules/snp_measure.py", "plugins/modules/snp_id_block.py"],
)
def test_wheel_installs_the_collection_under_ansible_collections(wheel: zipfile.ZipFile, member: str) -> None:
    assert PREFIX + member in wheel.namelist()


def test_wheel_holds_only_the_collection_and_its_metadata(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    stray = [n for n in names if not n.startswith(PREFIX) and ".dist-info/" not in n]
    assert stray == []
    unwanted = [
        n for n in names if any(f"/{d}/" in f"/{n}" for d in (".venv", "build", "tests", "__pycache__", ".git"))
    ]
    assert unwanted == []


def test_wheel_declares_the_snpguard_console_script(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert parser["console_scripts"]["snpguard"] == "ansible_collections.snpguard.cvm.cli.main:main"
    module = parser["console_scripts"]["snpguard"].split(":", 1)[0]
    assert PREFIX + module.split(".", 3)[3].replace(".", "/") + ".py" in wheel.namelist()


@pytest.fixture(scope="module")
def galaxy_tarball(tmp_path_factory: pytest.TempPathFactory) -> tarfile.TarFile:
    out = tmp_path_factory.mktemp("galaxy")
    galaxy = Path(sys.executable).with_name("ansible-galaxy")
    if not galaxy.exists():
        pytest.fail(f"{galaxy} not found: ansible-core must be installed beside this Python")
    _run([str(galaxy), "collection", "build", "--output-path", str(out), str(REPO)], cwd=out)
    tarballs = sorted(out.glob("snpguard-cvm-*.tar.gz"))
    assert len(tarballs) == 1, f"expected one tarball, found {tarballs}"
    with tarfile.open(tarballs[0]) as archive:
        yield archive


def test_galaxy_tarball_has_the_collection(galaxy_tarball: tarfile.TarFile) -> None:
    names = set(galaxy_tarball.getnames())
    for member in ("MANIFEST.json", "FILES.json", "meta/runtime.yml", "plugins/modules/snp_measure.py"):
        assert member in names


def test_galaxy_tarball_leaves_out_build_ignore(galaxy_tarball: tarfile.TarFile) -> None:
    ignored = (".venv", "build", ".ci", "bench", ".ruff_cache", ".pytest_cache", ".hypothesis", ".git")
    leaked = [n for n in galaxy_tarball.getnames() if n.split("/", 1)[0] in ignored]
    assert leaked == []
    assert not [n for n in galaxy_tarball.getnames() if "__pycache__" in n.split("/")]
