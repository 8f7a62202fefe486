# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard report show|verify|fetch`` and ``snpguard certs fetch`` end to end (``python -m``).

Every run gets its own XDG_CACHE_HOME, so the default KDS cache is never the user's.
``certs fetch`` is tested offline in the strict sense: the process runs with
``https_proxy`` pointing at a closed local port, so any attempt to reach AMD's KDS
fails; the cache must therefore hold everything.  A companion test shows that an
incomplete cache does reach for the network there and fails, so the trap is live.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.kds_cache import cache_path
from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.simulator_store import save_simulated_amdsp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.kds import chain_url, crl_url, vcek_url
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.report import REPORT_SIZE, parse_report
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import SimulatedAmdSp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product

REPO = Path(__file__).resolve().parents[3]
DEVROOT = REPO / "build" / "devroot"
MILAN_V3 = "milan_v3_oak_40a2778d"  # VCEK valid 2025-01-15 .. 2032-01-15; the Milan CRL covers 2025-05-06 .. 2026-05-12
GENOA_V2 = "genoa_v2_oak_a95b044f"
TURIN_V5 = "turin_v5_oak_3f44a09b"
AT = "2025-09-01T00:00:00Z"
NO_NETWORK = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "",
              "NO_PROXY": ""}


def snpguard(*argv: str, cwd: Path, env: dict[str, str] | None = None,
             timeout: int = 120) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, PYTHONPATH=str(DEVROOT), XDG_CACHE_HOME=str(cwd / "xdg-cache"), **(env or {}))
    return subprocess.run([sys.executable, "-m", "ansible_collections.snpguard.cvm.cli", *argv], env=full_env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def reports(vectors: Path) -> dict[str, dict[str, Any]]:
    entries = json.loads((vectors / "MANIFEST.json").read_text())
    out = {}
    for entry in entries:
        if entry.get("id") in (MILAN_V3, GENOA_V2, TURIN_V5, "milan_v2_cmc_917d4a10_badsig"):
            files = {name: vectors / path for name, path in entry["files"].items()}
            out[entry["id"]] = dict(entry, paths=files)
    assert len(out) == 4
    return out


def files_args(entry: dict[str, Any]) -> list[str]:
    paths = entry["paths"]
    return ["--report", str(paths["report"]), "--vcek", str(paths["vek"]), "--ask", str(paths["ask"]),
            "--ark", str(paths["ark"]), "--offline", "--at", AT]


def check_lines(stdout: str) -> dict[str, str]:
    """{check name: status mark} from the text output of ``report verify``."""
    out = {}
    for line in stdout.splitlines():
        mark, _sep, rest = line.partition(" ")
        if mark in ("ok", "FAIL", "skip"):
            out[rest.split()[0]] = mark
    return out


# -- report show -----------------------------------------------------------------------------------------------


def test_show_text_v3(reports: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    entry = reports[MILAN_V3]
    proc = snpguard("report", "show", str(entry["paths"]["report"]), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "SEV-SNP attestation report, version 3, Milan"
    fields = {line.split()[0]: line.split()[1] for line in lines[1:] if len(line.split()) == 2}
    decoded = entry["decoded"]
    for name in ("measurement", "report_data", "host_data", "chip_id", "report_id", "family_id", "image_id"):
        assert fields[name] == decoded[name], name
    assert fields["policy"] == decoded["policy"]
    reported = next(line for line in lines if line.strip().startswith("reported_tcb"))
    assert reported.split()[1] == "0x" + f"{int(decoded['reported_tcb_raw'], 16):016x}"
    assert "bootloader=" in reported and "microcode=" in reported
    assert any(line.strip().startswith("policy decoded:") and "debugging disabled" in line for line in lines)


def test_show_text_v2_without_and_with_product(reports: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    path = str(reports[GENOA_V2]["paths"]["report"])
    plain = snpguard("report", "show", path, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines()[0] == \
        "SEV-SNP attestation report, version 2 (product unknown: v2 report, pass --product)"
    tcb = next(line for line in plain.stdout.splitlines() if line.strip().startswith("current_tcb"))
    assert tcb.split() == ["current_tcb", "0x3e0f000000000007"]  # not decoded without a product
    genoa = snpguard("report", "show", "--product", "Genoa", path, cwd=tmp_path)
    assert genoa.returncode == 0, genoa.stderr
    assert genoa.stdout.splitlines()[0] == "SEV-SNP attestation report, version 2, Genoa"
    tcb = next(line for line in genoa.stdout.splitlines() if line.strip().startswith("current_tcb"))
    # The VCEK of this report says blSPL=7 teeSPL=0 snpSPL=15 ucodeSPL=62.
    assert tcb.split() == ["current_tcb", "0x3e0f000000000007", "bootloader=7", "tee=0", "snp=15", "microcode=62"]


def test_show_json(reports: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    turin = reports[TURIN_V5]
    proc = snpguard("report", "show", "--json", str(turin["paths"]["report"]), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["version"] == 5 and doc["product"] == "Turin"
    assert doc["measurement"] == turin["decoded"]["measurement"]
    assert doc["reported_tcb"]["raw"] == f"0x{int(turin['decoded']['reported_tcb_raw'], 16):016x}"
    ext = turin["vek_info"]["amd_extensions"]
    assert {k: doc["reported_tcb"][k] for k in ("fmc", "bootloader", "tee", "snp", "microcode")} == {
        "fmc": ext["fmcSPL"], "bootloader": ext["blSPL"], "tee": ext["teeSPL"], "snp": ext["snpSPL"],
        "microcode": ext["ucodeSPL"]}
    assert doc["launch_mit_vector"] is not None  # a v5 field

    genoa = reports[GENOA_V2]["paths"]["report"]
    bare = json.loads(snpguard("report", "show", "--json", str(genoa), cwd=tmp_path).stdout)
    assert "product" not in bare and bare["current_tcb"] == {"raw": "0x3e0f000000000007"}
    decoded = json.loads(snpguard("report", "show", "--json", "--product", "Genoa", str(genoa), cwd=tmp_path).stdout)
    assert decoded["product"] == "Genoa" and decoded["current_tcb"]["snp"] == 15


@pytest.mark.parametrize(("name", "size"), [("guest_report_bad_sig.bin", 1185), ("guest_report_corrupt.bin", 793)])
def test_show_malformed_exits_2(vectors: Path, tmp_path: Path, name: str, size: int) -> None:
    proc = snpguard("report", "show", str(vectors / "attestation/malformed" / name), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"snpguard report: error: report: an attestation report is 1184 bytes, got {size}"


# -- report verify ---------------------------------------------------------------------------------------------


def test_verify_valid_real_report(reports: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    entry = reports[MILAN_V3]
    proc = snpguard("report", "verify", *files_args(entry), "--measurement", entry["decoded"]["measurement"],
                    "--min-tcb", "snp=20", "--min-tcb", "bootloader=4", "--policy", "smt=1",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "VALID"
    marks = check_lines(proc.stdout)
    assert "FAIL" not in marks.values()
    for name in ("ark.pinned", "ask.signed_by_ark", "vek.signed_by_ask", "vek.hwid", "vek.tcb", "report.signature",
                 "measurement", "policy.smt", "min_tcb.current", "min_tcb.reported", "firmware.committed"):
        assert marks[name] == "ok", name
    assert marks["crl"] == "skip"


def test_verify_refusal_shows_expected_and_actual(reports: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    entry = reports[MILAN_V3]
    wrong = "ab" * 48
    proc = snpguard("report", "verify", *files_args(entry), "--measurement", wrong, cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[-1] == "REFUSED"
    index = next(i for i, line in enumerate(lines) if line.startswith("FAIL measurement"))
    assert lines[index + 1] == f"     expected: {wrong}"
    assert lines[index + 2] == f"     actual:   {entry['decoded']['measurement']}"
    assert [name for name, mark in check_lines(proc.stdout).items() if mark == "FAIL"] == ["measurement"]


def test_verify_min_tcb_too_high_refused(reports: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    proc = snpguard("report", "verify", *files_args(reports[MILAN_V3]), "--min-tcb", "snp=200", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout.splitlines()[-1] == "REFUSED"
    failed = [name for name, mark in check_lines(proc.stdout).items() if mark == "FAIL"]
    assert failed and all(name.startswith("min_tcb.") for name in failed)
    assert "     expected: bootloader=0 tee=0 snp=200 microcode=0" in proc.stdout  # values, not a Python repr


def test_verify_bad_signature_vector(reports: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    entry = reports["milan_v2_cmc_917d4a10_badsig"]
    proc = snpguard("report", "verify", *files_args(entry), "--at", "2023-01-01T00:00:00Z", cwd=tmp_path)
    assert proc.returncode == 1
    assert [name for name, mark in check_lines(proc.stdout).items() if mark == "FAIL"] == ["report.signature"]


def test_verify_json(reports: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    entry = reports[TURIN_V5]
    good = snpguard("report", "verify", *files_args(entry), "--json", cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    doc = json.loads(good.stdout)
    assert doc["valid"] is True and doc["product"] == "Turin"
    assert doc["report"]["measurement"] == entry["decoded"]["measurement"]
    assert {c["check"]: c["status"] for c in doc["checks"]}["report.signature"] == "pass"
    bad = snpguard("report", "verify", *files_args(entry), "--json", "--host-data", "01" * 32, cwd=tmp_path)
    assert bad.returncode == 1
    doc = json.loads(bad.stdout)
    assert doc["valid"] is False
    failed = [c for c in doc["checks"] if c["status"] == "fail"]
    assert [c["check"] for c in failed] == ["host_data"]
    assert failed[0]["expected"] == "01" * 32 and failed[0]["actual"] == entry["decoded"]["host_data"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--policy", "smt"], "--policy: 'smt' is not NAME=VALUE"),
        (["--policy", "smt=maybe"], "--policy: 'smt=maybe': 'maybe' is not a boolean"),
        (["--min-tcb", "snp=lots"], "--min-tcb.snp: expected an integer (decimal or 0x-hex), got 'lots'"),
        (["--platform", "smt_enabled"], "--platform: 'smt_enabled' is not NAME=VALUE"),
        (["--measurement", "xyz"], "expect.measurements: is not hexadecimal: 'xyz'"),
        (["--policy", "smtx=1"], "expect.policy: unknown policy constraint 'smtx'"),
        (["--at", "tomorrow"], "verification_time: 'tomorrow' is not an ISO 8601 time"),
    ],
)
def test_verify_bad_option_exits_2_naming_it(reports: dict[str, dict[str, Any]], tmp_path: Path,
                                             argv: list[str], needle: str) -> None:
    proc = snpguard("report", "verify", *files_args(reports[MILAN_V3]), *argv, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("snpguard report: error: ") and needle in proc.stderr
    assert "Traceback" not in proc.stderr


# -- report fetch from a simulated AMD-SP, then verify -----------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("report_cli") / "sim"
    save_simulated_amdsp(SimulatedAmdSp.create(Product.GENOA, rsa_bits=2048), str(directory))
    (directory / "launch.json").write_text(json.dumps({"measurement": "c3" * 48, "host_data": "d4" * 32}))
    return directory


def test_fetch_simulated_then_verify(simulated: Path, tmp_path: Path) -> None:
    data = "e5" * 64
    proc = snpguard("report", "fetch", "--simulated-amdsp", str(simulated), "--report-data", data, "--out", "r.bin",
                    "--certs-out", "certs.bin", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "wrote r.bin (simulated-amdsp) and certs.bin"
    report = parse_report((tmp_path / "r.bin").read_bytes())
    assert report.report_data.hex() == data and report.measurement.hex() == "c3" * 48

    common = ["report", "verify", "--report", "r.bin", "--certs-table", "certs.bin", "--offline",
              "--measurement", "c3" * 48, "--host-data", "d4" * 32, "--report-data", data]
    refused = snpguard(*common, cwd=tmp_path)
    assert refused.returncode == 1
    assert [n for n, m in check_lines(refused.stdout).items() if m == "FAIL"] == ["ark.pinned"]
    assert "SIMULATED" not in refused.stdout

    trusted = snpguard(*common, "--simulated-root", str(simulated / "ark.pem"), cwd=tmp_path)
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert trusted.stdout.splitlines()[-1] == "VALID"
    assert "ok   ark.pinned                   SIMULATED root, trusted because it was configured explicitly" \
        in trusted.stdout.splitlines()
    marks = check_lines(trusted.stdout)
    assert marks["measurement"] == marks["host_data"] == marks["report_data"] == "ok"

    other = snpguard(*common[:-1], "00" * 64, "--simulated-root", str(simulated / "ark.pem"), cwd=tmp_path)
    assert other.returncode == 1
    assert [n for n, m in check_lines(other.stdout).items() if m == "FAIL"] == ["report_data"]


def test_fetch_without_certs_out_and_default_report_data(simulated: Path, tmp_path: Path) -> None:
    proc = snpguard("report", "fetch", "--simulated-amdsp", str(simulated), "--out", "r.bin", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "wrote r.bin (simulated-amdsp)"
    assert len((tmp_path / "r.bin").read_bytes()) == REPORT_SIZE
    assert parse_report((tmp_path / "r.bin").read_bytes()).report_data == bytes(64)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "xdg-cache") == ["r.bin"]


def test_fetch_without_a_source_exits_3(tmp_path: Path) -> None:
    """Not an SEV-SNP guest: the machine, not the command line, is wrong (runtime, exit 3)."""
    assert not os.path.exists("/sys/kernel/config/tsm/report") and not os.path.exists("/dev/sev-guest")
    proc = snpguard("report", "fetch", "--out", "r.bin", cwd=tmp_path)
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.strip() == ("snpguard report: error: report_source: this is not an SEV-SNP guest: neither "
                                   "/sys/kernel/config/tsm/report (configfs-tsm) nor /dev/sev-guest exists")
    assert not (tmp_path / "r.bin").exists()


@pytest.mark.parametrize(("argv", "needle"), [(["--report-data", "zz"], "--report-data: is not hex"),
                                              (["--report-data", "00" * 32], "report_data: must be exactly 64 bytes"),
                                              (["--vmpl", "4"], "vmpl: 4 is out of range 0..3")])
def test_fetch_bad_request_exits_2(simulated: Path, tmp_path: Path, argv: list[str], needle: str) -> None:
    proc = snpguard("report", "fetch", "--simulated-amdsp", str(simulated), "--out", "r.bin", *argv, cwd=tmp_path)
    assert proc.returncode == 2 and needle in proc.stderr
    assert not (tmp_path / "r.bin").exists()


# -- certs fetch from a pre-populated cache, with the network closed ----------------------------------------------


def populate_cache(cache: Path, vectors: Path, entry: dict[str, Any], *, crl: bool = True) -> None:
    product = Product.parse(entry["product"])
    report = parse_report(entry["paths"]["report"].read_bytes())
    line = product.value.lower()
    sources = {vcek_url(product, report.chip_id, report.tcb("reported", product)): entry["paths"]["vek"],
               chain_url(product): vectors / f"attestation/kds_cert_chain/{line}_vcek_cert_chain.pem"}
    if crl:
        sources[crl_url(product)] = vectors / f"attestation/crl/{line}_vcek_crl.der"
    for url, source in sources.items():
        target = Path(cache_path(str(cache), url))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def test_certs_fetch_from_cache_without_network(reports: dict[str, dict[str, Any]], vectors: Path,
                                                tmp_path: Path) -> None:
    entry = reports[MILAN_V3]
    cache = tmp_path / "kds-cache"
    populate_cache(cache, vectors, entry)
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    proc = snpguard("certs", "fetch", "--report", str(entry["paths"]["report"]), "--cache-dir", str(cache),
                    "--out-dir", "out", cwd=tmp_path, env=NO_NETWORK, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"Milan: fetched vcek.der, cert_chain.pem, crl.der (cache {cache})"
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before
    out = tmp_path / "out"
    assert (out / "vcek.der").read_bytes() == entry["paths"]["vek"].read_bytes()
    assert (out / "crl.der").read_bytes() == (vectors / "attestation/crl/milan_vcek_crl.der").read_bytes()
    chain = x509.load_pem_x509_certificates((out / "cert_chain.pem").read_bytes())
    expected = x509.load_pem_x509_certificates(
        (vectors / "attestation/kds_cert_chain/milan_vcek_cert_chain.pem").read_bytes())
    assert chain == expected

    # What certs fetch wrote is a complete certificate directory, CRL included.
    verify = snpguard("report", "verify", "--report", str(entry["paths"]["report"]), "--certs-dir", "out",
                      "--offline", "--at", AT, cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    marks = check_lines(verify.stdout)
    for name in ("crl.issuer", "crl.signature", "crl.ask_not_revoked", "crl.vek_not_revoked", "crl.fresh"):
        assert marks[name] == "ok", name

    # The cache is what report verify reads, too.
    cached = snpguard("report", "verify", "--report", str(entry["paths"]["report"]), "--cache-dir", str(cache),
                      "--fetch-crl", "--require-crl", "--at", AT, cwd=tmp_path, env=NO_NETWORK, timeout=60)
    assert cached.returncode == 0, cached.stdout + cached.stderr
    assert check_lines(cached.stdout)["crl.signature"] == "ok"


def test_certs_fetch_v2_report_needs_product(reports: dict[str, dict[str, Any]], vectors: Path,
                                             tmp_path: Path) -> None:
    entry = reports[GENOA_V2]
    cache = tmp_path / "kds-cache"
    populate_cache(cache, vectors, entry)
    proc = snpguard("certs", "fetch", "--report", str(entry["paths"]["report"]), "--cache-dir", str(cache),
                    cwd=tmp_path, env=NO_NETWORK, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("snpguard certs: error: --product: a version-2 report does not name its "
                                   "product; pass --product")
    proc = snpguard("certs", "fetch", "--report", str(entry["paths"]["report"]), "--cache-dir", str(cache),
                    "--product", "Genoa", cwd=tmp_path, env=NO_NETWORK, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Genoa: fetched vcek.der, cert_chain.pem, crl.der")


@pytest.mark.slow
def test_certs_fetch_network_trap_is_live(reports: dict[str, dict[str, Any]], vectors: Path, tmp_path: Path) -> None:
    """Without the CRL in the cache, certs fetch must go to KDS, and the closed proxy makes that fail."""
    entry = reports[MILAN_V3]
    cache = tmp_path / "kds-cache"
    populate_cache(cache, vectors, entry, crl=False)
    proc = snpguard("certs", "fetch", "--report", str(entry["paths"]["report"]), "--cache-dir", str(cache),
                    cwd=tmp_path, env=NO_NETWORK, timeout=90)
    assert proc.returncode == 3  # KDS unreachable: runtime
    assert proc.stderr.startswith("snpguard certs: error: kds: cannot reach KDS at "
                                  "https://kdsintf.amd.com/vcek/v1/Milan/crl")


def test_verify_with_crl_keeps_stderr_clean(reports: dict[str, dict[str, Any]], vectors: Path,
                                            tmp_path: Path) -> None:
    proc = snpguard("report", "verify", *files_args(reports[MILAN_V3]), "--crl",
                    str(vectors / "attestation/crl/milan_vcek_crl.der"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert check_lines(proc.stdout)["crl.vek_not_revoked"] == "ok"
    assert proc.stderr == ""
