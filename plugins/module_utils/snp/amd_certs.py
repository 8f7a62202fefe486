# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""AMD's SEV-SNP certificates: ARK → ASK/ASVK → VCEK/VLEK, their extensions, and the CRL.

Every AMD signature is RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt;
this module verifies exactly those parameters and nothing weaker.  The ARK is
trusted only if its SHA-256 fingerprint is pinned below (facts from AMD's KDS) or
it is a simulated root that the caller configured explicitly.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .crypto_guard import HAS_CRYPTOGRAPHY, crypto_exceptions, hashes, padding, serialization, x509
from .errors import SnpError
from .tcb import Product

#: SHA-256 of the DER ARK certificates AMD's KDS serves (cert_chain endpoints).
PINNED_ARK_SHA256: dict[Product, str] = {
    Product.MILAN: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    Product.GENOA: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    Product.TURIN: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}

OID_PREFIX = "1.3.6.1.4.1.3704.1."
OID_STRUCT_VERSION = OID_PREFIX + "1"
OID_PRODUCT_NAME = OID_PREFIX + "2"
OID_BL_SPL = OID_PREFIX + "3.1"
OID_TEE_SPL = OID_PREFIX + "3.2"
OID_SNP_SPL = OID_PREFIX + "3.3"
OID_UCODE_SPL = OID_PREFIX + "3.8"
OID_FMC_SPL = OID_PREFIX + "3.9"
OID_HWID = OID_PREFIX + "4"
OID_CSP_ID = OID_PREFIX + "5"
OID_RSASSA_PSS = "1.2.840.113549.1.1.10"

SPL_OIDS = {"bootloader": OID_BL_SPL, "tee": OID_TEE_SPL, "snp": OID_SNP_SPL, "microcode": OID_UCODE_SPL,
            "fmc": OID_FMC_SPL}


def _need_crypto() -> None:
    if not HAS_CRYPTOGRAPHY:
        raise SnpError("the Python 'cryptography' library is required to verify AMD certificates")


def _load(data: bytes, pem: Any, der: Any, what: str, field: str, path: str | None) -> Any:
    """PEM or DER by its first bytes; every cryptography parse error becomes an ``SnpError``.

    cryptography raises ValueError, InvalidVersion, … for bad input, and warns about
    AMD's VCEK serial 0: both are handled here once for certificates and CRLs.
    """
    _need_crypto()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pem(data) if data.lstrip().startswith(b"-----BEGIN") else der(data)
        except Exception as exc:  # any parse error of untrusted input
            raise SnpError(f"not {what}: {exc}", field=field, path=path) from exc


def load_certificate(data: bytes, *, field: str, path: str | None = None) -> Any:
    """Load one PEM or DER certificate."""
    return _load(data, x509.load_pem_x509_certificate, x509.load_der_x509_certificate, "an X.509 certificate",
                 field, path)


def load_certificates(data: bytes, *, field: str, path: str | None = None) -> list[Any]:
    """All certificates of a PEM bundle (KDS cert_chain: ASK/ASVK first, then ARK), or one DER."""
    if not data.lstrip().startswith(b"-----BEGIN"):
        return [load_certificate(data, field=field, path=path)]
    return _load(data, x509.load_pem_x509_certificates, None, "a PEM certificate bundle", field, path)


def load_crl(data: bytes, *, field: str = "crl", path: str | None = None) -> Any:
    """Load a PEM or DER CRL."""
    return _load(data, x509.load_pem_x509_crl, x509.load_der_x509_crl, "an X.509 CRL", field, path)


def serial_number(cert: Any) -> int:
    """The serial, read without cryptography's warning about AMD's VCEK serial 0 (pitfall P10)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return int(cert.serial_number)


# Identities of certificates and CRLs whose lazily parsed fields all decoded.
_PARSED: dict[bytes, bool] = {}


def ensure_parses(obj: Any, *, field: str) -> None:
    """Decode every field verification reads, so a malformed one is an ``SnpError`` here, not a crash later.

    cryptography parses names, keys, extensions and revocation entries lazily, on
    first access; a planted certificate could otherwise fail deep inside a check.
    """
    try:
        key = identity(obj)
        if key in _PARSED:
            return
        decoded = [obj.issuer, obj.signature_algorithm_oid, obj.signature_hash_algorithm, obj.signature]
        if hasattr(obj, "tbs_certlist_bytes"):
            decoded += [obj.tbs_certlist_bytes, obj.last_update_utc, obj.next_update_utc,
                        [revoked.serial_number for revoked in obj]]
        else:
            decoded += [obj.subject, obj.tbs_certificate_bytes, obj.public_key(), serial_number(obj),
                        obj.not_valid_before_utc, obj.not_valid_after_utc, list(obj.extensions)]
        del decoded
    except Exception as exc:  # any decoding error of a lazily parsed field
        raise SnpError(f"does not parse: {exc}", field=field) from exc
    if len(_PARSED) >= _VERIFIED_MAX:
        _PARSED.clear()
    _PARSED[key] = True


def fingerprint(cert: Any) -> str:
    """SHA-256 of the DER certificate, hex (what the ARK pins compare)."""
    return identity(cert).hex()


def common_name(name: Any) -> str:
    values = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def _pss() -> Any:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


# Signatures that verified, keyed by (SHA-256 of the signed object, SHA-256 of the issuer).
# A pure memo of a deterministic check: a warm cache makes the chain cost nothing, and
# a failure is never cached, so it is recomputed (and refused) every time.
_VERIFIED: dict[tuple[bytes, bytes], bool] = {}
_VERIFIED_MAX = 4096
_EXTENSIONS: dict[bytes, VekExtensions] = {}


# id() -> (object, SHA-256): the object is held so its id cannot be reused while cached.
_IDENTITIES: dict[int, tuple[Any, bytes]] = {}


def identity(obj: Any) -> bytes:
    """SHA-256 of a certificate's or CRL's DER encoding (memoised per object)."""
    cached = _IDENTITIES.get(id(obj))
    if cached is not None and cached[0] is obj:
        return cached[1]
    if hasattr(obj, "fingerprint"):
        digest = bytes(obj.fingerprint(hashes.SHA256()))
    else:
        digest = hashlib.sha256(obj.public_bytes(serialization.Encoding.DER)).digest()
    if len(_IDENTITIES) >= _VERIFIED_MAX:
        _IDENTITIES.clear()
    _IDENTITIES[id(obj)] = (obj, digest)
    return digest


def verify_amd_signature(signed: Any, issuer: Any, *, field: str) -> None:
    """Check an RSASSA-PSS/SHA-384/salt-48 signature on a certificate or CRL by ``issuer``."""
    key = (identity(signed), identity(issuer))
    if key in _VERIFIED:
        return
    _verify_amd_signature(signed, issuer, field=field)
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[key] = True


def _verify_amd_signature(signed: Any, issuer: Any, *, field: str) -> None:
    if signed.signature_algorithm_oid.dotted_string != OID_RSASSA_PSS:
        raise SnpError(f"signature algorithm is {signed.signature_algorithm_oid.dotted_string}, "
                       "expected RSASSA-PSS", field=field)
    algorithm = signed.signature_hash_algorithm
    if algorithm is None or algorithm.name != "sha384":
        raise SnpError("signature hash is not SHA-384", field=field)
    tbs = signed.tbs_certlist_bytes if hasattr(signed, "tbs_certlist_bytes") else signed.tbs_certificate_bytes
    try:
        issuer.public_key().verify(signed.signature, tbs, _pss(), hashes.SHA384())
    except crypto_exceptions.InvalidSignature as exc:
        raise SnpError(f"signature by {common_name(issuer.subject)!r} does not verify", field=field) from exc
    except (TypeError, AttributeError) as exc:
        raise SnpError(f"issuer {common_name(issuer.subject)!r} has no RSA key", field=field) from exc


def check_validity(cert: Any, now: datetime, *, field: str) -> None:
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    if now < not_before:
        raise SnpError(f"not valid before {not_before.isoformat()} (now {now.isoformat()})", field=field)
    if now > not_after:
        raise SnpError(f"expired at {not_after.isoformat()} (now {now.isoformat()})", field=field)


def utcnow() -> datetime:
    return datetime.now(UTC)


# -- DER values of AMD's extensions --------------------------------------------------------


def _der_value(raw: bytes, tag: int, *, field: str) -> bytes:
    if len(raw) < 2 or raw[0] != tag:
        raise SnpError(f"expected DER tag 0x{tag:02x}", field=field)
    length = raw[1]
    offset = 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 2 or len(raw) < 2 + count:
            raise SnpError("bad DER length", field=field)
        length = int.from_bytes(raw[2:2 + count], "big")
        offset = 2 + count
    if len(raw) != offset + length:
        raise SnpError("DER value length does not match the extension", field=field)
    return raw[offset:]


@dataclass(frozen=True)
class VekExtensions:
    """AMD's extensions of a VCEK or VLEK certificate."""

    struct_version: int | None
    product_name: str | None
    spl: dict[str, int]
    hwid: bytes | None
    csp_id: str | None

    @property
    def product_line(self) -> str | None:
        return self.product_name.split("-")[0] if self.product_name else None


def vek_extensions(cert: Any, *, field: str = "vek") -> VekExtensions:
    """AMD's extensions of ``cert`` (memoised per certificate fingerprint)."""
    key = identity(cert)
    cached = _EXTENSIONS.get(key)
    if cached is None:
        cached = _parse_vek_extensions(cert, field)
        if len(_EXTENSIONS) >= _VERIFIED_MAX:
            _EXTENSIONS.clear()
        _EXTENSIONS[key] = cached
    return cached


def _parse_vek_extensions(cert: Any, field: str) -> VekExtensions:
    raw: dict[str, bytes] = {}
    try:
        extensions = list(cert.extensions)
    except (ValueError, TypeError) as exc:  # cryptography parses extensions lazily
        raise SnpError(f"certificate extensions do not parse: {exc}", field=field) from exc
    for extension in extensions:
        oid = extension.oid.dotted_string
        if oid.startswith(OID_PREFIX):
            value = extension.value
            raw[oid] = bytes(value.value) if hasattr(value, "value") else value.public_bytes()

    def integer(oid: str) -> int | None:
        if oid not in raw:
            return None
        content = _der_value(raw[oid], 0x02, field=f"{field}.{oid}")
        if not content or content[0] & 0x80:
            raise SnpError("SPL must be a non-negative INTEGER", field=f"{field}.{oid}")
        return int.from_bytes(content, "big")

    def text(oid: str) -> str | None:
        if oid not in raw:
            return None
        return _der_value(raw[oid], 0x16, field=f"{field}.{oid}").decode("ascii", "replace")

    hwid = raw.get(OID_HWID)
    if hwid is not None and len(hwid) not in (8, 64):
        # Some issuers wrap hwID in an OCTET STRING; AMD's KDS sends the raw bytes.
        hwid = _der_value(hwid, 0x04, field=f"{field}.hwID")
    spl = {}
    for name, oid in SPL_OIDS.items():
        value = integer(oid)
        if value is not None:
            spl[name] = value
    return VekExtensions(integer(OID_STRUCT_VERSION), text(OID_PRODUCT_NAME), spl, hwid, text(OID_CSP_ID))
