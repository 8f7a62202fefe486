# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""module_utils/keyrelease/protocol.py: both ends of the protocol, and RFC 9180 conformance of the sealed format.

The conformance test opens our sealed messages with an independent base-mode HPKE
receiver written here from RFC 9180 §4.1, §5.1 and §7.1 (X25519, HKDF and AES-GCM
primitives only), so an agent written in another language with any conforming HPKE
library can interoperate: the wire format is ``enc ‖ ciphertext ‖ tag``.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease import protocol as kr
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.binding import report_data_binding

REPORT = os.urandom(0x4A0)
SESSION = "3f2c1d9e-0000-4000-8000-000000000001"


def _i2osp(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def rfc9180_open(sealed: bytes, receiver: x25519.X25519PrivateKey, info: bytes) -> bytes:
    """Base-mode single-shot open for DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM."""
    kem_suite = b"KEM" + _i2osp(0x20, 2)
    suite = b"HPKE" + _i2osp(0x20, 2) + _i2osp(1, 2) + _i2osp(2, 2)

    def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return _extract(salt, b"HPKE-v1" + suite_id + label + ikm)

    def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info_: bytes, length: int) -> bytes:
        return _expand(prk, _i2osp(length, 2) + b"HPKE-v1" + suite_id + label + info_, length)

    enc, ciphertext = sealed[:32], sealed[32:]
    dh = receiver.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    pk_rm = receiver.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    eae_prk = labeled_extract(kem_suite, b"", b"eae_prk", dh)
    shared_secret = labeled_expand(kem_suite, eae_prk, b"shared_secret", enc + pk_rm, 32)
    psk_id_hash = labeled_extract(suite, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(suite, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = labeled_extract(suite, shared_secret, b"secret", b"")
    key = labeled_expand(suite, secret, b"key", context, 32)
    base_nonce = labeled_expand(suite, secret, b"base_nonce", context, 12)
    return AESGCM(key).decrypt(base_nonce, ciphertext, b"")


def test_release_round_trip_and_wire_format() -> None:
    volume_key = os.urandom(64)
    with kr.AgentSession() as agent:
        nonce = os.urandom(32)
        assert agent.report_data(nonce) == report_data_binding(nonce, agent.public_key)
        sealed = kr.seal_volume_key(volume_key, agent.public_key, SESSION, REPORT)
        assert len(sealed) == kr.ENC_SIZE + len(volume_key) + kr.TAG_SIZE
        opened = agent.open(sealed, SESSION, REPORT)
        assert isinstance(opened, bytearray) and bytes(opened) == volume_key
        kr.wipe(opened)
        assert opened == bytearray(len(volume_key))
    with pytest.raises(kr.KeyReleaseError, match="discarded"):
        agent.open(sealed, SESSION, REPORT)


def test_info_binds_session_and_report() -> None:
    expected = b"snpguard/key-release/v1" + SESSION.encode() + hashlib.sha256(REPORT).digest()
    assert kr.info_for(SESSION, REPORT) == expected
    agent = kr.AgentSession()
    sealed = kr.seal_volume_key(os.urandom(32), agent.public_key, SESSION, REPORT)
    for session, report in ((SESSION[:-1] + "2", REPORT), (SESSION, REPORT[:-1] + b"\x00")):
        with pytest.raises(kr.KeyReleaseError) as error:
            agent.open(sealed, session, report)
        assert error.value.field == "sealed_key"
    with pytest.raises(kr.KeyReleaseError):
        kr.AgentSession().open(sealed, SESSION, REPORT)  # another agent's key


def test_independent_rfc9180_receiver_opens_our_messages() -> None:
    receiver = x25519.X25519PrivateKey.generate()
    public = receiver.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key = os.urandom(32)
    assert rfc9180_open(kr.seal_volume_key(key, public, SESSION, REPORT), receiver, kr.info_for(SESSION, REPORT)) == key
    assert rfc9180_open(kr.seal_for_ingestion(key, public, "img"), receiver, b"snpguard/ingest/v1img") == key


def test_ingestion_is_bound_to_the_image_name() -> None:
    private, public = kr.generate_x25519()
    key = os.urandom(32)
    sealed = kr.seal_for_ingestion(key, public, "debian-13")
    assert bytes(kr.open_ingestion(sealed, private, "debian-13")) == key
    with pytest.raises(kr.KeyReleaseError, match="does not open"):
        kr.open_ingestion(sealed, private, "debian-12")
    with pytest.raises(kr.KeyReleaseError, match="too short"):
        kr.open_ingestion(sealed[:40], private, "debian-13")


@pytest.mark.parametrize(("key", "public", "field"), [
    (b"short", bytes(32), "volume_key"),
    (os.urandom(32), b"\x01" * 31, "agent_public_key"),
    (os.urandom(32), "not bytes", "agent_public_key"),
])
def test_bad_inputs_name_the_field(key, public, field) -> None:
    with pytest.raises(kr.KeyReleaseError) as error:
        kr.seal_volume_key(key, public, SESSION, REPORT)
    assert error.value.field == field


def test_nonce_size_checked() -> None:
    with pytest.raises(kr.KeyReleaseError) as error:
        kr.AgentSession().report_data(b"\x00" * 31)
    assert error.value.field == "nonce"
