# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""At boot, a verity VM asks for a report that binds this boot's SSH host key.

    python3 -I -S /usr/lib/snpguard/report/snpguard-boot-report.py [--source auto|configfs|sev-guest|channel]

A ``mode: verity`` image holds no secret and releases no key at boot; what a runtime
attestation needs instead is proof that the machine it reaches over SSH is the measured VM.
The host key is made at each boot (the root is read-only, /etc an overlay), so after sshd's
keys exist ``snpguard-boot-report.service`` runs this: REPORT_DATA is
``snp.binding.host_key_binding`` of the ed25519 host key, and the report goes to
``/run/snpguard/boot-report.bin`` with ``boot-report.json`` beside it (the key, its
fingerprint, the REPORT_DATA).  Two console lines carry the fingerprint and the report
(base64), so an operator can pin the key from the serial log alone.

Exit status: 0 written; 2 no host key within the wait; 3 no report.  Standard library only
(it runs with the image's python3 and ``-S``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence

from ..attestation.report_sources import GuestReport, get_report, via_channel, via_configfs, via_sev_guest
from ..common.fileio import atomic_write
from ..snp.binding import host_key_binding
from ..snp.errors import SnpError

PREFIX = "snpguard-boot-report: "
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
OUT_DIR = "/run/snpguard"
KEY_WAIT = 120.0


def say(message: str) -> None:
    sys.stdout.write(PREFIX + message + "\n")
    sys.stdout.flush()


def read_host_key(path: str, deadline: float) -> tuple[str, bytes]:
    """(the .pub line's "type base64" part, the decoded blob), waiting for the key to be made."""
    end = time.monotonic() + deadline
    while True:
        try:
            with open(path, encoding="ascii") as handle:
                fields = handle.read().split()
            blob = base64.b64decode(fields[1], validate=True)
            return f"{fields[0]} {fields[1]}", blob
        except (OSError, IndexError, ValueError, binascii.Error, UnicodeDecodeError):
            if time.monotonic() >= end:
                raise SnpError(f"no SSH host key within {deadline:.0f} s", field="host_key", path=path) from None
            time.sleep(1.0)


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint (``ssh-keygen -l``)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snpguard-boot-report", description="a report binding the SSH host key")
    parser.add_argument("--source", choices=["auto", "configfs", "sev-guest", "channel"], default="auto")
    parser.add_argument("--host-key", default=HOST_KEY)
    parser.add_argument("--out", default=OUT_DIR)
    parser.add_argument("--wait", type=float, default=KEY_WAIT)
    args = parser.parse_args(argv)
    try:
        key, blob = read_host_key(args.host_key, args.wait)
    except SnpError as exc:
        say(f"FAILED: {exc.message}")
        return 2
    report_data = host_key_binding(blob)
    sources = {"auto": get_report, "configfs": via_configfs, "sev-guest": via_sev_guest, "channel": via_channel}
    try:
        answer: GuestReport = sources[args.source](report_data)
    except SnpError as exc:
        say(f"FAILED: no report ({exc.message})")
        return 3
    os.makedirs(args.out, mode=0o755, exist_ok=True)
    atomic_write(os.path.join(args.out, "boot-report.bin"), answer.report)
    facts = {"host_key": key, "fingerprint": fingerprint(blob), "report_data": report_data.hex(),
             "source": answer.source}
    atomic_write(os.path.join(args.out, "boot-report.json"), (json.dumps(facts, indent=1) + "\n").encode())
    for line in console_lines(key, facts["fingerprint"], f"{args.out}/boot-report.bin", answer.source, answer.report):
        say(line)
    return 0


def console_lines(key: str, key_fingerprint: str, where: str, source: str, report: bytes) -> list[str]:
    """The two console messages (after ``PREFIX``) that ``parse_console`` reads back."""
    return [f"SSH host key {key_fingerprint} ({key}) bound into REPORT_DATA; report in {where} ({source})",
            f"report {base64.b64encode(report).decode()}"]


# -- reading it back -------------------------------------------------------------------------------------


class ConsoleReport:
    """The last boot report a VM printed: its host key line, fingerprint and report (as printed)."""

    def __init__(self, host_key: str, fingerprint: str, report: bytes) -> None:
        self.host_key = host_key  # "ssh-ed25519 AAAA..."
        self.fingerprint = fingerprint
        self.report = report

    @property
    def key_blob(self) -> bytes:
        return base64.b64decode(self.host_key.split()[1], validate=True)

    def report_data(self) -> bytes:
        """What REPORT_DATA must be for this key: recomputed here, never taken from the guest's word."""
        return host_key_binding(self.key_blob)


def parse_console(text: str) -> ConsoleReport | None:
    """The last complete boot report in a serial log (lines may carry systemd's or the kernel's prefix).

    A key line without a report line after it (a boot still in progress, or a failed report) does not count;
    the fingerprint printed must be the key's own.
    """
    found: ConsoleReport | None = None
    key: tuple[str, str] | None = None
    for line in text.splitlines():
        at = line.find(PREFIX)
        if at < 0:
            continue
        message = line[at + len(PREFIX):].strip()
        if message.startswith("SSH host key "):
            words = message.split()
            try:
                open_paren = message.index("(")
                close_paren = message.index(")", open_paren)
            except ValueError:
                key = None
                continue
            host_key = message[open_paren + 1:close_paren].strip()
            key = (host_key, words[3]) if len(words) > 3 and len(host_key.split()) == 2 else None
        elif message.startswith("report ") and key is not None:
            try:
                report = base64.b64decode(message.split()[1], validate=True)
                blob = base64.b64decode(key[0].split()[1], validate=True)
            except (IndexError, ValueError, binascii.Error):
                key = None
                continue
            if fingerprint(blob) == key[1]:
                found = ConsoleReport(key[0], key[1], report)
            key = None
    return found
