# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""PBKDF2-SHA256 password hashes with the standard library, in the modular-crypt format passlib writes.

``$pbkdf2-sha256$<rounds>$<salt>$<checksum>``, salt and checksum in passlib's "adapted
base64" (``.`` for ``+``, no padding), so hashes stored by earlier versions (which used
passlib, now unmaintained) verify unchanged and the new ones read the same.
``hashlib.pbkdf2_hmac`` is OpenSSL's; comparison is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

PREFIX = "$pbkdf2-sha256$"
SALT_BYTES = 16
MAX_ROUNDS = 10_000_000


def _ab64_encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=").replace("+", ".")


def _ab64_decode(text: str) -> bytes:
    text = text.replace(".", "+")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(secret: str, rounds: int) -> str:
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, rounds)
    return f"{PREFIX}{rounds}${_ab64_encode(salt)}${_ab64_encode(digest)}"


def verify_password(secret: str, stored: str) -> bool:
    """True when ``secret`` matches ``stored``; a malformed hash is simply no match (never an exception)."""
    if not isinstance(secret, str) or not isinstance(stored, str) or not stored.startswith(PREFIX):
        return False
    parts = stored[len(PREFIX):].split("$")
    if len(parts) != 3 or not parts[0].isdigit():
        return False
    rounds = int(parts[0])
    if not 1 <= rounds <= MAX_ROUNDS:
        return False
    try:
        salt, expected = _ab64_decode(parts[1]), _ab64_decode(parts[2])
    except (binascii.Error, ValueError):
        return False
    if not expected:
        return False
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, rounds, dklen=len(expected))
    return hmac.compare_digest(digest, expected)
