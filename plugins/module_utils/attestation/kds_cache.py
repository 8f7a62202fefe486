# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The AMD KDS client: an on-disk cache keyed the way KDS keys, offline mode, an injected fetch.

No network code here either: the caller injects ``fetch(url) -> bytes`` (the CLI and the
modules pass ``kds_fetch.https_get``, the server a short-timeout variant, tests a
dictionary).  With ``offline=True`` only the cache is read, and a miss is ``NotCached``.
What KDS's answers mean is ``snp/kds.py``'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..common.fileio import atomic_write
from ..snp.errors import SnpError
from ..snp.kds import KDS_BASE, cache_name, chain_url, crl_url, parse_chain, parse_crl, parse_vcek, vcek_url
from ..snp.report import AttestationReport
from ..snp.tcb import Product

Fetch = Callable[[str], bytes]


class NotCached(SnpError):
    """The item is not in the cache and this client may not fetch it (offline, or no fetch function)."""


def cache_path(cache_dir: str, url: str) -> str:
    """The file under ``cache_dir`` that holds the answer to ``url``."""
    return os.path.join(cache_dir, *cache_name(url))


@dataclass
class KdsClient:
    """Fetches AMD collateral through ``fetch`` and caches it; ``offline`` never calls ``fetch``."""

    fetch: Fetch | None = None
    cache_dir: str | None = None
    offline: bool = False
    base: str = KDS_BASE

    def _get(self, url: str, what: str) -> bytes:
        path = cache_path(self.cache_dir, url) if self.cache_dir else None
        if path and os.path.exists(path):
            with open(path, "rb") as handle:
                return handle.read()
        if self.offline or self.fetch is None:
            raise NotCached(f"{what} is not cached and the verifier is offline", field="kds", path=path)
        try:
            data = self.fetch(url)
        except SnpError:
            raise
        except Exception as exc:  # the injected getter's own errors (HTTP, DNS, TLS)
            raise SnpError(f"fetching {what} from {url} failed: {exc}", field="kds") from exc
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, data)
        return data

    def vcek(self, product: Product, report: AttestationReport) -> Any:
        tcb = report.tcb("reported", product)
        return parse_vcek(self._get(vcek_url(product, report.chip_id, tcb, self.base), "the VCEK"))

    def chain(self, product: Product, vlek: bool = False) -> tuple[Any, Any]:
        """(ASK or ASVK, ARK)."""
        return parse_chain(self._get(chain_url(product, vlek, self.base), "the certificate chain"))

    def crl(self, product: Product, vlek: bool = False) -> Any:
        return parse_crl(self._get(crl_url(product, vlek, self.base), "the CRL"))
