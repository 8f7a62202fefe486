# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""scripts/testvm.py without booting: its refusals and its bookkeeping (the boot itself is
exercised by the molecule scenario server_systemd: `bash scripts/test molecule-server_systemd`)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "testvm.py"


@pytest.fixture(scope="module")
def testvm():
    spec = importlib.util.spec_from_file_location("testvm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["testvm"] = module
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SNPGUARD_TESTVM_CACHE": str(cache)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60,
                          check=False)


@pytest.mark.parametrize("text", ["18622", "a:22", "1:2:3", "0:22", "18622:70000", ""])
def test_forward_refused(testvm, text: str) -> None:
    with pytest.raises(testvm.TestVmError, match="--forward"):
        testvm.parse_forward(text)


def test_forward_accepted(testvm) -> None:
    assert testvm.parse_forward("18643:8443") == (18643, 8443)


def test_recipe_id_follows_the_recipe(testvm) -> None:
    base = testvm.recipe("http://deb.debian.org/debian")
    assert testvm.recipe_id(base) == testvm.recipe_id(dict(base))
    assert testvm.recipe_id(base) != testvm.recipe_id({**base, "packages": [*base["packages"], "vim"]})
    assert testvm.recipe_id(base) != testvm.recipe_id(testvm.recipe("http://mirror.example/debian"))


@pytest.mark.parametrize("command", [["start", "--state", "STATE"], ["wheelhouse", "--dest", "STATE/w"]])
def test_refuses_without_an_image(tmp_path: Path, command: list[str]) -> None:
    args = [a.replace("STATE", str(tmp_path / "state")) for a in command]
    done = run_cli(*args, cache=tmp_path / "cache")
    assert done.returncode == 1
    assert "no test VM image yet: run `testvm.py build` first" in done.stderr


def test_incomplete_image_is_not_used(testvm, tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.mkdir()
    (image / "manifest.json").write_text(json.dumps({"recipe_id": "x"}))
    assert testvm.load_manifest(image) is None  # disk, kernel, initrd and keys missing


def test_stop_without_a_vm_is_a_no_op(tmp_path: Path) -> None:
    done = run_cli("stop", "--state", str(tmp_path / "state"), cache=tmp_path / "cache")
    assert done.returncode == 0
    assert json.loads(done.stdout) == {"stopped": False}


def test_a_recycled_pid_is_not_taken_for_our_qemu(testvm, tmp_path: Path) -> None:
    # Our own pid is alive but is not a QEMU started from that state directory.
    assert not testvm.qemu_alive(os.getpid(), tmp_path)
    assert not testvm.qemu_alive(2**22 + 1, tmp_path)


def test_ssh_without_a_vm(tmp_path: Path) -> None:
    done = run_cli("ssh", "--state", str(tmp_path / "state"), "--", "true", cache=tmp_path / "cache")
    assert done.returncode == 1
    assert "no test VM runs from" in done.stderr
