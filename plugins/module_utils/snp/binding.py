# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""REPORT_DATA binding: ties a report to a verifier's nonce and, optionally, a public key (keyrelease/protocol.py).

``REPORT_DATA = SHA-512("snpguard/report-data/v1" ‖ nonce ‖ public_key)``: a verifier that
sees this value knows the report was made after it chose the nonce, and that whoever
holds the key's private half asked for it.
"""

from __future__ import annotations

import hashlib

REPORT_DATA_LABEL = b"snpguard/report-data/v1"
NONCE_SIZE = 32


def report_data_binding(nonce: bytes, public_key: bytes = b"") -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    return hashlib.sha512(REPORT_DATA_LABEL + nonce + public_key).digest()
