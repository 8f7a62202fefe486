# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Exit codes and errors of every ``snpguard`` command.

0 ok; 1 refused or different; 2 usage (argparse, bad values); 3 runtime (unreadable
file, unreachable server, unexpected error). With ``--json`` an error is one JSON
document on stdout, ``{"error": {"message", "code", "field"?...}, "exit_code": N}``,
and nothing but warnings goes to stderr; without it, errors stay one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.snpguard.cvm.cli import main as cli_main
from ansible_collections.snpguard.cvm.cli import measure as cli_measure
from ansible_collections.snpguard.cvm.cli.common import Refused, RuntimeFailure, UsageError, exit_code_for
from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.simulator_store import save_simulated_amdsp
from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.admin_client import ApiError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import SimulatedAmdSp
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product

REPO = Path(__file__).resolve().parents[3]
DEVROOT = REPO / "build" / "devroot"


def snpguard(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(DEVROOT), XDG_CACHE_HOME=str(cwd / "xdg-cache"),
                XDG_CONFIG_HOME=str(cwd / "xdg-config"))
    for name in ("SNPGUARD_URL", "SNPGUARD_TOKEN", "SNPGUARD_CA_FILE", "SNPGUARD_CONFIG"):
        full.pop(name, None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "ansible_collections.snpguard.cvm.cli", *argv], env=full, cwd=cwd,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)


def json_error(proc: subprocess.CompletedProcess[str], code: int) -> dict[str, Any]:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == code and doc["error"]["message"] and doc["error"]["code"]
    return doc["error"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated report with its certificate table, in a directory of its own."""
    work = tmp_path_factory.mktemp("signed")
    save_simulated_amdsp(SimulatedAmdSp.create(Product.MILAN, rsa_bits=2048), str(work / "amdsp"))
    proc = snpguard("report", "fetch", "--simulated-amdsp", "amdsp", "--out", "r.bin", "--certs-out", "certs.bin",
                    cwd=work)
    assert proc.returncode == 0, proc.stderr
    return work


# -- the classification itself ----------------------------------------------------------------------------------


def _caused(exc: SnpError, cause: BaseException) -> SnpError:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(("exc", "code"), [
    (Refused("no"), 1),
    (ApiError("GET /images: 401 token_invalid", status=401), 1),
    (ApiError("POST /images: 409 image_exists", status=409), 1),
    (ApiError("GET /images: 429 rate_limited", status=429), 3),
    (ApiError("GET /images: 503", status=503), 3),
    (ApiError("cannot reach https://x/v1: refused", field="url"), 3),
    (SnpError("is not hex", field="--report-data"), 2),
    (UsageError("add --yes", field="yes"), 2),
    (_caused(SnpError("cannot read file: No such file or directory", field="report", path="r.bin"),
             FileNotFoundError(2, "No such file or directory")), 3),
    (SnpError("not JSON", field="A.json", path="a.json"), 2),
    (SnpError("cannot reach KDS", field="kds"), 3),
    (SnpError("this is not an SEV-SNP guest", field="report_source"), 3),
    (RuntimeFailure("broken"), 3),
    (ValueError("unexpected"), 3),
])
def test_exit_code_for(exc: BaseException, code: int) -> None:
    assert exit_code_for(exc) == code


# -- argument errors in --json mode, for every command that has --json ---------------------------------------------


def json_commands() -> list[list[str]]:
    found = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        if any("--json" in action.option_strings for action in parser._actions):
            found.append(path)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])

    walk(cli_main.build_parser(), [])
    return found


JSON_COMMANDS = json_commands()


def test_json_commands_found() -> None:
    for path in (["measure"], ["measure", "diff"], ["id-block", "verify"], ["report", "verify"], ["config", "login"],
                 ["image", "register"], ["token", "list"], ["sim", "init"]):
        assert path in JSON_COMMANDS


@pytest.mark.parametrize("path", JSON_COMMANDS, ids=" ".join)
def test_argument_errors_are_json_on_stdout(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main.main([*path, "--json", "--no-such-option"])
    out, err = capsys.readouterr()
    assert code == 2 and err == ""
    doc = json.loads(out)
    assert doc["exit_code"] == 2 and doc["error"]["code"] == "usage_error"
    assert doc["error"]["command"] == " ".join(["snpguard", *path])  # the subcommand, not the top level


@pytest.mark.parametrize("path", JSON_COMMANDS, ids=" ".join)
def test_argument_errors_stay_human_without_json(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main.main([*path, "--no-such-option"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage: snpguard") and ": error: " in lines[-1]


# -- representative cases of each exit code, through the real entry point ----------------------------------------


def test_1_refused_report(signed: Path) -> None:
    """A report from an unknown (simulated) chain without --simulated-root: refused, 1, in both modes."""
    argv = ("report", "verify", "--report", "r.bin", "--certs-table", "certs.bin", "--offline")
    proc = snpguard(*argv, cwd=signed)
    assert proc.returncode == 1 and proc.stdout.splitlines()[-1] == "REFUSED" and proc.stderr == ""
    proc = snpguard(*argv, "--json", cwd=signed)
    assert proc.returncode == 1 and json.loads(proc.stdout)["valid"] is False


def test_1_measure_diff_differs(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"inputs": {"vcpus": [1]}, "measurements": {"1": "aa" * 48}}))
    (tmp_path / "b.json").write_text(json.dumps({"inputs": {"vcpus": [2]}, "measurements": {"2": "bb" * 48}}))
    proc = snpguard("measure", "diff", "a.json", "b.json", cwd=tmp_path)
    assert proc.returncode == 1 and "- vcpus:" in proc.stdout
    assert snpguard("measure", "diff", "a.json", "a.json", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("argv", [
    ["measure", "--vcpus"],                                   # argparse: expected one argument
    ["measure", "--ovmf", "x.fd", "--mode", "tdx"],           # argparse: invalid choice
    ["report", "verify", "--report", "r.bin", "--min-tcb", "snp=lots"],
    ["id-block", "verify", "--id-block", "b", "--id-auth", "a", "--measurement", "xyz"],
    ["sim", "init"],                                          # missing DIR
    ["token", "list", "--url", "ftp://keys.example"],        # not an http(s) URL
])
def test_2_usage(argv: list[str], tmp_path: Path) -> None:
    proc = snpguard(*argv, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "" and "error: " in proc.stderr and "Traceback" not in proc.stderr
    error = json_error(snpguard(*argv, "--json", cwd=tmp_path), 2)
    assert error["code"] == "usage_error"


def test_2_usage_names_the_field(tmp_path: Path) -> None:
    error = json_error(snpguard("measure", "--ovmf", "x.fd", "--vcpu-type", "EPYC-v4", "--json", cwd=tmp_path), 2)
    assert error["field"] == "--vcpus" and "missing --vcpus" in error["message"]


@pytest.mark.parametrize(("argv", "has_json"), [
    (["report", "show", "missing.bin"], True),
    (["report", "verify", "--report", "missing.bin"], True),
    (["measure", "--ovmf", "missing.fd", "--vcpus", "1", "--vcpu-type", "EPYC-v4"], True),
    (["measure", "diff", "missing.json", "missing.json"], True),
    (["id-block", "verify", "--id-block", "missing.b64", "--id-auth", "x", "--id-key-pub", "missing.pem"], True),
    (["certs", "fetch", "--report", "missing.bin"], False),
])
def test_3_missing_file(argv: list[str], has_json: bool, tmp_path: Path) -> None:
    proc = snpguard(*argv, cwd=tmp_path)
    assert proc.returncode == 3 and "missing" in proc.stderr and "No such file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("snpguard ")
    if has_json:
        error = json_error(snpguard(*argv, "--json", cwd=tmp_path), 3)
        assert error["path"].startswith("missing") and error["code"] == "runtime_error" and error["field"]


def test_3_unreachable_server(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{closed_port()}"
    env = {"SNPGUARD_TOKEN": "sgt_0123456789abcdef_" + "A" * 43}
    proc = snpguard("image", "list", "--url", url, cwd=tmp_path, env=env)
    assert proc.returncode == 3 and "cannot reach" in proc.stderr
    error = json_error(snpguard("image", "list", "--url", url, "--json", cwd=tmp_path, env=env), 3)
    assert error["field"] == "url" and "cannot reach" in error["message"]
    # config login cannot fetch the CA: also a runtime error.
    proc = snpguard("config", "login", "--url", url, "--yes", cwd=tmp_path, env=env)
    assert proc.returncode == 3


def test_3_not_an_sev_snp_guest(tmp_path: Path) -> None:
    if os.path.exists("/dev/sev-guest") or os.path.exists("/sys/kernel/config/tsm/report"):
        pytest.skip("this machine is an SEV-SNP guest")
    proc = snpguard("report", "fetch", "--out", "r.bin", cwd=tmp_path)
    assert proc.returncode == 3 and "not an SEV-SNP guest" in proc.stderr


def test_3_unexpected_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli_measure, "_run", broken)
    assert cli_main.main(["measure", "--ovmf", "x.fd", "--vcpus", "1"]) == 3
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("snpguard measure: unexpected error: ZeroDivisionError: division by zero")
    assert "Traceback" not in err
    assert cli_main.main(["measure", "--ovmf", "x.fd", "--vcpus", "1", "--json"]) == 3
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc == {"error": {"message": "ZeroDivisionError: division by zero", "code": "unexpected_error"},
                   "exit_code": 3}
    monkeypatch.setenv("SNPGUARD_DEBUG", "1")
    assert cli_main.main(["measure", "--ovmf", "x.fd", "--vcpus", "1"]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_json_errors_keep_stdout_a_single_document(tmp_path: Path) -> None:
    """config login writes its progress to stderr under --json, so stdout stays parseable on errors too."""
    url = f"https://127.0.0.1:{closed_port()}"
    proc = snpguard("config", "login", "--url", url, "--yes", "--json", cwd=tmp_path,
                    env={"SNPGUARD_TOKEN": "sgt_0123456789abcdef_" + "A" * 43})
    json_error(proc, 3)


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_measure, "_run", interrupted)
    assert cli_main.main(["measure", "--ovmf", "x.fd", "--vcpus", "1"]) == 130
    assert capsys.readouterr().err == "snpguard measure: interrupted\n"
