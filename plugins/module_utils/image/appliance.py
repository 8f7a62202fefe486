# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The libguestfs appliance: the one place image surgery touches a disk.

Every change to an image happens inside libguestfs' own small VM, never through the
conversion host's kernel: the host needs no loop devices, no device mapper and no
mounts, and a hostile image's file systems are parsed by the appliance's kernel only.
``guestfs`` (Debian's python3-guestfs) is imported lazily so that the rest of the
collection works without it; its absence is a clear error that names the package.

Shell steps that libguestfs' API cannot express with the options we need (cryptsetup
with a chosen PBKDF, veritysetup) run in the appliance through ``debug sh``.  A secret
(the hex volume key) travels only in the text of that one command, over libguestfs'
channel into the appliance's memory, where ``printf`` pipes it to cryptsetup: it is
never in a file of the appliance (whose root is an overlay file on the host) or of the host.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..snp.errors import SnpError

OK_MARK = "SNPGUARD-STEP-OK"
#: An emulated appliance boots in 0.5-3 min here, even with every core busy; one that has not come up
#: in 10 (seen in CI: launch() waited on an appliance that never connected) is killed and started again.
LAUNCH_TIMEOUT = 600.0
LAUNCH_TRIES = 2


class ApplianceError(SnpError):
    """A libguestfs call failed; the message carries libguestfs' own words."""


def load_guestfs() -> Any:
    try:
        import guestfs  # type: ignore[import-not-found]
    except ImportError:
        raise ApplianceError("image conversion needs libguestfs' Python binding (Debian: apt-get install "
                             "python3-guestfs libguestfs-tools)", field="python3-guestfs") from None
    return guestfs


@contextmanager
def appliance(drives: Sequence[tuple[str, str, bool] | tuple[str, str, bool, str]], *, memsize: int = 2048,
              smp: int = 2, force_tcg: bool = False, launch_timeout: float = LAUNCH_TIMEOUT) -> Iterator[Any]:
    """A launched appliance with ``drives`` = (path, format, readonly[, label]) as /dev/sda, /dev/sdb, ...

    Give each drive a label when shell steps name devices: ``kernel_devices`` finds what the
    appliance's kernel calls them (not always the order added), ``disk_devices`` what libguestfs'
    API calls them.
    ``force_tcg`` for hosts whose /dev/kvm does not work (nested virtualisation):
    libguestfs then emulates the appliance's CPU.  An appliance that does not come up within
    ``launch_timeout`` s is killed and launched once more.
    """
    guestfs = load_guestfs()
    if force_tcg:
        settings = os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "")
        if "force_tcg" not in settings.split(":"):
            os.environ["LIBGUESTFS_BACKEND_SETTINGS"] = ":".join(s for s in (settings, "force_tcg") if s)
    for attempt in range(1, LAUNCH_TRIES + 1):
        handle = guestfs.GuestFS(python_return_dict=True)
        try:
            handle.set_memsize(memsize)
            handle.set_smp(smp)
            for path, disk_format, readonly, *label in drives:
                call(f"add the drive {path} ({disk_format})", handle.add_drive_opts, path, format=disk_format,
                     readonly=readonly, **({"label": label[0]} if label else {}))
            try:
                hung = _launch(handle, launch_timeout)
            except RuntimeError as exc:
                raise ApplianceError(f"libguestfs could not start its appliance: {exc} (libguestfs-test-tool "
                                     "diagnoses this; on hosts without working KVM set force_tcg)",
                                     field="appliance") from exc
            if hung:
                if attempt < LAUNCH_TRIES:
                    continue
                raise ApplianceError(f"libguestfs' appliance did not come up within {launch_timeout:.0f} s, "
                                     f"{LAUNCH_TRIES} times (libguestfs-test-tool diagnoses this)", field="appliance")
            yield handle
            try:
                handle.shutdown()
            except RuntimeError as exc:
                raise ApplianceError(f"libguestfs could not close the image cleanly: {exc}",
                                     field="appliance") from exc
            return
        finally:
            handle.close()


def _launch(handle: Any, timeout: float) -> bool:
    """``handle.launch()``; True when the appliance hung and was killed (launch then fails: start again).

    libguestfs waits for its appliance without a deadline. The hypervisor is a child of this
    process: after ``timeout`` s a watchdog kills the QEMU children that this launch started.
    """
    before = _qemu_children()
    done, killed = threading.Event(), threading.Event()

    def watch() -> None:
        if done.wait(timeout):
            return
        for pid in _qemu_children() - before:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.set()
            except ProcessLookupError:
                pass

    watchdog = threading.Thread(target=watch, name="appliance-launch-watchdog", daemon=True)
    watchdog.start()
    try:
        handle.launch()
    except RuntimeError:
        if killed.is_set():
            return True
        raise
    finally:
        done.set()
        watchdog.join()
    return False


def _qemu_children() -> set[int]:
    """PIDs of this process's children whose program is QEMU."""
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1:stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2:].split()
        if fields and fields[1] == str(me) and comm.startswith("qemu"):
            found.add(int(entry))
    return found


def disk_devices(handle: Any, *labels: str) -> list[str]:
    """libguestfs' API name of each labelled drive (``/dev/sdX`` in the order added): for API calls only."""
    found = call("disk labels", handle.list_disk_labels)
    missing = [label for label in labels if label not in found]
    if missing:
        raise ApplianceError(f"no disk labelled {', '.join(missing)} in the appliance (it has {sorted(found)})",
                             field="appliance")
    return [found[label] for label in labels]


def kernel_devices(handle: Any, *labels: str) -> list[str]:
    """The appliance kernel's device of each labelled drive: for shell steps.

    The kernel scans the disks asynchronously, so its names need not follow the order they were
    added (seen: the new, empty image as /dev/sda and the source as /dev/sdc, the appliance's own
    disk in between). libguestfs translates its API's names; a shell gets the kernel's, which
    udev's ``/dev/disk/guestfs/LABEL`` links give.
    """
    out = []
    for label in labels:
        device = shell(handle, f"find the disk labelled {label}", f"readlink -f /dev/disk/guestfs/{label}").strip()
        if not device.startswith("/dev/") or device.startswith("/dev/disk/"):
            raise ApplianceError(f"no disk labelled {label} in the appliance (got {device!r})", field="appliance")
        out.append(device)
    return out


def call(what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """One libguestfs call; its error becomes an ApplianceError naming the step."""
    try:
        return function(*args, **kwargs)
    except RuntimeError as exc:
        raise ApplianceError(f"{what}: {exc}", field=what) from exc


def shell(handle: Any, what: str, script: str, *, secret: str | None = None) -> str:
    """Run ``script`` with ``sh -e`` in the appliance; ``secret`` (hex/ASCII) is its stdin.

    The output of a failed script is in the error; a secret is never echoed by us, and
    scripts given one must not print it.
    """
    if secret is not None:
        if not secret.isascii() or not secret.isalnum():
            raise ApplianceError("an appliance secret must be ASCII letters and digits", field=what)
        script = f"printf '%s' {shlex.quote(secret)} | {{\n{script}\n}}"
    wrapped = f"set -e\n{script}\necho {OK_MARK}"
    try:
        output = handle.debug("sh", [wrapped])
    except RuntimeError as exc:
        raise ApplianceError(f"{what}: {_redact(str(exc), secret)}", field=what) from exc
    if OK_MARK not in output:
        raise ApplianceError(f"{what} failed: {_redact(output.strip()[-2000:], secret)}", field=what)
    return output.replace(OK_MARK, "").strip()


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "<secret>") if secret else text
