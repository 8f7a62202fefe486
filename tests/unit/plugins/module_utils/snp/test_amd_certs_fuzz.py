# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""AMD certificate code on hostile input: the only exception that may come out is SnpError.

Certificates and CRLs reach the verifier from untrusted places (the host's certificate
table in an extended report, a certificate directory, a cache), so loading them, reading
AMD's extensions and running ``attest`` with them must refuse with an ``SnpError`` naming
the input, never crash with a ``cryptography`` exception.  Self-contained: the chain is
the simulated AMD-SP's, made once per module.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.amd_certs import (
    OID_CSP_ID,
    OID_HWID,
    OID_PREFIX,
    OID_PRODUCT_NAME,
    OID_STRUCT_VERSION,
    SPL_OIDS,
    load_certificate,
    load_certificates,
    load_crl,
    vek_extensions,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.attest import attest
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.crypto_guard import ec, hashes, serialization, x509
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import SimulatedAmdSp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.verify import Collateral, TrustSettings

DER = serialization.Encoding.DER
KEY = ec.generate_private_key(ec.SECP384R1())
NOW = datetime.datetime.now(datetime.UTC)
NAME = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "SEV-VCEK")])
AMD_OIDS = [OID_STRUCT_VERSION, OID_PRODUCT_NAME, *SPL_OIDS.values(), OID_HWID, OID_CSP_ID, OID_PREFIX + "3.4"]
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _only_snp_error(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except SnpError:
        return None


def _cert(extensions: dict[str, bytes]) -> Any:
    builder = (x509.CertificateBuilder().subject_name(NAME).issuer_name(NAME).public_key(KEY.public_key())
               .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1)))
    for oid, value in extensions.items():
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    return load_certificate(builder.sign(KEY, hashes.SHA384()).public_bytes(DER), field="vek")


# -- loading -----------------------------------------------------------------------------------


@given(st.binary(max_size=600))
def test_load_certificate_arbitrary_bytes(data: bytes) -> None:
    _only_snp_error(load_certificate, data, field="vek")
    _only_snp_error(load_certificates, data, field="cert_chain")


@given(st.binary(max_size=600))
def test_load_crl_arbitrary_bytes(data: bytes) -> None:
    _only_snp_error(load_crl, data)


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n-", max_size=400),
       st.sampled_from(["CERTIFICATE", "X509 CRL", "PRIVATE KEY"]))
def test_pem_garbage(body: str, label: str) -> None:
    data = f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode()
    _only_snp_error(load_certificate, data, field="vek")
    _only_snp_error(load_certificates, data, field="cert_chain")
    _only_snp_error(load_crl, data)


def test_errors_name_the_input() -> None:
    for call, field in ((lambda: load_certificate(b"junk", field="ask", path="/x/ask.pem"), "ask"),
                        (lambda: load_certificates(b"-----BEGIN CERTIFICATE-----\nAA\n", field="cert_chain"),
                         "cert_chain"),
                        (lambda: load_crl(b"junk", field="crl"), "crl")):
        with pytest.raises(SnpError) as info:
            call()
        assert info.value.field == field


def _with_version(der: bytes, marker: bytes) -> bytes:
    """``der`` with the version INTEGER after ``marker`` set to 37."""
    index = der.index(marker) + len(marker) - 1
    return der[:index] + b"\x25" + der[index + 1:]


def test_certificate_with_invalid_version() -> None:
    der = _cert({}).public_bytes(DER)
    with pytest.raises(SnpError) as info:  # cryptography raises x509.InvalidVersion, no ValueError
        load_certificate(_with_version(der, b"\xa0\x03\x02\x01\x02"), field="vek")
    assert info.value.field == "vek"


def test_crl_with_invalid_version(sim: SimulatedAmdSp) -> None:
    der = sim.crl().public_bytes(DER)
    with pytest.raises(SnpError) as info:
        load_crl(_with_version(der, b"\x02\x01\x01"))
    assert info.value.field == "crl"


# -- AMD's extensions ---------------------------------------------------------------------------


@given(st.dictionaries(st.sampled_from(AMD_OIDS), st.binary(max_size=80), max_size=6))
def test_vek_extensions_random_values(extensions: dict[str, bytes]) -> None:
    ext = _only_snp_error(vek_extensions, _cert(extensions))
    if ext is not None:
        assert all(isinstance(v, int) and v >= 0 for v in ext.spl.values())
        assert ext.hwid is None or isinstance(ext.hwid, bytes)


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return bytes([0x02, len(body)]) + body


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag, len(body)]) + body


@given(st.dictionaries(st.sampled_from(sorted(SPL_OIDS)), st.integers(0, 255), max_size=5),
       st.integers(0, 1), st.sampled_from(["Milan-B0", "Genoa-B1", "Turin", "Milan"]),
       st.binary(min_size=8, max_size=8) | st.binary(min_size=64, max_size=64), st.booleans())
def test_vek_extensions_well_formed(spl: dict[str, int], version: int, name: str, hwid: bytes, wrapped: bool) -> None:
    extensions = {SPL_OIDS[k]: _der_integer(v) for k, v in spl.items()}
    extensions[OID_STRUCT_VERSION] = _der_integer(version)
    extensions[OID_PRODUCT_NAME] = _der(0x16, name.encode())
    extensions[OID_HWID] = _der(0x04, hwid) if wrapped else hwid  # KDS: raw bytes; some issuers: OCTET STRING
    ext = vek_extensions(_cert(extensions))
    assert (ext.spl, ext.struct_version, ext.product_name, ext.hwid, ext.csp_id) == (spl, version, name, hwid, None)
    assert ext.product_line == name.split("-")[0]


@pytest.mark.parametrize(("oid", "value"), [(SPL_OIDS["snp"], b"\x02\x01\x80"), (SPL_OIDS["snp"], b"\x02\x00"),
                                            (SPL_OIDS["tee"], b"\x04\x01\x01"), (OID_PRODUCT_NAME, b"\x0c\x01A"),
                                            (OID_STRUCT_VERSION, b"\x02\x05\x00"), (OID_HWID, b"\x04\x05\x00")])
def test_vek_extensions_refusals(oid: str, value: bytes) -> None:
    with pytest.raises(SnpError) as info:
        vek_extensions(_cert({oid: value}))
    assert info.value.field is not None and info.value.field.startswith("vek")


@pytest.mark.parametrize("oid", ["2.5.29.19", "2.5.29.15", "2.5.29.31"])  # basicConstraints, keyUsage, CRL DP
def test_vek_extensions_malformed_standard_extension(oid: str) -> None:
    with pytest.raises(SnpError) as info:
        vek_extensions(_cert({oid: b"\xff\x00"}), field="certs.vcek")
    assert info.value.field == "certs.vcek"


# -- mutated certificates and CRLs all the way through attest ------------------------------------


@pytest.fixture(scope="module")
def sim() -> SimulatedAmdSp:
    return SimulatedAmdSp.create(Product.MILAN, rsa_bits=2048)


def _mutate(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in changes:
        out[position % len(out)] = value
    return bytes(out)


CHANGES = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=3)


def _signed_part(obj: Any) -> tuple[bytes, bytes]:
    tbs = obj.tbs_certlist_bytes if hasattr(obj, "tbs_certlist_bytes") else obj.tbs_certificate_bytes
    return tbs, obj.signature


def _attest_with(sim: SimulatedAmdSp, role: str, data: bytes) -> tuple[Any, bool]:
    loaded = (load_crl(data) if role == "crl" else load_certificate(data, field=role))
    collateral = dataclasses.replace(Collateral(vek=sim.vcek, ask=sim.ask, ark=sim.ark), **{role: loaded})
    result = attest(sim.report(), collateral, TrustSettings(simulated_roots=(sim.ark,)), raise_on_failure=False)
    assert all(r.status in ("pass", "fail", "skip") for r in result.results)
    return loaded, result.ok


@pytest.mark.parametrize("role", ["vek", "ask", "crl"])
@FUZZ
@given(changes=CHANGES)
def test_mutated_collateral_through_attest(sim: SimulatedAmdSp, role: str, changes: list[tuple[int, int]]) -> None:
    original = {"vek": sim.vcek, "ask": sim.ask, "crl": sim.crl()}[role]
    outcome = _only_snp_error(_attest_with, sim, role, _mutate(original.public_bytes(DER), changes))
    if outcome is not None and outcome[1]:  # accepted: only bytes outside the signed content changed
        assert _signed_part(outcome[0]) == _signed_part(original)


def test_unmutated_collateral_through_attest(sim: SimulatedAmdSp) -> None:
    for role, obj in (("vek", sim.vcek), ("ask", sim.ask), ("crl", sim.crl())):
        assert _attest_with(sim, role, obj.public_bytes(DER))[1], role
