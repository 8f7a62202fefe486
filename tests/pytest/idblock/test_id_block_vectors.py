# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Every ID-block vector of ../shared/vectors/idblock/vectors.json, read in place.

Expected values come from sev-snp-measure, virtee/sev and LIT's sev-snp-utils.
Signatures inside the upstream ID auth blocks are checked twice: through our
code, and independently with ``cryptography`` and ``hashlib`` alone, so a bug
shared by our encoder and our verifier cannot hide.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ansible_collections.snpguard.cvm.plugins.module_utils.snp import sev_keys
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.id_block import IdAuth, IdBlock, qemu_properties

KNOWN_VECTORS = {"snpm_id_block", "vsev_id_block_and_key_digests", "vsev_auth_block", "lit_id_block_auth_info"}


# -- independent reference implementation (cryptography + hashlib only) -------------------------


def indep_pubkey_struct(key: ec.EllipticCurvePrivateKey) -> bytes:
    numbers = key.public_key().public_numbers()
    out = struct.pack("<I", 2) + numbers.x.to_bytes(72, "little") + numbers.y.to_bytes(72, "little")
    return out + bytes(0x404 - len(out))


def indep_verify(public: ec.EllipticCurvePublicKey, message: bytes, sig: bytes) -> None:
    assert len(sig) == 0x200 and sig[0x90:] == bytes(0x170)
    r, s = int.from_bytes(sig[0:72], "little"), int.from_bytes(sig[72:144], "little")
    public.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))


def indep_public_from_struct(data: bytes) -> ec.EllipticCurvePublicKey:
    assert struct.unpack_from("<I", data, 0)[0] == 2
    qx, qy = int.from_bytes(data[4:76], "little"), int.from_bytes(data[76:148], "little")
    return ec.EllipticCurvePublicNumbers(qx, qy, ec.SECP384R1()).public_key()


def load_pem(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idblock_vectors(vectors: Path) -> dict[str, dict[str, Any]]:
    doc = json.loads((vectors / "idblock" / "vectors.json").read_text())
    return {vector["id"]: vector for vector in doc["vectors"]}


def test_every_vector_is_covered(idblock_vectors: dict[str, dict[str, Any]]) -> None:
    # A new upstream vector must get a test here, not be skipped silently.
    assert set(idblock_vectors) == KNOWN_VECTORS


# -- ID blocks and key digests ----------------------------------------------------------------------


@pytest.mark.parametrize("vector_id", ["snpm_id_block", "vsev_id_block_and_key_digests"])
def test_id_block_and_key_digests(idblock_vectors: dict[str, dict[str, Any]], vectors: Path, vector_id: str) -> None:
    vector = idblock_vectors[vector_id]
    inputs, expected = vector["inputs"], vector["expected"]
    block = IdBlock.build(
        inputs["launch_digest_hex"],
        family_id=inputs.get("family_id"),
        image_id=inputs.get("image_id"),
        guest_svn=inputs.get("guest_svn", inputs.get("svn")),
        policy=inputs.get("policy"),
    )
    if "launch_digest_b64" in inputs:
        assert base64.b64decode(inputs["launch_digest_b64"]).hex() == inputs["launch_digest_hex"]
    assert block.to_b64() == expected["id_block_b64"]
    assert block.to_bytes() == (vectors / expected["id_block_file"]).read_bytes()
    assert block.to_dict() == expected["id_block_decoded"]
    assert IdBlock.from_bytes((vectors / expected["id_block_file"]).read_bytes()) == block

    id_key = load_pem(vectors / inputs["id_key_pem"])
    author_key = load_pem(vectors / inputs["author_key_pem"])
    # Through our code (including our PEM loader) ...
    ours_id = sev_keys.load_private_key((vectors / inputs["id_key_pem"]).read_bytes())
    ours_author = sev_keys.load_private_key((vectors / inputs["author_key_pem"]).read_bytes())
    assert sev_keys.key_digest(ours_id).hex() == expected["id_key_digest_hex"]
    assert sev_keys.key_digest(ours_author).hex() == expected["author_key_digest_hex"]
    # ... and independently.
    assert hashlib.sha384(indep_pubkey_struct(id_key)).hexdigest() == expected["id_key_digest_hex"]
    assert hashlib.sha384(indep_pubkey_struct(author_key)).hexdigest() == expected["author_key_digest_hex"]
    if "id_key_digest_b64" in expected:
        assert base64.b64encode(sev_keys.key_digest(id_key)).decode() == expected["id_key_digest_b64"]
        assert base64.b64encode(sev_keys.key_digest(author_key)).decode() == expected["author_key_digest_b64"]

    # The auth block is randomised upstream too; ours must verify independently.
    auth = IdAuth.build(block, ours_id, ours_author)
    data = auth.to_bytes()
    assert data[0x240:0x644] == indep_pubkey_struct(id_key)
    assert data[0x880:0xC84] == indep_pubkey_struct(author_key)
    indep_verify(id_key.public_key(), block.to_bytes(), data[0x040:0x240])
    indep_verify(author_key.public_key(), indep_pubkey_struct(id_key), data[0x680:0x880])
    assert auth.id_key_digest.hex() == expected["id_key_digest_hex"]
    assert auth.author_key_digest is not None and auth.author_key_digest.hex() == expected["author_key_digest_hex"]
    assert qemu_properties(block, auth)["id-block"] == expected["id_block_b64"]


# -- virtee/sev's complete auth block ------------------------------------------------------------------


def test_virtee_auth_block(idblock_vectors: dict[str, dict[str, Any]], vectors: Path) -> None:
    vector = idblock_vectors["vsev_auth_block"]
    inputs, expected = vector["inputs"], vector["expected"]
    raw = (vectors / expected["auth_block_file"]).read_bytes()
    assert len(raw) == expected["auth_block_size"] == 4096
    assert hashlib.sha256(raw).hexdigest() == expected["auth_block_sha256"]
    # The block it signs is the ID block of the sibling vector.
    sibling = idblock_vectors["vsev_id_block_and_key_digests"]["expected"]
    block_bytes = (vectors / sibling["id_block_file"]).read_bytes()
    block = IdBlock.from_bytes(block_bytes)

    id_key = load_pem(vectors / inputs["id_key_pem"])
    author_key = load_pem(vectors / inputs["author_key_pem"])
    id_sig = (vectors / inputs["id_block_signature_512B"]).read_bytes()
    author_sig = (vectors / inputs["id_key_signature_512B"]).read_bytes()

    # Field by field, by offset (reference §6.2).
    assert struct.unpack_from("<II", raw, 0) == (1, 1)
    assert raw[0x008:0x040] == bytes(0x38)
    assert raw[0x040:0x240] == id_sig
    assert raw[0x240:0x644] == indep_pubkey_struct(id_key)
    assert raw[0x644:0x680] == bytes(0x3C)
    assert raw[0x680:0x880] == author_sig
    assert raw[0x880:0xC84] == indep_pubkey_struct(author_key)
    assert raw[0xC84:] == bytes(0x37C)

    # Independently: ID_BLOCK_SIG over the 96-byte block, ID_KEY_SIG over the 0x404-byte ID key.
    indep_verify(id_key.public_key(), block_bytes, raw[0x040:0x240])
    indep_verify(author_key.public_key(), raw[0x240:0x644], raw[0x680:0x880])
    assert expected["id_block_sig_verifies_over_id_block_of_vsev_id_block_and_key_digests"] is True
    assert expected["id_key_sig_verifies_over_id_pubkey_struct_with_author_key"] is True

    # Through our parser and verifier.
    auth = IdAuth.from_bytes(raw)
    assert auth.to_bytes() == raw
    assert (auth.id_key_algo, auth.author_key_algo, auth.author_key_enabled) == (1, 1, True)
    assert auth.id_block_sig == id_sig and auth.id_key_sig == author_sig
    auth.verify(block, id_public_key=id_key, author_public_key=author_key)
    assert auth.id_key_digest.hex() == sibling["id_key_digest_hex"]
    assert auth.author_key_digest is not None and auth.author_key_digest.hex() == sibling["author_key_digest_hex"]
    assert sev_keys.verify(id_key.public_key(), block_bytes, id_sig) is None


# -- LIT's id_block / auth_info --------------------------------------------------------------------------


def test_lit_id_block_and_auth_info(idblock_vectors: dict[str, dict[str, Any]], vectors: Path) -> None:
    vector = idblock_vectors["lit_id_block_auth_info"]
    files = {name: vectors / rel for name, rel in vector["files"].items()}
    expected = vector["expected"]

    block_bytes = files["id_block.bin"].read_bytes()
    assert base64.b64decode(files["id_block.b64"].read_text()) == block_bytes
    block = IdBlock.from_bytes(block_bytes)
    assert block.to_dict() == expected["id_block_decoded"]
    assert block.to_bytes() == block_bytes
    rebuilt = IdBlock.build(
        expected["id_block_decoded"]["ld"],
        family_id=expected["id_block_decoded"]["family_id"],
        image_id=expected["id_block_decoded"]["image_id"],
        guest_svn=expected["id_block_decoded"]["guest_svn"],
        policy=expected["id_block_decoded"]["policy"],
    )
    assert rebuilt.to_b64() == files["id_block.b64"].read_text().strip()

    raw = files["auth_info.bin"].read_bytes()
    assert base64.b64decode(files["auth_info.b64"].read_text()) == raw
    want = expected["auth"]
    # Field by field against LIT's decode (R/S/QX/QY as 72-byte little-endian hex).
    assert struct.unpack_from("<II", raw, 0) == (want["id_key_algo"], want["author_key_algo"])
    assert struct.unpack_from("<I", raw, 0x240)[0] == want["id_pubkey_curve"]
    assert raw[0x040:0x088].hex() == want["id_block_sig_r"]
    assert raw[0x088:0x0D0].hex() == want["id_block_sig_s"]
    assert raw[0x244:0x28C].hex() == want["id_pubkey_qx"]
    assert raw[0x28C:0x2D4].hex() == want["id_pubkey_qy"]
    assert raw[0x680:0x6C8].hex() == want["id_key_sig_r"]
    assert raw[0x6C8:0x710].hex() == want["id_key_sig_s"]
    assert raw[0x884:0x8CC].hex() == want["author_pubkey_qx"]
    assert raw[0x8CC:0x914].hex() == want["author_pubkey_qy"]

    id_key = load_pem(files["id-key.pem"])
    author_key = load_pem(files["author-key.pem"])
    assert raw[0x240:0x644] == indep_pubkey_struct(id_key)
    assert raw[0x880:0xC84] == indep_pubkey_struct(author_key)
    assert hashlib.sha384(raw[0x240:0x644]).hexdigest() == expected["id_key_digest_hex"]
    assert hashlib.sha384(raw[0x880:0xC84]).hexdigest() == expected["author_key_digest_hex"]

    # Independently, with the keys embedded in the block and with the PEMs.
    indep_verify(indep_public_from_struct(raw[0x240:0x644]), block_bytes, raw[0x040:0x240])
    indep_verify(indep_public_from_struct(raw[0x880:0xC84]), raw[0x240:0x644], raw[0x680:0x880])
    indep_verify(id_key.public_key(), block_bytes, raw[0x040:0x240])
    indep_verify(author_key.public_key(), raw[0x240:0x644], raw[0x680:0x880])
    assert expected["id_block_sig_verifies"] is True and expected["id_key_sig_verifies"] is True

    # Through our code.
    auth = IdAuth.from_bytes(raw)
    assert auth.to_bytes() == raw
    auth.verify(block, id_public_key=id_key, author_public_key=author_key)
    assert auth.to_dict() == {
        "id_key_algo": 1,
        "author_key_algo": 1,
        "author_key_enabled": True,
        "id_key_digest": expected["id_key_digest_hex"],
        "author_key_digest": expected["author_key_digest_hex"],
    }


def test_upstream_blocks_fail_when_tampered(idblock_vectors: dict[str, dict[str, Any]], vectors: Path) -> None:
    lit = {name: vectors / rel for name, rel in idblock_vectors["lit_id_block_auth_info"]["files"].items()}
    block = IdBlock.from_bytes(lit["id_block.bin"].read_bytes())
    raw = bytearray(lit["auth_info.bin"].read_bytes())
    for offset, field in ((0x050, "id_block_sig"), (0x690, "id_key_sig")):
        tampered = bytearray(raw)
        tampered[offset] ^= 0x04
        with pytest.raises(SnpError) as err:
            IdAuth.from_bytes(bytes(tampered)).verify(block)
        assert err.value.field == field
    # The virtee auth block does not sign LIT's ID block.
    virtee = IdAuth.from_bytes((vectors / "idblock/virtee-sev/test_auth_block.bin").read_bytes())
    with pytest.raises(SnpError) as err:
        virtee.verify(block)
    assert err.value.field == "id_block_sig"
