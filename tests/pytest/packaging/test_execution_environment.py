# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The collection in an execution environment, as far as ansible-builder goes without a container engine.

* ``ansible-builder create`` accepts docs/examples/execution-environment.yml and puts the
  collection's Galaxy tarball, the requirements that install it and ansible-core into the
  build context.
* ``ansible-builder introspect`` - what the build runs on the installed collections - finds
  requirements-ee.txt and bindep.txt through the Galaxy-installed collection's
  meta/execution-environment.yml.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml
from shipped import REPO, clean_env, run

pytestmark = pytest.mark.slow

BUILDER = Path(sys.executable).parent / "ansible-builder"
EXAMPLE = REPO / "docs" / "examples" / "execution-environment.yml"


def _lines(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()
            if line.split("#", 1)[0].strip()]


def test_example_names_the_tarball_of_this_version() -> None:
    version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    definition = yaml.safe_load(EXAMPLE.read_text())
    (collection,) = definition["dependencies"]["galaxy"]["collections"]
    assert collection == {"name": f"collections/snpguard-cvm-{version}.tar.gz", "type": "file"}
    assert definition["dependencies"]["ansible_core"]["package_pip"] == "ansible-core>=2.19"


def test_ansible_builder_create_takes_the_example(galaxy_tarball_path: Path, tmp_path: Path) -> None:
    if not BUILDER.exists():
        pytest.fail(f"{BUILDER} not found (requirements-test.txt installs ansible-builder)")
    tree = tmp_path / "tree"
    (tree / "docs" / "examples").mkdir(parents=True)
    shutil.copy(EXAMPLE, tree / "docs" / "examples")
    (tree / "build" / "ee").mkdir(parents=True)
    shutil.copy(galaxy_tarball_path, tree / "build" / "ee")
    context = tmp_path / "context"
    result = run([BUILDER, "create", "-f", tree / "docs" / "examples" / "execution-environment.yml", "-c", context,
                  "--output-filename", "Containerfile"], env=clean_env())
    assert "Complete!" in result.stdout
    shipped = context / "_build" / "collections" / galaxy_tarball_path.name
    assert shipped.read_bytes() == galaxy_tarball_path.read_bytes()
    galaxy = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    assert galaxy == {"collections": [{"name": f"collections/{galaxy_tarball_path.name}", "type": "file"}]}
    containerfile = (context / "Containerfile").read_text()
    assert 'ARG ANSIBLE_INSTALL_REFS="ansible-core>=2.19 ansible-runner"' in containerfile
    assert "ansible-galaxy collection install" in containerfile and "-r requirements.yml" in containerfile
    assert "introspect.py introspect" in containerfile  # where meta/execution-environment.yml is read


def test_introspect_finds_the_collections_requirements(galaxy_tarball_path: Path, tmp_path: Path) -> None:
    collections = tmp_path / "collections"
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    run([galaxy, "collection", "install", "--offline", "--force", "-p", collections, galaxy_tarball_path],
        env=clean_env(ANSIBLE_HOME=str(tmp_path / "ansible-home"), ANSIBLE_COLLECTIONS_PATH=str(collections),
                      ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false"))
    installed = collections / "ansible_collections" / "snpguard" / "cvm"
    meta = yaml.safe_load((installed / "meta" / "execution-environment.yml").read_text())
    assert meta == {"version": 1, "dependencies": {"python": "requirements-ee.txt", "system": "bindep.txt"}}
    result = run([BUILDER, "introspect", "--sanitize", collections], env=clean_env())
    found = yaml.safe_load(result.stdout)
    tag = "  # from collection snpguard.cvm"
    assert found["python"] == [line + tag for line in _lines(REPO / "requirements-ee.txt")]
    assert found["system"] == [line + tag for line in _lines(REPO / "bindep.txt")]
    assert any(line.startswith("cryptography>=47") for line in found["python"])
