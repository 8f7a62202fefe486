# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Find the certificates for a report: given files, the extended report, a directory, or KDS.

The order is fixed and explicit — files the caller named, then the certificates the
host attached to the extended report, then a certificate directory, then the KDS cache
(and KDS itself unless offline).  Wherever they come from, ``verify`` still checks the
ARK against the pinned fingerprint, so a planted file cannot widen trust.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..snp.amd_certs import common_name, load_certificate, load_certificates, load_crl, vek_extensions
from ..snp.errors import SnpError
from ..snp.report import AttestationReport, SigningKey
from ..snp.tcb import Product
from ..snp.verify import Collateral
from .kds_cache import KdsClient


@dataclass
class CollateralSources:
    vek: bytes | None = None
    ask: bytes | None = None
    ark: bytes | None = None
    crl: bytes | None = None
    certs_dir: str | None = None
    extended: Mapping[str, bytes] | None = None  # parsed certificate table of an extended report
    kds: KdsClient | None = None
    product: Product | None = None
    fetch_crl: bool = False


def _read_dir(directory: str, names: tuple[str, ...]) -> tuple[bytes, str] | None:
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                return handle.read(), path
    return None


def _decide_product(report: AttestationReport, sources: CollateralSources, vek: Any) -> Product:
    if report.product_from_cpuid is not None:
        return report.product_from_cpuid
    if sources.product is not None:
        return sources.product
    if vek is not None:
        line = vek_extensions(vek).product_line
        if line:
            return Product.parse(line, field="vek.productName")
    raise SnpError("cannot tell the product of a version-2 report without a VCEK; give the product",
                   field="product")


def resolve_collateral(report: AttestationReport, sources: CollateralSources) -> Collateral:
    vlek = report.signing_key is SigningKey.VLEK
    leaf_name, mid_name = ("vlek", "asvk") if vlek else ("vcek", "ask")
    vek = ask = ark = crl = None
    if sources.vek is not None:
        vek = load_certificate(sources.vek, field=leaf_name)
    if sources.ask is not None:
        ask = load_certificate(sources.ask, field=mid_name)
    if sources.ark is not None:
        ark = load_certificate(sources.ark, field="ark")
    if sources.crl is not None:
        crl = load_crl(sources.crl)
    extended = sources.extended or {}
    if vek is None and leaf_name in extended:
        vek = load_certificate(extended[leaf_name], field=f"certs.{leaf_name}")
    if ask is None and "ask" in extended:
        ask = load_certificate(extended["ask"], field="certs.ask")
    if ark is None and "ark" in extended:
        ark = load_certificate(extended["ark"], field="certs.ark")
    if sources.certs_dir:
        directory = sources.certs_dir
        if not os.path.isdir(directory):
            raise SnpError("is not a directory", field="certs_dir", path=directory)
        if vek is None:
            found = _read_dir(directory, (f"{leaf_name}.der", f"{leaf_name}.pem", f"{leaf_name}.crt"))
            if found:
                vek = load_certificate(found[0], field=leaf_name, path=found[1])
        if ask is None:
            found = _read_dir(directory, (f"{mid_name}.pem", f"{mid_name}.der", f"{mid_name}.crt"))
            if found:
                ask = load_certificate(found[0], field=mid_name, path=found[1])
        if ark is None:
            found = _read_dir(directory, ("ark.pem", "ark.der", "ark.crt"))
            if found:
                ark = load_certificate(found[0], field="ark", path=found[1])
        if ask is None or ark is None:
            found = _read_dir(directory, ("cert_chain.pem",))
            if found:
                certs = load_certificates(found[0], field="cert_chain", path=found[1])
                for cert in certs:
                    cn = common_name(cert.subject)
                    if cn.startswith("ARK-") and ark is None:
                        ark = cert
                    elif cn.startswith("SEV-") and ask is None:
                        ask = cert
        if crl is None:
            found = _read_dir(directory, ("crl.der", "crl.pem"))
            if found:
                crl = load_crl(found[0], path=found[1])
    if sources.kds is not None and (vek is None or ask is None or ark is None or (crl is None and sources.fetch_crl)):
        product = _decide_product(report, sources, vek)
        if vek is None:
            if vlek:
                raise SnpError("VLEK certificates are not public on KDS; supply the VLEK (extended report or file)",
                               field="vlek")
            vek = sources.kds.vcek(product, report)
        if ask is None or ark is None:
            kds_ask, kds_ark = sources.kds.chain(product, vlek)
            ask = ask or kds_ask
            ark = ark or kds_ark
        if crl is None and sources.fetch_crl:
            crl = sources.kds.crl(product, vlek)
    return Collateral(vek=vek, ask=ask, ark=ark, crl=crl)
