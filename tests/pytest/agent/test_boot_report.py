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
