# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard measure``: --json, --explain, vCPU lists, ``diff``, errors, --dump-vmsa, --cross-check."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.snpguard.cvm.cli import main as cli_main

REPO = Path(__file__).resolve().parents[3]
DEVROOT = REPO / "build" / "devroot"
SSM = REPO / ".venv" / "bin" / "sev-snp-measure"
SECTION_NAMES = ("SNP_SEC_MEM", "SNP_SECRETS", "CPUID", "SVSM_CAA", "SNP_KERNEL_HASHES")


@pytest.fixture(scope="module")
def fx(vectors: Path) -> Path:
    return vectors / "measurement" / "fixtures" / "sev-snp-measure"


@pytest.fixture
def payload(tmp_path: Path) -> dict[str, Path]:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ kernel " * 1000)
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"\x1f\x8b initrd " * 700)
    other = tmp_path / "vmlinuz-2"
    other.write_bytes(b"MZ kernel " * 1000 + b"!")
    return {"kernel": kernel, "initrd": initrd, "other": other}


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """The CLI in-process, argparse exits included."""
    try:
        code = cli_main.main(["measure", *argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def entry(argv: list[str], cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The real entry point: python -m ansible_collections.snpguard.cvm.cli."""
    env = dict(os.environ, PYTHONPATH=str(DEVROOT))
    return subprocess.run([sys.executable, "-m", "ansible_collections.snpguard.cvm.cli", *argv], env=env,
                          capture_output=True, cwd=cwd, timeout=120, check=False, **kwargs)


def snp_args(fx: Path, payload: dict[str, Path], *extra: str, append: str = "console=ttyS0 ro") -> list[str]:
    return ["--mode", "snp", "--vcpu-type", "EPYC-v4", "--ovmf", str(fx / "ovmf_AmdSev_suffix.bin"),
            "--kernel", str(payload["kernel"]), "--initrd", str(payload["initrd"]), "--append", append, *extra]


def json_doc(argv: list[str], capsys) -> dict:
    code, out, err = run([*argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


# --- output ---


def test_real_entry_point(fx: Path, payload, capsys) -> None:
    argv = ["measure", *snp_args(fx, payload, "--vcpus", "2")]
    proc = entry(argv)
    assert proc.returncode == 0, proc.stderr
    code, out, _err = run(argv[1:], capsys)
    assert code == 0 and proc.stdout.decode() == out
    assert len(out.strip()) == 96 and int(out, 16) >= 0


def test_json_document(fx: Path, payload, capsys) -> None:
    doc = json_doc(snp_args(fx, payload, "--vcpus", "1,3"), capsys)
    assert set(doc) == {"measurement", "measurements", "inputs"}
    assert list(doc["measurements"]) == ["1", "3"]
    assert doc["measurement"] == doc["measurements"]["1"] != doc["measurements"]["3"]
    inputs = doc["inputs"]
    for name in ("kernel", "initrd"):
        data = payload[name].read_bytes()
        assert inputs[name] == {"path": str(payload[name]), "sha256": hashlib.sha256(data).hexdigest(),
                                "size": len(data)}
    ovmf = fx / "ovmf_AmdSev_suffix.bin"
    assert inputs["ovmf"]["path"] == str(ovmf)
    assert inputs["ovmf"]["size"] == ovmf.stat().st_size
    assert inputs["ovmf"]["sha384"] == hashlib.sha384(ovmf.read_bytes()).hexdigest()
    code, ovmf_hash, _err = run(["--mode", "snp:ovmf-hash", "--ovmf", str(ovmf)], capsys)
    assert code == 0 and inputs["ovmf"]["launch_digest"] == ovmf_hash.strip()
    assert [s["type"] for s in inputs["ovmf"]["sections"]] == [
        "SNP_SEC_MEM", "SNP_SEC_MEM", "SNP_SECRETS", "CPUID", "SVSM_CAA", "SNP_KERNEL_HASHES", "SNP_SEC_MEM"]
    assert inputs["cmdline_sha256"] == hashlib.sha256(b"console=ttyS0 ro\x00").hexdigest()
    assert inputs["append"] == "console=ttyS0 ro"
    assert inputs["vcpus"] == [1, 3] and inputs["vcpu_type"] == "EPYC-v4" and inputs["vcpu_sig"] == "0x800f12"
    assert inputs["mode"] == "snp" and inputs["vmm_type"] == "QEMU" and inputs["guest_features"] == "0x1"
    # The plain output agrees with the JSON.
    code, out, _err = run(snp_args(fx, payload, "--vcpus", "3"), capsys)
    assert out.strip() == doc["measurements"]["3"]


def test_json_with_explain(fx: Path, payload, capsys) -> None:
    doc = json_doc(snp_args(fx, payload, "--vcpus", "2", "--explain"), capsys)
    steps = doc["explain"]
    assert [s["what"] for s in steps][-2:] == ["VMSA vCPU 0 (BSP)", "VMSA vCPU 1 (AP)"]
    assert steps[-1]["digest_after"] == doc["measurement"]
    hashes = [s for s in steps if s["what"] == "metadata SNP_KERNEL_HASHES"]
    assert hashes and hashes[0]["kernel_sha256"] == doc["inputs"]["kernel"]["sha256"]


def test_explain_text(fx: Path, payload, capsys) -> None:
    code, out, err = run(snp_args(fx, payload, "--vcpus", "4", "--explain"), capsys)
    assert code == 0, err
    for name in SECTION_NAMES:
        assert f"metadata {name}" in out, name
    for name in ("kernel", "initrd"):
        assert hashlib.sha256(payload[name].read_bytes()).hexdigest() in out
    assert hashlib.sha256(b"console=ttyS0 ro\x00").hexdigest() in out
    assert "VMSA vCPU 0 (BSP)" in out and "VMSA vCPUs 1..3 (APs)" in out
    code, plain, _err = run(snp_args(fx, payload, "--vcpus", "4"), capsys)
    assert f"measurement (4 vCPUs): {plain.strip()}" in out


def test_vcpu_list_prints_one_line_each(fx: Path, payload, capsys) -> None:
    code, out, err = run(snp_args(fx, payload, "--vcpus", "1,2,4"), capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    for line, count in zip(lines, (1, 2, 4), strict=True):
        _code, single, _err = run(snp_args(fx, payload, "--vcpus", str(count)), capsys)
        assert line == f"vcpus={count} {single.strip()}"


def test_output_formats(fx: Path, payload, capsys) -> None:
    import base64

    _code, hex_out, _err = run(snp_args(fx, payload, "--vcpus", "1"), capsys)
    _code, b64_out, _err = run(snp_args(fx, payload, "--vcpus", "1", "--output-format", "base64"), capsys)
    assert base64.b64decode(b64_out.strip()).hex() == hex_out.strip()
    _code, verbose, _err = run(snp_args(fx, payload, "--vcpus", "1", "-v"), capsys)
    assert verbose == f"Calculated SEV_SNP guest measurement: {hex_out.strip()}\n"


# --- diff ---


def _write(path: Path, doc: dict) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_diff(fx: Path, payload, tmp_path: Path, capsys) -> None:
    base = json_doc(snp_args(fx, payload, "--vcpus", "2"), capsys)
    a = _write(tmp_path / "a.json", base)
    same = _write(tmp_path / "same.json", json_doc(snp_args(fx, payload, "--vcpus", "2"), capsys))
    code, out, _err = run(["diff", a, same], capsys)
    assert code == 0 and "identical" in out

    kernel_args = snp_args(fx, payload, "--vcpus", "2")
    kernel_args[kernel_args.index(str(payload["kernel"]))] = str(payload["other"])
    kernel = _write(tmp_path / "kernel.json", json_doc(kernel_args, capsys))
    code, out, _err = run(["diff", a, kernel], capsys)
    assert code == 1
    assert "kernel.sha256" in out and "cmdline_sha256" not in out and "- vcpus" not in out
    assert "2 vCPUs: differ" in out

    append = _write(tmp_path / "append.json", json_doc(snp_args(fx, payload, "--vcpus", "2", append="quiet"), capsys))
    code, out, _err = run(["diff", a, append], capsys)
    assert code == 1 and "cmdline_sha256" in out and "kernel.sha256" not in out
    assert "console=ttyS0 ro" in out and "quiet" in out

    vcpus = _write(tmp_path / "vcpus.json", json_doc(snp_args(fx, payload, "--vcpus", "2,4"), capsys))
    code, out, _err = run(["diff", a, vcpus], capsys)
    assert code == 1 and "- vcpus:" in out and "kernel.sha256" not in out
    assert "2 vCPUs: same" in out and "4 vCPUs: only in b" in out

    code, out, _err = run(["diff", a, kernel, "--json"], capsys)
    report = json.loads(out)
    assert code == 1 and report["differ"] is True
    assert [d["field"] for d in report["differences"]] == ["kernel.sha256"]


@pytest.mark.artifacts
def test_diff_of_real_launches_prints_values_not_reprs(artifacts: Path, tmp_path: Path, capsys) -> None:
    """Debian's firmware, kernel and initrd, launched two ways that differ in five inputs."""
    other_kernel = tmp_path / "vmlinuz-patched"
    other_kernel.write_bytes((artifacts / "vmlinuz").read_bytes() + b"\0")
    common = ["--ovmf", str(artifacts / "OVMF.amdsev.fd"), "--initrd", str(artifacts / "initrd.img")]
    a_doc = json_doc([*common, "--kernel", str(artifacts / "vmlinuz"), "--append", "console=ttyS0",
                      "--vcpus", "2", "--vcpu-type", "EPYC-v4"], capsys)
    b_doc = json_doc([*common, "--kernel", str(other_kernel), "--append", "console=ttyS0 quiet",
                      "--vcpus", "4", "--vcpu-type", "EPYC-Milan", "--guest-features", "0x21"], capsys)
    a, b = _write(tmp_path / "a.json", a_doc), _write(tmp_path / "b.json", b_doc)
    code, out, err = run(["diff", a, b], capsys)
    assert code == 1 and err == ""
    for repr_marker in ("b'", "b\"", "{'", "['", "None", "True", "False", "{", "["):
        assert repr_marker not in out, f"{repr_marker!r} in:\n{out}"
    lines = out.splitlines()
    assert lines[0] == "5 inputs differ:"
    fields = [line[2:].split(":", 1)[0] for line in lines if line.startswith("- ")]
    assert fields == ["vcpus", "vcpu_sig", "guest_features", "kernel.sha256", "cmdline_sha256"]

    def sides(field: str) -> tuple[str, str]:
        index = lines.index(next(line for line in lines if line.startswith(f"- {field}: ")))
        assert lines[index + 1].startswith("    a: ") and lines[index + 2].startswith("    b: ")
        return lines[index + 1][7:], lines[index + 2][7:]

    assert sides("vcpus") == ("2", "4")
    assert sides("vcpu_sig") == ("0x800f12 (EPYC-v4)", "0xa00f11 (EPYC-Milan)")
    assert sides("guest_features") == ("0x1", "0x21")
    kernel_a, kernel_b = sides("kernel.sha256")
    assert kernel_a == (f"{hashlib.sha256((artifacts / 'vmlinuz').read_bytes()).hexdigest()} "
                        f"({artifacts / 'vmlinuz'}, {(artifacts / 'vmlinuz').stat().st_size} bytes)")
    assert kernel_b.startswith(hashlib.sha256(other_kernel.read_bytes()).hexdigest() + " (")
    cmdline_a, cmdline_b = sides("cmdline_sha256")
    assert cmdline_a == f'"console=ttyS0" (SHA-256 {hashlib.sha256(b"console=ttyS0" + bytes(1)).hexdigest()})'
    assert cmdline_b.startswith('"console=ttyS0 quiet" (SHA-256 ')
    # Both measurements, by vCPU count, as the hex the documents hold.
    tail = lines[lines.index("measurements:"):]
    assert tail == ["measurements:", "  2 vCPUs: only in a", f"    a: {a_doc['measurements']['2']}",
                    "    b: not measured", "  4 vCPUs: only in b", "    a: not measured",
                    f"    b: {b_doc['measurements']['4']}"]


def test_diff_same_inputs_different_measurements(fx: Path, payload, tmp_path: Path, capsys) -> None:
    """Documents from different tool versions: both forms of ``diff`` must report it and exit 1."""
    base = json_doc(snp_args(fx, payload, "--vcpus", "1"), capsys)
    changed = json.loads(json.dumps(base))
    changed["measurements"]["1"] = "00" * 48
    a, b = _write(tmp_path / "a.json", base), _write(tmp_path / "b.json", changed)
    code, out, _err = run(["diff", a, b], capsys)
    assert code == 1 and "measurements differ" in out
    code, out, _err = run(["diff", a, b, "--json"], capsys)
    report = json.loads(out)
    assert report["differ"] is True
    assert code == 1, "diff --json says differ=true but exits 0"


def test_diff_errors(tmp_path: Path, capsys) -> None:
    good = _write(tmp_path / "good.json", {"inputs": {}})
    (tmp_path / "bad.json").write_text("{")
    code, _out, err = run(["diff", good, str(tmp_path / "bad.json")], capsys)
    assert code == 2 and "B.json" in err and "not JSON" in err
    code, _out, err = run(["diff", str(tmp_path / "missing.json"), good], capsys)
    assert code == 3 and "A.json" in err  # a file that cannot be read is a runtime error
    code, _out, err = run(["diff", _write(tmp_path / "list.json", [1]), good], capsys)
    assert code == 2 and "measure --json" in err


# --- bad input: exit 2 with the field named (3 for a file that cannot be read) ---


@pytest.mark.parametrize(("case", "field"), [
    ("missing_vcpus", "--vcpus"),
    ("unknown_vcpu_type", "--vcpu-type"),
    ("bad_ovmf_path", "ovmf"),
    ("not_ovmf", "ovmf"),
    ("short_ovmf_hash", "ovmf_hash"),
    ("bad_hex_ovmf_hash", "ovmf_hash"),
    ("no_ovmf", "--ovmf"),
    ("initrd_without_kernel", "initrd"),
    ("bad_guest_features", "guest_features"),
    ("bad_vmm", "vmm_type"),
    ("vcpus_zero", "vcpus"),
    ("kernel_on_ovmfx64", "ovmf"),
    ("missing_kernel", "kernel"),
    ("dump_vmsa_sev", "--dump-vmsa"),
])
def test_bad_input_exits_2_naming_the_field(fx: Path, payload, tmp_path: Path, capsys, case: str,
                                            field: str) -> None:
    ovmf = str(fx / "ovmf_AmdSev_suffix.bin")
    not_ovmf = tmp_path / "not.fd"
    not_ovmf.write_bytes(b"\x00" * 8192)
    base = ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", ovmf]
    argv = {
        "missing_vcpus": ["--mode", "snp", "--vcpu-type", "EPYC-v4", "--ovmf", ovmf],
        "unknown_vcpu_type": ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v9", "--ovmf", ovmf],
        "bad_ovmf_path": [*base[:-1], str(tmp_path / "missing.fd")],
        "not_ovmf": [*base[:-1], str(not_ovmf)],
        "short_ovmf_hash": [*base, "--snp-ovmf-hash", "ab" * 47],
        "bad_hex_ovmf_hash": [*base, "--snp-ovmf-hash", "xy" * 48],
        "no_ovmf": ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4"],
        "initrd_without_kernel": [*base, "--initrd", str(payload["initrd"])],
        "bad_guest_features": [*base, "--guest-features", "snp"],
        "bad_vmm": [*base, "--vmm-type", "kvm"],
        "vcpus_zero": ["--mode", "snp", "--vcpus", "0", "--vcpu-type", "EPYC-v4", "--ovmf", ovmf],
        "kernel_on_ovmfx64": ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf",
                              str(fx / "ovmf_OvmfX64_suffix.bin"), "--kernel", str(payload["kernel"])],
        "missing_kernel": [*base, "--kernel", str(tmp_path / "no-kernel")],
        "dump_vmsa_sev": ["--mode", "sev", "--ovmf", ovmf, "--dump-vmsa"],
    }[case]
    code, out, err = run(argv, capsys)
    assert code == (3 if case in ("bad_ovmf_path", "missing_kernel") else 2), (out, err)
    assert out == ""
    assert field in err, err
    assert "Traceback" not in err
    if case in ("bad_ovmf_path", "not_ovmf", "missing_kernel"):
        assert argv[argv.index("--ovmf") + 1 if case != "missing_kernel" else -1] in err
    # One line for our errors; argparse (unknown --vcpu-type) prints its usage, then the error line.
    last = err.strip().splitlines()[-1]
    assert field in last and "error" in last, err
    if case != "unknown_vcpu_type":
        assert len(err.strip().splitlines()) == 1 and last.startswith("snpguard measure: error: ")


def test_errors_through_the_real_entry(fx: Path, tmp_path: Path) -> None:
    not_ovmf = tmp_path / "not.fd"
    not_ovmf.write_bytes(b"\x00" * 4096)
    proc = entry(["measure", "--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--ovmf", str(not_ovmf)])
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith(f"snpguard measure: error: ovmf: {not_ovmf}: not an OVMF image")
    assert proc.stdout == b""


def test_non_utf8_append_is_not_a_traceback(fx: Path, payload, tmp_path: Path) -> None:
    """An --append that is not UTF-8 must be measured as the raw bytes QEMU hashes, or refused naming it."""
    argv = [os.fsencode(a) for a in ["measure", *snp_args(fx, payload, "--vcpus", "1", "--json")]]
    argv[argv.index(b"console=ttyS0 ro")] = b"console=ttyS0 \xff"
    proc = entry(argv)
    stderr = proc.stderr.decode(errors="replace")
    assert "Traceback" not in stderr, stderr.splitlines()[-1]
    if proc.returncode == 2:
        assert "append" in stderr
    else:
        assert proc.returncode == 0
        doc = json.loads(proc.stdout)
        assert doc["inputs"]["cmdline_sha256"] == hashlib.sha256(b"console=ttyS0 \xff\x00").hexdigest()


# --- VMSA dumps and the cross-check (need the sev-snp-measure reference) ---

DUMP_CASES = {
    "snp_qemu_3": ["--mode", "snp", "--vcpus", "3", "--vcpu-type", "EPYC-Milan", "--guest-features", "0x21"],
    "snp_ec2_2": ["--mode", "snp", "--vcpus", "2", "--vmm-type", "ec2"],
    "snp_gce_2": ["--mode", "snp", "--vcpus", "2", "--vmm-type", "gce"],
    "seves_2": ["--mode", "seves", "--vcpus", "2", "--vcpu-sig", "0xa10f10"],
    "svsm_2": ["--mode", "snp:svsm", "--vcpus", "2", "--vcpu-type", "EPYC-v4", "--vars-size", "540672"],
}


@pytest.mark.oracle
@pytest.mark.parametrize("case", list(DUMP_CASES))
def test_dump_vmsa_matches_sev_snp_measure(fx: Path, tmp_path: Path, monkeypatch, capsys, case: str) -> None:
    if case == "svsm_2":
        argv = [*DUMP_CASES[case], "--ovmf", str(fx / "svsm_ovmf.fd"), "--svsm", str(fx / "svsm.bin")]
    else:
        argv = [*DUMP_CASES[case], "--ovmf", str(fx / "ovmf_AmdSev_suffix.bin")]
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    monkeypatch.chdir(ours)
    code, out, err = run([*argv, "--dump-vmsa"], capsys)
    assert code == 0, err
    proc = subprocess.run([str(SSM), *argv, "--dump-vmsa"], cwd=theirs, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert out == proc.stdout
    names = sorted(p.name for p in theirs.iterdir())
    assert names == [f"vmsa{i}.bin" for i in range(len(names))] and names
    assert sorted(p.name for p in ours.iterdir()) == names
    for name in names:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


@pytest.mark.oracle
def test_cross_check(fx: Path, payload, capsys) -> None:
    doc = json_doc(snp_args(fx, payload, "--vcpus", "1,2", "--cross-check"), capsys)
    assert doc["cross_check"] == {"sev-snp-measure": doc["measurements"]}
    for argv in (["--mode", "seves", "--vcpus", "3", "--vcpu-type", "EPYC-Rome", "--ovmf",
                  str(fx / "ovmf_AmdSev_suffix.bin")],
                 ["--mode", "sev", "--ovmf", str(fx / "ovmf_AmdSev_suffix.bin")],
                 ["--mode", "snp:ovmf-hash", "--ovmf", str(fx / "ovmf_AmdSev_suffix.bin")],
                 ["--mode", "snp", "--vcpus", "2", "--vmm-type", "gce", "--ovmf", str(fx / "ovmf_AmdSev_suffix.bin")]):
        code, out, err = run([*argv, "--cross-check"], capsys)
        assert code == 0, err
        assert out.strip()


@pytest.mark.oracle
def test_cross_check_disagreement_exits_1(fx: Path, payload, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from sevsnpmeasure import guest  # type: ignore[import-not-found]

    monkeypatch.setattr(guest, "calc_launch_digest", lambda *args, **kwargs: bytes(48))
    code, out, err = run(snp_args(fx, payload, "--vcpus", "1", "--cross-check"), capsys)
    assert code == 1 and out == "" and "sev-snp-measure disagrees for 1 vCPU(s)" in err
    code, out, err = run(snp_args(fx, payload, "--vcpus", "1", "--cross-check", "--json"), capsys)
    doc = json.loads(out)
    assert code == 1 and doc["exit_code"] == 1 and doc["error"]["code"] == "cross_check_failed"


@pytest.mark.oracle
def test_cross_check_refuses_legacy(fx: Path, capsys) -> None:
    code, _out, err = run(["--mode", "snp", "--vcpus", "1", "--vmm-type", "ec2", "--ec2-vmsa", "legacy", "--ovmf",
                          str(fx / "ovmf_AmdSev_suffix.bin"), "--cross-check"], capsys)
    assert code == 2 and "cross_check" in err
