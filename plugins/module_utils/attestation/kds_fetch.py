# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The HTTPS getter that the CLI and modules inject into ``KdsClient`` (stdlib only).

KDS rate-limits; a 429 or 5xx is retried with backoff, anything else fails at once.
"""

from __future__ import annotations

import time
import urllib.error

from ..common.http import open_url
from ..snp.errors import SnpError

MAX_BYTES = 1 << 20


def https_get(url: str, *, timeout: float = 30.0, retries: int = 3, backoff: float = 2.0) -> bytes:
    if not url.startswith("https://"):
        raise SnpError(f"refusing a non-HTTPS URL {url!r}", field="kds")
    attempt = 0
    while True:
        attempt += 1
        try:
            with open_url("GET", url, timeout=timeout) as response:
                data = response.read(MAX_BYTES + 1)
            if len(data) > MAX_BYTES:
                raise SnpError(f"response from {url} is larger than {MAX_BYTES} bytes", field="kds")
            return data
        except urllib.error.HTTPError as exc:
            if exc.code in (429, 500, 502, 503, 504) and attempt <= retries:
                time.sleep(backoff * attempt)
                continue
            raise SnpError(f"KDS answered HTTP {exc.code} for {url}", field="kds") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            if attempt <= retries:
                time.sleep(backoff * attempt)
                continue
            raise SnpError(f"cannot reach KDS at {url}: {exc}", field="kds") from exc
