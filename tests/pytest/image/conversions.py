# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""What the conversion tests share: the CLI as users run it, the tools they need, waiting for a boot."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from servers import snpguard_cmd, snpguard_env

from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.vm import Vm

CONVERT_TIMEOUT = 2400
BOOT_DEADLINE = 900.0  # systemd to multi-user under TCG on a loaded 2-core machine: ~2-4 min normally


def need_tools() -> Any:
    if os.geteuid() != 0:
        pytest.skip("conversion needs root (libguestfs' appliance, dpkg in the image)")
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    return pytest.importorskip("guestfs")


def convert_cli(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(snpguard_env(), LIBGUESTFS_BACKEND="direct", LIBGUESTFS_BACKEND_SETTINGS="force_tcg")
    return subprocess.run(snpguard_cmd("image", "convert", *argv), env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=CONVERT_TIMEOUT, check=False)


#: Terminal control sequences systemd and the firmware write to the console (colours, cursor moves).
ANSI = re.compile(r"\x1b(\[[0-9;?=]*[A-Za-z]|\][^\x07]*\x07|\[!p|[=>])")


def console(serial: Path) -> str:
    """The serial log as a person reads it: without terminal control sequences."""
    return ANSI.sub("", serial.read_text(errors="replace")) if serial.exists() else ""


def wait_for(vm: Vm, serial: Path, done: re.Pattern[str], deadline: float = BOOT_DEADLINE) -> str:
    """The console text once ``done`` matches it or the VM is gone (then a second more)."""
    end = time.monotonic() + deadline
    text = ""
    while time.monotonic() < end:
        text = console(serial)
        if done.search(text) or vm.pid() is None:
            time.sleep(1.0)
            return console(serial)
        time.sleep(1.0)
    raise AssertionError(f"nothing decisive within {deadline} s; serial log tail:\n{text[-4000:]}")
