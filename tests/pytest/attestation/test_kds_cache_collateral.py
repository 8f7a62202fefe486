# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The KDS client and the collateral resolver, with a dictionary standing in for AMD's KDS.

* ``KdsClient`` asks for exactly the URLs KDS serves (Turin: the 8-byte hwID and fmcSPL),
  writes its cache and reads it back without fetching again, and turns offline misses
  and fetch failures into ``SnpError`` naming ``kds``;
* ``resolve_collateral`` takes explicit files first, then the extended report's
  certificate table, then a certificate directory (also ``cert_chain.pem``), then KDS;
  a VLEK report without its VLEK is an error.

The simulated AMD-SP provides the chains (RSA-2048, made once per module); one test
replays the real Turin report and KDS URL from ../shared/vectors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from attestation_vectors import clock, entry, read
from cryptography.hazmat.primitives.serialization import Encoding
from simulated_chains import chain_fixture

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.collateral import (
    CollateralSources,
    resolve_collateral,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.kds_cache import KdsClient, cache_path
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.amd_certs import fingerprint
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.attest import attest
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.cert_table import build_cert_table, parse_cert_table
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.kds import chain_url, crl_url, vcek_url
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.report import parse_report
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import ReportFields, SimulatedAmdSp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.verify import TrustSettings

KDS = "https://kdsintf.amd.com"
DER, PEM = Encoding.DER, Encoding.PEM


class FakeKds:
    """``fetch`` over a dictionary, recording every URL asked for."""

    def __init__(self, served: dict[str, bytes]) -> None:
        self.served = served
        self.requests: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.requests.append(url)
        return self.served[url]  # KeyError for anything KDS would 404


def _served(sim: SimulatedAmdSp, vcek: Any = None, *, crl: Any = None) -> dict[str, bytes]:
    tcb = sim.tcb
    query = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    if sim.product is Product.TURIN:
        url = f"{KDS}/vcek/v1/Turin/{sim.chip_id[:8].hex()}?fmcSPL={tcb.fmc}&{query}"
    else:
        url = f"{KDS}/vcek/v1/{sim.product.value}/{sim.chip_id.hex()}?{query}"
    return {
        url: (vcek or sim.vcek).public_bytes(DER),
        f"{KDS}/vcek/v1/{sim.product.value}/cert_chain": sim.ask.public_bytes(PEM) + sim.ark.public_bytes(PEM),
        f"{KDS}/vcek/v1/{sim.product.value}/crl": (crl or sim.crl()).public_bytes(DER),
    }


milan = chain_fixture(Product.MILAN)
turin = chain_fixture(Product.TURIN)


@pytest.fixture(scope="module")
def others(milan: SimulatedAmdSp) -> list[SimulatedAmdSp]:
    """Three more Milan chains for the same chip: distinguishable stand-ins for each source."""
    return [SimulatedAmdSp.create(Product.MILAN, chip_id=milan.chip_id, tcb=milan.tcb, rsa_bits=1024)
            for _index in range(3)]


# -- KdsClient -----------------------------------------------------------------------------------


@pytest.mark.parametrize("product", ["milan", "turin"])
def test_requests_the_kds_urls(request: pytest.FixtureRequest, product: str) -> None:
    sim: SimulatedAmdSp = request.getfixturevalue(product)
    served = _served(sim)
    fetch = FakeKds(served)
    report = parse_report(sim.report())
    collateral = resolve_collateral(report, CollateralSources(kds=KdsClient(fetch=fetch), fetch_crl=True))
    assert fetch.requests == list(served)  # VCEK, cert_chain, CRL: nothing else
    assert (collateral.vek, collateral.ask, collateral.ark) == (sim.vcek, sim.ask, sim.ark)
    assert attest(report, collateral, TrustSettings(simulated_roots=(sim.ark,), require_crl=True)).ok
    if sim.product is Product.TURIN:
        assert sim.chip_id.hex() not in fetch.requests[0]  # KDS 404s the 64-byte ID on Turin
        assert "fmcSPL=0&" in fetch.requests[0]


def test_vcek_url_needs_a_chip_id(milan: SimulatedAmdSp) -> None:
    report = parse_report(milan.report(chip_id=bytes(64)))  # MASK_CHIP_ID: CHIP_ID all zero
    with pytest.raises(SnpError) as info:
        KdsClient(fetch=FakeKds({})).vcek(Product.MILAN, report)
    assert info.value.field == "report.chip_id"


def test_vlek_urls() -> None:
    assert chain_url(Product.GENOA, vlek=True) == f"{KDS}/vlek/v1/Genoa/cert_chain"
    assert crl_url(Product.TURIN, vlek=True) == f"{KDS}/vlek/v1/Turin/crl"
    assert crl_url(Product.MILAN) == f"{KDS}/vcek/v1/Milan/crl"


def _key(url: str) -> tuple[str, frozenset[tuple[str, int]]]:
    """KDS's view of a URL: the path (hex in any case) and the SPL values in any order."""
    parts = urlsplit(url)
    return parts.path.lower(), frozenset((k, int(v)) for k, v in parse_qsl(parts.query))


def test_real_turin_report_through_kds(vectors: Path) -> None:
    """Oak's Turin report: the URL Oak fetched its VCEK from, then a complete verification."""
    report_entry, url_entry = entry("turin_v5_oak_3f44a09b"), entry("kds_url_2d865565")
    served = {_key(url_entry["url"]): read(report_entry["files"]["vek"]),
              _key(f"{KDS}/vcek/v1/Turin/cert_chain"): read("attestation/kds_cert_chain/turin_vcek_cert_chain.pem")}
    asked: list[str] = []

    def fetch(url: str) -> bytes:
        asked.append(url)
        return served[_key(url)]

    report = parse_report(read(report_entry["files"]["report"]))
    collateral = resolve_collateral(report, CollateralSources(kds=KdsClient(fetch=fetch)))
    assert len(asked) == 2 and _key(asked[0]) == _key(url_entry["url"])
    assert asked[0] == vcek_url(Product.TURIN, report.chip_id, report.tcb("reported", Product.TURIN))
    result = attest(report, collateral, TrustSettings(now=clock(report_entry)), expected_product=Product.TURIN)
    assert result.ok


def test_cache_written_and_reused(milan: SimulatedAmdSp, tmp_path: Path) -> None:
    served = _served(milan)
    fetch = FakeKds(served)
    report = parse_report(milan.report())
    client = KdsClient(fetch=fetch, cache_dir=str(tmp_path))
    first = (client.vcek(Product.MILAN, report), client.chain(Product.MILAN), client.crl(Product.MILAN))
    assert fetch.requests == list(served)
    for url, body in served.items():
        path = cache_path(str(tmp_path), url)
        assert path.startswith(str(tmp_path / "vcek" / "v1" / "Milan")) and Path(path).read_bytes() == body
    assert os.path.basename(cache_path(str(tmp_path), next(iter(served)))) == (
        f"{milan.chip_id.hex()}@blSPL=9&teeSPL=0&snpSPL=23&ucodeSPL=72")
    # the same client, and a fresh one on the same cache, never fetch again
    again = (client.vcek(Product.MILAN, report), client.chain(Product.MILAN), client.crl(Product.MILAN))
    fresh = KdsClient(fetch=fetch, cache_dir=str(tmp_path))
    third = (fresh.vcek(Product.MILAN, report), fresh.chain(Product.MILAN), fresh.crl(Product.MILAN))
    assert first == again == third
    assert len(fetch.requests) == 3
    # offline: served from the cache alone
    offline = KdsClient(fetch=None, cache_dir=str(tmp_path), offline=True)
    assert offline.vcek(Product.MILAN, report) == milan.vcek


def test_offline_without_cache(milan: SimulatedAmdSp, tmp_path: Path) -> None:
    fetch = FakeKds(_served(milan))
    client = KdsClient(fetch=fetch, cache_dir=str(tmp_path), offline=True)
    report = parse_report(milan.report())
    for call in (lambda: client.vcek(Product.MILAN, report), lambda: client.chain(Product.MILAN),
                 lambda: client.crl(Product.MILAN)):
        with pytest.raises(SnpError, match="not cached and the verifier is offline") as info:
            call()
        assert info.value.field == "kds" and info.value.path.startswith(str(tmp_path))
    assert fetch.requests == []
    with pytest.raises(SnpError) as info:
        KdsClient().chain(Product.GENOA)  # no fetch function at all
    assert info.value.field == "kds"


@pytest.mark.parametrize("failure", [OSError("connection refused"), KeyError("404"), TimeoutError("slow")])
def test_fetch_failure(milan: SimulatedAmdSp, tmp_path: Path, failure: Exception) -> None:
    def fetch(url: str) -> bytes:
        raise failure

    with pytest.raises(SnpError) as info:
        KdsClient(fetch=fetch, cache_dir=str(tmp_path)).chain(Product.MILAN)
    assert info.value.field == "kds"
    assert f"{KDS}/vcek/v1/Milan/cert_chain" in str(info.value) and str(failure) in str(info.value)
    assert not any(tmp_path.rglob("cert_chain*"))  # nothing cached from a failure


def test_fetch_snp_error_passes_through(milan: SimulatedAmdSp) -> None:
    def fetch(url: str) -> bytes:
        raise SnpError("HTTP 429 from KDS", field="kds.http")

    with pytest.raises(SnpError) as info:
        KdsClient(fetch=fetch).crl(Product.MILAN)
    assert info.value.field == "kds.http"


def test_bad_bodies(milan: SimulatedAmdSp) -> None:
    served = _served(milan)
    urls = list(served)
    bad = {urls[0]: b"<html>not found</html>", urls[1]: milan.ask.public_bytes(PEM), urls[2]: b"junk"}
    client = KdsClient(fetch=FakeKds(bad))
    report = parse_report(milan.report())
    for call, field in ((lambda: client.vcek(Product.MILAN, report), "vcek"),
                        (lambda: client.chain(Product.MILAN), "cert_chain"),
                        (lambda: client.crl(Product.MILAN), "crl")):
        with pytest.raises(SnpError) as info:
            call()
        assert info.value.field == field


# -- resolve_collateral ------------------------------------------------------------------------


def _write_dir(directory: Path, sim: SimulatedAmdSp, *, leaf: str = "vcek", mid: str = "ask", vek: Any = None) -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{leaf}.der").write_bytes((vek or sim.vcek).public_bytes(DER))
    (directory / f"{mid}.pem").write_bytes(sim.ask.public_bytes(PEM))
    (directory / "ark.pem").write_bytes(sim.ark.public_bytes(PEM))
    (directory / "crl.der").write_bytes(sim.crl().public_bytes(DER))


def test_resolution_order(milan: SimulatedAmdSp, others: list[SimulatedAmdSp], tmp_path: Path) -> None:
    """Explicit files beat the extended report, which beats a certs dir, which beats KDS."""
    files, extended, directory = milan, others[0], others[1]
    kds = others[2]
    report = parse_report(milan.report())
    _write_dir(tmp_path / "certs", directory)
    table = parse_cert_table(build_cert_table({name: getattr(extended, name).public_bytes(DER)
                                               for name in ("vcek", "ask", "ark")}))
    sources = {
        "files": {"vek": files.vcek.public_bytes(PEM), "ask": files.ask.public_bytes(DER),
                  "ark": files.ark.public_bytes(PEM), "crl": files.crl().public_bytes(DER)},
        "extended": {"extended": table},
        "certs_dir": {"certs_dir": str(tmp_path / "certs")},
    }
    expected = [("files", files), ("extended", extended), ("certs_dir", directory)]
    for index, (name, owner) in enumerate(expected):
        given: dict[str, Any] = {}
        for later in list(sources)[index:]:
            given.update(sources[later])
        fetch = FakeKds(_served(kds))
        collateral = resolve_collateral(report, CollateralSources(**given, kds=KdsClient(fetch=fetch)))
        for role, cert in (("vek", owner.vcek), ("ask", owner.ask), ("ark", owner.ark)):
            assert fingerprint(getattr(collateral, role)) == fingerprint(cert), (name, role)
        assert fetch.requests == [], name  # KDS is the last resort
    fetch = FakeKds(_served(kds))
    collateral = resolve_collateral(report, CollateralSources(kds=KdsClient(fetch=fetch)))
    assert (collateral.vek, collateral.ask, collateral.ark, collateral.crl) == (kds.vcek, kds.ask, kds.ark, None)
    assert len(fetch.requests) == 2  # VCEK and chain; the CRL only on request (fetch_crl)


def test_resolution_fills_gaps_per_certificate(milan: SimulatedAmdSp, others: list[SimulatedAmdSp],
                                               tmp_path: Path) -> None:
    report = parse_report(milan.report())
    table = parse_cert_table(build_cert_table({"vcek": others[0].vcek.public_bytes(DER)}))
    fetch = FakeKds(_served(others[2]))
    collateral = resolve_collateral(report, CollateralSources(ark=milan.ark.public_bytes(PEM), extended=table,
                                                              kds=KdsClient(fetch=fetch), fetch_crl=True))
    assert collateral.ark == milan.ark and collateral.vek == others[0].vcek
    assert collateral.ask == others[2].ask  # only the ASK (and CRL) came from KDS
    assert [u.rsplit("/", 1)[-1] for u in fetch.requests] == ["cert_chain", "crl"]


def test_explicit_crl_beats_directory_and_kds(milan: SimulatedAmdSp, tmp_path: Path) -> None:
    _write_dir(tmp_path, milan)
    mine = milan.crl((4242,))
    fetch = FakeKds(_served(milan))
    collateral = resolve_collateral(parse_report(milan.report()), CollateralSources(
        crl=mine.public_bytes(PEM), certs_dir=str(tmp_path), kds=KdsClient(fetch=fetch), fetch_crl=True))
    assert collateral.crl == mine and fetch.requests == []
    collateral = resolve_collateral(parse_report(milan.report()), CollateralSources(certs_dir=str(tmp_path)))
    assert collateral.crl is not None and collateral.crl != mine


@pytest.mark.parametrize("vlek", [False, True], ids=["vcek", "vlek"])
def test_cert_chain_pem_in_certs_dir(milan: SimulatedAmdSp, tmp_path: Path, vlek: bool) -> None:
    if vlek:
        asvk, leaf, key = milan.vlek_chain()
        report = milan.sign(milan.encode_report(ReportFields(), signing_key=1), key)
        (tmp_path / "vlek.der").write_bytes(leaf.public_bytes(DER))
        intermediate = asvk
    else:
        report = milan.report()
        (tmp_path / "vcek.der").write_bytes(milan.vcek.public_bytes(DER))
        intermediate = milan.ask
    (tmp_path / "cert_chain.pem").write_bytes(intermediate.public_bytes(PEM) + milan.ark.public_bytes(PEM))
    parsed = parse_report(report)
    collateral = resolve_collateral(parsed, CollateralSources(certs_dir=str(tmp_path)))
    assert (collateral.ask, collateral.ark) == (intermediate, milan.ark)
    assert attest(parsed, collateral, TrustSettings(simulated_roots=(milan.ark,))).ok


def test_vlek_report_without_a_vlek(milan: SimulatedAmdSp, tmp_path: Path) -> None:
    _asvk, _vlek, key = milan.vlek_chain()
    report = parse_report(milan.sign(milan.encode_report(ReportFields(), signing_key=1), key))
    _write_dir(tmp_path, milan)  # a VCEK is there, but a VLEK report needs a VLEK
    fetch = FakeKds(_served(milan))
    with pytest.raises(SnpError, match="VLEK") as info:
        resolve_collateral(report, CollateralSources(certs_dir=str(tmp_path), kds=KdsClient(fetch=fetch)))
    assert info.value.field == "vlek"
    assert fetch.requests == []


def test_certs_dir_must_be_a_directory(milan: SimulatedAmdSp, tmp_path: Path) -> None:
    with pytest.raises(SnpError) as info:
        resolve_collateral(parse_report(milan.report()), CollateralSources(certs_dir=str(tmp_path / "missing")))
    assert info.value.field == "certs_dir"


def test_version_2_report_needs_a_product(milan: SimulatedAmdSp) -> None:
    report = parse_report(milan.report(version=2))  # no CPUID: the product is not in the report
    fetch = FakeKds(_served(milan))
    with pytest.raises(SnpError) as info:
        resolve_collateral(report, CollateralSources(kds=KdsClient(fetch=fetch)))
    assert info.value.field == "product" and fetch.requests == []
    collateral = resolve_collateral(report, CollateralSources(kds=KdsClient(fetch=fetch), product=Product.MILAN))
    assert collateral.vek == milan.vcek
    # with the VCEK at hand its productName decides, and only the chain is fetched
    fetch = FakeKds(_served(milan))
    collateral = resolve_collateral(report, CollateralSources(vek=milan.vcek.public_bytes(DER),
                                                              kds=KdsClient(fetch=fetch)))
    assert collateral.ask == milan.ask and [u.rsplit("/", 1)[-1] for u in fetch.requests] == ["cert_chain"]
