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
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
except ImportError:  # pragma: no cover - exercised by the sanity import test
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR: str | None = traceback.format_exc()
    crypto_exceptions = hashes = serialization = ec = padding = rsa = asym_utils = x509 = None  # type: ignore[assignment]
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None

__all__ = [
    "CRYPTOGRAPHY_IMPORT_ERROR",
    "HAS_CRYPTOGRAPHY",
    "asym_utils",
    "crypto_exceptions",
    "ec",
    "hashes",
    "padding",
    "rsa",
    "serialization",
    "x509",
]
