# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The server role's preflight refuses bad variables by name before it touches the host."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from ansible_run import PLAYBOOK_BIN, ansible_env


def preflight(tmp: Path, variables: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    play = [{
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable, **variables},
        "tasks": [{"ansible.builtin.include_role": {"name": "snpguard.cvm.server", "tasks_from": "preflight"}}],
    }]
    book = tmp / "preflight.yml"
    book.write_text(json.dumps(play))
    return subprocess.run([str(PLAYBOOK_BIN), "-i", "localhost,", "-c", "local", "--check", str(book)],
                          env=ansible_env(tmp), cwd=tmp, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"snpguard_server_workers": 0}, "snpguard_server_workers must be a positive integer or 'auto', got 0"),
        ({"snpguard_server_workers": "many"}, "snpguard_server_workers must be a positive integer or 'auto'"),
        ({"snpguard_server_listen": "8443"}, "snpguard_server_listen must be HOST:PORT, got 8443"),
        ({"snpguard_server_tls_cert": "/etc/c.pem"}, "give both snpguard_server_tls_cert and snpguard_server_tls_key"),
        ({"snpguard_server_source": "/nonexistent"}, "must be a checkout of snpguard.cvm or an installed copy"),
        ({"snpguard_server_service_manager": "systemd"}, "systemd is not PID 1 on this host"),
    ],
    ids=["workers-0", "workers-word", "listen", "tls-half", "source", "systemd-absent"],
)
def test_refused(tmp_path: Path, variables: dict[str, Any], message: str) -> None:
    if "snpguard_server_service_manager" in variables and Path("/run/systemd/system").is_dir():
        pytest.skip("systemd is PID 1 here")
    done = preflight(tmp_path, variables)
    assert done.returncode != 0
    assert message in done.stdout, done.stdout[-3000:]


@pytest.mark.parametrize("workers", ["auto", 4, "2"])
def test_accepted(tmp_path: Path, workers: object) -> None:
    done = preflight(tmp_path, {"snpguard_server_workers": workers})
    assert done.returncode == 0, done.stdout[-3000:]


@pytest.fixture
def busy_account(tmp_path: Path):
    """A system account whose home is not the data dir asked for, with a process running as it."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd")
    name = f"snpg-pre-{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--home-dir", str(tmp_path / "other-home"), "--no-create-home",
                    "--shell", "/usr/sbin/nologin", name], check=True)
    # runuser stays the parent of its command: a session of their own, so both are killed.
    sleeper = subprocess.Popen(["runuser", "-u", name, "--", "sleep", "300"], start_new_session=True)
    try:
        yield name
    finally:
        os.killpg(sleeper.pid, signal.SIGKILL)
        sleeper.wait()
        subprocess.run(["pkill", "--signal", "KILL", "-u", name], check=False)
        for _attempt in range(50):
            if subprocess.run(["userdel", name], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"could not remove the test account {name}")


def test_an_account_in_use_whose_home_would_move_is_refused(tmp_path: Path, busy_account: str) -> None:
    """usermod cannot move the home of an account with processes (another instance): named before any change."""
    data_dir = tmp_path / "data"
    done = preflight(tmp_path, {"snpguard_server_user": busy_account, "snpguard_server_group": busy_account,
                                "snpguard_server_data_dir": str(data_dir)})
    assert done.returncode != 0
    assert f"snpguard_server_user {busy_account} has the home {tmp_path / 'other-home'} and running processes" \
        in done.stdout, done.stdout[-3000:]
    assert f"snpguard_server_data_dir ({data_dir})" in done.stdout
    assert not data_dir.exists()


def test_an_account_in_use_with_the_same_home_is_accepted(tmp_path: Path, busy_account: str) -> None:
    """The usual rerun: the server runs as its account, whose home already is the data dir."""
    done = preflight(tmp_path, {"snpguard_server_user": busy_account, "snpguard_server_group": busy_account,
                                "snpguard_server_data_dir": str(tmp_path / "other-home")})
    assert done.returncode == 0, done.stdout[-3000:]
