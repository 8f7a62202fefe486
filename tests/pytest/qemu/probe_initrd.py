# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""A tiny initrd that asks the (simulated) AMD-SP for one report and prints it on the serial console.

busybox (Debian trixie's busybox-static, fetched by scripts/fetch-artifacts) and a /init
that mounts /proc, /sys and devtmpfs, finds the virtio-serial port named
``org.snpguard.amdsp.0`` through sysfs (no udev), writes ``REPORT <hex> 0`` and prints the
answer between markers, then powers off.  The kernel is Debian 13's, which has the virtio
console built in.  The archive is a deterministic newc cpio, gzip-compressed, so the same
inputs give the same bytes (and the same launch measurement).
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

BEGIN, END = "SNPGUARD-PROBE-BEGIN", "SNPGUARD-PROBE-END"

INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "probe: up at $(cut -d' ' -f1 /proc/uptime) s"
NAME=org.snpguard.amdsp.0
PORT=
for i in $(seq 1 100); do
  for d in /sys/class/virtio-ports/vport*; do
    [ -e "$d/name" ] && [ "$(cat "$d/name")" = "$NAME" ] && PORT=/dev/${d##*/} && break 2
  done
  sleep 0.1
done
if [ -z "$PORT" ]; then echo "probe: no port named $NAME"; poweroff -f; fi
while [ ! -c "$PORT" ]; do sleep 0.1; done
exec 3<>"$PORT"
echo "REPORT @REPORT_DATA@ 0" >&3
read -r STATUS REPORT CERTS <&3
exec 3>&-
echo "@BEGIN@ $STATUS $(cut -d' ' -f1 /proc/uptime)"
echo "$REPORT" | fold -w 76
echo "@END@"
@AFTER@
"""


def _newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(f"{v:08x}" for v in (
            ino if name != "TRAILER!!!" else 0, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0))
        out.write(header.encode() + encoded)
        out.write(b"\0" * (-(110 + len(encoded)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
    return out.getvalue()


def build(busybox: Path, report_data: bytes, out: Path, *, stay: bool = False) -> Path:
    """Write the probe initrd asking for ``report_data`` (64 bytes) to ``out``; ``stay`` keeps the guest up after."""
    after = "while true; do sleep 3600; done" if stay else "poweroff -f"
    script = (INIT.replace("@REPORT_DATA@", report_data.hex()).replace("@BEGIN@", BEGIN).replace("@END@", END)
              .replace("@AFTER@", after))
    entries = [("bin", 0o040755, b""), ("dev", 0o040755, b""), ("proc", 0o040755, b""), ("sys", 0o040755, b""),
               ("bin/busybox", 0o100755, busybox.read_bytes()), ("init", 0o100755, script.encode())]
    out.write_bytes(gzip.compress(_newc(entries), compresslevel=9, mtime=0))
    return out


def report_from_serial(text: str) -> tuple[str, bytes] | None:
    """(status, report) once the probe printed it, else None."""
    import base64

    if BEGIN not in text or END not in text.split(BEGIN, 1)[1]:
        return None
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    first, *rest = body.strip().splitlines()
    status = first.split()[0]
    data = "".join(line.strip() for line in rest)
    return status, base64.b64decode(data) if data else b""
