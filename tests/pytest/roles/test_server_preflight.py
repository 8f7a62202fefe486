# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The server role's preflight refuses bad variables by name before it touches the host."""

from __future__ import annotations

import json
import subprocess
import sys
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
