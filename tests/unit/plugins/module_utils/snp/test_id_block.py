# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""ID block (0x60) and ID auth (0x1000): offsets per reference §6.1/§6.2, round trips, refusals."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp import sev_keys
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import FormatError, SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.id_block import (
    IdAuth,
    IdBlock,
    decode_blob,
    parse_hex,
    qemu_option,
    qemu_properties,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.policy import GuestPolicy

LD = bytes(range(48))
FAMILY = bytes.fromhex("00112233445566778899aabbccddeeff")
IMAGE = bytes.fromhex("ffeeddccbbaa99887766554433221100")


@pytest.fixture(scope="module")
def id_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def author_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def block() -> IdBlock:
    return IdBlock.build(LD.hex(), FAMILY.hex(), IMAGE.hex(), guest_svn=0x01020304, policy={"debug": True})


@pytest.fixture(scope="module")
def auth(block: IdBlock, id_key: ec.EllipticCurvePrivateKey, author_key: ec.EllipticCurvePrivateKey) -> IdAuth:
    return IdAuth.build(block, id_key, author_key)


def _verify_direct(public: ec.EllipticCurvePublicKey, message: bytes, sig: bytes) -> None:
    """Verify a SEV signature with cryptography alone (R, S little-endian, 72 bytes each)."""
    r = int.from_bytes(sig[0:72], "little")
    s = int.from_bytes(sig[72:144], "little")
    public.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))


# -- ID block ----------------------------------------------------------------------------


def test_id_block_offsets(block: IdBlock) -> None:
    data = block.to_bytes()
    assert len(data) == 0x60
    assert data[0x00:0x30] == LD
    assert data[0x30:0x40] == FAMILY
    assert data[0x40:0x50] == IMAGE
    assert struct.unpack_from("<I", data, 0x50)[0] == 1  # VERSION
    assert struct.unpack_from("<I", data, 0x54)[0] == 0x01020304  # GUEST_SVN
    assert struct.unpack_from("<Q", data, 0x58)[0] == 0xB0000  # POLICY (0x30000 | DEBUG)


def test_id_block_defaults() -> None:
    data = IdBlock.build("ab" * 48).to_bytes()
    assert data[0x30:0x50] == bytes(32)
    assert data[0x50:0x60] == struct.pack("<IIQ", 1, 0, 0x30000)
    assert IdBlock(ld=bytes(48)).policy == GuestPolicy()


def test_id_block_round_trip(block: IdBlock) -> None:
    assert IdBlock.from_bytes(block.to_bytes()) == block
    assert IdBlock.from_bytes(bytearray(block.to_bytes())) == block
    assert base64.b64decode(block.to_b64()) == block.to_bytes()
    assert block.to_dict() == {
        "ld": LD.hex(),
        "family_id": FAMILY.hex(),
        "image_id": IMAGE.hex(),
        "version": 1,
        "guest_svn": 0x01020304,
        "policy": "0xb0000",
    }


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"measurement": "ab" * 47}, "measurement"),
        ({"measurement": "ab" * 49}, "measurement"),
        ({"measurement": "zz" * 48}, "measurement"),
        ({"measurement": b"\0" * 47}, "measurement"),
        ({"measurement": 12}, "measurement"),
        ({"family_id": "00" * 15}, "family_id"),
        ({"family_id": "00" * 17}, "family_id"),
        ({"image_id": "g" * 32}, "image_id"),
        ({"image_id": "0" * 31}, "image_id"),
        ({"guest_svn": -1}, "guest_svn"),
        ({"guest_svn": 1 << 32}, "guest_svn"),
        ({"guest_svn": "1"}, "guest_svn"),
        ({"policy": 0x10000}, "policy"),
        ({"policy": {"bogus": 1}}, "policy.bogus"),
    ],
)
def test_id_block_build_refusals_name_the_field(kwargs: dict, field: str) -> None:
    args = {"measurement": "ab" * 48, **kwargs}
    with pytest.raises(SnpError) as err:
        IdBlock.build(**args)
    assert err.value.field == field


def test_measurement_message_says_expected_length() -> None:
    with pytest.raises(SnpError) as err:
        IdBlock.build("ab" * 32)
    assert "96 hex digits (48 bytes), got 64" in err.value.message


def test_parse_hex_spellings() -> None:
    assert parse_hex("0x" + "AB" * 16, 16, "family_id") == b"\xab" * 16
    assert parse_hex(" " + "ab" * 16 + "\n", 16, "family_id") == b"\xab" * 16
    assert parse_hex(b"\x01" * 16, 16, "family_id") == b"\x01" * 16


@pytest.mark.parametrize("size", [0, 95, 97, 4096])
def test_id_block_wrong_size(size: int) -> None:
    with pytest.raises(FormatError) as err:
        IdBlock.from_bytes(bytes(size))
    assert err.value.field == "id_block"


@pytest.mark.parametrize("version", [0, 2, 0xFFFFFFFF])
def test_id_block_bad_version(block: IdBlock, version: int) -> None:
    data = bytearray(block.to_bytes())
    struct.pack_into("<I", data, 0x50, version)
    with pytest.raises(FormatError) as err:
        IdBlock.from_bytes(bytes(data))
    assert err.value.field == "id_block.version"


def test_id_block_bad_policy(block: IdBlock) -> None:
    data = bytearray(block.to_bytes())
    struct.pack_into("<Q", data, 0x58, 0x10000)  # bit 17 clear
    with pytest.raises(SnpError) as err:
        IdBlock.from_bytes(bytes(data))
    assert err.value.field == "id_block.policy"
    struct.pack_into("<Q", data, 0x58, 0x30000 | 1 << 40)
    with pytest.raises(SnpError) as err:
        IdBlock.from_bytes(bytes(data))
    assert "40" in err.value.message


def test_id_block_direct_construction_is_validated() -> None:
    with pytest.raises(SnpError):
        IdBlock(ld=bytes(47))
    with pytest.raises(SnpError):
        IdBlock(ld=bytes(48), family_id=bytes(15))
    with pytest.raises(SnpError):
        IdBlock(ld=bytes(48), policy=0x30000)  # type: ignore[arg-type]


# -- ID auth ------------------------------------------------------------------------------


def test_id_auth_offsets(
    auth: IdAuth, block: IdBlock, id_key: ec.EllipticCurvePrivateKey, author_key: ec.EllipticCurvePrivateKey
) -> None:
    data = auth.to_bytes()
    assert len(data) == 0x1000
    assert struct.unpack_from("<II", data, 0) == (1, 1)  # ID_KEY_ALGO, AUTHOR_KEY_ALGO
    assert data[0x008:0x040] == bytes(0x38)
    id_struct = sev_keys.public_key_to_struct(id_key)
    author_struct = sev_keys.public_key_to_struct(author_key)
    assert data[0x240:0x644] == id_struct  # ID_KEY
    assert data[0x644:0x680] == bytes(0x3C)
    assert data[0x880:0xC84] == author_struct  # AUTHOR_KEY
    assert data[0xC84:0x1000] == bytes(0x37C)
    # ID_BLOCK_SIG @0x40 over the 96-byte block, ID_KEY_SIG @0x680 over the 0x404-byte ID_KEY structure,
    # each checked with cryptography directly.
    _verify_direct(id_key.public_key(), block.to_bytes(), data[0x040:0x240])
    _verify_direct(author_key.public_key(), id_struct, data[0x680:0x880])
    assert data[0x040 + 0x90 : 0x240] == bytes(0x170)
    assert data[0x680 + 0x90 : 0x880] == bytes(0x170)


def test_id_auth_round_trip_and_verify(
    auth: IdAuth, block: IdBlock, id_key: ec.EllipticCurvePrivateKey, author_key: ec.EllipticCurvePrivateKey
) -> None:
    parsed = IdAuth.from_bytes(auth.to_bytes())
    assert parsed == auth
    assert parsed.to_bytes() == auth.to_bytes()
    parsed.verify(block)
    parsed.verify(block, id_public_key=id_key.public_key(), author_public_key=author_key)
    assert parsed.author_key_enabled
    assert parsed.id_key_digest == hashlib.sha384(sev_keys.public_key_to_struct(id_key)).digest()
    assert parsed.author_key_digest == sev_keys.key_digest(author_key)
    facts = parsed.to_dict()
    assert facts["author_key_enabled"] is True
    assert facts["id_key_digest"] == sev_keys.key_digest(id_key).hex()


def test_signatures_are_randomised_but_both_verify(
    block: IdBlock, id_key: ec.EllipticCurvePrivateKey, author_key: ec.EllipticCurvePrivateKey
) -> None:
    one, two = IdAuth.build(block, id_key, author_key), IdAuth.build(block, id_key, author_key)
    assert one.id_block_sig != two.id_block_sig
    one.verify(block)
    two.verify(block)


def test_id_auth_without_author_key(block: IdBlock, id_key: ec.EllipticCurvePrivateKey) -> None:
    auth = IdAuth.build(block, id_key)
    data = auth.to_bytes()
    assert struct.unpack_from("<II", data, 0) == (1, 0)
    assert data[0x680:0x1000] == bytes(0x1000 - 0x680)  # ID_KEY_SIG, AUTHOR_KEY and reserved: zero
    assert not auth.author_key_enabled
    assert auth.author_key_digest is None
    parsed = IdAuth.from_bytes(data)
    assert parsed == auth
    parsed.verify(block, id_public_key=id_key)
    assert qemu_properties(block, parsed)["author-key-enabled"] == "off"
    # Other tools write AUTHOR_KEY_ALGO=1 even without an author key: accepted.
    other = bytearray(data)
    struct.pack_into("<I", other, 4, 1)
    assert not IdAuth.from_bytes(bytes(other)).author_key_enabled


def test_expected_author_key_on_block_without_one(
    block: IdBlock, id_key: ec.EllipticCurvePrivateKey, author_key: ec.EllipticCurvePrivateKey
) -> None:
    with pytest.raises(SnpError) as err:
        IdAuth.build(block, id_key).verify(block, author_public_key=author_key)
    assert err.value.field == "author_key"


def test_tampered_id_block_signature(auth: IdAuth, block: IdBlock) -> None:
    data = bytearray(auth.to_bytes())
    data[0x040] ^= 0x01  # R of ID_BLOCK_SIG
    with pytest.raises(SnpError) as err:
        IdAuth.from_bytes(bytes(data)).verify(block)
    assert err.value.field == "id_block_sig"
    assert "ID_BLOCK_SIG" in err.value.message


def test_id_block_signature_over_another_block(auth: IdAuth, block: IdBlock) -> None:
    other = IdBlock.build(LD.hex(), FAMILY.hex(), IMAGE.hex(), guest_svn=0x01020305, policy={"debug": True})
    with pytest.raises(SnpError) as err:
        auth.verify(other)
    assert err.value.field == "id_block_sig"


def test_tampered_id_key_signature(auth: IdAuth, block: IdBlock) -> None:
    data = bytearray(auth.to_bytes())
    data[0x680 + 0x48] ^= 0x80  # S of ID_KEY_SIG
    tampered = IdAuth.from_bytes(bytes(data))
    with pytest.raises(SnpError) as err:
        tampered.verify(block)
    assert err.value.field == "id_key_sig"
    assert "ID_KEY_SIG" in err.value.message


def test_swapped_author_key_fails_id_key_sig(
    auth: IdAuth, block: IdBlock, author_key: ec.EllipticCurvePrivateKey
) -> None:
    impostor = ec.generate_private_key(ec.SECP384R1())
    data = bytearray(auth.to_bytes())
    data[0x880:0xC84] = sev_keys.public_key_to_struct(impostor)
    with pytest.raises(SnpError) as err:
        IdAuth.from_bytes(bytes(data)).verify(block)
    assert err.value.field == "id_key_sig"
    with pytest.raises(SnpError) as err:
        IdAuth.from_bytes(bytes(data)).verify(block, author_public_key=author_key)
    assert err.value.field == "author_key"


def test_swapped_id_key(auth: IdAuth, block: IdBlock, id_key: ec.EllipticCurvePrivateKey) -> None:
    impostor = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(SnpError) as err:
        auth.verify(block, id_public_key=impostor)
    assert err.value.field == "id_key"
    data = bytearray(auth.to_bytes())
    data[0x240:0x644] = sev_keys.public_key_to_struct(impostor)
    with pytest.raises(SnpError) as err:
        IdAuth.from_bytes(bytes(data)).verify(block)
    assert err.value.field == "id_block_sig"


@pytest.mark.parametrize("offset", [0x008, 0x03F, 0x644, 0x67F, 0xC84, 0xFFF])
def test_tampered_reserved_bytes(auth: IdAuth, offset: int) -> None:
    data = bytearray(auth.to_bytes())
    data[offset] = 0x5A
    with pytest.raises(FormatError) as err:
        IdAuth.from_bytes(bytes(data))
    assert err.value.field == "id_auth.reserved"
    assert f"{offset:#x}" in err.value.message or "reserved" in err.value.message


@pytest.mark.parametrize(
    ("offset", "field"),
    [
        (0x040 + 0x90, "id_auth.id_block_sig"),  # signature reserved area
        (0x040 + 0x30, "id_auth.id_block_sig"),  # R padding above 48 bytes
        (0x240 + 0x94, "id_auth.id_key"),  # key reserved area
        (0x680 + 0x1FF, "id_auth.id_key_sig"),
        (0x880 + 0x403, "id_auth.author_key"),
    ],
)
def test_tampered_padding_inside_structures(auth: IdAuth, offset: int, field: str) -> None:
    data = bytearray(auth.to_bytes())
    data[offset] = 1
    with pytest.raises(FormatError) as err:
        IdAuth.from_bytes(bytes(data))
    assert err.value.field == field


@pytest.mark.parametrize(
    ("offset", "value", "field"),
    [(0x000, 2, "id_auth.id_key_algo"), (0x004, 2, "id_auth.author_key_algo"), (0x240, 3, "id_auth.id_key")],
)
def test_bad_algorithms_and_curve(auth: IdAuth, offset: int, value: int, field: str) -> None:
    data = bytearray(auth.to_bytes())
    struct.pack_into("<I", data, offset, value)
    with pytest.raises(FormatError) as err:
        IdAuth.from_bytes(bytes(data))
    assert err.value.field == field


def test_half_author_is_refused(block: IdBlock, id_key: ec.EllipticCurvePrivateKey, auth: IdAuth) -> None:
    data = bytearray(IdAuth.build(block, id_key).to_bytes())
    data[0x680:0x880] = auth.id_key_sig  # an ID_KEY_SIG without an AUTHOR_KEY
    with pytest.raises(FormatError) as err:
        IdAuth.from_bytes(bytes(data))
    assert err.value.field == "id_auth.id_key_sig"


@pytest.mark.parametrize("size", [0, 4095, 4097, 96])
def test_id_auth_wrong_size(size: int) -> None:
    with pytest.raises(FormatError) as err:
        IdAuth.from_bytes(bytes(size))
    assert err.value.field == "id_auth"


def test_off_curve_embedded_key_fails_cleanly(auth: IdAuth, block: IdBlock) -> None:
    data = bytearray(auth.to_bytes())
    data[0x244] ^= 0x01  # QX no longer matches QY
    parsed = IdAuth.from_bytes(bytes(data))
    with pytest.raises(SnpError) as err:
        parsed.verify(block)
    assert err.value.field == "id_auth.id_key"


# -- encodings -------------------------------------------------------------------------------


def test_qemu_properties(auth: IdAuth, block: IdBlock) -> None:
    props = qemu_properties(block, auth)
    assert props == {"id-block": block.to_b64(), "id-auth": auth.to_b64(), "author-key-enabled": "on"}
    assert base64.b64decode(props["id-auth"]) == auth.to_bytes()
    option = qemu_option(props)
    assert option.startswith("id-block=") and option.endswith(",author-key-enabled=on")
    assert option.count(",") == 2  # base64 never contains a comma


def test_decode_blob(block: IdBlock) -> None:
    raw = block.to_bytes()
    assert decode_blob(raw, 96, "x") == raw
    assert decode_blob(block.to_b64(), 96, "x") == raw
    assert decode_blob((block.to_b64() + "\n").encode(), 96, "x") == raw
    wrapped = block.to_b64()[:64] + "\n" + block.to_b64()[64:] + "\n"
    assert decode_blob(wrapped, 96, "x") == raw
    with pytest.raises(FormatError) as err:
        decode_blob(b"!!!!", 96, "id_block_path", path="/p")
    assert (err.value.field, err.value.path) == ("id_block_path", "/p")
    with pytest.raises(FormatError):
        decode_blob(base64.b64encode(bytes(95)), 96, "x")


# -- arbitrary input -----------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=0x1100))
def test_parsers_raise_only_snperror(data: bytes) -> None:
    with contextlib.suppress(SnpError):
        IdBlock.from_bytes(data)
    with contextlib.suppress(SnpError):
        IdAuth.from_bytes(data)
    with contextlib.suppress(SnpError):
        decode_blob(data, 96, "x")
    with contextlib.suppress(SnpError):
        decode_blob(data, 4096, "x")


@settings(max_examples=200)
@given(st.binary(min_size=0x60, max_size=0x60))
def test_any_96_bytes_parse_or_snperror(data: bytes) -> None:
    try:
        parsed = IdBlock.from_bytes(data)
    except SnpError:
        return
    assert parsed.to_bytes() == data


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_id_auth_raises_only_snperror(auth: IdAuth, block: IdBlock, data: st.DataObject) -> None:
    # Targeted fuzzing: flip bytes of a valid block, then parse *and* verify.
    raw = bytearray(auth.to_bytes())
    for _flip in range(data.draw(st.integers(min_value=1, max_value=4))):
        raw[data.draw(st.integers(min_value=0, max_value=0xFFF))] = data.draw(st.integers(min_value=0, max_value=255))
    with contextlib.suppress(SnpError):
        IdAuth.from_bytes(bytes(raw)).verify(block)
