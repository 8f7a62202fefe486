# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""TLS material generated on first start: a private CA and a server certificate it signs.

Clients pin the CA (its SHA-256 is published at ``/v1/public/info`` and printed by
``snpguard server init``), so the server certificate can be reissued — when the
configured names or IPs change, or it nears expiry — without clients noticing.
Keys are ECDSA P-256 and written 0600 through a temp file and a rename.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass

from ..plugins.module_utils.common.fileio import atomic_write
from ..plugins.module_utils.snp.crypto_guard import ec, hashes, serialization, x509
from ..plugins.module_utils.snp.errors import SnpError

CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class TlsFiles:
    cert: str  # server certificate followed by the CA
    key: str
    ca: str | None  # None when the operator supplied the certificate


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _write_key(path: str, key: object) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                            serialization.NoEncryption())
    atomic_write(path, pem, mode=0o600)


def _load_key(path: str) -> object:
    with open(path, "rb") as handle:
        return serialization.load_pem_private_key(handle.read(), None)


def _names(names: list[str], ips: list[str]) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    dns = list(dict.fromkeys(names or ["localhost", socket.gethostname()]))
    try:
        addrs = [ipaddress.ip_address(ip) for ip in (ips or ["127.0.0.1", "::1"])]
    except ValueError as exc:
        raise SnpError(str(exc), field="tls_ips") from exc
    return dns, list(dict.fromkeys(addrs))


def _make_ca(tls_dir: str) -> tuple[object, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"snpguard server CA ({socket.gethostname()})")])
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(os.path.join(tls_dir, "ca.key"), key)
    atomic_write(os.path.join(tls_dir, "ca.pem"), cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _server_cert_current(path: str, ca: x509.Certificate, dns: list[str], ips: list[object]) -> bool:
    if not os.path.exists(path):
        return False
    with open(path, "rb") as handle:
        certs = x509.load_pem_x509_certificates(handle.read())
    cert = certs[0]
    if cert.issuer != ca.subject or cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return (sorted(san.get_values_for_type(x509.DNSName)) == sorted(dns)
            and sorted(map(str, san.get_values_for_type(x509.IPAddress))) == sorted(map(str, ips)))


def ensure_tls(tls_dir: str, names: list[str], ips: list[str]) -> TlsFiles:
    """Create the CA once, and (re)issue the server certificate when names, IPs or expiry call for it."""
    os.makedirs(tls_dir, mode=0o700, exist_ok=True)
    ca_key_path, ca_path = os.path.join(tls_dir, "ca.key"), os.path.join(tls_dir, "ca.pem")
    if os.path.exists(ca_key_path) and os.path.exists(ca_path):
        ca_key = _load_key(ca_key_path)
        with open(ca_path, "rb") as handle:
            ca = x509.load_pem_x509_certificate(handle.read())
    else:
        ca_key, ca = _make_ca(tls_dir)
    dns, addrs = _names(names, ips)
    cert_path, key_path = os.path.join(tls_dir, "server.pem"), os.path.join(tls_dir, "server.key")
    if not (_server_cert_current(cert_path, ca, dns, addrs) and os.path.exists(key_path)):
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns] + [x509.IPAddress(a) for a in addrs]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, dns[0])]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(min(now + datetime.timedelta(days=SERVER_DAYS), ca.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        _write_key(key_path, key)
        pem = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
        atomic_write(cert_path, pem)
    return TlsFiles(cert=cert_path, key=key_path, ca=ca_path)


def ca_fingerprint(files: TlsFiles) -> str | None:
    """SHA-256 (hex) of the certificate clients should pin: our CA, or the last one the operator gave."""
    path = files.ca or files.cert
    try:
        with open(path, "rb") as handle:
            certs = x509.load_pem_x509_certificates(handle.read())
    except (OSError, ValueError):
        return None
    return certs[-1].fingerprint(hashes.SHA256()).hex() if certs else None
