# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard.cvm.snp_report_verify`` run for real by ansible-playbook on real AMD reports.

One playbook holds every case (each task ``ignore_errors`` and ``register``); its last
task writes all registered results as JSON, which the tests below read.  Certificates
come from the shared vectors in place; only the certificate directory and the KDS cache
are assembled in a temporary directory.  Every verification runs at a fixed
``verification_time`` inside the VCEK/VLEK's validity, because some of AMD's
certificates have expired since the reports were made.
"""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
from ansible_run import registered_task, run_playbook
from cryptography import x509

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.kds_cache import cache_path
from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.simulator_store import save_simulated_amdsp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.kds import chain_url, vcek_url
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.report import parse_report
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import SimulatedAmdSp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product

# One real report per product, report version and signing key (ids from MANIFEST.json).
REAL = {
    "milan_v2": "milan_v2_cmc_bdb449fd",
    "milan_v3": "milan_v3_oak_40a2778d",
    "genoa_v2": "genoa_v2_oak_a95b044f",
    "genoa_v3": "genoa_v3_trustee_18e907bf",
    "genoa_v5": "genoa_v5_oak_6d1ceffa",
    "turin_v5": "turin_v5_oak_3f44a09b",
    "milan_vlek": "milan_v2_trustee_affb92f9",
}
BADSIG = "milan_v2_cmc_917d4a10_badsig"
PROVISIONAL = "milan_v2_trustee_2e63568e"
CHAIN_CHECKS = {"ark.pinned", "ark.self_signed", "ask.subject", "ask.signed_by_ark", "vek.subject",
                "vek.signed_by_ask", "ark.validity", "ask.validity", "vek.validity", "vek.hwid", "vek.tcb",
                "report.signature", "tcb.consistency", "firmware.committed", "policy.debug", "signing_key"}


def manifest(vectors: Path) -> dict[str, dict[str, Any]]:
    entries = json.loads((vectors / "MANIFEST.json").read_text())
    return {e["id"]: e for e in entries if e["kind"] == "attestation_report"}


def inside_validity(vek: Path) -> str:
    """An ISO 8601 time one day after the VCEK/VLEK's notBefore."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AMD's VCEKs have serial 0
        cert = x509.load_der_x509_certificate(vek.read_bytes())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > datetime.timedelta(days=2)
    return (cert.not_valid_before_utc + datetime.timedelta(days=1)).isoformat().replace("+00:00", "Z")


def task(name: str, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return registered_task("snpguard.cvm.snp_report_verify", name, args, **extra)


@pytest.fixture(scope="module")
def cases(vectors: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build and run the one playbook; return the cases' inputs and registered results."""
    tmp = tmp_path_factory.mktemp("report_verify_module")
    entries = manifest(vectors)
    tasks: list[dict[str, Any]] = []
    facts: dict[str, Any] = {}

    for key, vid in REAL.items():
        files = entries[vid]["files"]
        facts[key] = {"entry": entries[vid], "at": inside_validity(vectors / files["vek"])}
        base = {"report": str(vectors / files["report"]), "verification_time": facts[key]["at"], "offline": True,
                "measurements": [entries[vid]["decoded"]["measurement"]],
                "report_data": entries[vid]["decoded"]["report_data"]}
        # 1. explicit files
        tasks.append(task(f"files_{key}", dict(base, vek=str(vectors / files["vek"]), ark=str(vectors / files["ark"]),
                                               ask=str(vectors / (files.get("ask") or files["asvk"])))))
        # 2. a certificate directory as KDS's files are named: vcek.der/vlek.der + cert_chain.pem
        product = entries[vid]["product"].lower()
        leaf = "vlek" if entries[vid]["signing_key"] == "VLEK" else "vcek"
        certs = tmp / f"certs_{key}"
        certs.mkdir()
        shutil.copyfile(vectors / files["vek"], certs / f"{leaf}.der")
        shutil.copyfile(vectors / f"attestation/kds_cert_chain/{product}_{leaf}_cert_chain.pem",
                        certs / "cert_chain.pem")
        tasks.append(task(f"dir_{key}", dict(base, certs_dir=str(certs))))

    # 3. a pre-populated KDS cache, offline (VCEKs only: KDS does not serve VLEKs)
    for key in ("milan_v3", "genoa_v2", "turin_v5", "milan_v2"):
        entry = entries[REAL[key]]
        cache = tmp / f"cache_{key}"
        product = Product.parse(entry["product"])
        report = parse_report((vectors / entry["files"]["report"]).read_bytes())
        vcek_file = Path(cache_path(str(cache), vcek_url(product, report.chip_id, report.tcb("reported", product))))
        chain_file = Path(cache_path(str(cache), chain_url(product)))
        for path, source in ((vcek_file, vectors / entry["files"]["vek"]),
                             (chain_file, vectors / f"attestation/kds_cert_chain/{product.value.lower()}"
                                                    "_vcek_cert_chain.pem")):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, path)
        facts[f"cache_{key}"] = {"vcek": str(vcek_file), "chain": str(chain_file)}
        args = {"report": str(vectors / entry["files"]["report"]), "cache_dir": str(cache), "offline": True,
                "verification_time": facts[key]["at"]}
        if key == "genoa_v2":  # a v2 report does not name its product; without a VCEK file it must be given
            args["product"] = "Genoa"
        tasks.append(task(f"cache_{key}", args))
    empty = tmp / "empty-cache"
    empty.mkdir()
    tasks.append(task("cache_empty", {"report": str(vectors / entries[REAL["milan_v3"]]["files"]["report"]),
                                      "cache_dir": str(empty), "offline": True,
                                      "verification_time": facts["milan_v3"]["at"]}))

    # 4. refusals on real reports
    milan = entries[REAL["milan_v3"]]
    wrong = "ab" * 48
    files = {"report": str(vectors / milan["files"]["report"]), "vek": str(vectors / milan["files"]["vek"]),
             "ask": str(vectors / milan["files"]["ask"]), "ark": str(vectors / milan["files"]["ark"]),
             "offline": True, "verification_time": facts["milan_v3"]["at"]}
    tasks.append(task("wrong_measurement", dict(files, measurements=[wrong])))
    bad = entries[BADSIG]["files"]
    tasks.append(task("badsig", {"report": str(vectors / bad["report"]), "vek": str(vectors / bad["vek"]),
                                 "ask": str(vectors / bad["ask"]), "ark": str(vectors / bad["ark"]), "offline": True,
                                 "verification_time": inside_validity(vectors / bad["vek"])}))
    tasks.append(task("min_tcb_high", dict(files, min_tcb={"snp": 250})))
    tasks.append(task("wrong_product", dict(files, product="Genoa")))
    # A real report from provisional firmware (CURRENT_TCB ahead of COMMITTED_TCB).
    prov = entries[PROVISIONAL]["files"]
    provisional = {"report": str(vectors / prov["report"]), "vek": str(vectors / prov["vek"]),
                   "ask": str(vectors / prov["ask"]), "ark": str(vectors / prov["ark"]), "offline": True,
                   "verification_time": inside_validity(vectors / prov["vek"])}
    tasks.append(task("provisional", provisional))
    tasks.append(task("provisional_allowed", dict(provisional, allow_provisional_firmware=True)))

    # 5. a simulated AMD-SP: refused unless its root is configured explicitly
    sim_dir = tmp / "simulated-amdsp"
    sim = SimulatedAmdSp.create(Product.GENOA, rsa_bits=2048)
    save_simulated_amdsp(sim, str(sim_dir))
    sim_measurement = bytes(range(48))
    (tmp / "simulated.bin").write_bytes(sim.report(measurement=sim_measurement))
    facts["sim"] = {"dir": str(sim_dir), "measurement": sim_measurement.hex()}
    simulated = {"report": str(tmp / "simulated.bin"), "certs_dir": str(sim_dir), "offline": True,
                 "measurements": [sim_measurement.hex()]}
    tasks.append(task("sim_untrusted", simulated))
    tasks.append(task("sim_trusted", dict(simulated, simulated_root=str(sim_dir / "ark.pem"))))
    report_b64 = base64.b64encode((tmp / "simulated.bin").read_bytes()).decode()
    tasks.append(task("sim_b64", {"report_b64": report_b64, "certs_dir": str(sim_dir), "offline": True,
                                  "simulated_root": str(sim_dir / "ark.pem")}))

    # 6. check mode verifies the same way
    tasks.append(task("check_mode_valid", files, check_mode=True))
    tasks.append(task("check_mode_refused", dict(files, measurements=[wrong]), check_mode=True))

    # 7. bad input names the field
    tasks.append(task("missing_report", {"offline": True}))
    tasks.append(task("garbage_b64", {"report_b64": "this is !! not base64", "offline": True}))
    tasks.append(task("bad_hex", dict(files, measurements=["zz" * 48])))
    tasks.append(task("short_measurement", dict(files, measurements=["ab" * 47])))
    tasks.append(task("unknown_policy_key", dict(files, policy={"smtx": False})))
    tasks.append(task("both_reports", dict(files, report_b64=report_b64)))
    tasks.append(task("bad_time", dict(files, verification_time="yesterday")))
    tasks.append(task("missing_file", dict(files, report=str(tmp / "no-such-report.bin"))))

    results = run_playbook(tmp, tasks)
    return {"results": results, "facts": facts}


def failed_check(result: dict[str, Any], name: str) -> dict[str, Any]:
    """The failed entry of check ``name`` in the returned check list."""
    matching = [c for c in result["checks"] if c["check"] == name and c["status"] == "fail"]
    assert matching, [c for c in result["checks"] if c["status"] == "fail"]
    return matching[0]


def assert_valid(result: dict[str, Any], product: str) -> None:
    assert not result.get("failed"), result.get("msg")
    assert result["valid"] is True and result["changed"] is False
    assert result["product"] == product
    statuses = {c["check"]: c["status"] for c in result["checks"]}
    assert [c for c in result["checks"] if c["status"] == "fail"] == []
    missing = {name for name in CHAIN_CHECKS if statuses.get(name) != "pass"}
    assert missing == set(), statuses


@pytest.mark.parametrize("key", sorted(REAL))
def test_real_report_verifies_with_files(cases: dict[str, Any], key: str) -> None:
    result = cases["results"][f"files_{key}"]
    entry = cases["facts"][key]["entry"]
    assert_valid(result, entry["product"])
    assert result["report"]["measurement"] == entry["decoded"]["measurement"]
    assert result["report"]["chip_id"] == entry["decoded"]["chip_id"]
    assert result["report"]["signing_key"] == entry["signing_key"]
    statuses = {c["check"]: c["status"] for c in result["checks"]}
    assert statuses["measurement"] == "pass" and statuses["report_data"] == "pass"


@pytest.mark.parametrize("key", sorted(REAL))
def test_real_report_verifies_with_certs_dir(cases: dict[str, Any], key: str) -> None:
    result = cases["results"][f"dir_{key}"]
    assert_valid(result, cases["facts"][key]["entry"]["product"])


@pytest.mark.parametrize("key", ["milan_v3", "genoa_v2", "turin_v5"])
def test_real_report_verifies_from_kds_cache_offline(cases: dict[str, Any], key: str) -> None:
    result = cases["results"][f"cache_{key}"]
    assert_valid(result, cases["facts"][key]["entry"]["product"])
    if key == "turin_v5":  # Turin: 8-byte hwID and an FMC SPL in the cached VCEK's name
        assert "fmcSPL=" in cases["facts"]["cache_turin_v5"]["vcek"]
        assert "/vcek/v1/Turin/" + cases["facts"][key]["entry"]["decoded"]["chip_id"][:16] + "@" in \
            cases["facts"]["cache_turin_v5"]["vcek"]


def test_kds_cache_of_a_v2_report_needs_the_product(cases: dict[str, Any]) -> None:
    result = cases["results"]["cache_milan_v2"]
    assert result["failed"] is True
    assert result["field"] == "product" and "give the product" in result["msg"]


def test_empty_cache_offline_names_kds(cases: dict[str, Any]) -> None:
    result = cases["results"]["cache_empty"]
    assert result["failed"] is True and result["field"] == "kds"
    assert "not cached and the verifier is offline" in result["msg"]
    assert "valid" not in result


def test_wrong_measurement_is_refused_naming_the_check(cases: dict[str, Any]) -> None:
    result = cases["results"]["wrong_measurement"]
    assert result["failed"] is True and result["valid"] is False
    assert result["check"] == "measurement"
    assert result["msg"].startswith("check measurement failed: ")
    failure = failed_check(result, "measurement")
    assert failure["expected"] == ["ab" * 48]
    assert failure["actual"] == result["report"]["measurement"]
    # The chain itself was fine: only the expectation refused.
    assert [c["check"] for c in result["checks"] if c["status"] == "fail"] == ["measurement"]


def test_bad_signature_vector_is_refused(cases: dict[str, Any]) -> None:
    result = cases["results"]["badsig"]
    assert result["failed"] is True and result["check"] == "report.signature"
    assert "check report.signature failed" in result["msg"]
    statuses = {c["check"]: c["status"] for c in result["checks"]}
    assert statuses["ark.pinned"] == statuses["vek.signed_by_ask"] == "pass"


def test_min_tcb_refusal(cases: dict[str, Any]) -> None:
    result = cases["results"]["min_tcb_high"]
    assert result["failed"] is True and result["check"].startswith("min_tcb.")
    failure = failed_check(result, result["check"])
    assert failure["expected"]["snp"] == 250 and failure["actual"]["snp"] < 250


def test_wrong_product_refusal(cases: dict[str, Any]) -> None:
    result = cases["results"]["wrong_product"]
    assert result["failed"] is True and result["check"] == "product"
    assert failed_check(result, "product")["expected"] == "Genoa"


def test_provisional_firmware_refused_unless_allowed(cases: dict[str, Any]) -> None:
    result = cases["results"]["provisional"]
    assert result["failed"] is True and result["check"] == "firmware.committed"
    failure = failed_check(result, "firmware.committed")
    assert failure["expected"] != failure["actual"]
    allowed = cases["results"]["provisional_allowed"]
    assert allowed["valid"] is True and not allowed.get("failed")
    assert "firmware.committed" not in {c["check"] for c in allowed["checks"]}


def test_simulated_chain_refused_without_simulated_root(cases: dict[str, Any]) -> None:
    result = cases["results"]["sim_untrusted"]
    assert result["failed"] is True and result["check"] == "ark.pinned"
    assert result["msg"].startswith("check ark.pinned failed: ")
    assert "no simulated root matches it" in result["msg"]
    assert result["valid"] is False


def test_simulated_chain_valid_with_simulated_root(cases: dict[str, Any]) -> None:
    for name in ("sim_trusted", "sim_b64"):
        result = cases["results"][name]
        assert_valid(result, "Genoa")
        pinned = next(c for c in result["checks"] if c["check"] == "ark.pinned")
        assert "SIMULATED root" in pinned["detail"]
    assert cases["results"]["sim_trusted"]["report"]["measurement"] == cases["facts"]["sim"]["measurement"]


def test_check_mode_verifies_the_same_way(cases: dict[str, Any]) -> None:
    valid = cases["results"]["check_mode_valid"]
    assert not valid.get("skipped") and valid["valid"] is True and valid["changed"] is False
    refused = cases["results"]["check_mode_refused"]
    assert not refused.get("skipped") and refused["failed"] is True and refused["check"] == "measurement"


@pytest.mark.parametrize(
    ("case", "field", "needle"),
    [
        ("garbage_b64", "report_b64", "is not base64"),
        ("bad_hex", "expect.measurements", "is not hex"),
        ("short_measurement", "expect.measurements", "48 bytes"),
        ("unknown_policy_key", "expect.policy", "'smtx'"),
        ("bad_time", "verification_time", "ISO 8601"),
        ("missing_file", "report", "no-such-report.bin"),
    ],
)
def test_bad_input_names_the_field(cases: dict[str, Any], case: str, field: str, needle: str) -> None:
    result = cases["results"][case]
    assert result["failed"] is True
    assert result.get("field") == field, result
    assert result["msg"].startswith(field + ":"), result["msg"]
    assert needle in result["msg"]
    assert "checks" not in result  # refused before any verification


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing_report", "one of the following is required: report, report_b64"),
        ("both_reports", "parameters are mutually exclusive: report|report_b64"),
    ],
)
def test_argument_spec_refusals(cases: dict[str, Any], case: str, needle: str) -> None:
    result = cases["results"][case]
    assert result["failed"] is True and needle in result["msg"]
