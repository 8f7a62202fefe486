# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The guest agent: attest, receive the volume key, open the LUKS2 root.  Runs in the initrd.

    python3 -I /usr/lib/snpguard/agent/snpguard-agent.py [--config /etc/snpguard/agent.json]

(the initramfs-tools local-top script and the dracut hook call it after the network is up).
One run:

1. the configuration (``config.py``; ``snpguard.url=`` on the measured cmdline overrides the URL);
2. one console line on what early-boot networking found (``network.py``, parsed, never sourced);
3. the LUKS device, waited for and resolved without udev (UUID=/LABEL= read from LUKS headers);
4. ``AgentClient(url, ca_file).release(get_report)`` with the configured report source only
   (``auto`` = configfs-tsm, then /dev/sev-guest; the simulated channel only when named),
   retried with exponential backoff and one console line per try;
5. the key piped to ``cryptsetup open --key-file=-`` through stdin (never a file), then wiped.

Exit status: 0 unlocked; 2 bad configuration; 3 the server refused (final: the server's
check is printed); 4 no key after every try; 5 cryptsetup failed.  Any non-zero status
must stop the boot (the callers power the VM off: no rescue shell, no root).

Standard library + ``cryptography``; no subprocess module (module_utils rule): cryptsetup
is started with ``os.posix_spawn`` and a pipe.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

from ..attestation.report_sources import (
    SEV_GUEST_DEVICE,
    TSM_ROOT,
    get_report,
    via_channel,
    via_configfs,
    via_sev_guest,
)
from ..keyrelease.agent_client import AgentClient, Refused, ReportSource
from ..keyrelease.protocol import wipe
from ..snp.errors import SnpError
from .config import CONFIG_PATH, AgentConfig, apply_cmdline, cmdline_value, load_config
from .network import read_leases, summary

EXIT_OK, EXIT_CONFIG, EXIT_REFUSED, EXIT_NO_KEY, EXIT_UNLOCK = 0, 2, 3, 4, 5
PREFIX = "snpguard-agent: "
CRYPTSETUP_PATHS = ("/usr/sbin/cryptsetup", "/sbin/cryptsetup", "/usr/bin/cryptsetup", "/bin/cryptsetup")
DEVICE_WAIT = 60.0
LUKS_MAGIC = b"LUKS\xba\xbe"

#: (device, mapper name, key, allow_discards) -> (exit status, what went wrong or "").
Opener = Callable[[str, str, bytearray, bool], "tuple[int, str]"]


def say(message: str) -> None:
    """One line on the console (the initrd's stderr is the console)."""
    sys.stderr.write(PREFIX + message + "\n")
    sys.stderr.flush()


def report_source(kind: str) -> ReportSource:
    """The configured source only; ``auto`` never falls back to a simulated one."""
    def configfs(data: bytes) -> tuple[bytes, bytes | None]:
        answer = via_configfs(data)
        return answer.report, answer.certs

    def sev_guest(data: bytes) -> tuple[bytes, bytes | None]:
        answer = via_sev_guest(data)
        return answer.report, answer.certs

    def channel(data: bytes) -> tuple[bytes, bytes | None]:
        answer = via_channel(data)
        return answer.report, answer.certs

    def auto(data: bytes) -> tuple[bytes, bytes | None]:
        answer = get_report(data, tsm_root=TSM_ROOT, device=SEV_GUEST_DEVICE)
        return answer.report, answer.certs

    sources: dict[str, ReportSource] = {"configfs": configfs, "sev-guest": sev_guest, "channel": channel,
                                        "auto": auto}
    if kind not in sources:
        raise SnpError(f"unknown report source {kind!r}", field="report_source")
    return sources[kind]


# -- the LUKS device ----------------------------------------------------------------------------------


def luks_identity(path: str) -> tuple[str, str] | None:
    """(UUID, label) from a LUKS header at the start of ``path``, or None (not LUKS, unreadable)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(208)
    except OSError:
        return None
    if len(header) < 208 or header[:6] != LUKS_MAGIC:
        return None
    uuid = header[168:208].split(b"\0", 1)[0].decode("ascii", "replace")
    label = header[24:72].split(b"\0", 1)[0].decode("utf-8", "replace") if header[6:8] == b"\0\2" else ""
    return uuid, label


def find_device(spec: str, sys_block: str = "/sys/class/block", dev: str = "/dev") -> str | None:
    """``/dev/…`` as given, or the block device whose LUKS header has this UUID/LABEL (no udev needed)."""
    kind, _sep, value = spec.partition("=")
    if spec.startswith("/"):
        return spec if os.path.exists(spec) else None
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        names = []
    for name in names:
        path = os.path.join(dev, name)
        identity = luks_identity(path)
        if identity is None:
            continue
        if (kind == "UUID" and identity[0].lower() == value.lower()) or (kind == "LABEL" and identity[1] == value):
            return path
    return None


def wait_device(spec: str, deadline: float = DEVICE_WAIT, **where: str) -> str | None:
    end = time.monotonic() + deadline
    while True:
        found = find_device(spec, **where)
        if found or time.monotonic() >= end:
            return found
        time.sleep(0.25)


def cryptsetup_open(device: str, name: str, key: bytearray, allow_discards: bool) -> tuple[int, str]:
    """``cryptsetup open --type luks --key-file=- DEVICE NAME`` with the key on a pipe as its stdin."""
    program = next((p for p in CRYPTSETUP_PATHS if os.access(p, os.X_OK)), None)
    if program is None:
        return 127, "cryptsetup is not in the initrd"
    argv = [program, "open", "--type", "luks", "--key-file=-", device, name]
    if allow_discards:
        argv.insert(2, "--allow-discards")
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn(program, argv, dict(os.environ),
                             file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0), (os.POSIX_SPAWN_CLOSE, write_end)])
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        return 126, f"cannot start cryptsetup: {exc.strerror}"
    os.close(read_end)
    try:
        view, written = memoryview(key), 0
        while written < len(view):
            written += os.write(write_end, view[written:])
    except OSError as exc:
        return 125, f"cannot hand the key to cryptsetup: {exc.strerror}"
    finally:
        os.close(write_end)
        _pid, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code, "" if code == 0 else f"cryptsetup open exited with {code}"


# -- one run --------------------------------------------------------------------------------------------


def release_key(config: AgentConfig, get_report: ReportSource, *,
                sleep: Callable[[float], None] = time.sleep) -> tuple[int, bytearray | None]:
    """The handshake with retries; (exit status, key or None)."""
    try:
        client = AgentClient(config.url, ca_file=config.ca_file, timeout=config.timeout)
    except SnpError as exc:
        say(f"bad configuration: {exc}")
        return EXIT_CONFIG, None
    for attempt in range(1, config.retries + 1):
        started = time.monotonic()
        try:
            key = client.release(get_report)
        except Refused as exc:
            say(f"REFUSED by {config.url}: check {exc.check or 'unnamed'}: {exc.message}")
            return EXIT_REFUSED, None
        except SnpError as exc:
            wait = config.delay(attempt) if attempt < config.retries else 0.0
            then = f"; again in {wait:.1f} s" if wait else ""
            say(f"try {attempt}/{config.retries}: {exc} ({time.monotonic() - started:.1f} s){then}")
            if wait:
                sleep(wait)
            continue
        say(f"try {attempt}/{config.retries}: attested, key released for {config.image} "
            f"({time.monotonic() - started:.1f} s)")
        return EXIT_OK, key
    say(f"no key from {config.url} after {config.retries} tries")
    return EXIT_NO_KEY, None


def run(config: AgentConfig, get_report: ReportSource, *, opener: Opener = cryptsetup_open,
        sleep: Callable[[float], None] = time.sleep, device_wait: float = DEVICE_WAIT, net_glob: str | None = None,
        cmdline: str = "") -> int:
    leases, problems = read_leases(net_glob) if net_glob else read_leases()
    say("network: " + summary(leases, cmdline_value(cmdline, "ip")))
    for problem in problems:
        say(f"network: ignored {problem}")
    device = wait_device(config.luks_device, device_wait)
    if device is None:
        say(f"the LUKS device {config.luks_device} did not appear within {device_wait:.0f} s")
        return EXIT_UNLOCK
    say(f"image {config.image}: {config.luks_device} is {device}; asking {config.url} "
        f"(report source {config.report_source})")
    status, key = release_key(config, get_report, sleep=sleep)
    if key is None:
        return status
    try:
        code, problem = opener(device, config.mapper_name, key, config.allow_discards)
    finally:
        wipe(key)
    if code != 0:
        say(f"cannot open {device} as /dev/mapper/{config.mapper_name}: {problem}")
        return EXIT_UNLOCK
    say(f"{device} opened as /dev/mapper/{config.mapper_name}; key wiped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snpguard-agent", description="attest and unlock the LUKS2 root")
    parser.add_argument("--config", default=CONFIG_PATH)
    parser.add_argument("--cmdline", default="/proc/cmdline", help="the kernel command line file")
    parser.add_argument("--check", action="store_true", help="only validate the configuration")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        with open(args.cmdline, encoding="utf-8", errors="replace") as handle:
            cmdline = handle.read()
    except OSError:
        cmdline = ""
    try:
        config = apply_cmdline(load_config(args.config), cmdline)
        get = report_source(config.report_source)
    except SnpError as exc:
        say(f"bad configuration: {exc}")
        return EXIT_CONFIG
    if args.check:
        say(f"configuration OK: {config.url} for image {config.image}")
        return EXIT_OK
    status = run(config, get, cmdline=cmdline)
    say(f"{'done' if status == EXIT_OK else 'FAILED'} in {time.monotonic() - started:.1f} s (status {status})")
    return status
