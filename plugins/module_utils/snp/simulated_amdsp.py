# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""SIMULATED AMD-SP: a test certificate chain and a report signer, for machines without SEV-SNP.

Nothing here is AMD's.  The simulator makes an ARK and ASK (RSA-4096, RSASSA-PSS
SHA-384) and a VCEK (ECDSA P-384) with AMD's names and extensions, and signs reports
whose fields the caller chooses (normally a MEASUREMENT computed from what QEMU
launched).  Its ARK is not pinned, so every verifier refuses it unless the caller
passes it explicitly as a simulated root (``TrustSettings.simulated_roots``).
Organisation names say SIMULATED so that a certificate found in the wild is
recognisable.
"""

from __future__ import annotations

import datetime
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from . import sev_keys
from .amd_certs import (
    OID_CSP_ID,
    OID_HWID,
    OID_PRODUCT_NAME,
    OID_STRUCT_VERSION,
    SPL_OIDS,
    load_certificate,
    load_crl,
)
from .crypto_guard import ec, hashes, padding, rsa, serialization, x509
from .errors import SnpError
from .report import REPORT_SIZE, SIGNED_SIZE
from .tcb import Product, TcbVersion

SIMULATED_ORG = "SIMULATED AMD-SP (snpguard test chain, not AMD)"


def _pss() -> Any:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _name(cn: str) -> Any:
    oid = x509.NameOID
    return x509.Name([
        x509.NameAttribute(oid.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(oid.COUNTRY_NAME, "US"),
        x509.NameAttribute(oid.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(oid.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(oid.ORGANIZATION_NAME, SIMULATED_ORG),
        x509.NameAttribute(oid.COMMON_NAME, cn),
    ])


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return b"\x02" + bytes([len(body)]) + body


def _der_ia5(text: str) -> bytes:
    body = text.encode("ascii")
    return b"\x16" + bytes([len(body)]) + body


def _ext(oid: str, value: bytes) -> Any:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@dataclass
class ReportFields:
    """Fields of a report to sign; defaults describe a plain, non-debug guest on a committed platform."""

    measurement: bytes = bytes(48)
    report_data: bytes = bytes(64)
    host_data: bytes = bytes(32)
    policy: int = 0x30000
    version: int = 3
    guest_svn: int = 0
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    vmpl: int = 0
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    author_key_en: bool = False
    platform_info: int = 0x1
    report_id: bytes = field(default_factory=lambda: os.urandom(32))
    report_id_ma: bytes = b"\xff" * 32
    current_tcb: TcbVersion | None = None  # defaults to the simulator's TCB
    reported_tcb: TcbVersion | None = None
    committed_tcb: TcbVersion | None = None
    launch_tcb: TcbVersion | None = None
    firmware_version: tuple[int, int, int] = (1, 55, 21)  # major, minor, build
    launch_mit_vector: int = 0
    current_mit_vector: int = 0
    chip_id: bytes | None = None  # defaults to the simulator's chip id


class SimulatedAmdSp:
    """A simulated AMD-SP for one product and one chip: certificates plus report signing."""

    def __init__(self, product: Product, ark: Any, ark_key: Any, ask: Any, ask_key: Any, vcek: Any, vcek_key: Any,
                 chip_id: bytes, tcb: TcbVersion) -> None:
        self.product = product
        self.ark, self._ark_key = ark, ark_key
        self.ask, self._ask_key = ask, ask_key
        self.vcek, self._vcek_key = vcek, vcek_key
        self.chip_id = chip_id
        self.tcb = tcb

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def create(cls, product: Product = Product.MILAN, *, chip_id: bytes | None = None,
               tcb: TcbVersion | None = None, rsa_bits: int = 4096) -> SimulatedAmdSp:
        """A fresh chain.  RSA-4096 as AMD uses; tests may pass ``rsa_bits=2048`` for speed."""
        if chip_id is None:
            chip_id = os.urandom(8) + bytes(56) if product is Product.TURIN else os.urandom(64)
        if len(chip_id) != 64:
            raise SnpError("must be 64 bytes", field="chip_id")
        tcb = tcb or TcbVersion.from_components(product, bootloader=9, tee=0, snp=23, microcode=72,
                                                fmc=0 if product is Product.TURIN else None)
        now = _now()
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        ark = cls._ca_cert(f"ARK-{product.value}", ark_key.public_key(), f"ARK-{product.value}", ark_key, now, None)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        ask = cls._ca_cert(f"SEV-{product.value}", ask_key.public_key(), f"ARK-{product.value}", ark_key, now, 0)
        vcek_key = ec.generate_private_key(ec.SECP384R1())
        sim = cls(product, ark, ark_key, ask, ask_key, None, vcek_key, chip_id, tcb)
        sim.vcek = sim.issue_vcek(tcb)
        return sim

    @staticmethod
    def _ca_cert(cn: str, public_key: Any, issuer_cn: str, issuer_key: Any, now: datetime.datetime,
                 path_length: int | None) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(issuer_cn))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=25 * 365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        )
        return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=_pss())

    def issue_vcek(self, tcb: TcbVersion, *, not_before: datetime.datetime | None = None,
                   not_after: datetime.datetime | None = None, hwid: bytes | None = None) -> Any:
        """A VCEK for this chip at ``tcb`` (KDS issues one per TCB), signed by the ASK."""
        now = _now()
        struct_version = 1 if self.product is Product.TURIN else 0
        product_name = self.product.value if self.product is Product.TURIN else f"{self.product.value}-B0"
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("SEV-VCEK"))
            .issuer_name(self.ask.subject)
            .public_key(self._vcek_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(days=1))
            .not_valid_after(not_after or now + datetime.timedelta(days=7 * 365))
            .add_extension(_ext(OID_STRUCT_VERSION, _der_integer(struct_version)), critical=False)
            .add_extension(_ext(OID_PRODUCT_NAME, _der_ia5(product_name)), critical=False)
        )
        for name, value in tcb.components().items():
            builder = builder.add_extension(_ext(SPL_OIDS[name], _der_integer(value)), critical=False)
        raw_hwid = hwid if hwid is not None else self.chip_id[: self.product.hwid_size]
        builder = builder.add_extension(_ext(OID_HWID, raw_hwid), critical=False)
        return builder.sign(self._ask_key, hashes.SHA384(), rsa_padding=_pss())

    def vlek_chain(self, csp: str = "simulated-csp") -> tuple[Any, Any, Any]:
        """An ASVK and a VLEK (with its key), for VLEK-signed reports: (asvk, vlek, vlek_key)."""
        now = _now()
        asvk_key = rsa.generate_private_key(public_exponent=65537, key_size=self._ask_key.key_size)
        asvk = self._ca_cert(f"SEV-VLEK-{self.product.value}", asvk_key.public_key(), f"ARK-{self.product.value}",
                             self._ark_key, now, 0)
        vlek_key = ec.generate_private_key(ec.SECP384R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("SEV-VLEK"))
            .issuer_name(asvk.subject)
            .public_key(vlek_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(_ext(OID_STRUCT_VERSION, _der_integer(0)), critical=False)
            .add_extension(_ext(OID_PRODUCT_NAME, _der_ia5(self.product.value)), critical=False)
            .add_extension(_ext(OID_CSP_ID, _der_ia5(csp)), critical=False)
        )
        for name, value in self.tcb.components().items():
            builder = builder.add_extension(_ext(SPL_OIDS[name], _der_integer(value)), critical=False)
        return asvk, builder.sign(asvk_key, hashes.SHA384(), rsa_padding=_pss()), vlek_key

    def crl(self, revoked_serials: tuple[int, ...] = (), *, next_update: datetime.datetime | None = None,
            last_update: datetime.datetime | None = None) -> Any:
        """A CRL signed by the ARK, as KDS serves at /vcek/v1/<product>/crl."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.subject)
            .last_update(last_update or now - datetime.timedelta(days=1))
            .next_update(next_update or now + datetime.timedelta(days=30))
        )
        for serial in revoked_serials:
            revoked = x509.RevokedCertificateBuilder().serial_number(serial)
            revoked = revoked.revocation_date(now - datetime.timedelta(hours=1))
            builder = builder.add_revoked_certificate(revoked.build())
        return builder.sign(self._ark_key, hashes.SHA384(), rsa_padding=_pss())

    # -- reports ---------------------------------------------------------------------------
    def encode_report(self, fields: ReportFields, *, signing_key: int = 0) -> bytearray:
        """The 0x4A0-byte report with an all-zero signature (the caller may tamper before signing)."""
        names = ("current", "reported", "committed", "launch")
        tcbs = {name: getattr(fields, f"{name}_tcb") or self.tcb for name in names}
        chip_id = self.chip_id if fields.chip_id is None else fields.chip_id
        data = bytearray(REPORT_SIZE)
        key_info = int(fields.author_key_en) | (signing_key << 2)
        struct.pack_into("<IIQ16s16sIIQQI", data, 0, fields.version, fields.guest_svn, fields.policy,
                         fields.family_id, fields.image_id, fields.vmpl, 1, tcbs["current"].raw,
                         fields.platform_info, key_info)
        data[0x50:0x90] = fields.report_data
        data[0x90:0xC0] = fields.measurement
        data[0xC0:0xE0] = fields.host_data
        data[0xE0:0x110] = fields.id_key_digest
        data[0x110:0x140] = fields.author_key_digest
        data[0x140:0x160] = fields.report_id
        data[0x160:0x180] = fields.report_id_ma
        struct.pack_into("<Q", data, 0x180, tcbs["reported"].raw)
        if fields.version >= 3:
            family = {Product.MILAN: 0x19, Product.GENOA: 0x19, Product.TURIN: 0x1A}[self.product]
            model = {Product.MILAN: 0x01, Product.GENOA: 0x11, Product.TURIN: 0x02}[self.product]
            data[0x188:0x18B] = bytes([family, model, 1])
        data[0x1A0:0x1E0] = chip_id
        struct.pack_into("<Q", data, 0x1E0, tcbs["committed"].raw)
        major, minor, build = fields.firmware_version
        data[0x1E8:0x1EB] = bytes([build, minor, major])
        data[0x1EC:0x1EF] = bytes([build, minor, major])
        struct.pack_into("<Q", data, 0x1F0, tcbs["launch"].raw)
        if fields.version >= 5:
            struct.pack_into("<QQ", data, 0x1F8, fields.launch_mit_vector, fields.current_mit_vector)
        return data

    def sign(self, data: bytes | bytearray, key: Any = None) -> bytes:
        """Sign ``data[:0x2A0]`` with the VCEK (or ``key``) and store R and S at 0x2A0."""
        out = bytearray(data)
        out[SIGNED_SIZE:SIGNED_SIZE + 0x200] = sev_keys.sign(key or self._vcek_key, bytes(out[:SIGNED_SIZE]))
        return bytes(out)

    def report(self, fields: ReportFields | None = None, **overrides: Any) -> bytes:
        """A signed report: ``sim.report(measurement=..., report_data=...)``."""
        fields = fields or ReportFields()
        for name, value in overrides.items():
            if not hasattr(fields, name):
                raise SnpError(f"unknown report field {name!r}", field="report")
            setattr(fields, name, value)
        return self.sign(self.encode_report(fields))

    # -- persistence (files are the caller's: attestation/simulator_store.py) ----------------------
    #: The files of a saved simulator: public chain, private keys (secret), and the chip's facts.
    FILES = ("ark.pem", "ask.pem", "vcek.pem", "ark.key", "ask.key", "vcek.key", "simulated-amdsp.txt")
    SECRET_FILES = ("ark.key", "ask.key", "vcek.key")

    def to_files(self) -> dict[str, bytes]:
        """The chain (PEM), the private keys (PKCS#8 PEM) and the chip's facts, by file name."""
        pem = serialization.Encoding.PEM
        files = {f"{name}.pem": cert.public_bytes(pem)
                 for name, cert in (("ark", self.ark), ("ask", self.ask), ("vcek", self.vcek))}
        for name, key in (("ark", self._ark_key), ("ask", self._ask_key), ("vcek", self._vcek_key)):
            files[f"{name}.key"] = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())
        files["simulated-amdsp.txt"] = f"{self.product.value}\n{self.chip_id.hex()}\n{self.tcb.raw:016x}\n".encode()
        return files

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> SimulatedAmdSp:
        """The inverse of ``to_files``; a missing or malformed file is an error naming it."""
        missing = [name for name in cls.FILES if name not in files]
        if missing:
            raise SnpError(f"lacks {', '.join(missing)}", field="simulated_amdsp")
        try:
            product_text, chip_hex, tcb_hex = files["simulated-amdsp.txt"].decode().split()
            product = Product.parse(product_text)
            keys = [serialization.load_pem_private_key(files[f"{n}.key"], None) for n in ("ark", "ask", "vcek")]
        except (ValueError, UnicodeDecodeError) as exc:
            raise SnpError(f"is not a simulated AMD-SP: {exc}", field="simulated_amdsp") from exc
        certs = [load_certificate(files[f"{n}.pem"], field="simulated_amdsp") for n in ("ark", "ask", "vcek")]
        return cls(product, certs[0], keys[0], certs[1], keys[1], certs[2], keys[2], bytes.fromhex(chip_hex),
                   TcbVersion.decode(int(tcb_hex, 16), product))


__all__ = ["SIMULATED_ORG", "ReportFields", "SimulatedAmdSp", "load_crl"]
