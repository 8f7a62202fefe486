# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard id-block`` end to end: ``python -m ansible_collections.snpguard.cvm.cli``."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.snpguard.cvm.plugins.module_utils.snp import sev_keys
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.id_block import IdAuth, IdBlock

REPO = Path(__file__).resolve().parents[3]
DEVROOT = REPO / "build" / "devroot"
LD1 = "076f052d08bda7a700aa2a608c5caa6b00ebad297b6d68a85a45b1e669a558b67e1b91d284a301fe63c4fa0750467eed"
LD2 = "a14d638341e5674628fe1e02fbedebe5e5ab4faf1dd72d8966068e615bb99efd13d214b35c231715b38e263dc6059745"
# The flags most runs share: the keys, the files the ID block and ID auth go to, and those files read back.
KEYS = ("--id-key", "id.pem", "--author-key", "author.pem")
OUTPUTS = ("--id-block-out", "block.b64", "--id-auth-out", "auth.b64")
SIGNED = ("--id-block", "block.b64", "--id-auth", "auth.b64")


def snpguard(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(DEVROOT))
    return subprocess.run(
        [sys.executable, "-m", "ansible_collections.snpguard.cvm.cli", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def properties(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


@pytest.fixture
def created(tmp_path: Path) -> Path:
    proc = snpguard("id-block", *KEYS, "--generate-keys", "--measurement", LD1, "--guest-svn", "7",
                    "--policy", "smt=1,debug=0", *OUTPUTS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return tmp_path


def test_create_prints_qemu_properties_and_digests(created: Path) -> None:
    proc = snpguard("id-block", *KEYS, "--measurement", LD1, "--guest-svn", "7",
                    "--policy", "0x30000", *OUTPUTS, cwd=created)
    assert proc.returncode == 0, proc.stderr
    props = properties(proc.stdout)
    assert set(props) == {"id-block", "id-auth", "author-key-enabled", "policy", "id-key-digest", "author-key-digest"}
    assert props["author-key-enabled"] == "on"
    assert props["policy"] == "0x30000"
    block = IdBlock.from_bytes(base64.b64decode(props["id-block"]))
    auth = IdAuth.from_bytes(base64.b64decode(props["id-auth"]))
    assert block.ld.hex() == LD1 and block.guest_svn == 7
    id_key = sev_keys.load_private_key((created / "id.pem").read_bytes())
    auth.verify(block, id_public_key=id_key)
    assert props["id-key-digest"] == sev_keys.key_digest(id_key).hex()
    # Same flags as the first run: nothing written, existing ID auth returned.
    assert "wrote" not in proc.stderr
    assert props["id-auth"] == (created / "auth.b64").read_text().strip()
    for key in ("id.pem", "author.pem"):
        assert stat.S_IMODE((created / key).stat().st_mode) == 0o600


def test_create_json(created: Path) -> None:
    proc = snpguard("id-block", "--id-key", "id.pem", "--measurement", LD2, "--json", cwd=created)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["changed"] is False  # no output files, keys exist
    assert doc["author_key_enabled"] is False and doc["author_key_digest"] is None
    assert doc["qemu"]["author-key-enabled"] == "off"
    assert IdBlock.from_bytes(base64.b64decode(doc["id_block"])).ld.hex() == LD2


def test_create_check_writes_nothing(created: Path) -> None:
    before = {p.name: p.read_bytes() for p in created.iterdir()}
    proc = snpguard("id-block", *KEYS, "--measurement", LD2, *OUTPUTS, "--check", "--json", cwd=created)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["changed"] is True
    assert {p.name: p.read_bytes() for p in created.iterdir()} == before


def test_create_errors_name_the_flag(tmp_path: Path) -> None:
    proc = snpguard("id-block", "--measurement", LD1, cwd=tmp_path)
    assert proc.returncode == 2 and "--id-key" in proc.stderr
    proc = snpguard("id-block", "--id-key", "missing.pem", "--measurement", LD1, cwd=tmp_path)
    assert proc.returncode == 2 and "id_key" in proc.stderr and "generate_keys" in proc.stderr
    proc = snpguard("id-block", "--id-key", "k.pem", "--generate-keys", "--measurement", "00", cwd=tmp_path)
    assert proc.returncode == 2 and "measurement" in proc.stderr
    assert not (tmp_path / "k.pem").exists()
    proc = snpguard(
        "id-block",
        "--id-key",
        "k.pem",
        "--generate-keys",
        "--measurement",
        LD1,
        "--policy",
        "smt=1,dbg=0",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "policy.dbg" in proc.stderr


def test_verify_valid_files_and_inline_base64(created: Path) -> None:
    proc = snpguard("id-block", "verify", *SIGNED, "--id-key-pub", "id.pem", "--author-key-pub", "author.pem",
                    "--measurement", LD1, cwd=created)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("valid")
    inline = snpguard(
        "id-block",
        "verify",
        "--id-block",
        (created / "block.b64").read_text().strip(),
        "--id-auth",
        (created / "auth.b64").read_text().strip(),
        "--json",
        cwd=created,
    )
    assert inline.returncode == 0, inline.stderr
    doc = json.loads(inline.stdout)
    assert doc["valid"] is True and doc["id_auth"]["author_key_enabled"] is True
    digest = doc["id_auth"]["id_key_digest"]
    proc = snpguard("id-block", "verify", *SIGNED, "--id-key-digest", digest, cwd=created)
    assert proc.returncode == 0


def test_verify_raw_binary_files(created: Path) -> None:
    (created / "block.bin").write_bytes(base64.b64decode((created / "block.b64").read_text()))
    (created / "auth.bin").write_bytes(base64.b64decode((created / "auth.b64").read_text()))
    proc = snpguard("id-block", "verify", "--id-block", "block.bin", "--id-auth", "auth.bin", cwd=created)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("offset", "field"),
    [(0x040, "id_block_sig"), (0x6C8, "id_key_sig")],
)
def test_verify_tampered_signatures_exit_1(created: Path, offset: int, field: str) -> None:
    raw = bytearray(base64.b64decode((created / "auth.b64").read_text()))
    raw[offset] ^= 0x01
    (created / "bad.b64").write_text(base64.b64encode(bytes(raw)).decode())
    proc = snpguard("id-block", "verify", "--id-block", "block.b64", "--id-auth", "bad.b64", cwd=created)
    assert proc.returncode == 1
    assert field in proc.stderr
    proc = snpguard("id-block", "verify", "--id-block", "block.b64", "--id-auth", "bad.b64", "--json", cwd=created)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"]["field"] == field


def test_verify_mismatches_exit_1(created: Path) -> None:
    other, _pem = sev_keys.generate_private_key()
    (created / "other.pem").write_bytes(sev_keys.public_key_pem(other))
    cases = [
        (["--id-key-pub", "other.pem"], "id_key"),
        (["--author-key-pub", "other.pem"], "author_key"),
        (["--measurement", LD2], "--measurement"),
        (["--author-key-digest", "00" * 48], "--author-key-digest"),
    ]
    for extra, field in cases:
        proc = snpguard("id-block", "verify", *SIGNED, *extra, "--json", cwd=created)
        assert proc.returncode == 1, (extra, proc.stdout)
        assert json.loads(proc.stdout)["error"]["field"] == field
    # An ID block the auth does not sign.
    (created / "other_block.b64").write_text(IdBlock.build(LD2).to_b64())
    proc = snpguard("id-block", "verify", "--id-block", "other_block.b64", "--id-auth", "auth.b64", cwd=created)
    assert proc.returncode == 1 and "id_block_sig" in proc.stderr
    # Garbage input is never "valid".
    proc = snpguard("id-block", "verify", "--id-block", "nope", "--id-auth", "auth.b64", cwd=created)
    assert proc.returncode == 1 and "--id-block" in proc.stderr


def test_verify_upstream_lit_vector(vectors: Path, tmp_path: Path) -> None:
    lit = vectors / "idblock" / "lit-sev-snp-utils"
    proc = snpguard(
        "id-block",
        "verify",
        "--id-block",
        str(lit / "id_block.b64"),
        "--id-auth",
        str(lit / "auth_info.bin"),
        "--id-key-pub",
        str(lit / "id-key.pem"),
        "--author-key-pub",
        str(lit / "author-key.pem"),
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["id_auth"]["id_key_digest"].startswith("64a7dce6dcc44a98")


def test_show(created: Path) -> None:
    proc = snpguard("id-block", "show", *SIGNED, cwd=created)
    assert proc.returncode == 0, proc.stderr
    assert f"ld: {LD1}" in proc.stdout
    assert "guest_svn: 7" in proc.stdout
    assert "SMT allowed on the host" in proc.stdout
    assert "signatures: valid" in proc.stdout
    proc = snpguard("id-block", "show", "--id-block", "block.b64", "--json", cwd=created)
    doc = json.loads(proc.stdout)
    assert doc["id_block"]["policy"] == "0x30000" and "id_auth" not in doc
    proc = snpguard("id-block", "show", cwd=created)
    assert proc.returncode == 2
