# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""A small supervisor for hosts where systemd is not PID 1 (containers, CI machines).

    snpguard-supervise CONFIG.json start|stop|restart|status

CONFIG is JSON: ``argv`` (the server's command line), ``user``/``group`` to run it as,
``pidfile`` (holds the supervisor's pid), ``log`` (appended to), ``env``, ``cwd``.
``start`` detaches (double fork, new session, std streams to the log) and returns once
the supervisor has written its pidfile; the supervisor restarts the server when it
exits unexpectedly (backoff 1 s doubling to 30 s, reset after a minute of uptime) and
on SIGTERM stops it (SIGTERM to its process group, SIGKILL after 20 s).
Exit status of ``status``: 0 running, 3 not running (as LSB init scripts).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import signal
import subprocess
import sys
import time


def load(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_pid(pidfile):
    try:
        with open(pidfile, encoding="ascii") as handle:
            pid = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def write_pid(path, pid):
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write(f"{pid}\n")
    os.replace(tmp, path)


def log_line(handle, text):
    handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} snpguard-supervise: {text}\n".encode())
    handle.flush()


def identity(config):
    """Popen's user/group/extra_groups for the configured account (nothing when not root)."""
    user, group = config.get("user"), config.get("group")
    if os.geteuid() != 0 or not user or user == "root":
        return {}
    entry = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    return {"user": entry.pw_uid, "group": gid, "extra_groups": [gid]}


def supervise(config, log):
    stopping = False
    child = None

    def on_term(_signum, _frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    env = dict(config.get("env") or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})  # a clean environment
    backoff = 1.0
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(config["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 cwd=config.get("cwd") or "/", env=env, start_new_session=True, **identity(config))
        log_line(log, f"started {config['argv'][0]} (pid {child.pid})")
        write_pid(config["pidfile"] + ".server", child.pid)
        while True:
            try:
                code = child.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                if stopping:
                    deadline = time.monotonic() + 20
                    while child.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.2)
                    if child.poll() is None:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(child.pid, signal.SIGKILL)
                    code = child.wait()
                    break
        # What the server leaves behind in its process group (uvicorn's workers, when the
        # main process was killed with SIGKILL) would keep serving outside supervision, on
        # the old socket: end them, as systemd does with the unit's control group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        if stopping:
            log_line(log, f"stopped (exit status {code})")
            return
        uptime = time.monotonic() - started
        backoff = 1.0 if uptime > 60 else min(backoff * 2, 30.0)
        log_line(log, f"server exited with status {code} after {uptime:.0f} s; restarting in {backoff:.0f} s")
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)


def start(config):
    pidfile = config["pidfile"]
    pid = read_pid(pidfile)
    if pid:
        print(f"running (pid {pid})")
        return 0
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pidfile)
    if os.fork() > 0:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pid = read_pid(pidfile)
            if pid:
                print(f"started (pid {pid})")
                return 0
            time.sleep(0.1)
        print("the supervisor did not start; see the log", file=sys.stderr)
        return 1
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    log = open(config["log"], "ab", buffering=0)  # noqa: SIM115 - the daemon's lifetime
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    os.closerange(3, log.fileno())
    os.closerange(log.fileno() + 1, 1024)
    write_pid(pidfile, os.getpid())
    try:
        supervise(config, log)
    finally:
        for path in (pidfile + ".server", pidfile):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    os._exit(0)


def stop(config):
    pid = read_pid(config["pidfile"])
    if not pid:
        print("not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if read_pid(config["pidfile"]) is None:
            print(f"stopped (pid {pid})")
            return 0
        time.sleep(0.2)
    print(f"pid {pid} did not stop", file=sys.stderr)
    return 1


def main(argv):
    if len(argv) != 3 or argv[2] not in ("start", "stop", "restart", "status"):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    config = load(argv[1])
    action = argv[2]
    if action == "status":
        pid = read_pid(config["pidfile"])
        server = read_pid(config["pidfile"] + ".server") if pid else None
        print(f"running (pid {pid}, server pid {server or '-'})" if pid else "not running")
        return 0 if pid else 3
    if action == "stop":
        return stop(config)
    if action == "restart":
        code = stop(config)
        if code:
            return code
    return start(config)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
