# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The ID block writer shared by the module and the CLI: idempotence on verified content,
key safety, check mode, and recovery from a damaged ID auth file."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.snpguard.cvm.plugins.module_utils.idblock.snp_id_block import IdBlockRequest, ensure_id_block
from ansible_collections.snpguard.cvm.plugins.module_utils.snp import sev_keys
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.id_block import IdAuth, IdBlock

LD1 = "076f052d08bda7a700aa2a608c5caa6b00ebad297b6d68a85a45b1e669a558b67e1b91d284a301fe63c4fa0750467eed"
LD2 = "a14d638341e5674628fe1e02fbedebe5e5ab4faf1dd72d8966068e615bb99efd13d214b35c231715b38e263dc6059745"


def request(tmp_path: Path, **overrides: Any) -> IdBlockRequest:
    base = IdBlockRequest(
        id_key=str(tmp_path / "id.pem"),
        author_key=str(tmp_path / "author.pem"),
        generate_keys=True,
        measurement=LD1,
        family_id="01" * 16,
        image_id="02" * 16,
        guest_svn=3,
        policy={"smt": True},
        id_block_path=str(tmp_path / "id_block.b64"),
        id_auth_path=str(tmp_path / "id_auth.b64"),
    )
    return dataclasses.replace(base, **overrides)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def stored(path: Path, size: int) -> bytes:
    return base64.b64decode(path.read_text())


def assert_files_valid(tmp_path: Path, measurement: str = LD1) -> tuple[IdBlock, IdAuth]:
    block = IdBlock.from_bytes(stored(tmp_path / "id_block.b64", 96))
    auth = IdAuth.from_bytes(stored(tmp_path / "id_auth.b64", 4096))
    assert block.ld.hex() == measurement
    id_key = sev_keys.load_private_key((tmp_path / "id.pem").read_bytes())
    author_key = sev_keys.load_private_key((tmp_path / "author.pem").read_bytes())
    auth.verify(block, id_public_key=id_key, author_public_key=author_key)
    return block, auth


def test_first_run_creates_keys_0600_and_files(tmp_path: Path) -> None:
    result = ensure_id_block(request(tmp_path))
    assert result["changed"] is True
    assert sorted(result["keys_created"]) == sorted([str(tmp_path / "id.pem"), str(tmp_path / "author.pem")])
    for name in ("id.pem", "author.pem"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    for name in ("id_block.b64", "id_auth.b64"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    block, auth = assert_files_valid(tmp_path)
    assert result["id_block"] == block.to_b64()
    assert result["id_auth"] == auth.to_b64()
    assert result["id_key_digest"] == auth.id_key_digest.hex()
    assert result["author_key_digest"] == auth.author_key_digest.hex()  # type: ignore[union-attr]
    assert result["author_key_enabled"] is True
    assert result["qemu"] == {"id-block": block.to_b64(), "id-auth": auth.to_b64(), "author-key-enabled": "on"}
    assert result["policy"] == 0x30000
    assert (block.family_id, block.image_id, block.guest_svn) == (b"\x01" * 16, b"\x02" * 16, 3)


def test_second_run_is_unchanged_and_stable(tmp_path: Path) -> None:
    first = ensure_id_block(request(tmp_path))
    before = snapshot(tmp_path)
    second = ensure_id_block(request(tmp_path))
    assert second["changed"] is False
    assert second["keys_created"] == second["files_written"] == []
    assert snapshot(tmp_path) == before  # not even rewritten with the same content
    # The kept ID auth is returned, so outputs are stable across runs.
    assert second["id_auth"] == first["id_auth"]
    assert second["diff"]["before"] == second["diff"]["after"]
    # Re-signing would give different bytes: idempotence cannot come from byte comparison.
    req = request(tmp_path)
    fresh = IdAuth.build(
        IdBlock.build(req.measurement, req.family_id, req.image_id, req.guest_svn, req.policy),
        sev_keys.load_private_key((tmp_path / "id.pem").read_bytes()),
        sev_keys.load_private_key((tmp_path / "author.pem").read_bytes()),
    )
    assert fresh.to_b64() != first["id_auth"]


def test_changed_measurement_resigns(tmp_path: Path) -> None:
    ensure_id_block(request(tmp_path))
    keys_before = {n: (tmp_path / n).read_bytes() for n in ("id.pem", "author.pem")}
    result = ensure_id_block(request(tmp_path, measurement=LD2))
    assert result["changed"] is True
    assert result["keys_created"] == []
    assert sorted(result["files_written"]) == sorted([str(tmp_path / "id_block.b64"), str(tmp_path / "id_auth.b64")])
    assert_files_valid(tmp_path, LD2)
    assert {n: (tmp_path / n).read_bytes() for n in keys_before} == keys_before
    diff = result["diff"]
    assert (diff["before"]["ld"], diff["after"]["ld"]) == (LD1, LD2)
    assert diff["before"]["id_key_digest"] == diff["after"]["id_key_digest"]
    assert ensure_id_block(request(tmp_path, measurement=LD2))["changed"] is False


@pytest.mark.parametrize(
    "overrides",
    [{"policy": {"debug": True}}, {"guest_svn": 4}, {"family_id": "ff" * 16}, {"image_id": "ee" * 16}],
)
def test_any_block_field_change_resigns(tmp_path: Path, overrides: dict[str, Any]) -> None:
    ensure_id_block(request(tmp_path))
    assert ensure_id_block(request(tmp_path, **overrides))["changed"] is True
    assert ensure_id_block(request(tmp_path, **overrides))["changed"] is False


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    key, pem = sev_keys.generate_private_key()
    (tmp_path / "id.pem").write_bytes(pem)
    os.chmod(tmp_path / "id.pem", 0o640)
    result = ensure_id_block(request(tmp_path))
    assert result["keys_created"] == [str(tmp_path / "author.pem")]
    assert (tmp_path / "id.pem").read_bytes() == pem
    assert stat.S_IMODE((tmp_path / "id.pem").stat().st_mode) == 0o640
    assert result["id_key_digest"] == sev_keys.key_digest(key).hex()


def test_unloadable_existing_key_is_an_error_not_a_replacement(tmp_path: Path) -> None:
    (tmp_path / "id.pem").write_bytes(b"not a key\n")
    with pytest.raises(SnpError) as err:
        ensure_id_block(request(tmp_path))
    assert err.value.field == "id_key"
    assert err.value.path == str(tmp_path / "id.pem")
    assert (tmp_path / "id.pem").read_bytes() == b"not a key\n"
    assert not (tmp_path / "author.pem").exists()  # nothing written before the error
    assert not (tmp_path / "id_auth.b64").exists()


def test_non_p384_existing_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "author.pem").write_bytes(p256)
    with pytest.raises(SnpError) as err:
        ensure_id_block(request(tmp_path))
    assert err.value.field == "author_key"
    assert "P-384" in err.value.message


@pytest.mark.parametrize("missing", ["id_key", "author_key"])
def test_missing_key_without_generate_keys_names_the_field(tmp_path: Path, missing: str) -> None:
    ensure_id_block(request(tmp_path))
    os.unlink(tmp_path / ("id.pem" if missing == "id_key" else "author.pem"))
    before = snapshot(tmp_path)
    with pytest.raises(SnpError) as err:
        ensure_id_block(request(tmp_path, generate_keys=False))
    assert err.value.field == missing
    assert "generate_keys" in err.value.message
    assert snapshot(tmp_path) == before


def test_check_mode_writes_nothing(tmp_path: Path) -> None:
    result = ensure_id_block(request(tmp_path, check_mode=True))
    assert list(tmp_path.iterdir()) == []
    assert result["changed"] is True
    assert len(result["keys_created"]) == 2 and len(result["files_written"]) == 2
    assert result["id_block"] == IdBlock.build(LD1, "01" * 16, "02" * 16, 3, {"smt": True}).to_b64()
    # Keys that do not exist yet cannot sign or be digested.
    assert result["id_auth"] is None and result["id_key_digest"] is None
    assert result["diff"]["after"]["id_key_digest"] == "(new key)"


def test_check_mode_with_existing_keys_signs_in_memory(tmp_path: Path) -> None:
    ensure_id_block(request(tmp_path))
    before = snapshot(tmp_path)
    result = ensure_id_block(request(tmp_path, measurement=LD2, check_mode=True))
    assert snapshot(tmp_path) == before
    assert result["changed"] is True
    assert result["files_written"] == [str(tmp_path / "id_block.b64"), str(tmp_path / "id_auth.b64")]
    auth = IdAuth.from_bytes(base64.b64decode(result["id_auth"]))
    auth.verify(IdBlock.from_bytes(base64.b64decode(result["id_block"])))
    assert result["diff"]["before"]["ld"] == LD1 and result["diff"]["after"]["ld"] == LD2
    unchanged = ensure_id_block(request(tmp_path, check_mode=True))
    assert unchanged["changed"] is False
    assert snapshot(tmp_path) == before


def _tamper_signature(tmp_path: Path) -> None:
    raw = bytearray(stored(tmp_path / "id_auth.b64", 4096))
    raw[0x040] ^= 1
    (tmp_path / "id_auth.b64").write_text(base64.b64encode(bytes(raw)).decode())


def _tamper_author_signature(tmp_path: Path) -> None:
    raw = bytearray(stored(tmp_path / "id_auth.b64", 4096))
    raw[0x690] ^= 1
    (tmp_path / "id_auth.b64").write_text(base64.b64encode(bytes(raw)).decode())


def _garbage(tmp_path: Path) -> None:
    (tmp_path / "id_auth.b64").write_bytes(b"\x00garbage\xff" * 10)


def _truncated(tmp_path: Path) -> None:
    text = (tmp_path / "id_auth.b64").read_text()
    (tmp_path / "id_auth.b64").write_text(text[:1000])


def _other_id_key(tmp_path: Path) -> None:
    block = IdBlock.from_bytes(stored(tmp_path / "id_block.b64", 96))
    author = sev_keys.load_private_key((tmp_path / "author.pem").read_bytes())
    impostor = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "id_auth.b64").write_text(IdAuth.build(block, impostor, author).to_b64())


def _no_author(tmp_path: Path) -> None:
    block = IdBlock.from_bytes(stored(tmp_path / "id_block.b64", 96))
    id_key = sev_keys.load_private_key((tmp_path / "id.pem").read_bytes())
    (tmp_path / "id_auth.b64").write_text(IdAuth.build(block, id_key).to_b64())


def _reserved_byte(tmp_path: Path) -> None:
    raw = bytearray(stored(tmp_path / "id_auth.b64", 4096))
    raw[0xFFF] = 1
    (tmp_path / "id_auth.b64").write_text(base64.b64encode(bytes(raw)).decode())


@pytest.mark.parametrize(
    "damage",
    [_tamper_signature, _tamper_author_signature, _garbage, _truncated, _other_id_key, _no_author, _reserved_byte],
)
def test_damaged_id_auth_is_resigned(tmp_path: Path, damage: Any) -> None:
    ensure_id_block(request(tmp_path))
    damage(tmp_path)
    result = ensure_id_block(request(tmp_path))
    assert result["changed"] is True
    assert result["files_written"] == [str(tmp_path / "id_auth.b64")]  # the block itself was fine
    assert_files_valid(tmp_path)
    assert ensure_id_block(request(tmp_path))["changed"] is False


def test_edited_id_block_file_is_rewritten(tmp_path: Path) -> None:
    ensure_id_block(request(tmp_path))
    (tmp_path / "id_block.b64").write_text(IdBlock.build(LD2).to_b64())
    result = ensure_id_block(request(tmp_path))
    assert result["changed"] is True
    assert str(tmp_path / "id_block.b64") in result["files_written"]
    assert_files_valid(tmp_path)


def test_raw_binary_files_from_other_tools_count_as_current(tmp_path: Path) -> None:
    ensure_id_block(request(tmp_path))
    for name, size in (("id_block.b64", 96), ("id_auth.b64", 4096)):
        (tmp_path / name).write_bytes(stored(tmp_path / name, size))
    assert ensure_id_block(request(tmp_path))["changed"] is False


def test_author_key_dropped_resigns_without_author(tmp_path: Path) -> None:
    ensure_id_block(request(tmp_path))
    result = ensure_id_block(request(tmp_path, author_key=None))
    assert result["changed"] is True
    assert result["author_key_enabled"] is False and result["author_key_digest"] is None
    assert result["qemu"]["author-key-enabled"] == "off"
    auth = IdAuth.from_bytes(stored(tmp_path / "id_auth.b64", 4096))
    assert not auth.author_key_enabled
    assert ensure_id_block(request(tmp_path, author_key=None))["changed"] is False


def test_without_output_files_nothing_changes_after_keys_exist(tmp_path: Path) -> None:
    req = request(tmp_path, id_block_path=None, id_auth_path=None)
    assert ensure_id_block(req)["changed"] is True  # the keys were created
    result = ensure_id_block(req)
    assert result["changed"] is False
    assert result["diff"]["before"] == result["diff"]["after"]
    IdAuth.from_bytes(base64.b64decode(result["id_auth"])).verify(
        IdBlock.from_bytes(base64.b64decode(result["id_block"]))
    )


def test_diff_holds_public_facts_only(tmp_path: Path) -> None:
    result = ensure_id_block(request(tmp_path, id_key_passphrase="s3cret"))
    text = json.dumps(result["diff"])
    assert set(result["diff"]["after"]) == {
        "ld", "family_id", "image_id", "guest_svn", "policy", "id_key_digest", "author_key_digest",
    }  # fmt: skip
    assert "PRIVATE" not in text and "s3cret" not in text
    assert "PRIVATE" not in json.dumps(result)
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "id.pem").read_bytes()
    assert ensure_id_block(request(tmp_path, id_key_passphrase="s3cret"))["changed"] is False
    with pytest.raises(SnpError) as err:
        ensure_id_block(request(tmp_path))
    assert err.value.field == "id_key" and "passphrase" in err.value.message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"measurement": "00"}, "measurement"),
        ({"family_id": "00"}, "family_id"),
        ({"policy": 0x10000}, "policy"),
        ({"author_key": "SAME"}, "author_key"),
        ({"id_block_path": "DIR"}, "id_block_path"),
        ({"id_auth_path": "MISSINGDIR"}, "id_auth_path"),
    ],
)
def test_bad_requests_name_the_field_and_write_nothing(tmp_path: Path, overrides: dict[str, Any], field: str) -> None:
    values = dict(overrides)
    if values.get("author_key") == "SAME":
        values["author_key"] = str(tmp_path / "id.pem")
    if values.get("id_block_path") == "DIR":
        values["id_block_path"] = str(tmp_path)
    if values.get("id_auth_path") == "MISSINGDIR":
        values["id_auth_path"] = str(tmp_path / "nope" / "id_auth.b64")
        ensure_id_block(request(tmp_path, id_auth_path=None))  # keys exist; only the write can fail
    before = snapshot(tmp_path)
    with pytest.raises(SnpError) as err:
        ensure_id_block(request(tmp_path, **values))
    assert err.value.field == field
    assert snapshot(tmp_path) == before
