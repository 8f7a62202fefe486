# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""SEV public-key (0x404) and signature (0x200) structures, PEM loading (reference §6.3)."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp import sev_keys
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError

P384_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def test_public_key_struct_layout(key: ec.EllipticCurvePrivateKey) -> None:
    data = sev_keys.public_key_to_struct(key.public_key())
    numbers = key.public_key().public_numbers()
    assert len(data) == 0x404
    assert struct.unpack_from("<I", data, 0x00)[0] == 2  # CURVE = P-384
    assert data[0x04:0x4C] == numbers.x.to_bytes(72, "little")  # QX
    assert data[0x4C:0x94] == numbers.y.to_bytes(72, "little")  # QY
    assert data[0x04 + 48 : 0x4C] == bytes(24)  # 48 significant bytes, zero padded
    assert data[0x94:] == bytes(0x370)  # reserved
    # A private key gives the structure of its public half.
    assert sev_keys.public_key_to_struct(key) == data


def test_public_key_struct_round_trip(key: ec.EllipticCurvePrivateKey) -> None:
    data = sev_keys.public_key_to_struct(key)
    back = sev_keys.public_key_from_struct(data)
    assert back.public_numbers() == key.public_key().public_numbers()
    assert sev_keys.parse_public_key_struct(data) == (back.public_numbers().x, back.public_numbers().y)
    assert sev_keys.same_public_key(back, key)


def test_key_digest_is_sha384_of_whole_struct(key: ec.EllipticCurvePrivateKey) -> None:
    data = sev_keys.public_key_to_struct(key)
    assert sev_keys.key_digest(key) == hashlib.sha384(data).digest()
    assert sev_keys.struct_digest(data) == sev_keys.key_digest(key.public_key())
    assert len(sev_keys.key_digest(key)) == 48


@pytest.mark.parametrize(
    "other",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP521R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
        ed25519.Ed25519PrivateKey.generate,
    ],
    ids=["p256", "p521", "rsa", "ed25519"],
)
def test_non_p384_keys_are_refused(other: object) -> None:
    wrong = other()  # type: ignore[operator]
    with pytest.raises(SnpError) as err:
        sev_keys.public_key_to_struct(wrong, field="id_key")
    assert err.value.field == "id_key"
    with pytest.raises(SnpError) as err:
        sev_keys.sign(wrong, b"x", field="author_key")
    assert err.value.field == "author_key"
    pem = wrong.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(SnpError) as err:
        sev_keys.load_private_key(pem, field="id_key", path="/k.pem")
    assert (err.value.field, err.value.path) == ("id_key", "/k.pem")
    assert "P-384" in err.value.message


def _struct(curve: int = 2, qx: int = 1, qy: int = 2) -> bytearray:
    data = bytearray(0x404)
    struct.pack_into("<I", data, 0, curve)
    data[0x04:0x4C] = qx.to_bytes(72, "little")
    data[0x4C:0x94] = qy.to_bytes(72, "little")
    return data


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.extend(b"\0"), "0x404"),
        (lambda d: d.__delitem__(slice(0, 1)), "0x404"),
        (lambda d: struct.pack_into("<I", d, 0, 1), "curve 1"),
        (lambda d: d.__setitem__(0x04 + 48, 1), "QX"),
        (lambda d: d.__setitem__(0x4C + 71, 1), "QY"),
        (lambda d: d.__setitem__(0x94, 1), "reserved"),
        (lambda d: d.__setitem__(0x403, 1), "reserved"),
    ],
)
def test_public_key_struct_refusals(key: ec.EllipticCurvePrivateKey, mutate: object, needle: str) -> None:
    data = bytearray(sev_keys.public_key_to_struct(key))
    mutate(data)  # type: ignore[operator]
    with pytest.raises(SnpError) as err:
        sev_keys.public_key_from_struct(bytes(data), field="id_key")
    assert err.value.field == "id_key"
    assert needle in err.value.message


def test_point_not_on_curve_is_refused() -> None:
    with pytest.raises(SnpError) as err:
        sev_keys.public_key_from_struct(bytes(_struct(qx=1, qy=2)), field="author_key")
    assert err.value.field == "author_key"
    assert "curve" in err.value.message


def test_signature_layout_and_der(key: ec.EllipticCurvePrivateKey) -> None:
    message = b"SEV-SNP"
    sig = sev_keys.sign(key, message)
    assert len(sig) == 0x200
    r = int.from_bytes(sig[0x00:0x48], "little")
    s = int.from_bytes(sig[0x48:0x90], "little")
    assert sig[0x30:0x48] == bytes(24) and sig[0x78:0x90] == bytes(24)
    assert sig[0x90:] == bytes(0x170)
    # Independent check with cryptography directly.
    key.public_key().verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))
    assert sev_keys.decode_signature(sig) == (r, s)
    assert sev_keys.signature_to_der(sig) == encode_dss_signature(r, s)
    assert sev_keys.signature_from_der(encode_dss_signature(r, s)) == sig
    sev_keys.verify(key.public_key(), message, sig)
    sev_keys.verify(key, message, sig)  # a private key stands for its public half


def test_signature_made_by_cryptography_verifies(key: ec.EllipticCurvePrivateKey) -> None:
    der = key.sign(b"report", ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    sig = r.to_bytes(72, "little") + s.to_bytes(72, "little") + bytes(0x170)
    sev_keys.verify(key.public_key(), b"report", sig, field="report.signature")


def test_bad_signatures_are_refused(key: ec.EllipticCurvePrivateKey) -> None:
    sig = sev_keys.sign(key, b"message")
    with pytest.raises(SnpError) as err:
        sev_keys.verify(key.public_key(), b"messagE", sig, field="id_block_sig")
    assert err.value.field == "id_block_sig"
    flipped = bytearray(sig)
    flipped[0] ^= 1
    with pytest.raises(SnpError):
        sev_keys.verify(key.public_key(), b"message", bytes(flipped))
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(SnpError):
        sev_keys.verify(other.public_key(), b"message", sig)
    with pytest.raises(SnpError):
        sev_keys.verify(key.public_key(), b"message", bytes(0x200))  # r = s = 0 (masked chip key)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.extend(b"\0"), "0x200"),
        (lambda d: d.__setitem__(0x30, 1), "R"),
        (lambda d: d.__setitem__(0x78, 1), "S"),
        (lambda d: d.__setitem__(0x90, 1), "reserved"),
        (lambda d: d.__setitem__(0x1FF, 1), "reserved"),
    ],
)
def test_signature_struct_refusals(key: ec.EllipticCurvePrivateKey, mutate: object, needle: str) -> None:
    data = bytearray(sev_keys.sign(key, b"m"))
    mutate(data)  # type: ignore[operator]
    with pytest.raises(SnpError) as err:
        sev_keys.verify(key, b"m", bytes(data), field="id_key_sig")
    assert err.value.field == "id_key_sig"
    assert needle in err.value.message


def test_encode_signature_range() -> None:
    assert sev_keys.encode_signature(1, P384_ORDER - 1)[:1] == b"\x01"
    with pytest.raises(SnpError):
        sev_keys.encode_signature(1 << 384, 1)
    with pytest.raises(SnpError):
        sev_keys.signature_from_der(b"\x30\x00garbage")


def test_load_pkcs8_sec1_and_encrypted(key: ec.EllipticCurvePrivateKey) -> None:
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    sec1 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    assert b"BEGIN EC PRIVATE KEY" in sec1
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    for pem, password in ((pkcs8, None), (sec1, None), (encrypted, "pw"), (encrypted, b"pw")):
        loaded = sev_keys.load_private_key(pem, password=password)
        assert sev_keys.same_public_key(loaded, key)
    with pytest.raises(SnpError) as err:
        sev_keys.load_private_key(encrypted, field="id_key", path="/enc.pem")
    assert "passphrase" in err.value.message and err.value.path == "/enc.pem"
    with pytest.raises(SnpError) as err:
        sev_keys.load_private_key(encrypted, password="wrong")
    assert "passphrase" in err.value.message
    with pytest.raises(SnpError) as err:
        sev_keys.load_private_key(pkcs8, password="pw")
    assert "not encrypted" in err.value.message


@pytest.mark.parametrize(
    "data",
    [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", bytes(range(256))],
)
def test_load_garbage_names_field_and_file(data: bytes) -> None:
    with pytest.raises(SnpError) as err:
        sev_keys.load_private_key(data, field="author_key", path="/a.pem")
    assert (err.value.field, err.value.path) == ("author_key", "/a.pem")


def test_load_public_key(key: ec.EllipticCurvePrivateKey) -> None:
    pub_pem = sev_keys.public_key_pem(key)
    assert b"BEGIN PUBLIC KEY" in pub_pem
    assert sev_keys.same_public_key(sev_keys.load_public_key(pub_pem), key)
    priv_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert sev_keys.same_public_key(sev_keys.load_public_key(priv_pem), key)
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(SnpError):
        sev_keys.load_public_key(
            p256.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    with pytest.raises(SnpError):
        sev_keys.load_public_key(b"-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n")


def test_generate_private_key() -> None:
    key, pem = sev_keys.generate_private_key()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert isinstance(key.curve, ec.SECP384R1)
    assert sev_keys.same_public_key(sev_keys.load_private_key(pem), key)
    key2, pem2 = sev_keys.generate_private_key("secret")
    assert pem2.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert sev_keys.same_public_key(sev_keys.load_private_key(pem2, password="secret"), key2)


@settings(max_examples=300)
@given(st.binary(max_size=0x500))
def test_struct_parsers_raise_only_snperror(data: bytes) -> None:
    for parse in (sev_keys.public_key_from_struct, sev_keys.decode_signature, sev_keys.signature_to_der):
        with contextlib.suppress(SnpError):
            parse(data)


@settings(max_examples=100)
@given(st.binary(min_size=0x90, max_size=0x90))
def test_random_signature_values_raise_only_snperror(head: bytes) -> None:
    # Arbitrary R/S (including 0 and values above the group order) never crash verify.
    data = bytearray(0x200)
    data[0x00:0x30] = head[:0x30]
    data[0x48:0x78] = head[0x48:0x78]
    pub = ec.derive_private_key(12345, ec.SECP384R1()).public_key()
    with contextlib.suppress(SnpError):
        sev_keys.verify(pub, b"m", bytes(data))


@settings(max_examples=100)
@given(st.binary(max_size=2048))
def test_pem_loader_raises_only_snperror(data: bytes) -> None:
    for blob in (data, b"-----BEGIN PRIVATE KEY-----\n" + data + b"\n-----END PRIVATE KEY-----\n"):
        with contextlib.suppress(SnpError):
            sev_keys.load_private_key(blob)


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=(1 << 384) - 1), st.integers(min_value=0, max_value=(1 << 384) - 1))
def test_arbitrary_coordinates_raise_only_snperror(qx: int, qy: int) -> None:
    with contextlib.suppress(SnpError):
        sev_keys.public_key_from_struct(bytes(_struct(qx=qx, qy=qy)))
