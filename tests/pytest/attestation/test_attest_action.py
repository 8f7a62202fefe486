# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The ``snpguard.cvm.attest`` action end to end: ansible-playbook against localhost.

The guest side is ``snp_guest_report`` with ``simulated_amdsp`` (this machine is no
SEV-SNP guest); a ``launch.json`` in each simulated AMD-SP directory fixes what the
"launch" put into the report (measurement, host data, policy …), so each refusal comes
from a real disagreement between the launched guest and the play's expectations.
REPORT_DATA is recomputed here from the returned nonce, independently of the collection.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest
from ansible_run import registered_task, run_playbook
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.simulator_store import save_simulated_amdsp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.report import REPORT_SIZE, parse_report
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import SimulatedAmdSp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product

LABEL = b"snpguard/report-data/v1"
MEASUREMENT = "5c" * 48
OTHER_MEASUREMENT = "a7" * 48
HOST_DATA = "4d" * 32
FAMILY_ID = "0f" * 16
POLICY = 0x30000  # SMT allowed, bit 17 (reserved, must be one)
DEBUG_POLICY = POLICY | 1 << 19


def attest(name: str, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return registered_task("snpguard.cvm.attest", name, args, **extra)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("attest_action")
    sim = SimulatedAmdSp.create(Product.MILAN, rsa_bits=2048)
    launches = {
        "good": {"measurement": MEASUREMENT, "host_data": HOST_DATA, "family_id": FAMILY_ID, "policy": hex(POLICY)},
        "other": {"measurement": OTHER_MEASUREMENT, "host_data": HOST_DATA, "policy": hex(POLICY)},
        "debug": {"measurement": MEASUREMENT, "host_data": HOST_DATA, "policy": hex(DEBUG_POLICY)},
    }
    dirs = {}
    for name, launch in launches.items():
        directory = tmp / f"sim-{name}"
        save_simulated_amdsp(sim, str(directory))  # the same simulated chip, launched three ways
        (directory / "launch.json").write_text(json.dumps(launch))
        dirs[name] = str(directory)
    root = dirs["good"] + "/ark.pem"
    key = x25519.X25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                       serialization.PublicFormat.Raw)
    expect = {"measurements": [MEASUREMENT], "host_data": HOST_DATA, "offline": True}
    ok = dict(expect, guest_simulated_amdsp=dirs["good"], simulated_root=root)
    tasks = [
        attest("first", dict(ok, family_id=FAMILY_ID, policy={"smt": True}, signing_keys=["VCEK"])),
        attest("second", ok),
        attest("bound", dict(ok, bind_public_key=key.hex())),
        attest("saved", dict(ok, report_dest=str(tmp / "saved.bin"))),
        attest("check_mode", dict(ok, report_dest=str(tmp / "check-mode.bin")), check_mode=True),
        attest("vmpl2", dict(ok, guest_vmpl=2, vmpl=2)),
        attest("vmpl_mismatch", dict(ok, guest_vmpl=1, vmpl=0)),
        attest("no_root", dict(expect, guest_simulated_amdsp=dirs["good"])),
        attest("wrong_measurement", dict(ok, guest_simulated_amdsp=dirs["other"])),
        attest("debug", dict(ok, guest_simulated_amdsp=dirs["debug"])),
        attest("debug_allowed", dict(ok, guest_simulated_amdsp=dirs["debug"], allow_debug=True)),
        attest("old_tcb", dict(ok, min_tcb={"bootloader": 9, "snp": 200})),
        attest("tcb_ok", dict(ok, min_tcb={"bootloader": 9, "tee": 0, "snp": 23, "microcode": 72})),
        attest("no_source", expect),
        attest("bad_key", dict(ok, bind_public_key="not hex")),
        attest("bad_dest", dict(ok, report_dest=str(tmp / "missing-dir" / "report.bin"))),
        attest("bad_expectation", dict(ok, policy={"smtx": True})),
        attest("unknown_option", dict(ok, measurement=MEASUREMENT)),
    ]
    return {"results": run_playbook(tmp, tasks), "tmp": tmp, "key": key}


def binding(nonce_hex: str, key: bytes = b"") -> str:
    nonce = bytes.fromhex(nonce_hex)
    assert len(nonce) == 32
    return hashlib.sha512(LABEL + nonce + key).hexdigest()


def statuses(result: dict[str, Any]) -> dict[str, str]:
    return {c["check"]: c["status"] for c in result["checks"]}


def assert_refused(result: dict[str, Any], check: str) -> dict[str, Any]:
    assert result["failed"] is True and result["valid"] is False, result.get("msg")
    assert result["check"] == check, result.get("msg")
    assert result["msg"].startswith(f"attestation refused: check {check} failed: ")
    failure = next(c for c in result["checks"] if c["status"] == "fail")
    assert failure["check"] == check
    return failure


def test_success_returns_valid_nonce_and_binding(run: dict[str, Any]) -> None:
    result = run["results"]["first"]
    assert not result.get("failed"), result.get("msg")
    assert result["valid"] is True and result["changed"] is False
    assert result["source"] == "simulated-amdsp" and result["product"] == "Milan"
    assert result["report_data"] == binding(result["nonce"])
    assert result["report"]["report_data"] == result["report_data"]
    assert result["report"]["measurement"] == MEASUREMENT and result["report"]["host_data"] == HOST_DATA
    checks = statuses(result)
    for name in ("ark.pinned", "report.signature", "report_data", "measurement", "host_data", "family_id",
                 "policy.debug", "policy.smt", "signing_key", "firmware.committed"):
        assert checks[name] == "pass", (name, checks)
    assert "fail" not in checks.values()


def test_each_run_has_a_fresh_nonce(run: dict[str, Any]) -> None:
    first, second = run["results"]["first"], run["results"]["second"]
    assert second["valid"] is True
    assert first["nonce"] != second["nonce"]
    assert first["report_data"] != second["report_data"]
    assert second["report_data"] == binding(second["nonce"])


def test_bind_public_key_changes_report_data(run: dict[str, Any]) -> None:
    result = run["results"]["bound"]
    assert result["valid"] is True
    assert result["report_data"] == binding(result["nonce"], run["key"])
    assert result["report_data"] != binding(result["nonce"])
    assert result["report"]["report_data"] == result["report_data"]


def test_report_dest_writes_the_report(run: dict[str, Any]) -> None:
    result = run["results"]["saved"]
    assert result["valid"] is True
    data = (run["tmp"] / "saved.bin").read_bytes()
    assert len(data) == REPORT_SIZE
    report = parse_report(data)
    assert report.report_data.hex() == result["report_data"] == binding(result["nonce"])
    assert report.measurement.hex() == MEASUREMENT


def test_check_mode_attests_but_writes_nothing(run: dict[str, Any]) -> None:
    result = run["results"]["check_mode"]
    assert not result.get("skipped") and result["valid"] is True
    assert result["report_data"] == binding(result["nonce"])
    assert not (run["tmp"] / "check-mode.bin").exists()


def test_guest_vmpl(run: dict[str, Any]) -> None:
    assert run["results"]["vmpl2"]["valid"] is True
    assert run["results"]["vmpl2"]["report"]["vmpl"] == 2
    failure = assert_refused(run["results"]["vmpl_mismatch"], "vmpl")
    assert failure["expected"] == 0 and failure["actual"] == 1


def test_refused_without_simulated_root(run: dict[str, Any]) -> None:
    failure = assert_refused(run["results"]["no_root"], "ark.pinned")
    assert "no simulated root matches it" in failure["detail"]


def test_refused_on_wrong_measurement(run: dict[str, Any]) -> None:
    failure = assert_refused(run["results"]["wrong_measurement"], "measurement")
    assert failure["expected"] == [MEASUREMENT] and failure["actual"] == OTHER_MEASUREMENT


def test_debug_policy_refused_unless_allowed(run: dict[str, Any]) -> None:
    failure = assert_refused(run["results"]["debug"], "policy.debug")
    assert failure["expected"] is False and failure["actual"] is True
    allowed = run["results"]["debug_allowed"]
    assert allowed["valid"] is True and not allowed.get("failed")
    assert allowed["report"]["policy"] == hex(DEBUG_POLICY)
    assert statuses(allowed)["policy.debug"] == "pass"


def test_min_tcb_too_high_refused(run: dict[str, Any]) -> None:
    result = run["results"]["old_tcb"]
    assert result["check"].startswith("min_tcb.")
    failure = assert_refused(result, result["check"])
    assert failure["expected"]["snp"] == 200 and failure["actual"]["snp"] == 23
    assert run["results"]["tcb_ok"]["valid"] is True


def test_guest_without_report_source_fails_clearly(run: dict[str, Any]) -> None:
    assert not os.path.exists("/sys/kernel/config/tsm/report") and not os.path.exists("/dev/sev-guest"), \
        "this test expects a machine that is not an SEV-SNP guest"
    result = run["results"]["no_source"]
    assert result["failed"] is True and result.get("field") == "report_source"
    assert result["msg"].startswith("the guest could not produce a report: report_source: this is not an SEV-SNP "
                                    "guest: neither /sys/kernel/config/tsm/report (configfs-tsm) nor "
                                    "/dev/sev-guest exists")
    assert "valid" not in result


@pytest.mark.parametrize(
    ("case", "field", "needle"),
    [
        ("bad_key", "bind_public_key", "bind_public_key: is not hex"),
        ("bad_dest", "report_dest", "report_dest: cannot write in "),
        ("bad_expectation", "expect.policy", "'smtx'"),
    ],
)
def test_bad_input_names_the_field(run: dict[str, Any], case: str, field: str, needle: str) -> None:
    result = run["results"][case]
    assert result["failed"] is True and result.get("field") == field, result
    assert needle in result["msg"]


def test_unknown_option_refused_by_the_argument_spec(run: dict[str, Any]) -> None:
    result = run["results"]["unknown_option"]
    assert result["failed"] is True
    assert "measurement" in result["msg"] and "Unsupported parameters" in result["msg"]
