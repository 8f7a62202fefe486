# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The single place that imports ``cryptography``.

Modules must load (and ``ansible-test sanity`` must import them) on hosts without
the library; they then fail with ``missing_required_lib`` instead of a traceback.
"""

from __future__ import annotations

import traceback

try:
    from cryptography import exceptions as crypto_exceptions
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
    from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:  # pragma: no cover - exercised by the sanity import test
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR: str | None = traceback.format_exc()
    crypto_exceptions = hashes = serialization = ec = padding = rsa = asym_utils = x509 = None  # type: ignore[assignment]
    x25519 = AESGCM = None  # type: ignore[assignment]
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None

# HPKE (RFC 9180) arrived in cryptography 47; older versions still load everything else.
try:
    from cryptography.hazmat.primitives import hpke
except ImportError:  # pragma: no cover - cryptography < 47 or missing
    hpke = None  # type: ignore[assignment]

__all__ = [
    "AESGCM",
    "CRYPTOGRAPHY_IMPORT_ERROR",
    "HAS_CRYPTOGRAPHY",
    "asym_utils",
    "crypto_exceptions",
    "ec",
    "hashes",
    "hpke",
    "padding",
    "rsa",
    "serialization",
    "x509",
    "x25519",
]
