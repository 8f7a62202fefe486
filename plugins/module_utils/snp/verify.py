# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Is this report genuine?  Report format, AMD certificate chain, CRL, and the report signature.

Whether a genuine report is *acceptable* (measurement, policy, TCB …) is ``validate``'s
job.  Trust starts at an ARK whose SHA-256 is pinned for the report's product, or at a
simulated root the caller passed explicitly; nothing else is ever trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import sev_keys
from .amd_certs import (
    PINNED_ARK_SHA256,
    check_validity,
    common_name,
    ensure_parses,
    fingerprint,
    identity,
    serial_number,
    utcnow,
    vek_extensions,
    verify_amd_signature,
)
from .checks import CheckList, CheckResult
from .errors import SnpError
from .report import AttestationReport, SigningKey
from .tcb import Product, TcbVersion


@dataclass(frozen=True)
class Collateral:
    """The certificates that vouch for one report (from KDS, a directory, or the extended report)."""

    vek: Any = None
    ask: Any = None  # the ASK for a VCEK, the ASVK for a VLEK
    ark: Any = None
    crl: Any = None


@dataclass(frozen=True)
class TrustSettings:
    """What to trust.  By default: AMD's pinned ARKs only, the real clock, CRL optional."""

    simulated_roots: tuple[Any, ...] = ()
    now: datetime | None = None
    require_crl: bool = False


def _report_format(report: AttestationReport, checks: CheckList) -> None:
    checks.check("report.reserved", not report.reserved_nonzero, "reserved bytes are zero",
                 expected="all zero", actual=list(report.reserved_nonzero) or "all zero")
    checks.check("report.signature_algo", report.signature_algo == sev_keys.ALGO_ECDSA_P384_SHA384,
                 "ECDSA P-384 with SHA-384", expected=1, actual=report.signature_algo)
    key_name = report.signing_key.name if report.signing_key else f"reserved signing key {report.signing_key_raw}"
    checks.check("report.key_info", report.key_info >> 5 == 0 and report.signing_key in
                 (SigningKey.VCEK, SigningKey.VLEK),
                 "signed by a VCEK or a VLEK, reserved key-info bits zero",
                 expected="VCEK or VLEK", actual=f"{key_name} (KEY_INFO 0x{report.key_info:x})")
    checks.attempt("report.policy", lambda: report.guest_policy and f"valid policy 0x{report.policy:x}")


# Products named by certificates, keyed by their identities (a pure function of the certificates).
_CERT_PRODUCTS: dict[tuple[bytes | None, ...], dict[str, Product]] = {}


def _certificate_products(collateral: Collateral) -> dict[str, Product]:
    """What the ASK and ARK subjects and the VEK productName say; raises ``SnpError`` if unknown."""
    key = tuple(identity(c) if c is not None else None for c in (collateral.ask, collateral.ark, collateral.vek))
    cached = _CERT_PRODUCTS.get(key)
    if cached is not None:
        return cached
    sources: dict[str, Product] = {}
    for name, cert in (("ASK", collateral.ask), ("ARK", collateral.ark)):
        if cert is not None:
            cn = common_name(cert.subject)
            try:
                sources[f"{name} {cn}"] = Product.parse(cn.rsplit("-", 1)[-1])
            except SnpError:
                raise SnpError(f"{name} subject {cn!r} names no known product", field="product") from None
    if collateral.vek is not None:
        line = vek_extensions(collateral.vek).product_line
        if line:
            try:
                sources[f"VEK productName {line}"] = Product.parse(line)
            except SnpError:
                raise SnpError(f"VEK productName {line!r} is unknown", field="product") from None
    if len(_CERT_PRODUCTS) >= _STATIC_MAX:
        _CERT_PRODUCTS.clear()
    _CERT_PRODUCTS[key] = sources
    return sources


def _product(report: AttestationReport, collateral: Collateral, checks: CheckList,
             expected: Product | None) -> Product | None:
    """The product from CPUID (v3+), checked against the certificates and the expectation."""
    sources: dict[str, Product] = {}
    cpuid_product = report.product_from_cpuid
    if cpuid_product is not None:
        sources["CPUID"] = cpuid_product
    elif report.cpuid_family is not None:
        checks.failed("product", "unknown CPU family/model in the report",
                      expected="Milan, Genoa or Turin", actual=f"family 0x{report.cpuid_family:x} "
                      f"model 0x{report.cpuid_model:x}")
        return None
    try:
        sources.update(_certificate_products(collateral))
    except SnpError as exc:
        checks.failed("product", exc.message)
        return None
    products = set(sources.values())
    if not products:
        checks.failed("product", "cannot tell the product: no CPUID in the report and no certificates")
        return None
    if len(products) > 1:
        checks.failed("product", "the report and its certificates disagree on the product",
                      expected="one product", actual={k: v.value for k, v in sources.items()})
        return None
    product = products.pop()
    if expected is not None and product is not expected:
        checks.failed("product", "not the expected product", expected=expected.value, actual=product.value)
        return None
    checks.passed("product", f"{product.value} (from {', '.join(sources)})")
    return product


# Results of the certificate-only checks (pinning, signatures, names, revocation), keyed by
# the identities of the certificates and settings they depend on.  Only all-pass results
# are kept, so a refusal is always recomputed.  Time-dependent checks are never cached.
_STATIC: dict[tuple[object, ...], list[CheckResult]] = {}
_STATIC_MAX = 1024


def _chain(report: AttestationReport, product: Product, collateral: Collateral, trust: TrustSettings,
           checks: CheckList) -> bool:
    now = trust.now or utcnow()
    ark, ask, vek, crl = collateral.ark, collateral.ask, collateral.vek, collateral.crl
    if ark is None or ask is None or vek is None:
        missing = [n for n, c in (("ARK", ark), ("ASK/ASVK", ask), ("VCEK/VLEK", vek)) if c is None]
        checks.failed("certs.present", "missing certificates: " + ", ".join(missing))
        return False
    checks.passed("certs.present", "ARK, ASK/ASVK and VCEK/VLEK present")
    vlek = report.signing_key is SigningKey.VLEK
    simulated = frozenset(identity(root) for root in trust.simulated_roots)
    key = (product, vlek, identity(ark), identity(ask), identity(vek), identity(crl) if crl is not None else None,
           simulated)
    static = _STATIC.get(key)
    if static is None:
        static_checks = CheckList()
        _static_chain(product, vlek, ark, ask, vek, crl, simulated, static_checks)
        static = static_checks.results
        if not static_checks.failures:
            if len(_STATIC) >= _STATIC_MAX:
                _STATIC.clear()
            _STATIC[key] = static
    checks.results.extend(static)
    ok = not any(result.failed for result in static)
    if not checks.ok("ark.pinned"):
        return False
    for name, cert in (("ark", ark), ("ask", ask), ("vek", vek)):
        ok &= checks.attempt(f"{name}.validity", lambda c=cert, n=name: check_validity(c, now, field=n))
    if crl is None:
        if trust.require_crl:
            checks.failed("crl", "a CRL is required and none was provided")
            ok = False
        else:
            checks.skipped("crl", "no CRL provided")
    else:
        next_update = crl.next_update_utc
        ok &= checks.check("crl.fresh", crl.last_update_utc <= now and (next_update is None or now <= next_update),
                           "current (this update <= now <= next update)",
                           expected=f"<= {next_update.isoformat() if next_update else 'none'}",
                           actual=now.isoformat())
    ok &= _vek_binding(report, product, vek, checks)
    return bool(ok)


def _static_chain(product: Product, vlek: bool, ark: Any, ask: Any, vek: Any, crl: Any,
                  simulated: frozenset[bytes], checks: CheckList) -> None:
    """Checks that depend only on the certificates (and CRL), not on the report or the clock."""
    ark_fp = fingerprint(ark)
    if ark_fp == PINNED_ARK_SHA256[product]:
        checks.passed("ark.pinned", f"AMD ARK-{product.value}", expected=PINNED_ARK_SHA256[product], actual=ark_fp)
    elif identity(ark) in simulated:
        checks.passed("ark.pinned", "SIMULATED root, trusted because it was configured explicitly", actual=ark_fp)
    else:
        checks.failed("ark.pinned", f"the ARK is not AMD's ARK-{product.value} and no simulated root matches it",
                      expected=PINNED_ARK_SHA256[product], actual=ark_fp)
        return
    checks.attempt("ark.self_signed", lambda: verify_amd_signature(ark, ark, field="ark"))
    want_ask = f"SEV-VLEK-{product.value}" if vlek else f"SEV-{product.value}"
    checks.check("ask.subject", common_name(ask.subject) == want_ask and ask.issuer == ark.subject,
                 "intermediate matches the signing key type and is issued by the ARK",
                 expected=want_ask, actual=common_name(ask.subject))
    checks.attempt("ask.signed_by_ark", lambda: verify_amd_signature(ask, ark, field="ask"))
    want_vek = "SEV-VLEK" if vlek else "SEV-VCEK"
    checks.check("vek.subject", common_name(vek.subject) == want_vek and vek.issuer == ask.subject,
                 "leaf matches the report's signing key and is issued by the intermediate",
                 expected=want_vek, actual=common_name(vek.subject))
    checks.attempt("vek.signed_by_ask", lambda: verify_amd_signature(vek, ask, field="vek"))
    if crl is None:
        return
    checks.check("crl.issuer", crl.issuer == ark.subject, "issued by the ARK",
                 expected=common_name(ark.subject), actual=common_name(crl.issuer))
    checks.attempt("crl.signature", lambda: verify_amd_signature(crl, ark, field="crl"))
    for name, cert in (("ask", ask), ("vek", vek)):
        serial = serial_number(cert)
        revoked = crl.get_revoked_certificate_by_serial_number(serial)
        checks.check(f"crl.{name}_not_revoked", revoked is None, f"{name.upper()} serial not revoked",
                     expected="not revoked", actual=f"revoked serial 0x{serial:x}"
                     if revoked is not None else "not revoked")


def _vek_binding(report: AttestationReport, product: Product, vek: Any, checks: CheckList) -> bool:
    """The VCEK/VLEK was issued for this chip and exactly this REPORTED_TCB."""
    try:
        ext = vek_extensions(vek)
    except SnpError as exc:
        checks.failed("vek.extensions", exc.message)
        return False
    ok = True
    if report.signing_key is SigningKey.VLEK:
        ok &= checks.check("vek.hwid", ext.hwid is None, "VLEK carries no chip id", expected=None, actual=ext.hwid)
    else:
        size = product.hwid_size
        tail_zero = not any(report.chip_id[size:])
        ok &= checks.check("vek.hwid", ext.hwid == report.chip_id[:size] and tail_zero,
                           f"VCEK hwID equals CHIP_ID[0:{size}]" + (", rest zero" if size < 64 else ""),
                           expected=report.chip_id[:size] if tail_zero else report.chip_id, actual=ext.hwid)
    reported = TcbVersion.decode(report.reported_tcb_raw, product)
    want = reported.components()
    got = {name: ext.spl.get(name) for name in want}
    ok &= checks.check("vek.tcb", got == want, "certificate SPLs equal REPORTED_TCB", expected=want, actual=got)
    ok &= checks.check("report.reported_tcb_reserved", reported.reserved_bytes_zero(product),
                       "reserved REPORTED_TCB bytes are zero", actual=f"0x{reported.raw:016x}")
    return bool(ok)


def verify_report(report: AttestationReport, collateral: Collateral, trust: TrustSettings, checks: CheckList,
                  expected_product: Product | None = None) -> Product | None:
    """Run every authenticity check into ``checks``; return the product when it could be decided."""
    _report_format(report, checks)
    for name in ("vek", "ask", "ark", "crl"):
        item = getattr(collateral, name)
        if item is not None:
            try:
                ensure_parses(item, field=name)
            except SnpError as exc:
                checks.failed("certs.parse", f"{name.upper()} {exc.message}")
                checks.skipped("report.signature", "the certificates do not parse")
                return None
    product = _product(report, collateral, checks, expected_product)
    if product is None:
        checks.skipped("report.signature", "product unknown")
        return None
    chain_ok = _chain(report, product, collateral, trust, checks)
    if collateral.vek is None:
        checks.skipped("report.signature", "no VCEK/VLEK")
        return product

    def signature() -> str:
        sev_keys.verify(collateral.vek.public_key(), report.signed_bytes, report.signature,
                        field="report.signature")
        return "verified with the VCEK/VLEK" + ("" if chain_ok else " (but its chain failed)")

    checks.attempt("report.signature", signature)
    return product
