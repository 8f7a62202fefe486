# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""A guest's life cycle: start, stop (gracefully), restart, remove — idempotent by configuration digest.

Each VM has a state dir (0700) with QEMU's pidfile, QMP socket and serial log, and
``state.json`` recording the digest and argv it was started with.  A guest counts as
running when its pid is alive *and* is the QEMU named ``snpguard-<name>`` (a reused pid
never counts).  Stopping asks the guest to power down (ACPI, over QMP), waits, then
tells QEMU to quit, and kills it only as a last resort.  A simulated launch also runs
the simulated AMD-SP (``simulation.serve``) as a daemon beside QEMU, stopped with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from ..common.fileio import atomic_write
from ..common.process import Runner
from ..snp.errors import SnpError
from .argv import Paths, build_argv
from .config import VmConfig
from .qmp import Qmp, QmpError
from .simulation import launch_digest, prepare, run_daemon

STATE_FILE = "state.json"
AMDSP_PIDFILE = "amdsp.pid"


@dataclass
class Result:
    changed: bool
    state: str
    message: str = ""
    argv: list[str] = field(default_factory=list)
    digest: str | None = None
    config_differs: bool = False
    pid: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "state": self.state, "msg": self.message, "argv": self.argv,
                "digest": self.digest, "config_differs": self.config_differs, "pid": self.pid}


def qemu_version(binary: str, run: Runner) -> tuple[int, int]:
    rc, out, err = run([binary, "--version"], 30)
    if rc != 0:
        raise SnpError(f"cannot run {binary} --version (exit {rc}): {err.strip()[-500:]}", field="qemu")
    words = out.split()
    if "version" not in words:
        raise SnpError(f"{binary} --version printed no version", field="qemu")
    major, minor, *_rest = [*words[words.index("version") + 1].split("."), "0"]
    return int(major), int(minor)


def _alive(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read()
    except OSError:
        return False
    return marker.encode() in cmdline


def _read_pid(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class Vm:
    """One guest, by name, under ``state_dir``."""

    def __init__(self, name: str, state_dir: str, run: Runner) -> None:
        self.name = name
        self.run = run
        self.state_dir = state_dir
        self.paths = Paths(state_dir)
        self.marker = f"process=snpguard-{name}"

    # -- facts -------------------------------------------------------------------------------------
    def pid(self) -> int | None:
        pid = _read_pid(self.paths.pidfile)
        return pid if pid is not None and _alive(pid, self.marker) else None

    def recorded(self) -> dict[str, Any]:
        try:
            with open(os.path.join(self.state_dir, STATE_FILE), encoding="utf-8") as handle:
                return dict(json.load(handle))
        except (OSError, ValueError):
            return {}

    def status(self) -> dict[str, Any]:
        pid = self.pid()
        out: dict[str, Any] = {"name": self.name, "state": "running" if pid else "stopped", "pid": pid,
                               "digest": self.recorded().get("digest"), "serial_log": self.paths.serial_log,
                               "state_dir": self.state_dir}
        if pid:
            with contextlib.suppress(QmpError), Qmp(self.paths.qmp, timeout=5) as qmp:
                out["guest"] = qmp.command("query-status").get("status")
        return out

    # -- start -------------------------------------------------------------------------------------
    def start(self, config: VmConfig, *, simulated_amdsp: str | None = None, restart: bool = False,
              check_mode: bool = False) -> Result:
        config.validate()
        digest = config.digest()
        running = self.pid()
        if running and not restart:
            recorded = self.recorded().get("digest")
            if recorded == digest:
                return Result(False, "running", "already running with this configuration", digest=digest,
                              pid=running, argv=self.recorded().get("argv", []))
            return Result(False, "running", "running with ANOTHER configuration (set state: restarted, or "
                          "'snpguard vm start --restart', to relaunch with this one)", digest=digest,
                          config_differs=True, pid=running)
        version = qemu_version(config.qemu, self.run)
        if check_mode:
            gpa = None
            if config.simulate:
                from ..snp.ovmf import parse_firmware

                with open(config.firmware, "rb") as handle:
                    gpa = parse_firmware(handle.read(), config.firmware).hash_table_gpa
                launch_digest(config)  # the refusals a real start would give
            argv = build_argv(config, hashes_table_gpa=gpa, qemu_version=version)
            return Result(True, "running", "would start" if not running else "would restart", argv, digest)
        if running:
            self.stop()
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        gpa = None
        if config.simulate:
            if not simulated_amdsp:
                raise SnpError("a simulated launch needs the simulated AMD-SP directory (snpguard sim init DIR)",
                               field="simulated_amdsp")
            gpa = prepare(config, simulated_amdsp).hashes_table_gpa
            self._start_amdsp()
        argv = build_argv(config, hashes_table_gpa=gpa, qemu_version=version)
        for stale in (self.paths.pidfile, self.paths.qmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        rc, _out, err = self.run(argv, 120)
        if rc != 0:
            self._stop_amdsp()
            raise SnpError(f"QEMU did not start (exit {rc}): {err.strip()[-2000:]}", field="qemu")
        atomic_write(os.path.join(self.state_dir, STATE_FILE),
                     (json.dumps({"digest": digest, "argv": argv, "started_at": time.time(),
                                  "simulate": config.simulate}, indent=2) + "\n").encode(), mode=0o600)
        return Result(True, "running", "started" if not running else "restarted", argv, digest, pid=self.pid())

    # -- stop ------------------------------------------------------------------------------------
    def stop(self, *, timeout: float = 60.0, check_mode: bool = False) -> Result:
        pid = self.pid()
        if pid is None:
            amdsp = self._amdsp_pid()
            if amdsp and not check_mode:
                self._stop_amdsp()
            return Result(False, "stopped", "not running")
        if check_mode:
            return Result(True, "stopped", "would stop", pid=pid)
        how = "powered down"
        with contextlib.suppress(QmpError), Qmp(self.paths.qmp, timeout=5) as qmp:
            qmp.command("system_powerdown")
        if not self._wait_gone(pid, timeout):
            how = "quit (the guest did not power down in time)"
            with contextlib.suppress(QmpError), Qmp(self.paths.qmp, timeout=5) as qmp:
                qmp.command("quit")
            if not self._wait_gone(pid, 10):
                how = "killed (QEMU did not quit)"
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_gone(pid, 10)
        self._stop_amdsp()
        return Result(True, "stopped", how, pid=pid)

    def remove(self, *, check_mode: bool = False) -> Result:
        stopped = self.stop(check_mode=check_mode)
        exists = os.path.isdir(self.state_dir)
        if check_mode:
            return Result(stopped.changed or exists, "absent", "would remove the state dir" if exists else "")
        if exists:
            shutil.rmtree(self.state_dir)
        return Result(stopped.changed or exists, "absent", "removed" if exists else "nothing to remove")

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid, self.marker):
                return True
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        return not _alive(pid, self.marker)

    # -- the simulated AMD-SP ------------------------------------------------------------------------
    def _amdsp_pid(self) -> int | None:
        """The daemon's pid while it holds the lock on its pidfile (so a reused pid never counts)."""
        path = os.path.join(self.state_dir, AMDSP_PIDFILE)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(path)  # locked: the daemon is alive
        finally:
            os.close(fd)
        return None

    def _start_amdsp(self) -> None:
        """Fork the simulated AMD-SP (a daemon: its own session, no stdio); return once it listens."""
        self._stop_amdsp()
        socket_path = self.paths.amdsp_socket
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        pid = os.fork()
        if pid == 0:  # the child: detach again so the daemon is nobody's child
            try:
                os.setsid()
                if os.fork() != 0:
                    os._exit(0)
                run_daemon(self.state_dir, os.path.join(self.state_dir, AMDSP_PIDFILE))
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(socket_path) and self._amdsp_pid():
                return
            time.sleep(0.05)
        raise SnpError("the simulated AMD-SP did not start", field="simulated_amdsp", path=self.state_dir)

    def _stop_amdsp(self) -> None:
        pid = self._amdsp_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._amdsp_pid():
            time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.state_dir, AMDSP_PIDFILE))
