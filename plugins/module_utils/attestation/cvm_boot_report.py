# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Backend of ``cvm_boot_report``: the boot report a VM printed on its serial console, read on its host.

A ``mode: verity`` VM makes its SSH host key at boot and has the AMD-SP sign a report whose
REPORT_DATA binds that key (``agent/boot_report.py``), printed on the console.  The console is
read here, on the VM's host, not over SSH: the key has to be known before the first SSH
connection, so that the connection itself can pin it.  The REPORT_DATA the report must carry
is recomputed from the key; verifying the report (chain, measurement, that REPORT_DATA) is
``snp_report_verify``'s job on the controller.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from typing import Any

from ..agent.boot_report import ConsoleReport, parse_console
from ..snp.errors import SnpError

DEFAULT_STATE_ROOT = "/var/lib/snpguard/vms"
MAX_LOG = 64 << 20


def _read_tail(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - MAX_LOG))
            return handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise SnpError(f"cannot read the serial log: {exc.strerror}", field="serial_log", path=path) from exc


def apply(params: dict[str, Any], *, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    name = params.get("name") or ""
    state_dir = params.get("state_dir") or os.path.join(DEFAULT_STATE_ROOT, name)
    path = params.get("serial_log") or os.path.join(state_dir, "serial.log")
    wait = float(params.get("timeout") or 0)
    end = clock() + wait
    found: ConsoleReport | None = None
    while True:
        found = parse_console(_read_tail(path))
        if found is not None or clock() >= end:
            break
        sleep(2.0)
    if found is None:
        raise SnpError(f"no boot report on the console within {wait:.0f} s (is it a verity image whose "
                       "snpguard-boot-report.service ran? see the log's snpguard-boot-report lines)",
                       field="serial_log", path=path)
    key_type, key_b64 = found.host_key.split()
    return {"changed": False, "serial_log": path, "host_key": found.host_key, "host_key_type": key_type,
            "host_key_b64": key_b64, "fingerprint": found.fingerprint,
            "report_b64": base64.b64encode(found.report).decode(), "report_data": found.report_data().hex()}
