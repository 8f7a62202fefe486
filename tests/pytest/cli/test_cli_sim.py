# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard sim init|show``: the simulated AMD-SP directory, used by the existing commands.

A directory made by ``sim init`` must sign reports (``report fetch --simulated-amdsp``)
that ``report verify`` accepts only with ``--simulated-root DIR/ark.pem`` and refuses
otherwise; a second ``init`` must not replace it without ``--force``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.simulator_store import load_simulated_amdsp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.amd_certs import fingerprint
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.report import parse_report
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product

REPO = Path(__file__).resolve().parents[3]
DEVROOT = REPO / "build" / "devroot"
SECRET = ("ark.key", "ask.key", "vcek.key")


def snpguard(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(DEVROOT), XDG_CACHE_HOME=str(cwd / "xdg-cache"))
    return subprocess.run([sys.executable, "-m", "ansible_collections.snpguard.cvm.cli", *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_init_then_sign_and_verify_through_the_cli(tmp_path: Path) -> None:
    lab = tmp_path / "lab" / "amdsp"
    proc = snpguard("sim", "init", str(lab), "--product", "Genoa", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    root = lab / "ark.pem"
    assert f"root (ARK):   {root}" in proc.stdout
    assert "SIMULATED AMD-SP chain, not AMD's" in proc.stdout and "--simulated-root" in proc.stdout
    assert mode(lab) == 0o700
    assert all(mode(lab / name) == 0o600 for name in SECRET)
    sim = load_simulated_amdsp(str(lab))
    assert sim.product is Product.GENOA and "SIMULATED" in sim.ark.subject.rfc4514_string()

    data = "5a" * 64
    fetched = snpguard("report", "fetch", "--simulated-amdsp", str(lab), "--report-data", data, "--out", "r.bin",
                       "--certs-out", "certs.bin", cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    assert parse_report((tmp_path / "r.bin").read_bytes()).chip_id == sim.chip_id
    verify = ("report", "verify", "--report", "r.bin", "--certs-table", "certs.bin", "--offline", "--report-data", data)
    trusted = snpguard(*verify, "--simulated-root", str(root), cwd=tmp_path)
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert trusted.stdout.splitlines()[-1] == "VALID"
    assert "SIMULATED root, trusted because it was configured explicitly" in trusted.stdout
    # Without the explicit root the same report is refused (exit 1), like any unknown chain.
    refused = snpguard(*verify, cwd=tmp_path)
    assert refused.returncode == 1 and refused.stdout.splitlines()[-1] == "REFUSED"
    assert "FAIL ark.pinned" in refused.stdout


def test_second_init_refuses_without_force(tmp_path: Path) -> None:
    lab = tmp_path / "amdsp"
    assert snpguard("sim", "init", str(lab), cwd=tmp_path).returncode == 0
    (lab / "launch.json").write_text('{"measurement": "' + "ab" * 48 + '"}')
    before = snapshot(lab)
    again = snpguard("sim", "init", str(lab), cwd=tmp_path)
    assert again.returncode == 2 and again.stdout == ""
    assert "already holds a simulated AMD-SP" in again.stderr and "--force" in again.stderr
    assert snapshot(lab) == before
    as_json = snpguard("sim", "init", str(lab), "--json", cwd=tmp_path)
    doc = json.loads(as_json.stdout)
    assert as_json.returncode == 2 and doc["exit_code"] == 2 and doc["error"]["code"] == "exists"
    assert snapshot(lab) == before

    forced = snpguard("sim", "init", str(lab), "--force", "--product", "turin", "--json", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    doc = json.loads(forced.stdout)
    assert doc["replaced"] is True and doc["product"] == "Turin" and doc["simulated"] is True
    assert "SIMULATED" in forced.stderr  # the note still reaches a person in --json mode
    after = snapshot(lab)
    assert after["ark.pem"] != before["ark.pem"] and after["ark.key"] != before["ark.key"]
    assert after["launch.json"] == before["launch.json"]  # what the lab recorded is kept
    assert doc["root_sha256"] == fingerprint(load_simulated_amdsp(str(lab)).ark)


def test_init_refuses_a_directory_that_is_not_a_simulator(tmp_path: Path) -> None:
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    other_mode = mode(other)
    for extra in ((), ("--force",)):
        proc = snpguard("sim", "init", str(other), *extra, cwd=tmp_path)
        assert proc.returncode == 2 and "holds no simulated AMD-SP" in proc.stderr
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"] and mode(other) == other_mode
    (tmp_path / "file").write_text("x")
    assert snpguard("sim", "init", str(tmp_path / "file"), cwd=tmp_path).returncode == 2
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    assert snpguard("sim", "init", str(empty), cwd=tmp_path).returncode == 0
    assert mode(empty) == 0o700  # tightened: it now holds private keys


def test_show(tmp_path: Path) -> None:
    lab = tmp_path / "amdsp"
    created = json.loads(snpguard("sim", "init", str(lab), "--json", cwd=tmp_path).stdout)
    shown = snpguard("sim", "show", str(lab), "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["root_sha256"] == created["root_sha256"] and doc["product"] == "Milan"
    assert doc["directory_mode"] == "0700" and doc["files"]["vcek.key"] == "0600" and doc["launch"] is False
    human = snpguard("sim", "show", str(lab), cwd=tmp_path)
    assert human.returncode == 0 and created["root_sha256"] in human.stdout and "SIMULATED" in human.stdout
    missing = snpguard("sim", "show", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2 and "sim init" in missing.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ark.pem").write_text("not a certificate")
    proc = snpguard("sim", "show", str(broken), cwd=tmp_path)
    assert proc.returncode == 3 and "simulated_amdsp" in proc.stderr  # ask.pem etc. cannot be read
