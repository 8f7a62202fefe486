# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard.cvm.snp_id_block`` run the way Ansible runs it.

Ad-hoc ``ansible localhost -m snpguard.cvm.snp_id_block`` with the collection found
through ANSIBLE_COLLECTIONS_PATH=build/devroot (the link tests/pytest/conftest.py
makes), plus the module executed directly with an args file, as AnsiballZ does.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible_run import ANSIBLE_BIN, DEVROOT, REPO, ansible_env

from ansible_collections.snpguard.cvm.plugins.module_utils.snp import sev_keys
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.id_block import IdAuth, IdBlock

LD1 = "076f052d08bda7a700aa2a608c5caa6b00ebad297b6d68a85a45b1e669a558b67e1b91d284a301fe63c4fa0750467eed"
LD2 = "a14d638341e5674628fe1e02fbedebe5e5ab4faf1dd72d8966068e615bb99efd13d214b35c231715b38e263dc6059745"
RESULT_LINE = re.compile(r"^localhost \| (?P<status>[A-Z]+)!?(?: \| rc=\d+)? => ", re.MULTILINE)


def run_adhoc(tmp_path: Path, args: dict[str, Any], *flags: str) -> tuple[str, dict[str, Any], str]:
    """Run the module ad hoc; return (status, result, full stdout)."""
    proc = subprocess.run(
        [str(ANSIBLE_BIN), "localhost", "-m", "snpguard.cvm.snp_id_block", "-a", json.dumps(args), *flags],
        env=ansible_env(tmp_path, ANSIBLE_FORCE_COLOR="0", ANSIBLE_PYTHON_INTERPRETER=sys.executable),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = RESULT_LINE.search(proc.stdout)
    assert match, f"no result line in ansible output:\n{proc.stdout}\n{proc.stderr}"
    result = json.JSONDecoder().raw_decode(proc.stdout[match.end() :])[0]
    return match.group("status"), result, proc.stdout


@pytest.fixture
def args(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "out").mkdir()
    return {
        "id_key": str(tmp_path / "keys-id.pem"),
        "author_key": str(tmp_path / "keys-author.pem"),
        "generate_keys": True,
        "measurement": LD1,
        "family_id": "0a" * 16,
        "guest_svn": 1,
        "policy": {"smt": True, "debug": False},
        "id_block_path": str(tmp_path / "out" / "id_block.b64"),
        "id_auth_path": str(tmp_path / "out" / "id_auth.b64"),
    }


def test_adhoc_create_then_idempotent(tmp_path: Path, args: dict[str, Any]) -> None:
    status, result, _stdout = run_adhoc(tmp_path, args)
    assert status == "CHANGED" and result["changed"] is True
    for key in ("keys-id.pem", "keys-author.pem"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    block = IdBlock.from_bytes(base64.b64decode((tmp_path / "out" / "id_block.b64").read_text()))
    auth = IdAuth.from_bytes(base64.b64decode((tmp_path / "out" / "id_auth.b64").read_text()))
    auth.verify(
        block,
        id_public_key=sev_keys.load_private_key((tmp_path / "keys-id.pem").read_bytes()),
        author_public_key=sev_keys.load_private_key((tmp_path / "keys-author.pem").read_bytes()),
    )
    assert result["id_block"] == block.to_b64() and result["id_auth"] == auth.to_b64()
    assert result["qemu"] == {"id_block": block.to_b64(), "id_auth": auth.to_b64(), "author_key_enabled": "on"}
    assert result["id_key_digest"] == auth.id_key_digest.hex()
    assert block.family_id == b"\x0a" * 16 and block.guest_svn == 1

    status, again, _stdout = run_adhoc(tmp_path, args)
    assert status == "SUCCESS" and again["changed"] is False
    assert again["id_auth"] == result["id_auth"]


def test_adhoc_check_mode_and_diff(tmp_path: Path, args: dict[str, Any]) -> None:
    run_adhoc(tmp_path, args)
    files_before = {p: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    status, result, stdout = run_adhoc(tmp_path, dict(args, measurement=LD2), "--check", "--diff")
    assert status == "CHANGED" and result["changed"] is True
    assert {p: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files_before
    # The diff is rendered by the callback: before/after of public facts only.
    assert f'-    "ld": "{LD1}"' in stdout and f'+    "ld": "{LD2}"' in stdout
    assert "PRIVATE KEY" not in stdout
    status, result, stdout = run_adhoc(tmp_path, dict(args, measurement=LD2), "--diff")
    assert status == "CHANGED"
    assert f'-    "ld": "{LD1}"' in stdout and f'+    "ld": "{LD2}"' in stdout
    assert '"id_key_digest"' in stdout and "PRIVATE KEY" not in stdout
    assert IdBlock.from_bytes(base64.b64decode((tmp_path / "out" / "id_block.b64").read_text())).ld.hex() == LD2
    status, result, _stdout = run_adhoc(tmp_path, dict(args, measurement=LD2), "--check")
    assert status == "SUCCESS" and result["changed"] is False


def test_adhoc_file_options_apply_to_the_blocks_not_the_keys(tmp_path: Path, args: dict[str, Any]) -> None:
    out = tmp_path / "out"

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    status, _first, _stdout = run_adhoc(tmp_path, dict(args, mode="0640"))
    assert status == "CHANGED"
    assert mode(out / "id_block.b64") == 0o640 and mode(out / "id_auth.b64") == 0o640
    assert mode(tmp_path / "keys-id.pem") == 0o600 and mode(tmp_path / "keys-author.pem") == 0o600
    status, again, _stdout = run_adhoc(tmp_path, dict(args, mode="0640"))
    assert status == "SUCCESS" and again["changed"] is False
    signed = (out / "id_auth.b64").read_bytes()
    # Only the mode differs: check mode says so and touches nothing; the real run changes only the mode.
    status, planned, _stdout = run_adhoc(tmp_path, dict(args, mode="0600"), "--check")
    assert status == "CHANGED" and planned["files_written"] == [] and mode(out / "id_block.b64") == 0o640
    status, changed, _stdout = run_adhoc(tmp_path, dict(args, mode="0600"))
    assert status == "CHANGED" and changed["files_written"] == [] and changed["keys_created"] == []
    assert mode(out / "id_block.b64") == 0o600 and mode(out / "id_auth.b64") == 0o600
    assert (out / "id_auth.b64").read_bytes() == signed  # not re-signed
    assert mode(tmp_path / "keys-id.pem") == 0o600
    status, result, _stdout = run_adhoc(tmp_path, dict(args, owner="root", group="root", mode="u=rw,g=,o="))
    assert status == "SUCCESS" and result["changed"] is False, result
    status, result, _stdout = run_adhoc(tmp_path, dict(args, owner="no-such-user-here"))
    assert status == "FAILED" and "chown failed" in result["msg"]


def test_adhoc_check_mode_creates_no_keys(tmp_path: Path, args: dict[str, Any]) -> None:
    status, result, _stdout = run_adhoc(tmp_path, args, "--check")
    assert status == "CHANGED"
    assert not (tmp_path / "keys-id.pem").exists() and list((tmp_path / "out").iterdir()) == []
    assert sorted(result["keys_created"]) == sorted([args["id_key"], args["author_key"]])


@pytest.mark.parametrize(
    ("overrides", "field", "needle"),
    [
        ({"generate_keys": False}, "id_key", "generate_keys"),
        ({"measurement": "abcd"}, "measurement", "96 hex digits"),
        ({"policy": "0x10000"}, "policy", "bit 17"),
        ({"policy": {"debgu": True}}, "policy.debgu", "debgu"),
        ({"image_id": "xyz"}, "image_id", "32 hex digits"),
    ],
)
def test_adhoc_failure_names_the_field(
    tmp_path: Path, args: dict[str, Any], overrides: dict[str, Any], field: str, needle: str
) -> None:
    status, result, _stdout = run_adhoc(tmp_path, dict(args, **overrides))
    assert status == "FAILED"
    assert result["field"] == field
    assert result["msg"].startswith(field) and needle in result["msg"]


def test_passphrase_is_not_logged(tmp_path: Path, args: dict[str, Any]) -> None:
    status, _result, stdout = run_adhoc(tmp_path, dict(args, id_key_passphrase="hunter2-secret"), "-v")
    assert status == "CHANGED"
    assert "hunter2-secret" not in stdout
    assert b"ENCRYPTED" in (tmp_path / "keys-id.pem").read_bytes()


def test_module_runs_directly_with_args_file(tmp_path: Path, args: dict[str, Any]) -> None:
    # The way AnsiballZ hands over arguments: {"ANSIBLE_MODULE_ARGS": {...}} in a file.
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=False)}))
    env = dict(os.environ, PYTHONPATH=str(DEVROOT))
    module = "ansible_collections.snpguard.cvm.plugins.modules.snp_id_block"
    proc = subprocess.run(
        [sys.executable, "-m", module, str(args_file)], env=env, capture_output=True, text=True, check=False
    )
    result = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["changed"] is True
    proc = subprocess.run(
        [sys.executable, "-m", module, str(args_file)], env=env, capture_output=True, text=True, check=False
    )
    assert json.loads(proc.stdout)["changed"] is False


def test_module_file_conventions() -> None:
    path = REPO / "plugins" / "modules" / "snp_id_block.py"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    text = path.read_text()
    assert text.startswith("#!/usr/bin/python\n")
    assert "SPDX-License-Identifier: Apache-2.0" in text
    assert "from __future__ import annotations" in text
