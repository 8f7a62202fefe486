# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``workers``: a count or ``auto``, from config.json or the command line; bad values refused by name."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from servers import ServerProcess, snpguard_cmd, snpguard_env

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.server.config import auto_workers, load_settings, usable_cpus

PG_URL = "postgresql+psycopg://snpguard@127.0.0.1:5432/snpguard"


@pytest.mark.parametrize(
    ("url", "cpus", "expected"),
    [
        ("sqlite+pysqlite:////x/server.db", 1, 1),
        ("sqlite+pysqlite:////x/server.db", 2, 2),
        ("sqlite+pysqlite:////x/server.db", 64, 32),
        (PG_URL, 1, 2),
        (PG_URL, 2, 4),
        (PG_URL, 16, 32),
    ],
)
def test_auto_workers(url: str, cpus: int, expected: int) -> None:
    assert auto_workers(url, cpus) == expected


def test_auto_from_config_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"workers": "auto"}))
    assert load_settings(str(tmp_path), {}).workers == usable_cpus()
    (tmp_path / "config.json").write_text(json.dumps({"workers": "auto", "db_url": PG_URL}))
    assert load_settings(str(tmp_path), {}).workers == min(32, 2 * usable_cpus())


def test_count_from_config_file_and_override(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"workers": 3}))
    assert load_settings(str(tmp_path), {}).workers == 3
    assert load_settings(str(tmp_path), {"workers": "auto"}).workers == usable_cpus()
    assert load_settings(str(tmp_path), {"workers": 5}).workers == 5


def test_default_is_one(tmp_path: Path) -> None:
    assert load_settings(str(tmp_path), {}).workers == 1


@pytest.mark.parametrize("value", [0, -2, "many", "", "2.5", 2.5, True, None, [2]])
def test_bad_workers_refused(tmp_path: Path, value: object) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"workers": value}))
    with pytest.raises(SnpError) as info:
        load_settings(str(tmp_path), {})
    assert info.value.field == "workers"
    assert "positive integer or 'auto'" in str(info.value)


@pytest.mark.parametrize("value", ["0", "-1", "two", "Auto"])
def test_cli_refuses_bad_workers(tmp_path: Path, value: str) -> None:
    done = subprocess.run(snpguard_cmd("server", "run", "--data-dir", str(tmp_path), "--workers", value),
                          capture_output=True, text=True, env=snpguard_env(), timeout=60, check=False)
    assert done.returncode == 2
    assert "--workers" in done.stderr
    assert "positive integer or 'auto'" in done.stderr


def _worker_pids(parent: int) -> list[int]:
    """uvicorn's worker processes: children started by multiprocessing's spawn (not its resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_run_with_auto_starts_one_worker_per_core(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", ["--workers", "auto", "--insecure-http"]).start(timeout=60)
    try:
        assert server.proc is not None
        # One worker runs in the supervisor's own process (no children).
        expected = usable_cpus() if usable_cpus() > 1 else 0
        # uvicorn's supervisor may still be spawning the last worker when the first answers.
        deadline = time.monotonic() + 30
        while len(_worker_pids(server.proc.pid)) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_worker_pids(server.proc.pid)) == expected
    finally:
        server.stop()


def test_workers_exit_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """kill -9 of uvicorn's main process must not leave workers serving on the old socket."""
    server = ServerProcess(tmp_path / "data", ["--workers", "2", "--insecure-http"]).start(timeout=60)
    try:
        assert server.proc is not None
        deadline = time.monotonic() + 30
        while len(_worker_pids(server.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _worker_pids(server.proc.pid)
        assert len(workers) == 2
        os.kill(server.proc.pid, signal.SIGKILL)  # the main process only, not its group
        server.proc.wait(10)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    finally:
        server.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)  # whatever is left, so other tests are not affected
