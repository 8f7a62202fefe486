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


HOST_KEY_LABEL = b"snpguard/ssh-host-key/v1"


def host_key_binding(public_key_blob: bytes) -> bytes:
    """REPORT_DATA of a boot report that vouches for an SSH host key (``agent/boot_report.py``).

    ``SHA-512("snpguard/ssh-host-key/v1" ‖ blob)``, ``blob`` being the key in SSH wire format
    (the base64 field of the ``.pub`` file, decoded).  A verifier that connects over SSH sees the
    same blob, recomputes this and compares: only software inside the measured VM could have asked
    the AMD-SP for a report naming the key that VM's sshd holds.
    """
    if not public_key_blob:
        raise ValueError("the host key blob is empty")
    return hashlib.sha512(HOST_KEY_LABEL + public_key_blob).digest()
