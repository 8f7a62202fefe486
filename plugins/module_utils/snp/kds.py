# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""AMD Key Distribution Service: URLs, an on-disk cache keyed the way KDS keys, offline mode.

No network code here: the caller injects ``fetch(url) -> bytes`` (the CLI passes an
HTTPS getter, tests pass a dictionary).  With ``offline=True`` only the cache and a
certificate directory are read.  VCEKs are fetched for REPORTED_TCB (the TCB the
report was signed at), Turin with the 8-byte hwID and an FMC SPL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .amd_certs import load_certificate, load_certificates, load_crl
from .errors import SnpError
from .report import AttestationReport, SigningKey
from .tcb import Product, TcbVersion

KDS_BASE = "https://kdsintf.amd.com"
Fetch = Callable[[str], bytes]


def vcek_url(product: Product, chip_id: bytes, tcb: TcbVersion, base: str = KDS_BASE) -> str:
    if not any(chip_id):
        raise SnpError("CHIP_ID is all zero (MASK_CHIP_ID is set): KDS cannot issue a VCEK for it",
                       field="report.chip_id")
    hwid = chip_id[: product.hwid_size].hex()
    query = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    if product is Product.TURIN:
        query = f"fmcSPL={tcb.fmc or 0}&" + query
    return f"{base}/vcek/v1/{product.value}/{hwid}?{query}"


def chain_url(product: Product, vlek: bool = False, base: str = KDS_BASE) -> str:
    return f"{base}/{'vlek' if vlek else 'vcek'}/v1/{product.value}/cert_chain"


def crl_url(product: Product, vlek: bool = False, base: str = KDS_BASE) -> str:
    return f"{base}/{'vlek' if vlek else 'vcek'}/v1/{product.value}/crl"


class NotCached(SnpError):
    """The item is not in the cache and this client may not fetch it (offline, or no fetch function)."""


_SAFE = re.compile(r"[^A-Za-z0-9_.=&-]")


def cache_path(cache_dir: str, url: str) -> str:
    """``<cache>/<path after /vcek/v1/>`` with the query folded into the file name."""
    tail = url.split("://", 1)[-1].split("/", 1)[-1]
    path, _sep, query = tail.partition("?")
    name = path.replace("/", os.sep) + (("@" + _SAFE.sub("_", query)) if query else "")
    return os.path.join(cache_dir, name)


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
            from ..common.fileio import atomic_write

            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, data)
        return data

    def vcek(self, product: Product, report: AttestationReport) -> Any:
        tcb = report.tcb("reported", product)
        url = vcek_url(product, report.chip_id, tcb, self.base)
        return load_certificate(self._get(url, "the VCEK"), field="vcek")

    def chain(self, product: Product, vlek: bool = False) -> tuple[Any, Any]:
        """(ASK or ASVK, ARK) from KDS's cert_chain, which lists the intermediate first."""
        url = chain_url(product, vlek, self.base)
        certs = load_certificates(self._get(url, "the certificate chain"), field="cert_chain")
        if len(certs) != 2:
            raise SnpError(f"cert_chain holds {len(certs)} certificates, expected 2", field="cert_chain")
        return certs[0], certs[1]

    def crl(self, product: Product, vlek: bool = False) -> Any:
        return load_crl(self._get(crl_url(product, vlek, self.base), "the CRL"), field="crl")


def needs_vlek(report: AttestationReport) -> bool:
    return report.signing_key is SigningKey.VLEK
