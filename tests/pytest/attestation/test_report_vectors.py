# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Report parsing and verification against every attestation vector in ../shared/vectors.

* every ``attestation_report`` entry: each field of ``decoded`` equals the parser's output,
  and its CPUID product is ``product_from_cpuid``'s;
* every report with a VCEK/VLEK verifies completely with ``attest`` from its own files at a
  fixed clock inside the VEK's validity, and is refused with another product's chain and
  with another chip's VCEK; the bad-signature report is refused on its signature;
* AMD roots, KDS cert chains, CRLs, TCB encodings, KDS URLs, malformed reports, the
  upstream mutation recipes and the synthetic (non-AMD) VCEKs, each as the manifest states.

Counts are asserted, so a shrunk manifest fails instead of passing with fewer checks.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from attestation_vectors import (
    PRODUCTS,
    PROVISIONAL,
    VECTORS_DIR,
    cert,
    clock,
    collateral,
    entries,
    entry,
    expectations,
    ids,
    needs_provisional,
    read,
    roots,
    trust,
    verifies,
)
from cryptography.hazmat.primitives.serialization import Encoding

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.amd_certs import (
    PINNED_ARK_SHA256,
    common_name,
    fingerprint,
    load_certificate,
    load_certificates,
    load_crl,
    vek_extensions,
    verify_amd_signature,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.attest import attest
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.checks import VerificationError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import FormatError, SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.kds import chain_url, crl_url, vcek_url
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.report import SIGNED_SIZE, parse_report
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product, TcbVersion, product_from_cpuid
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.validate import Expectations
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.verify import Collateral

# README: 41 reports = 36 that verify + 1 bad signature + 4 parse-only.
EXPECTED_KINDS = {
    "attestation_report": 41,
    "amd_root_cert": 9,
    "kds_cert_chain": 6,
    "amd_kds_crl": 2,
    "vek_cert_synthetic": 2,
    "attestation_report_malformed": 2,
    "mutation_negative_recipes": 1,
    "kds_vcek_url": 6,
}
VERIFYING = ids("attestation_report", where=verifies)
WITH_VEK = ids("attestation_report", where=lambda e: "vek" in e["files"])
REPORTS = ids("attestation_report")


def _report(e: dict[str, Any]) -> bytes:
    return read(e["files"]["report"])


def _stated_file(e: dict[str, Any], name: str) -> bytes:
    """The entry's file ``name``, checked against the SHA-256 the manifest states for it."""
    data = read(e["files"][name])
    assert hashlib.sha256(data).hexdigest() == e["sha256"]
    return data


def _refused(report: bytes, coll: Collateral, e: dict[str, Any], **kwargs: Any) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        attest(report, coll, trust(e, **kwargs.pop("trust", {})), expectations(e), **kwargs)
    return info.value


def _failed(error: VerificationError) -> list[str]:
    return [r.name for r in error.results if r.failed]


def test_manifest_counts(vectors: Path) -> None:
    counts = {kind: len(entries(kind)) for kind in EXPECTED_KINDS}
    assert counts == EXPECTED_KINDS
    reports = entries("attestation_report")
    assert len({e["id"] for e in reports}) == 41
    assert len(VERIFYING) == 36
    assert len([e for e in reports if e["expected"].get("report_signature_verifies") is False]) == 1
    assert len([e for e in reports if "vek" not in e["files"]]) == 4
    assert {e["signing_key"] for e in reports if "vek" in e["files"]} == {"VCEK", "VLEK"}


# -- every decoded field ---------------------------------------------------------------------


def _hexint(value: str) -> int:
    return int(value, 16)


def _unhex(value: str) -> bytes:
    return bytes.fromhex(value)


# decoded name -> (what the parser gives, how to read the manifest's value)
FIELDS: dict[str, tuple[Any, Any]] = {
    "version": (lambda r: r.version, int),
    "guest_svn": (lambda r: r.guest_svn, int),
    "policy": (lambda r: r.policy, _hexint),
    "family_id": (lambda r: r.family_id, _unhex),
    "image_id": (lambda r: r.image_id, _unhex),
    "vmpl": (lambda r: r.vmpl, int),
    "signature_algo": (lambda r: r.signature_algo, int),
    "current_tcb_raw": (lambda r: r.current_tcb_raw, _hexint),
    "platform_info": (lambda r: r.platform_info, _hexint),
    "key_info_raw": (lambda r: r.key_info, _hexint),
    "author_key_en": (lambda r: int(r.author_key_en), int),
    "mask_chip_key": (lambda r: int(r.mask_chip_key), int),
    "signing_key": (lambda r: r.signing_key_raw, int),
    "report_data": (lambda r: r.report_data, _unhex),
    "measurement": (lambda r: r.measurement, _unhex),
    "host_data": (lambda r: r.host_data, _unhex),
    "id_key_digest": (lambda r: r.id_key_digest, _unhex),
    "author_key_digest": (lambda r: r.author_key_digest, _unhex),
    "report_id": (lambda r: r.report_id, _unhex),
    "report_id_ma": (lambda r: r.report_id_ma, _unhex),
    "reported_tcb_raw": (lambda r: r.reported_tcb_raw, _hexint),
    "cpuid_fam_id": (lambda r: r.cpuid_family, int),
    "cpuid_mod_id": (lambda r: r.cpuid_model, int),
    "cpuid_step": (lambda r: r.cpuid_stepping, int),
    "chip_id": (lambda r: r.chip_id, _unhex),
    "committed_tcb_raw": (lambda r: r.committed_tcb_raw, _hexint),
    "current_build": (lambda r: r.current_version.build, int),
    "current_minor": (lambda r: r.current_version.minor, int),
    "current_major": (lambda r: r.current_version.major, int),
    "committed_build": (lambda r: r.committed_version.build, int),
    "committed_minor": (lambda r: r.committed_version.minor, int),
    "committed_major": (lambda r: r.committed_version.major, int),
    "launch_tcb_raw": (lambda r: r.launch_tcb_raw, _hexint),
    "launch_mit_vector": (lambda r: r.launch_mit_vector, _hexint),
    "current_mit_vector": (lambda r: r.current_mit_vector, _hexint),
    "signature_r_le": (lambda r: r.signature_r.to_bytes(72, "little"), _unhex),
    "signature_s_le": (lambda r: r.signature_s.to_bytes(72, "little"), _unhex),
    "sha384_signed_region": (lambda r: hashlib.sha384(r.signed_bytes).digest(), _unhex),
}
VERSIONED = {"cpuid_fam_id": 3, "cpuid_mod_id": 3, "cpuid_step": 3, "launch_mit_vector": 5, "current_mit_vector": 5}


@pytest.mark.parametrize("entry_id", REPORTS)
def test_every_decoded_field(vectors: Path, entry_id: str) -> None:
    e = entry(entry_id)
    data = _report(e)
    assert len(data) == e["size"] == 0x4A0
    assert hashlib.sha256(data).hexdigest() == e["sha256"]
    report = parse_report(data)
    decoded = e["decoded"]
    assert set(decoded) <= set(FIELDS), f"unmapped decoded fields {set(decoded) - set(FIELDS)}"
    for name, (getter, convert) in FIELDS.items():
        if name in decoded:
            assert getter(report) == convert(decoded[name]), name
        else:
            # Fields the version does not have are absent from the decode and None in the parser.
            assert report.version < VERSIONED[name], name
            assert getter(report) is None, name
    # The R/S fields are the raw bytes of the signature structure.
    assert report.signature[:72] == _unhex(decoded["signature_r_le"])
    assert report.signature[72:144] == _unhex(decoded["signature_s_le"])
    assert report.raw == data and report.signed_bytes == data[:SIGNED_SIZE]
    assert report.reserved_nonzero == ()


@pytest.mark.parametrize("entry_id", REPORTS)
def test_product_from_cpuid(vectors: Path, entry_id: str) -> None:
    e = entry(entry_id)
    report = parse_report(_report(e))
    wanted = e["product_from_cpuid"]
    assert report.product_from_cpuid is (PRODUCTS[wanted] if wanted else None)
    if report.cpuid_family is not None:
        assert product_from_cpuid(report.cpuid_family, report.cpuid_model) is report.product_from_cpuid
    if wanted and e["product"]:
        assert wanted == e["product"]


@pytest.mark.parametrize("entry_id", ids("attestation_report", where=lambda e: "vek_info" in e))
def test_vek_extensions_as_stated(vectors: Path, entry_id: str) -> None:
    e = entry(entry_id)
    stated = e["vek_info"]["amd_extensions"]
    ext = vek_extensions(cert(e["files"]["vek"]))
    assert ext.struct_version == stated["structVersion"]
    assert ext.product_name == stated["productName"]
    assert ext.csp_id == stated["cspID"]
    assert ext.hwid == (_unhex(stated["hwID"]) if stated["hwID"] else None)
    spl = {"bootloader": "blSPL", "tee": "teeSPL", "snp": "snpSPL", "microcode": "ucodeSPL", "fmc": "fmcSPL"}
    assert ext.spl == {ours: stated[theirs] for ours, theirs in spl.items() if stated[theirs] is not None}
    vek = cert(e["files"]["vek"])
    assert common_name(vek.subject) == e["vek_info"]["subject_cn"]
    assert common_name(vek.issuer) == e["vek_info"]["issuer_cn"]


# -- complete verification -------------------------------------------------------------------


def test_which_reports_need_provisional_firmware(vectors: Path) -> None:
    """Only these three have COMMITTED != CURRENT; every other report verifies without the allowance."""
    assert {e["id"] for e in entries("attestation_report") if verifies(e) and needs_provisional(e)} == PROVISIONAL


@pytest.mark.parametrize("entry_id", VERIFYING)
def test_verifies_completely(vectors: Path, entry_id: str) -> None:
    e = entry(entry_id)
    product = PRODUCTS[e["product"]]
    result = attest(_report(e), collateral(e), trust(e), expectations(e), expected_product=product)
    assert result.ok and result.product is product
    passed = {r.name for r in result.results if r.status == "pass"}
    assert {"report.reserved", "report.signature_algo", "report.key_info", "report.policy", "product",
            "ark.pinned", "ark.self_signed", "ask.subject", "ask.signed_by_ark", "vek.subject",
            "vek.signed_by_ask", "ark.validity", "ask.validity", "vek.validity", "vek.hwid", "vek.tcb",
            "report.signature", "policy.debug", "tcb.consistency"} <= passed
    assert ("firmware.committed" in passed) is not needs_provisional(e)
    ext = vek_extensions(cert(e["files"]["vek"]))
    assert (e["signing_key"] == "VLEK") is (ext.hwid is None)


@pytest.mark.parametrize("entry_id", sorted(PROVISIONAL))
def test_provisional_firmware_refused_unless_allowed(vectors: Path, entry_id: str) -> None:
    e = entry(entry_id)
    with pytest.raises(VerificationError) as info:
        attest(_report(e), collateral(e), trust(e), Expectations())
    assert info.value.check == "firmware.committed"
    assert info.value.expected["tcb"] != info.value.actual["tcb"]


def test_bad_signature_refused(vectors: Path) -> None:
    (e,) = [x for x in entries("attestation_report") if x["expected"].get("report_signature_verifies") is False]
    error = _refused(_report(e), collateral(e), e)
    assert error.check == "report.signature"
    assert _failed(error) == ["report.signature"]  # the chain itself is genuine
    assert "does not verify" in str(error)


@pytest.mark.parametrize(("entry_id", "other"), [(i, p) for i in WITH_VEK for p in sorted(PRODUCTS)
                                                 if i == "vectors-missing" or p != entry(i)["product"]])
def test_refused_with_another_products_chain(vectors: Path, entry_id: str, other: str) -> None:
    e = entry(entry_id)
    vlek = e["signing_key"] == "VLEK"
    ask, ark = roots(other, vlek=vlek)
    chain_checks = {"product", "ark.pinned", "ask.subject", "ask.signed_by_ark", "vek.subject", "vek.signed_by_ask"}
    # the report's own VEK under the other product's intermediate and root
    error = _refused(_report(e), collateral(e, ask=ask, ark=ark), e)
    assert error.check in chain_checks, error
    # only the other root
    error = _refused(_report(e), collateral(e, ark=ark), e)
    assert error.check in chain_checks, error
    # the right chain, but the caller expects the other product
    error = _refused(_report(e), collateral(e), e, expected_product=PRODUCTS[other])
    assert error.check == "product"
    assert error.expected == other


def _other_chip_vceks(e: dict[str, Any]) -> list[dict[str, Any]]:
    return [x for x in entries("attestation_report") if x["product"] == e["product"] and "vek" in x["files"]
            and x["signing_key"] == "VCEK" and x["decoded"]["chip_id"] != e["decoded"]["chip_id"]]


VCEK_REPORTS = ids("attestation_report", where=lambda e: verifies(e) and e["signing_key"] == "VCEK")


def test_every_vcek_report_but_turins_has_another_chip(vectors: Path) -> None:
    # The one Turin chip cannot lend another chip's VCEK; test_validation_refusals covers Turin hwIDs.
    assert [i for i in VCEK_REPORTS if not _other_chip_vceks(entry(i))] == ["turin_v5_oak_3f44a09b"]


@pytest.mark.parametrize("entry_id", [i for i in VCEK_REPORTS if i == "vectors-missing" or _other_chip_vceks(entry(i))])
def test_refused_with_another_chips_vcek(vectors: Path, entry_id: str) -> None:
    e = entry(entry_id)
    others = _other_chip_vceks(e)
    other = others[0]
    error = _refused(_report(e), collateral(e, vek=cert(other["files"]["vek"])), e,
                     trust={"now": max(clock(e), clock(other))})
    assert error.check == "vek.hwid"
    assert "report.signature" in _failed(error)


# -- AMD roots, KDS chains, CRLs ----------------------------------------------------------


def _not_signed_by_other_arks(signed: Any, product: str) -> None:
    for other in PRODUCTS:
        if other != product:
            with pytest.raises(SnpError, match="does not verify"):
                verify_amd_signature(signed, roots(other)[1], field="signed")


@pytest.mark.parametrize("entry_id", ids("amd_root_cert"))
def test_amd_root_certificates(vectors: Path, entry_id: str) -> None:
    e = entry(entry_id)
    der, pem = cert(e["files"]["der"]), cert(e["files"]["pem"])
    assert der == pem
    assert der.public_bytes(Encoding.DER) == read(e["files"]["der"])
    assert fingerprint(der) == e["sha256_der"]
    assert common_name(der.subject) == e["subject_cn"]
    assert common_name(der.issuer) == e["issuer_cn"]
    assert der.serial_number == int(e["serial"], 16)
    assert der.not_valid_before_utc == datetime.datetime.fromisoformat(e["not_before"])
    assert der.not_valid_after_utc == datetime.datetime.fromisoformat(e["not_after"])
    product = PRODUCTS[e["product"]]
    _ask, ark = roots(e["product"])
    verify_amd_signature(der, ark, field="cert")  # self-signed ARK, or ASK/ASVK signed by the ARK
    if e["role"] == "ARK":
        assert fingerprint(der) == PINNED_ARK_SHA256[product]
    else:
        assert fingerprint(der) not in PINNED_ARK_SHA256.values()
        with pytest.raises(SnpError):
            verify_amd_signature(der, der, field="cert")  # an intermediate is not self-signed
    _not_signed_by_other_arks(der, e["product"])


@pytest.mark.parametrize("entry_id", ids("kds_cert_chain"))
def test_kds_cert_chains(vectors: Path, entry_id: str) -> None:
    e = entry(entry_id)
    certs = load_certificates(_stated_file(e, "pem"), field="cert_chain")
    assert len(certs) == e["expected"]["certificates"] == 2
    assert [common_name(c.subject) for c in certs] == e["order"]
    verify_amd_signature(certs[0], certs[1], field="ask")
    verify_amd_signature(certs[1], certs[1], field="ark")
    assert fingerprint(certs[1]) == PINNED_ARK_SHA256[PRODUCTS[e["product"]]]
    vlek = e["order"][0].startswith("SEV-VLEK-")
    assert certs[0] == roots(e["product"], vlek=vlek)[0]
    kind = "vlek" if vlek else "vcek"
    assert chain_url(PRODUCTS[e["product"]], vlek) == f"https://kdsintf.amd.com/{kind}/v1/{e['product']}/cert_chain"


CRLS = ids("amd_kds_crl")


@pytest.mark.parametrize("entry_id", CRLS)
def test_crl_as_stated(vectors: Path, entry_id: str) -> None:
    e = entry(entry_id)
    crl = load_crl(read(e["files"]["der"]))
    assert load_crl(read(e["files"]["pem"])) == crl
    ark = cert(e["files"]["ark"])
    verify_amd_signature(crl, ark, field="crl")
    assert common_name(crl.issuer) == e["issuer_cn"]
    assert crl.last_update_utc == datetime.datetime.fromisoformat(e["this_update"])
    assert crl.next_update_utc == datetime.datetime.fromisoformat(e["next_update"])
    assert sorted((r.serial_number, r.revocation_date_utc) for r in crl) == sorted(
        (int(r["serial"], 16), datetime.datetime.fromisoformat(r["revocation_date"])) for r in e["revoked"])
    ask, _ark = roots(e["product"])
    assert (crl.get_revoked_certificate_by_serial_number(ask.serial_number) is not None) is e["expected"][
        "ask_serial_revoked"]
    _not_signed_by_other_arks(crl, e["product"])
    assert crl_url(PRODUCTS[e["product"]]) == f"https://kdsintf.amd.com/vcek/v1/{e['product']}/crl"


def test_genoa_crl_revokes_0x20001(vectors: Path) -> None:
    crl = load_crl(read(entry("crl-genoa-vcek")["files"]["der"]))
    assert [r.serial_number for r in crl] == [0x20001]
    assert [r.serial_number for r in load_crl(read(entry("crl-milan-vcek")["files"]["der"]))] == []


def _report_for_crl(crl: Any, product: str) -> dict[str, Any]:
    """A VCEK report of ``product`` whose VEK is valid from before the CRL's thisUpdate to after its nextUpdate."""
    for e in entries("attestation_report"):
        if verifies(e) and e["product"] == product and e["signing_key"] == "VCEK":
            vek, day = cert(e["files"]["vek"]), datetime.timedelta(days=1)
            valid = (vek.not_valid_before_utc, vek.not_valid_after_utc)
            if valid[0] < crl.last_update_utc - day < crl.next_update_utc + day < valid[1]:
                return e
    raise AssertionError(f"no {product} report valid at {crl.last_update_utc}")


@pytest.mark.parametrize("entry_id", CRLS)
def test_report_with_crl_fresh_and_stale(vectors: Path, entry_id: str) -> None:
    c = entry(entry_id)
    crl = load_crl(read(c["files"]["der"]))
    e = _report_for_crl(crl, c["product"])
    coll = collateral(e, crl=crl)
    fresh = crl.last_update_utc + datetime.timedelta(days=1)
    result = attest(_report(e), coll, trust(e, now=fresh, require_crl=True), expectations(e))
    passed = {r.name for r in result.results if r.status == "pass"}
    assert {"crl.issuer", "crl.signature", "crl.ask_not_revoked", "crl.vek_not_revoked", "crl.fresh"} <= passed
    after_next = crl.next_update_utc + datetime.timedelta(seconds=1)
    before_this = crl.last_update_utc - datetime.timedelta(days=1)
    for stale in (after_next, before_this):
        error = _refused(_report(e), coll, e, trust={"now": stale})
        assert error.check == "crl.fresh", error
        assert error.actual == stale.isoformat()
    # a CRL of another product line: not issued by this ARK
    other = next(x for x in CRLS if x != entry_id)
    error = _refused(_report(e), collateral(e, crl=load_crl(read(entry(other)["files"]["der"]))), e,
                     trust={"now": fresh})
    assert error.check == "crl.issuer"
    assert "crl.signature" in _failed(error)


# -- TCB encodings and KDS URLs ----------------------------------------------------------------

TCB_VECTORS = (json.loads((VECTORS_DIR / "tcb" / "tcb_vectors.json").read_text())["vectors"]
               if (VECTORS_DIR / "tcb" / "tcb_vectors.json").exists() else [])


def _tcb_ids(kind: str) -> list[str]:
    return [v["id"] for v in TCB_VECTORS if v["kind"] == kind] or ["vectors-missing"]


def _tcb_vector(vector_id: str) -> dict[str, Any]:
    (found,) = [v for v in TCB_VECTORS if v["id"] == vector_id]
    return found


def test_tcb_vector_counts(vectors: Path) -> None:
    counts: dict[str, int] = {}
    for v in TCB_VECTORS:
        counts[v["kind"]] = counts.get(v["kind"], 0) + 1
    assert counts == {"tcb_layout_description": 1, "tcb_encoding": 6, "tcb_encoding_real": 54, "kds_vcek_url": 6,
                      "tcb_formatting": 1}


def _components(decoded: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in decoded.items() if k in ("fmc", "bootloader", "tee", "snp", "microcode") and v is not None}


@pytest.mark.parametrize("vector_id", _tcb_ids("tcb_encoding"))
def test_tcb_encoding(vectors: Path, vector_id: str) -> None:
    v = _tcb_vector(vector_id)
    if "fields" in v:  # TCBs of a report (LIT); the manifest leaves the product open, the layout is Milan's
        report = parse_report(read(v["report"]))
        offsets = {"current_tcb (0x38)": "current", "reported_tcb (0x180)": "reported",
                   "committed_tcb (0x1E0)": "committed", "launch_tcb (0x1F0)": "launch"}
        assert set(v["fields"]) == set(offsets)
        for label, decoded in v["fields"].items():
            assert report.tcb(offsets[label], Product.MILAN).components() == _components(decoded), label
        return
    raw = _unhex(v["raw_bytes_le"])
    assert int.from_bytes(raw, "little") == _hexint(v["raw_u64"])
    per_product = v["decoded"] if "Milan" in v["decoded"] else {v["product"]: v["decoded"]}
    for name, decoded in per_product.items():
        product = PRODUCTS[name]
        tcb = TcbVersion.decode(raw, product)
        assert tcb.components() == _components(decoded), name
        assert TcbVersion.decode(_hexint(v["raw_u64"]), product) == tcb
        if tcb.reserved_bytes_zero(product):
            assert TcbVersion.from_components(product, **tcb.components()).raw == tcb.raw


@pytest.mark.parametrize("vector_id", _tcb_ids("tcb_encoding_real"))
def test_tcb_encoding_real(vectors: Path, vector_id: str) -> None:
    v = _tcb_vector(vector_id)
    product = PRODUCTS[v["product"]]
    assert v["layout"] == ("turin" if product is Product.TURIN else "legacy")
    raw = _hexint(v["raw_u64"])
    tcb = TcbVersion.decode(raw, product)
    assert tcb.components() == _components(v["decoded"])
    reserved = raw.to_bytes(8, "little")[4:7] if product is Product.TURIN else raw.to_bytes(8, "little")[2:6]
    assert reserved.hex() == v["decoded"].get("reserved_bytes_4_6", v["decoded"].get("reserved_bytes_2_5"))
    spl = v["vek_cert_spl_extensions"]
    assert v["expected"]["decoded_equals_vek_spl"] is True
    names = {"bootloader": "blSPL", "tee": "teeSPL", "snp": "snpSPL", "microcode": "ucodeSPL", "fmc": "fmcSPL"}
    assert tcb.components() == {ours: spl[theirs] for ours, theirs in names.items() if spl[theirs] is not None}
    assert TcbVersion.from_components(product, **tcb.components()).raw == raw
    if (VECTORS_DIR / v["report"]).exists():  # 18 of the 54 come from reports not in this set
        assert parse_report(read(v["report"])).reported_tcb_raw == raw


def _url_key(url: str) -> tuple[str, str, dict[str, int]]:
    """KDS URLs compare by path (hex case-insensitively) and query values as integers, in any order."""
    parts = urlsplit(url)
    return (f"{parts.scheme}://{parts.netloc}", parts.path.lower(), {k: int(v) for k, v in parse_qsl(parts.query)})


URLS = ids("kds_vcek_url")


def test_kds_url_links(vectors: Path) -> None:
    known = {e["id"] for e in entries("attestation_report")}
    dangling = {r for e in entries("kds_vcek_url") for r in e["linked_reports"] if r not in known}
    # The go-sev-guest report behind kds_url_3cc2c120 is not in the report set.
    assert dangling == {"milan_v2_gosevguest_377e6241"}


@pytest.mark.parametrize("entry_id", URLS)
def test_kds_vcek_url(vectors: Path, entry_id: str) -> None:
    e = entry(entry_id)
    url = e["url"]
    match = re.fullmatch(r"https://kdsintf\.amd\.com/vcek/v1/(\w+)/(\w+)(?:\?(.*))?", url)
    assert match, url
    product = PRODUCTS[match.group(1)]
    if match.group(2) == "cert_chain":
        assert chain_url(product) == url
        return
    linked = [r for r in e["linked_reports"] if (VECTORS_DIR / f"attestation/reports/{r}.bin").exists()]
    same_tcb = 0
    for report_id in linked:
        # Linked reports come from the same chip; only those at the URL's TCB give the whole URL.
        report = parse_report(read(f"attestation/reports/{report_id}.bin"))
        built = vcek_url(product, report.chip_id, report.tcb("reported", product))
        assert _url_key(built)[:2] == _url_key(url)[:2], report_id
        same_tcb += _url_key(built) == _url_key(url)
        assert re.search(r"/[0-9a-f]+\?", built), "hwID in lowercase hex"
    assert same_tcb or not linked
    if not linked:  # rebuild from the URL's own hwID and SPLs
        query = dict(_url_key(url)[2])
        names = {"blSPL": "bootloader", "teeSPL": "tee", "snpSPL": "snp", "ucodeSPL": "microcode", "fmcSPL": "fmc"}
        tcb = TcbVersion.from_components(product, **{names[k]: v for k, v in query.items()})
        hwid = _unhex(match.group(2))
        built = vcek_url(product, hwid + bytes(64 - len(hwid)), tcb)
        assert _url_key(built) == _url_key(url)
    if product is Product.TURIN:
        assert len(match.group(2)) == 16 and "fmcSPL" in url
    else:
        assert len(match.group(2)) == 128


# -- malformed reports, mutation recipes, synthetic VCEKs ---------------------------------------


@pytest.mark.parametrize("entry_id", ids("attestation_report_malformed"))
def test_malformed_report_refused(vectors: Path, entry_id: str) -> None:
    e = entry(entry_id)
    data = read(e["files"]["report"])
    assert len(data) == e["expected"]["size"]
    assert hashlib.sha256(data).hexdigest() == e["sha256"]
    with pytest.raises(FormatError, match=f"got {len(data)}") as info:
        parse_report(data)
    assert info.value.field == "report"
    with pytest.raises(FormatError):
        attest(data, Collateral())
    if len(data) > 0x4A0:  # truncating to 1184 bytes gives the upstream-asserted signed region
        stated = re.search(r"SHA-384 of bytes 0\.\.0x2A0 = ([0-9a-f]{96})", e["expected"]["parse_as_1184_byte_report"])
        assert stated
        assert hashlib.sha384(parse_report(data[:0x4A0]).signed_bytes).hexdigest() == stated.group(1)


def _apply(recipe: str, report: bytearray, vek_der: bytearray) -> None:
    match = re.fullmatch(r"(report|vcek_der)\[(\d+)\] (\^= 0x([0-9a-f]+)|\+= 1)(?: \(.*\))?", recipe)
    assert match, f"unknown mutation {recipe!r}"
    target = report if match.group(1) == "report" else vek_der
    index = int(match.group(2))
    if match.group(4):
        target[index] ^= int(match.group(4), 16)
    else:
        target[index] = (target[index] + 1) & 0xFF


EXPECTED_CHECK = {"report_signature_verifies": "report.signature", "vek_signed_by_ask": "vek.signed_by_ask",
                  "vek_tcb_matches_reported_tcb": "vek.tcb"}
# trustee's test-report.bin (milan_v2_trustee_7c614616) is not in the report set; its recipes
# are generic Milan-v2-VCEK mutations, applied here to virtee/sev's Milan v2 report instead.
SUBSTITUTE = {"milan_v2_trustee_7c614616": "milan_v2_virteesev_120d77b2"}


def _recipes() -> list[dict[str, Any]]:
    return [case for e in entries("mutation_negative_recipes") for case in e["cases"]]


def test_mutation_recipe_bases(vectors: Path) -> None:
    known = {e["id"] for e in entries("attestation_report")}
    cases = _recipes()
    assert len(cases) == 7
    assert {c["base"] for c in cases if c["base"] not in known} == set(SUBSTITUTE)
    assert set(SUBSTITUTE.values()) <= known


@pytest.mark.parametrize("index", range(7))
def test_mutation_recipe(vectors: Path, index: int) -> None:
    case = _recipes()[index]
    e = entry(SUBSTITUTE.get(case["base"], case["base"]))
    report = bytearray(_report(e))
    vek_der = bytearray(cert(e["files"]["vek"]).public_bytes(Encoding.DER))
    coll = collateral(e)
    if case["mutation"] == "verify VCEK against Milan ASVK instead of ASK":
        asvk, _ark = roots("Milan", vlek=True)
        with pytest.raises(SnpError, match="does not verify"):
            verify_amd_signature(cert(e["files"]["vek"]), asvk, field="vek")
        coll = collateral(e, ask=asvk)
    else:
        _apply(case["mutation"], report, vek_der)
        if case["mutation"].startswith("vcek_der"):
            mutated = load_certificate(bytes(vek_der), field="vek")  # "cert still parses"
            with pytest.raises(SnpError, match="does not verify"):
                verify_amd_signature(mutated, coll.ask, field="vek")
            coll = collateral(e, vek=mutated)
    ((key, value),) = case["expected"].items()
    assert value is False
    error = _refused(bytes(report), coll, e)
    assert EXPECTED_CHECK[key] in _failed(error), error
    if case["mutation"].startswith("verify VCEK against"):
        assert error.check == "ask.subject"  # the ASVK's name already says it is no ASK
    elif key == "report_signature_verifies" or case["mutation"].startswith("vcek_der"):
        assert _failed(error) == [EXPECTED_CHECK[key]]  # nothing else changed
    else:  # REPORTED_TCB is checked against the VCEK before the (also broken) signature
        assert error.check == "vek.tcb" and "report.signature" in _failed(error)


@pytest.mark.parametrize("entry_id", ids("vek_cert_synthetic"))
def test_synthetic_vcek(vectors: Path, entry_id: str) -> None:
    e = entry(entry_id)
    synthetic = load_certificate(_stated_file(e, "der"), field="vek")
    assert e["expected"]["parses"] is True
    assert vek_extensions(synthetic).hwid == bytes(range(64))  # "000102...3f", raw or in an OCTET STRING
    ask = cert(e["files"]["ask"])
    assert e["expected"]["signed_by_milan_ask_verifies"] is False
    with pytest.raises(SnpError) as info:
        verify_amd_signature(synthetic, ask, field="vek")
    assert info.value.field == "vek"
    # in a chain: a Milan report with the synthetic VCEK is refused before its signature counts
    report_entry = entry("milan_v2_virteesev_120d77b2")
    error = _refused(_report(report_entry), collateral(report_entry, vek=synthetic), report_entry,
                     trust={"now": max(clock(report_entry), synthetic.not_valid_before_utc)})
    assert error.check == "vek.signed_by_ask"
    assert {"vek.hwid", "report.signature"} <= set(_failed(error))
