# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Both ends of the key-release protocol v1, and the sealed-volume-key ingestion.

The server and the guest agent import this one module, so the HPKE suite, the labels
and the ``info`` string can never drift apart.  HPKE is RFC 9180 base mode with
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and AES-256-GCM, from ``cryptography`` (never
a home-made construction).  A sealed message is ``enc (32 bytes) ‖ ciphertext ‖ tag``,
exactly what ``cryptography``'s single-shot ``Suite.encrypt`` returns.

* Key release: the server seals the volume key to the agent's ephemeral X25519 key with
  ``info = "snpguard/key-release/v1" ‖ session_id ‖ SHA-256(report)``, so a sealed
  key opens only for the session and the exact report it was released for.
* Ingestion: conversion seals the volume key to the server's ingestion key with
  ``info = "snpguard/ingest/v1" ‖ image name``, so the key never sits in plaintext in a
  staging directory and cannot be registered under another image's name.

Python cannot promise that a secret leaves memory (``bytes`` are immutable and the
library returns ``bytes``); where we own a buffer it is a ``bytearray`` that ``wipe``
zeroes, which is the most the language allows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from ..snp.binding import NONCE_SIZE, report_data_binding
from ..snp.crypto_guard import HAS_CRYPTOGRAPHY, hpke, serialization, x25519
from ..snp.errors import SnpError

KEY_RELEASE_LABEL = b"snpguard/key-release/v1"
INGEST_LABEL = b"snpguard/ingest/v1"
HPKE_SUITE_NAME = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM"
#: RFC 9180 identifiers (kem_id, kdf_id, aead_id), for clients that want to compare numbers.
HPKE_SUITE_IDS = (0x0020, 0x0001, 0x0002)
X25519_KEY_SIZE = 32
ENC_SIZE = 32  # DHKEM(X25519) encapsulated key
TAG_SIZE = 16
#: API tokens of the key-release server: ``sgt_<16 hex id>_<43 base64url secret>``.
TOKEN_RE = re.compile(r"^sgt_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
#: Token scopes, weakest first: operator (images, audit), admin (also tokens).
TOKEN_SCOPES = ("operator", "admin")
#: Volume keys: LUKS2 keys are 32 or 64 bytes; anything outside this range is a mistake.
MIN_VOLUME_KEY = 16
MAX_VOLUME_KEY = 128

__all__ = [
    "ENC_SIZE",
    "HPKE_SUITE_IDS",
    "HPKE_SUITE_NAME",
    "INGEST_LABEL",
    "KEY_RELEASE_LABEL",
    "NONCE_SIZE",
    "TOKEN_RE",
    "TOKEN_SCOPES",
    "AgentSession",
    "KeyReleaseError",
    "check_public_key",
    "format_token",
    "generate_x25519",
    "info_for",
    "ingest_info",
    "open_ingestion",
    "open_released_key",
    "public_key_bytes",
    "same_secret",
    "seal_for_ingestion",
    "seal_volume_key",
    "wipe",
]


class KeyReleaseError(SnpError):
    """A sealed message did not open, or an input has the wrong shape."""


def _need() -> None:
    if not HAS_CRYPTOGRAPHY or hpke is None:
        raise KeyReleaseError("the key-release protocol needs the Python 'cryptography' library >= 47 (HPKE)",
                              field="cryptography")


def _suite() -> Any:
    _need()
    return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def wipe(buffer: bytearray | memoryview | None) -> None:
    """Zero a mutable buffer in place (the only wiping Python can do)."""
    if buffer is None:
        return
    view = memoryview(buffer).cast("B")
    view[:] = bytes(len(view))


def _public_key(value: Any, field: str) -> Any:
    _need()
    if isinstance(value, x25519.X25519PublicKey):
        _refuse_low_order(value, field)
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) != X25519_KEY_SIZE:
            raise KeyReleaseError(f"must be a raw X25519 public key of {X25519_KEY_SIZE} bytes, got {len(raw)}",
                                  field=field)
        try:
            key = x25519.X25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise KeyReleaseError(f"is not an X25519 public key: {exc}", field=field) from exc
        _refuse_low_order(key, field)
        return key
    raise KeyReleaseError(f"expected 32 bytes or an X25519PublicKey, got {type(value).__name__}", field=field)


def _refuse_low_order(key: Any, field: str) -> None:
    """Refuse a small-order point (all-zero, 1, the order-8 points, their non-canonical twins).

    Any X25519 scalar is a multiple of 8 after clamping, so such a point gives the
    all-zero shared secret with every key: a message "sealed" to it opens for anyone.
    ``cryptography`` refuses the zero secret; asking once with a throwaway key turns
    that into a named refusal before any secret is involved.
    """
    try:
        x25519.X25519PrivateKey.generate().exchange(key)
    except ValueError as exc:
        raise KeyReleaseError("is a low-order X25519 point (every shared secret with it is zero)",
                              field=field) from exc


def check_public_key(raw: bytes, field: str) -> None:
    """Raise ``KeyReleaseError`` naming ``field`` unless ``raw`` is a usable X25519 public key."""
    _public_key(raw, field)


def format_token(token_id: str, secret: str) -> str:
    return f"sgt_{token_id}_{secret}"


def _private_key(value: Any, field: str) -> Any:
    _need()
    if isinstance(value, x25519.X25519PrivateKey):
        return value
    if isinstance(value, bytes | bytearray | memoryview) and len(value) == X25519_KEY_SIZE:
        return x25519.X25519PrivateKey.from_private_bytes(bytes(value))
    raise KeyReleaseError("expected a raw 32-byte X25519 private key", field=field)


def public_key_bytes(key: Any) -> bytes:
    """Raw 32 bytes of an X25519 public key (or of a private key's public half)."""
    _need()
    if isinstance(key, x25519.X25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_x25519() -> tuple[bytearray, bytes]:
    """A fresh X25519 key pair as (private raw bytes in a wipeable buffer, public raw bytes)."""
    _need()
    key = x25519.X25519PrivateKey.generate()
    private = bytearray(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption()))
    return private, public_key_bytes(key)


def _check_volume_key(key: bytes | bytearray, field: str) -> None:
    if not isinstance(key, bytes | bytearray | memoryview):
        raise KeyReleaseError(f"expected bytes, got {type(key).__name__}", field=field)
    if not MIN_VOLUME_KEY <= len(key) <= MAX_VOLUME_KEY:
        raise KeyReleaseError(f"a volume key is {MIN_VOLUME_KEY}..{MAX_VOLUME_KEY} bytes, got {len(key)}",
                              field=field)


# -- key release (server → agent) ---------------------------------------------------------


def info_for(session_id: str, report: bytes) -> bytes:
    """``"snpguard/key-release/v1" ‖ session_id ‖ SHA-256(report)`` (the HPKE ``info``)."""
    if not isinstance(session_id, str) or not session_id:
        raise KeyReleaseError("must be a non-empty string", field="session_id")
    return KEY_RELEASE_LABEL + session_id.encode("utf-8") + hashlib.sha256(bytes(report)).digest()


def seal_volume_key(volume_key: bytes | bytearray, agent_public_key: Any, session_id: str, report: bytes) -> bytes:
    """Server side: HPKE-seal the volume key to the agent's ephemeral key for this session and report."""
    _check_volume_key(volume_key, "volume_key")
    public = _public_key(agent_public_key, "agent_public_key")
    return _suite().encrypt(bytes(volume_key), public, info=info_for(session_id, report))


def open_released_key(sealed: bytes, private_key: Any, session_id: str, report: bytes) -> bytearray:
    """Agent side without an ``AgentSession`` (e.g. a key loaded from elsewhere)."""
    if not isinstance(sealed, bytes | bytearray) or len(sealed) < ENC_SIZE + TAG_SIZE + MIN_VOLUME_KEY:
        raise KeyReleaseError("sealed key is too short", field="sealed_key")
    try:
        plain = _suite().decrypt(bytes(sealed), _private_key(private_key, "private_key"),
                                 info=info_for(session_id, report))
    except KeyReleaseError:
        raise
    except Exception as exc:  # InvalidTag and friends: never echo the ciphertext
        raise KeyReleaseError("the sealed key does not open for this session, report and key",
                              field="sealed_key") from exc
    return bytearray(plain)


class AgentSession:
    """The guest agent's half of one handshake: an ephemeral X25519 key used exactly once.

    ``report_data(nonce)`` is what the agent asks the AMD-SP to put in REPORT_DATA;
    ``open(sealed, session_id, report)`` returns the volume key as a ``bytearray`` the
    caller wipes after use.  ``close()`` drops the private key (also on ``with`` exit).
    """

    def __init__(self) -> None:
        _need()
        self._key: Any = x25519.X25519PrivateKey.generate()
        self.public_key: bytes = public_key_bytes(self._key)

    def report_data(self, nonce: bytes) -> bytes:
        if not isinstance(nonce, bytes | bytearray) or len(nonce) != NONCE_SIZE:
            raise KeyReleaseError(f"the server's nonce must be {NONCE_SIZE} bytes", field="nonce")
        return report_data_binding(bytes(nonce), self.public_key)

    def open(self, sealed: bytes, session_id: str, report: bytes) -> bytearray:
        if self._key is None:
            raise KeyReleaseError("this session's key was already discarded", field="agent_key")
        return open_released_key(sealed, self._key, session_id, report)

    def close(self) -> None:
        self._key = None

    def __enter__(self) -> AgentSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- ingestion (conversion → server) ---------------------------------------------------------


def ingest_info(image_name: str) -> bytes:
    """``"snpguard/ingest/v1" ‖ image name``: a sealed key belongs to one image name."""
    if not isinstance(image_name, str) or not image_name:
        raise KeyReleaseError("must be a non-empty string", field="name")
    return INGEST_LABEL + image_name.encode("utf-8")


def seal_for_ingestion(volume_key: bytes | bytearray, server_ingestion_public_key: Any, image_name: str) -> bytes:
    """Conversion side: seal a new image's volume key to the server's ingestion key."""
    _check_volume_key(volume_key, "volume_key")
    public = _public_key(server_ingestion_public_key, "ingestion_public_key")
    return _suite().encrypt(bytes(volume_key), public, info=ingest_info(image_name))


def open_ingestion(sealed: bytes, ingestion_private_key: Any, image_name: str) -> bytearray:
    """Server side: open a sealed volume key received at registration."""
    if not isinstance(sealed, bytes | bytearray) or len(sealed) < ENC_SIZE + TAG_SIZE + MIN_VOLUME_KEY:
        raise KeyReleaseError("sealed volume key is too short", field="sealed_volume_key")
    if len(sealed) > ENC_SIZE + TAG_SIZE + MAX_VOLUME_KEY:
        raise KeyReleaseError("sealed volume key is too long", field="sealed_volume_key")
    try:
        plain = _suite().decrypt(bytes(sealed), _private_key(ingestion_private_key, "ingestion_private_key"),
                                 info=ingest_info(image_name))
    except KeyReleaseError:
        raise
    except Exception as exc:
        raise KeyReleaseError("does not open with this server's ingestion key for this image name",
                              field="sealed_volume_key") from exc
    return bytearray(plain)


def same_secret(a: bytes | bytearray, b: bytes | bytearray) -> bool:
    """Constant-time equality for secrets (idempotent re-registration compares volume keys)."""
    return hmac.compare_digest(bytes(a), bytes(b))
