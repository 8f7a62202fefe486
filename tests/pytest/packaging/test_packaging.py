# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The two ways the collection ships: a wheel and a Galaxy tarball.

* The wheel (hatchling, ``pip install .``) puts the repository root at
  ``ansible_collections/snpguard/cvm`` in site-packages, where Ansible finds it, and
  installs the ``snpguard`` console script. It depends on cryptography alone; Ansible, the
  server and PostgreSQL are extras.
* ``ansible-galaxy collection build`` honours galaxy.yml's build_ignore: no virtualenv,
  build output, caches, version control or development files in the tarball (tested on a
  copy of the collection where such files were planted, see conftest.py).
* Both carry the LICENSE, and what the server role needs from the collection it belongs to
  (pyproject.toml, requirements-server.txt, constraints-server.txt).
"""

from __future__ import annotations

import configparser
import email.parser
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from shipped import PLANTED, REPO

PREFIX = "ansible_collections/snpguard/cvm/"
ROLE_NEEDS = ("pyproject.toml", "requirements-server.txt", "constraints-server.txt")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(wheel_path: Path) -> Iterator[zipfile.ZipFile]:
    with zipfile.ZipFile(wheel_path) as archive:
        yield archive


@pytest.fixture(scope="module")
def galaxy_tarball(galaxy_tarball_path: Path) -> Iterator[tarfile.TarFile]:
    with tarfile.open(galaxy_tarball_path) as archive:
        yield archive


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.parser.Parser().parsestr(wheel.read(name).decode())


@pytest.mark.parametrize(
    "member",
    ["galaxy.yml", "meta/runtime.yml", "plugins/modules/snp_measure.py", "plugins/modules/snp_id_block.py",
     "roles/server/tasks/main.yml", "LICENSE", *ROLE_NEEDS],
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


def test_wheel_carries_the_apache_license(wheel: zipfile.ZipFile) -> None:
    licence = (REPO / "LICENSE").read_bytes()
    assert licence.lstrip().startswith(b"Apache License") and b"Version 2.0, January 2004" in licence
    assert b"END OF TERMS AND CONDITIONS" in licence and b"APPENDIX: How to apply the Apache License" in licence
    assert wheel.read(PREFIX + "LICENSE") == licence
    (in_dist_info,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert wheel.read(in_dist_info) == licence
    metadata = _metadata(wheel)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]


def test_wheel_depends_on_cryptography_alone_and_declares_the_extras(wheel: zipfile.ZipFile) -> None:
    metadata = _metadata(wheel)
    requirements = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    base = [str(r) for r in requirements if r.marker is None]
    assert base == ["cryptography>=47"]
    by_extra: dict[str, set[str]] = {}
    for requirement in requirements:
        if requirement.marker is None:
            continue
        (extra,) = [e for e in metadata.get_all("Provides-Extra") if requirement.marker.evaluate({"extra": e})]
        by_extra.setdefault(extra, set()).add(requirement.name.lower())
    assert set(metadata.get_all("Provides-Extra")) == {"ansible", "server", "postgresql"}
    assert by_extra["ansible"] == {"ansible-core"}
    assert by_extra["postgresql"] == {"psycopg"}
    assert {"fastapi", "uvicorn", "sqlalchemy", "alembic", "jinja2", "python-multipart"} <= by_extra["server"]
    assert not {"psycopg", "psycopg-binary", "ansible-core"} & by_extra["server"]


def test_requirements_server_is_the_server_and_postgresql_extras(wheel: zipfile.ZipFile) -> None:
    """requirements-server.txt = cryptography + extras server + postgresql, same specifiers (kept in step)."""
    metadata = _metadata(wheel)
    declared = {str(Requirement(r)).split(";", maxsplit=1)[0].strip() for r in metadata.get_all("Requires-Dist")
                if "ansible" not in r}
    listed = set()
    for line in (REPO / "requirements-server.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            listed.add(str(Requirement(line)))
    assert listed == declared


def test_constraints_pin_every_server_requirement(wheel: zipfile.ZipFile) -> None:
    pins = {}
    for line in (REPO / "constraints-server.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _sep, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            pins[name.strip().lower()] = version.strip()
    for line in (REPO / "requirements-server.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            assert requirement.name.lower() in pins, f"{requirement.name} is not pinned"
            assert requirement.specifier.contains(pins[requirement.name.lower()]), (requirement, pins)
    assert pins.get("psycopg-binary") == pins.get("psycopg")  # uvicorn[standard]/psycopg[binary] extras too
    assert {"uvloop", "httptools", "websockets", "pydantic", "starlette", "cffi"} <= set(pins)


def test_wheel_declares_the_snpguard_console_script(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert parser["console_scripts"]["snpguard"] == "ansible_collections.snpguard.cvm.cli.main:main"
    module = parser["console_scripts"]["snpguard"].split(":", 1)[0]
    assert PREFIX + module.split(".", 3)[3].replace(".", "/") + ".py" in wheel.namelist()


def test_galaxy_tarball_has_the_collection(galaxy_tarball: tarfile.TarFile) -> None:
    names = set(galaxy_tarball.getnames())
    for member in ("MANIFEST.json", "FILES.json", "meta/runtime.yml", "plugins/modules/snp_measure.py",
                   "roles/server/tasks/main.yml", "LICENSE", *ROLE_NEEDS,
                   "meta/execution-environment.yml", "requirements-ee.txt", "bindep.txt"):
        assert member in names


def test_galaxy_tarball_carries_the_apache_license(galaxy_tarball: tarfile.TarFile) -> None:
    member = galaxy_tarball.extractfile("LICENSE")
    assert member is not None and member.read() == (REPO / "LICENSE").read_bytes()


def test_galaxy_tarball_leaves_out_build_ignore(galaxy_source: Path, galaxy_tarball: tarfile.TarFile) -> None:
    for rel in PLANTED:  # they were there to be left out
        assert (galaxy_source / rel).is_file()
    names = galaxy_tarball.getnames()
    ignored = (".venv", "build", "dist", ".ci", "bench", "scripts", ".ruff_cache", ".pytest_cache", ".mypy_cache",
               ".hypothesis", ".git", ".github", ".gitignore", ".gitlab-ci.yml")
    leaked = [n for n in names if n.split("/", 1)[0] in ignored]
    assert leaked == []
    assert not [n for n in names if n.startswith("tests/output")]
    assert not [n for n in names if "__pycache__" in n.split("/") or n.endswith((".pyc", ".whl", ".tar.gz"))]
    # and it still has what users need
    assert "tests/sanity/ignore-2.19.txt" in names and "extensions/molecule/server/converge.yml" in names
