# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The wheel in fresh virtual environments, with only what it declares (pip fetches from PyPI).

* No extras: cryptography and nothing else of ours - no Ansible, no server libraries - and
  ``snpguard --help``, the ``--help`` of every subcommand (walked from the installed parser)
  and a real ``snpguard measure`` of Debian's firmware, kernel and initrd, whose digest must
  equal what the working tree's code computes.
* Extra ``server`` (at the versions of constraints-server.txt, as the role installs it): no
  psycopg, no Ansible, and ``snpguard server init`` makes a working SQLite state.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from shipped import REPO, Venv

pytestmark = [pytest.mark.slow]

DEVROOT = REPO / "build" / "devroot"
APPEND = "console=ttyS0 root=/dev/vda1"

# The command paths of the installed CLI, from its own parser (argparse's sub-parsers, recursively).
WALK = r"""
import argparse, json
from ansible_collections.snpguard.cvm.cli.main import build_parser

def walk(parser, path):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if name not in {a for c in action._choices_actions for a in getattr(c, "aliases", ())}:
                    yield from walk(sub, path + [name])

print(json.dumps(list(walk(build_parser(), []))))
"""


def _installed_location(venv: Venv) -> Path:
    out = venv.run(venv.python, "-c", "import ansible_collections.snpguard.cvm.cli.main as m; print(m.__file__)")
    return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def cli_venv(make_venv: Callable[[str], Venv], wheel_path: Path) -> Venv:
    venv = make_venv("no-extras")
    venv.pip_install(wheel_path)
    return venv


@pytest.fixture(scope="module")
def server_venv(make_venv: Callable[[str], Venv], wheel_path: Path) -> Venv:
    venv = make_venv("server-extra")
    venv.pip_install(f"{wheel_path}[server]", "--constraint", REPO / "constraints-server.txt")
    return venv


def test_without_extras_only_cryptography_comes_along(cli_venv: Venv) -> None:
    location = _installed_location(cli_venv)
    assert location.is_relative_to(cli_venv.path), location  # the wheel's copy, not the working tree
    assert cli_venv.can_import("cryptography")
    for module in ("ansible", "fastapi", "uvicorn", "sqlalchemy", "alembic", "jinja2", "psycopg", "passlib"):
        assert not cli_venv.can_import(module), f"{module} was installed without being asked for"


def test_every_subcommand_has_help(cli_venv: Venv) -> None:
    snpguard = cli_venv.bin("snpguard")
    top = cli_venv.run(snpguard, "--help")
    assert top.stdout.startswith("usage: snpguard")
    paths = json.loads(cli_venv.run(cli_venv.python, "-c", WALK).stdout)
    commands = {path[0] for path in paths if path}
    assert {"measure", "id-block", "report", "certs", "server", "config", "image", "token"} <= commands
    assert len(paths) > len(commands)  # nested ones too (measure diff, id-block verify, server init, ...)
    for path in paths[1:]:
        result = cli_venv.run(snpguard, *path, "--help", check=False)
        assert result.returncode == 0, f"snpguard {' '.join(path)} --help: {result.stderr[-2000:]}"
        assert result.stdout.startswith("usage: snpguard " + " ".join(path)), result.stdout[:200]
        assert "Traceback" not in result.stderr


def test_measure_debian_artifacts_as_the_working_tree_does(cli_venv: Venv, artifacts: Path, tmp_path: Path) -> None:
    argv = ["measure", "--mode", "snp", "--ovmf", str(artifacts / "OVMF.amdsev.fd"), "--kernel",
            str(artifacts / "vmlinuz"), "--initrd", str(artifacts / "initrd.img"), "--append", APPEND,
            "--vcpus", "2", "--vcpu-type", "EPYC-v4", "--vmm-type", "QEMU"]
    installed = cli_venv.run(cli_venv.bin("snpguard"), *argv, cwd=tmp_path).stdout.strip()
    tree = subprocess.run([sys.executable, "-m", "ansible_collections.snpguard.cvm.cli", *argv], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(DEVROOT)), capture_output=True, text=True,
                          timeout=300, check=False)
    assert tree.returncode == 0, tree.stderr
    assert installed == tree.stdout.strip()
    digest = installed.split()[-1]
    assert len(digest) == 96 and int(digest, 16) != 0, installed


def test_server_extra_has_no_postgresql_driver_and_no_ansible(server_venv: Venv) -> None:
    for module in ("fastapi", "uvicorn", "sqlalchemy", "alembic", "jinja2", "multipart", "cryptography"):
        assert server_venv.can_import(module), module
    assert not server_venv.can_import("psycopg")
    assert not server_venv.can_import("ansible")
    assert not server_venv.can_import("passlib")  # server/passwords.py uses hashlib


def test_server_extra_installs_the_pinned_versions(server_venv: Venv) -> None:
    listed = json.loads(server_venv.run(server_venv.python, "-m", "pip", "list", "--format", "json").stdout)
    installed = {d["name"].lower().replace("_", "-"): d["version"] for d in listed}
    pins = dict(line.split("==") for line in (REPO / "constraints-server.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    checked = {name: installed[name] for name in pins if name in installed}
    assert checked == {name: pins[name] for name in checked}
    assert {"fastapi", "uvicorn", "sqlalchemy", "cryptography"} <= set(checked)


def test_server_init_on_sqlite_with_the_server_extra(server_venv: Venv, tmp_path: Path) -> None:
    data, password = tmp_path / "data", tmp_path / "master-password"
    result = server_venv.run(server_venv.bin("snpguard"), "server", "init", "--data-dir", data,
                             "--password-file", password, cwd=tmp_path)
    assert "master password written" in result.stdout, result.stdout
    assert (data / "snpguard.db").read_bytes()[:16] == b"SQLite format 3\0"
    assert (data / "tls" / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE(password.stat().st_mode) == 0o600 and len(password.read_text().strip()) >= 16
    again = server_venv.run(server_venv.bin("snpguard"), "server", "init", "--data-dir", data,
                            "--password-file", tmp_path / "second", cwd=tmp_path)
    assert "master password written" not in again.stdout  # initialised once, kept afterwards
