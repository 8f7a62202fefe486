# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""QEMU's command line for an SEV-SNP guest, built from tables of per-property formatters.

Each option is one row: which configuration value it comes from, how that value is
written, and when it is left out — so a reader checks a property against QEMU's own
``-object sev-snp-guest,help`` line by line.  Property names and value forms were
checked against Debian's QEMU 10.0 (trixie) and 11.1 (sid) (tests/pytest/qemu/): the
same twelve properties in both; ``policy`` is a uint64 (written 0x…), ``id-block``,
``id-auth`` and ``host-data`` are base64 of 96, ≤4096 and 32 bytes, ``reduced-phys-bits``
is required, ``kernel-hashes`` defaults to off.

``simulate`` launches the same firmware, kernel, initrd and cmdline under TCG without
the SEV object: the kernel-hashes table is loaded at the firmware's hashes page (OVMF
then checks the kernel against it exactly as on hardware, and refuses a mismatch), and
a virtio-serial port connects the guest to the host's simulated AMD-SP.
"""

from __future__ import annotations

import base64
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import VmConfig

SEV_OBJECT_ID = "sev0"
RAM_ID = "ram1"
AMDSP_PORT = "org.snpguard.amdsp.0"


@dataclass(frozen=True)
class Prop:
    """One ``key=value`` of a QEMU option: ``value(config)`` or None to leave it out."""

    key: str
    value: Callable[[VmConfig], str | None]


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _on(flag: bool) -> str:
    return "on" if flag else "off"


#: -object sev-snp-guest,…  (QEMU ≥ 9.1; names as in qom-list-properties of QEMU 10.0 and 11.1)
SEV_SNP_GUEST: tuple[Prop, ...] = (
    Prop("id", lambda c: SEV_OBJECT_ID),
    Prop("policy", lambda c: f"0x{c.policy:x}"),
    Prop("cbitpos", lambda c: str(c.cbitpos) if c.cbitpos is not None else None),
    Prop("reduced-phys-bits", lambda c: str(c.reduced_phys_bits) if c.reduced_phys_bits is not None else None),
    Prop("kernel-hashes", lambda c: "on"),
    Prop("id-block", lambda c: c.id_block),
    Prop("id-auth", lambda c: c.id_auth),
    Prop("author-key-enabled", lambda c: "on" if c.id_block is not None and c.author_key_enabled else None),
    Prop("host-data", lambda c: _b64(c.host_data)),
)

#: -machine q35,…
MACHINE: tuple[Prop, ...] = (
    Prop("confidential-guest-support", lambda c: None if c.simulate else SEV_OBJECT_ID),
    Prop("memory-backend", lambda c: None if c.simulate else RAM_ID),
)

#: -object memory-backend-memfd,…  (guest memory that KVM can make private)
MEMORY_BACKEND: tuple[Prop, ...] = (
    Prop("id", lambda c: RAM_ID),
    Prop("size", lambda c: f"{c.memory_mb}M"),
    Prop("share", lambda c: "true"),
    Prop("prealloc", lambda c: "false"),
)


def render(kind: str, props: Sequence[Prop], config: VmConfig) -> str:
    """``kind,key=value,…`` with the rows whose value is not None.  Commas in values are doubled (QEMU's escape)."""
    parts = [kind] if kind else []
    for prop in props:
        value = prop.value(config)
        if value is not None:
            parts.append(f"{prop.key}={value.replace(',', ',,')}")
    return ",".join(parts)


@dataclass(frozen=True)
class Paths:
    """Files of one VM under its state dir (the launcher's, never the guest's)."""

    state_dir: str

    @property
    def qmp(self) -> str:
        return f"{self.state_dir}/qmp.sock"

    @property
    def pidfile(self) -> str:
        return f"{self.state_dir}/qemu.pid"

    @property
    def serial_log(self) -> str:
        return f"{self.state_dir}/serial.log"

    @property
    def hashes_table(self) -> str:
        return f"{self.state_dir}/kernel-hashes.bin"

    @property
    def amdsp_socket(self) -> str:
        return f"{self.state_dir}/amdsp.sock"


#: Spawned by QEMU for each guest connection of a guest forward, with that connection as fd 0/1: relays it to
#: the host's loopback port.  (A chardev target would be one connection opened when QEMU starts, which a TLS
#: server closes after its handshake timeout; ``cmd:`` gives every connection its own.)
GUESTFWD_RELAY = """import os, select, socket, sys
guest = socket.socket(fileno=0)
host = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
while True:
    for side in select.select([guest, host], [], [])[0]:
        data = side.recv(65536)
        if not data:
            sys.exit(0)
        (host if side is guest else guest).sendall(data)
"""


def guestfwd_command(host_port: int, python: str | None = None) -> str:
    """``cmd:<python> -c <relay> PORT`` with QEMU's comma escape (libslirp splits it like a shell)."""
    argv = [python or sys.executable or "python3", "-c", GUESTFWD_RELAY, str(host_port)]
    return "cmd:" + shlex.join(argv).replace(",", ",,")


def build_argv(config: VmConfig, *, hashes_table_gpa: int | None = None, qemu_version: tuple[int, int] = (10, 0),
               daemonize: bool = True, relay_python: str | None = None) -> list[str]:
    """The whole command line.  ``hashes_table_gpa`` (simulation only) is where OVMF looks for the table."""
    paths = Paths(config.state_dir)
    argv = [config.qemu, "-name", f"{config.name},process=snpguard-{config.name}", "-nodefaults", "-no-user-config",
            "-display", "none"]
    argv += ["-machine", render("q35", MACHINE, config)]
    if config.simulate:
        # la57=off: with five-level paging, emulated guests panic now and then (seen: a Debian 13 kernel in
        # __kmalloc at 0.6 s); libguestfs turns it off for its TCG appliance too.
        argv += ["-accel", "tcg", "-cpu", "max,la57=off"]
    else:
        argv += ["-accel", "kvm", "-cpu", config.vcpu_type,
                 "-object", render("memory-backend-memfd", MEMORY_BACKEND, config),
                 "-object", render("sev-snp-guest", SEV_SNP_GUEST, config)]
    argv += ["-smp", str(config.vcpus), "-m", f"{config.memory_mb}M", "-bios", config.firmware,
             "-kernel", config.kernel]
    if config.initrd:
        argv += ["-initrd", config.initrd]
    argv += ["-append", config.cmdline]
    if config.simulate:
        if hashes_table_gpa is None:
            raise ValueError("a simulated launch needs the firmware's hashes-table address")
        argv += ["-device", f"loader,file={paths.hashes_table},addr=0x{hashes_table_gpa:x},force-raw=on"]
        if qemu_version < (10, 0):
            # QEMU before 10 rewrites the kernel's setup header in the copy it gives the firmware unless SEV is
            # on, so OVMF would hash a kernel that is not the file; it also publishes no pristine copy.  Give
            # OVMF the file as it is under the name newer QEMUs use (etc/boot/kernel), which OVMF prefers.
            argv += ["-fw_cfg", f"name=etc/boot/kernel,file={config.kernel}"]
        argv += ["-device", "virtio-serial-pci,id=vser0",
                 "-chardev", f"socket,id=amdsp,path={paths.amdsp_socket},reconnect=1",
                 "-device", f"virtserialport,bus=vser0.0,chardev=amdsp,name={AMDSP_PORT}"]
    for index, disk in enumerate(config.disks):
        drive = f"file={disk.path},format={disk.format},if=none,id=disk{index},cache=none,aio=threads,discard=unmap"
        if disk.readonly:
            drive += ",readonly=on"
        device = f"virtio-blk-pci,drive=disk{index}"
        if disk.serial:
            device += f",serial={disk.serial}"
        argv += ["-drive", drive, "-device", device]
    if config.network == "user":
        netdev = "user,id=net0,restrict=on"
        for host_port, guest_port in config.forwards:
            netdev += f",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"
        for address, port, host_port in config.guest_forwards:
            netdev += f",guestfwd=tcp:{address}:{port}-{guestfwd_command(host_port, relay_python)}"
        argv += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0"]
    argv += ["-qmp", f"unix:{paths.qmp},server=on,wait=off",
             "-chardev", f"file,id=serial0,path={paths.serial_log}", "-serial", "chardev:serial0"]
    if daemonize:
        argv += ["-daemonize", "-pidfile", paths.pidfile]
    return argv


def describe(config: VmConfig) -> dict[str, Any]:
    """The SEV object's properties by name (for check mode and docs)."""
    return {prop.key: prop.value(config) for prop in SEV_SNP_GUEST if prop.value(config) is not None}
