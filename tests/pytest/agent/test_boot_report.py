# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The verity VM's boot report (agent/boot_report.py) as it runs: the image's python3 -I -S, its own files only.

The booted path (simulated channel, a real sshd host key) is tests/pytest/image/test_convert_verity.py;
here: the fingerprint is OpenSSH's, the binding is the documented one, and both ways it can fail
exit non-zero without writing a report.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.agent.boot_report import fingerprint
from ansible_collections.snpguard.cvm.plugins.module_utils.agent.verity import REPORT_DIR, boot_report_files
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.binding import host_key_binding


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The boot report's files as the converter installs them, under tmp_path."""
    for dest, data, mode in boot_report_files("configfs"):
        path = tmp_path / dest.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    return tmp_path


def host_key(tmp_path: Path) -> Path:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key.with_suffix(".pub")


def run_report(installed: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Like the unit: isolated (-I -S), importing only what was installed."""
    code = (f"import sys; sys.path[:0] = [{str(installed) + REPORT_DIR!r}]\n"
            "from ansible_collections.snpguard.cvm.plugins.module_utils.agent.boot_report import main\n"
            "sys.exit(main(sys.argv[1:]))")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run([sys.executable, "-I", "-S", "-B", "-c", code, *argv], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_fingerprint_is_openssh_s(tmp_path: Path) -> None:
    pub = host_key(tmp_path)
    blob = base64.b64decode(pub.read_text().split()[1])
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=True)
    assert fingerprint(blob) == listed.stdout.split()[1]


def test_the_binding_is_sha512_of_label_and_blob() -> None:
    assert host_key_binding(b"\x00\x00\x00\x0bssh-ed25519") == hashlib.sha512(
        b"snpguard/ssh-host-key/v1\x00\x00\x00\x0bssh-ed25519").digest()
    with pytest.raises(ValueError):
        host_key_binding(b"")


def test_no_report_source_fails_closed_and_writes_nothing(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_report(installed, "--source", "configfs", "--host-key", str(host_key(tmp_path)), "--out", str(out))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "FAILED: no report" in done.stdout and not out.exists()


def test_no_host_key_fails_closed_and_writes_nothing(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_report(installed, "--host-key", str(tmp_path / "missing.pub"), "--wait", "1", "--out", str(out))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "FAILED: no SSH host key within 1 s" in done.stdout and not out.exists()


# -- read back from the console (cvm_boot_report) ----------------------------------------------------------

REPORT = bytes(range(256)) * 4 + bytes(160)  # 1184 bytes, as a report is


def printed(pub: Path, report: bytes = REPORT, prefix: str = "") -> str:
    from ansible_collections.snpguard.cvm.plugins.module_utils.agent.boot_report import PREFIX, console_lines

    key = " ".join(pub.read_text().split()[:2])
    blob = base64.b64decode(key.split()[1])
    return "".join(f"{prefix}{PREFIX}{line}\n" for line in
                   console_lines(key, fingerprint(blob), "/run/snpguard/boot-report.bin", "channel", report))


def test_the_console_report_reads_back_with_systemd_or_kernel_prefixes(tmp_path: Path) -> None:
    from ansible_collections.snpguard.cvm.plugins.module_utils.agent.boot_report import parse_console

    pub = host_key(tmp_path)
    key = " ".join(pub.read_text().split()[:2])
    for prefix in ("", "[   85.120144] python3[611]: ", "Dec 07 04:51:25 vm python3[611]: "):
        text = "[  OK  ] Started ssh.service\n" + printed(pub, prefix=prefix) + "debian login: "
        found = parse_console(text)
        assert found is not None, prefix
        assert found.host_key == key and found.report == REPORT
        assert found.report_data() == host_key_binding(base64.b64decode(key.split()[1]))


def test_the_last_complete_report_wins_and_incomplete_or_inconsistent_ones_do_not_count(tmp_path: Path) -> None:
    from ansible_collections.snpguard.cvm.plugins.module_utils.agent.boot_report import PREFIX, parse_console

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = host_key(tmp_path / "a"), host_key(tmp_path / "b")
    assert parse_console(printed(first).splitlines()[0]) is None  # a key line without its report
    both = printed(first, REPORT) + printed(second, REPORT[::-1])
    assert parse_console(both).host_key.split()[1] == second.read_text().split()[1]
    # A fingerprint that is not the key's own (a forged or garbled line) is not a report.
    lines = printed(second).splitlines()
    other = fingerprint(base64.b64decode(first.read_text().split()[1]))
    forged = lines[0].replace(lines[0].split()[4], other) + "\n" + lines[1]
    assert parse_console(printed(first) + forged).host_key.split()[1] == first.read_text().split()[1]
    assert parse_console(f"{PREFIX}report !!!not-base64\n") is None


def test_cvm_boot_report_waits_then_refuses_naming_the_log(tmp_path: Path) -> None:
    from ansible_collections.snpguard.cvm.plugins.module_utils.attestation.cvm_boot_report import apply
    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError

    log = tmp_path / "serial.log"
    log.write_text("booting\n")
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    with pytest.raises(SnpError) as info:
        apply({"serial_log": str(log), "timeout": 10}, sleep=sleep, clock=lambda: now[0])
    assert info.value.field == "serial_log" and len(slept) == 5
    pub = host_key(tmp_path)
    log.write_text("booting\n" + printed(pub))
    result = apply({"serial_log": str(log), "timeout": 0})
    assert result["host_key"] == " ".join(pub.read_text().split()[:2]) and result["changed"] is False
    assert bytes.fromhex(result["report_data"]) == host_key_binding(base64.b64decode(result["host_key_b64"]))
    assert base64.b64decode(result["report_b64"]) == REPORT


@given(st.text(max_size=400))
def test_the_console_parser_takes_any_text(text: str) -> None:
    from ansible_collections.snpguard.cvm.plugins.module_utils.agent.boot_report import PREFIX, parse_console

    parse_console(text)
    parse_console(PREFIX + text)
    parse_console(f"{PREFIX}SSH host key {text}\n{PREFIX}report {text}")
