# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The collection as users get it: the wheel, the Galaxy tarball, fresh virtual environments.

Built once per session. The Galaxy tarball is built from a copy of the git-listed files into
which development debris has been planted (dist/, tests/output/, bench results, caches,
.github/), so that galaxy.yml's build_ignore is tested against files that exist. Fresh
venvs are made by Debian's /usr/bin/python3 and install from PyPI through pip's cache.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from shipped import BASE_PYTHON, PLANTED, REPO, Venv, git_listed_copy, run


@pytest.fixture(scope="session")
def wheel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)]
    if importlib.util.find_spec("hatchling") is not None:
        argv.insert(4, "--no-build-isolation")  # the backend is here (requirements-test.txt): no download
    run(argv, cwd=out)
    wheels = sorted(out.glob("snpguard_cvm-*.whl"))
    assert len(wheels) == 1, f"expected one wheel, found {wheels}"
    return wheels[0]


@pytest.fixture(scope="session")
def galaxy_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the collection with development debris planted, to build the Galaxy tarball from."""
    source = git_listed_copy(tmp_path_factory.mktemp("galaxy-src") / "cvm")
    for rel in PLANTED:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text("planted by tests/pytest/packaging\n")
    return source


@pytest.fixture(scope="session")
def galaxy_tarball_path(tmp_path_factory: pytest.TempPathFactory, galaxy_source: Path) -> Path:
    out = tmp_path_factory.mktemp("galaxy")
    galaxy = Path(sys.executable).with_name("ansible-galaxy")
    if not galaxy.exists():
        pytest.fail(f"{galaxy} not found: ansible-core must be installed beside this Python")
    run([galaxy, "collection", "build", "--output-path", out, galaxy_source], cwd=out)
    tarballs = sorted(out.glob("snpguard-cvm-*.tar.gz"))
    assert len(tarballs) == 1, f"expected one tarball, found {tarballs}"
    return tarballs[0]


@pytest.fixture(scope="session")
def make_venv(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Venv]:
    if not BASE_PYTHON.exists():
        pytest.fail(f"{BASE_PYTHON} is missing (scripts/lib.sh's SETUP_DEBS install python3 and python3-venv)")
    root = tmp_path_factory.mktemp("venvs")
    return lambda name: Venv(root / name)
