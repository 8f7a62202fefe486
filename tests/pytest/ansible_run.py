# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Running the collection for real with ``ansible`` / ``ansible-playbook`` beside this Python.

The collection is found only through ANSIBLE_COLLECTIONS_PATH=build/devroot (the link
tests/pytest/conftest.py makes); PYTHONPATH is emptied so that nothing else can supply
it.  Ansible's home and temporary directories go into the test's own directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEVROOT = REPO / "build" / "devroot"
ANSIBLE_BIN = Path(sys.executable).parent / "ansible"
PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"


def ansible_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment for ansible run in ``tmp`` on the working tree, plus ``extra`` variables."""
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(DEVROOT), ANSIBLE_HOME=str(tmp / "ansible-home"),
                ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"), ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
                ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0", PYTHONPATH="", **extra)


def run_playbook_file(book: Path, tmp: Path, *flags: str, timeout: int = 600, **extra_env: str) -> None:
    """Run the playbook ``book`` on localhost in ``tmp``; it must succeed."""
    proc = subprocess.run([str(PLAYBOOK_BIN), "-i", "localhost,", "-c", "local", str(book), *flags],
                          env=ansible_env(tmp, **extra_env), cwd=tmp, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]


def run_playbook(tmp: Path, tasks: list[dict[str, Any]], *, timeout: int = 600) -> dict[str, Any]:
    """Run ``tasks`` (each registers its own name) on localhost; return {name: registered result}."""
    if not PLAYBOOK_BIN.exists():
        pytest.fail(f"ansible-playbook is not installed beside {sys.executable}")
    names = [task["register"] for task in tasks]
    out = tmp / "results.json"
    collect = "{{ dict(" + ", ".join(f"{n}={n}" for n in names) + ") | to_json }}"
    play = [{
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "tasks": [*tasks, {"name": "write the results", "check_mode": False,
                           "ansible.builtin.copy": {"content": collect, "dest": str(out)}}],
    }]
    book = tmp / "playbook.yml"
    book.write_text(json.dumps(play, indent=1))  # JSON is YAML
    run_playbook_file(book, tmp, timeout=timeout)
    return json.loads(out.read_text())


def registered_task(module: str, name: str, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A task running ``module`` with ``args`` that registers its result as ``name`` and may fail."""
    return {"name": name, module: args, "register": name, "ignore_errors": True, **extra}
