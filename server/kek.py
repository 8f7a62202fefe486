# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The key-encryption key (KEK): a 32-byte file outside the database, and AES-256-GCM under it.

A stolen database (or backup) alone yields no volume key, ID key or ingestion key:
each is stored as ``version(1) ‖ nonce(12) ‖ ciphertext ‖ tag`` under the KEK, with
an AAD that names what the blob is (e.g. ``snpguard/volume-key/v1\\0<image id>``), so
a blob copied onto another row does not open.  Replicas share the KEK by pointing
``--kek-file`` at the same file (or a copy of it).
"""

from __future__ import annotations

import contextlib
import os

from ..plugins.module_utils.common.fileio import create_private
from ..plugins.module_utils.snp.crypto_guard import AESGCM
from ..plugins.module_utils.snp.errors import SnpError

KEK_SIZE = 32
BLOB_VERSION = 1
VOLUME_KEY_AAD = b"snpguard/volume-key/v1\x00"
ID_KEY_AAD = b"snpguard/id-key/v1\x00"
INGESTION_KEY_AAD = b"snpguard/ingestion-key/v1"


def load_or_create_kek(path: str, *, create: bool) -> bytes:
    """Read the KEK; create it (0600, never overwriting) only when ``create`` is set."""
    if not os.path.exists(path):
        if not create:
            raise SnpError("the key-encryption key file does not exist (run 'snpguard server init')",
                           field="kek_file", path=path)
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        with contextlib.suppress(SnpError):  # another process created it first: read theirs
            create_private(path, os.urandom(KEK_SIZE))
    try:
        with open(path, "rb") as handle:
            data = handle.read(KEK_SIZE + 1)
        mode = os.stat(path).st_mode & 0o077
    except OSError as exc:
        raise SnpError(f"cannot read the key-encryption key: {exc.strerror}", field="kek_file", path=path) from exc
    if len(data) != KEK_SIZE:
        raise SnpError(f"must hold exactly {KEK_SIZE} bytes", field="kek_file", path=path)
    if mode:
        raise SnpError("is readable by group or others; chmod 600 it", field="kek_file", path=path)
    return data


def seal(kek: bytes, plaintext: bytes | bytearray, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return bytes([BLOB_VERSION]) + nonce + AESGCM(kek).encrypt(nonce, bytes(plaintext), aad)


def open_blob(kek: bytes, blob: bytes, aad: bytes, *, what: str) -> bytearray:
    """Decrypt a KEK blob; a wrong KEK or AAD is an error naming ``what`` (never the data)."""
    if len(blob) < 1 + 12 + 16 or blob[0] != BLOB_VERSION:
        raise SnpError(f"stored {what} is malformed", field="kek")
    try:
        return bytearray(AESGCM(kek).decrypt(blob[1:13], blob[13:], aad))
    except Exception as exc:  # InvalidTag
        raise SnpError(f"stored {what} does not open with this key-encryption key", field="kek") from exc
