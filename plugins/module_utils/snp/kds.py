# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""AMD Key Distribution Service: the URLs KDS serves, and what its answers must contain.

Pure: no network, no files.  The client that fetches and caches (``attestation/kds_cache.py``)
builds on these.  VCEKs are asked for REPORTED_TCB (the TCB the report was signed at),
Turin with the 8-byte hwID and an FMC SPL.
"""

from __future__ import annotations

import re
from typing import Any

from .amd_certs import load_certificate, load_certificates, load_crl
from .errors import SnpError
from .report import AttestationReport, SigningKey
from .tcb import Product, TcbVersion

KDS_BASE = "https://kdsintf.amd.com"


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


_SAFE = re.compile(r"[^A-Za-z0-9_.=&-]")


def cache_name(url: str) -> list[str]:
    """Where a KDS answer is kept in a cache: the URL path after the host, the query folded into the file name.

    Returned as path components (``["vcek", "v1", "Milan", "<hwid>@blSPL=..."]``), so the
    cache's owner joins them with its own directory.
    """
    tail = url.split("://", 1)[-1].split("/", 1)[-1]
    path, _sep, query = tail.partition("?")
    parts = [p for p in path.split("/") if p]
    if query:
        parts[-1] += "@" + _SAFE.sub("_", query)
    if not parts or any(p in (".", "..") for p in parts):
        raise SnpError(f"not a KDS URL: {url!r}", field="kds")
    return parts


def parse_vcek(data: bytes) -> Any:
    return load_certificate(data, field="vcek")


def parse_chain(data: bytes) -> tuple[Any, Any]:
    """(ASK or ASVK, ARK) from KDS's cert_chain, which lists the intermediate first."""
    certs = load_certificates(data, field="cert_chain")
    if len(certs) != 2:
        raise SnpError(f"cert_chain holds {len(certs)} certificates, expected 2", field="cert_chain")
    return certs[0], certs[1]


def parse_crl(data: bytes) -> Any:
    return load_crl(data, field="crl")


def needs_vlek(report: AttestationReport) -> bool:
    return report.signing_key is SigningKey.VLEK
