# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""One SEV-SNP guest's launch configuration: what the launcher turns into QEMU's argv or libvirt XML.

It comes from a launch-artifacts bundle (kernel, initrd, cmdline, launch.json, ID blocks)
plus what belongs to the host (firmware file, memory, disks, network, where state goes),
or from explicit values.  ``digest()`` identifies the configuration: the same digest
running means nothing to do; another one means the guest would launch differently.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..bundle.archive import read_bundle
from ..bundle.launch import bundle_host_data, parse_launch
from ..common.fileio import file_digest
from ..snp.errors import SnpError
from ..snp.options import parse_hex, parse_int
from ..snp.policy import DEFAULT_POLICY, parse_policy

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
DISK_FORMATS = ("qcow2", "raw")


@dataclass
class Disk:
    path: str
    format: str = "qcow2"
    readonly: bool = False
    serial: str | None = None  # the guest's /dev/disk/by-id/virtio-<serial>


@dataclass
class VmConfig:
    """Everything a launch depends on.  Paths are absolute; ``state_dir`` holds pidfile, sockets, logs."""

    name: str
    state_dir: str
    firmware: str
    kernel: str
    initrd: str | None = None
    cmdline: str = ""
    vcpus: int = 1
    vcpu_type: str = "EPYC-v4"
    memory_mb: int = 2048
    policy: int = DEFAULT_POLICY
    guest_features: int = 0x1
    cbitpos: int | None = None
    reduced_phys_bits: int | None = None
    id_block: str | None = None  # base64, as QEMU takes it
    id_auth: str | None = None
    author_key_enabled: bool = False
    host_data: bytes | None = None
    disks: list[Disk] = field(default_factory=list)
    network: str = "none"  # "none", or "user" (QEMU's user-mode network, no inbound traffic but forwards)
    forwards: list[tuple[int, int]] = field(default_factory=list)  # (host port on 127.0.0.1, guest port)
    # (guest address, guest port, host port on 127.0.0.1): the guest's TCP connections to address:port reach the
    # host's loopback port (QEMU guestfwd), e.g. a key-release server for the agent in the initrd.
    guest_forwards: list[tuple[str, int, int]] = field(default_factory=list)
    simulate: bool = False
    qemu: str = "qemu-system-x86_64"
    expected_measurement: str | None = None  # hex, from the bundle's launch.json for this vCPU count

    def validate(self) -> VmConfig:
        if not self.name or not set(self.name) <= NAME_CHARS or self.name[0] in ".-":
            raise SnpError("must be letters, digits, '.', '_' and '-' (not starting with '.' or '-')", field="name")
        for name in ("firmware", "kernel", "initrd"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise SnpError("does not exist or is not a file", field=name, path=path)
        if not 1 <= self.vcpus <= 512:
            raise SnpError(f"must be 1..512, got {self.vcpus}", field="vcpus")
        if self.memory_mb < 128:
            raise SnpError(f"must be at least 128 MiB, got {self.memory_mb}", field="memory_mb")
        if "\n" in self.cmdline or "\x00" in self.cmdline:
            raise SnpError("must be one line without NUL", field="cmdline")
        if (self.id_block is None) != (self.id_auth is None):
            raise SnpError("give both id_block and id_auth, or neither", field="id_block")
        if self.host_data is not None and len(self.host_data) != 32:
            raise SnpError(f"must be 32 bytes, got {len(self.host_data)}", field="host_data")
        if self.network not in ("none", "user"):
            raise SnpError(f"must be none or user, got {self.network!r}", field="network")
        if self.forwards and self.network != "user":
            raise SnpError("port forwards need network: user", field="forwards")
        if self.guest_forwards and self.network != "user":
            raise SnpError("guest forwards need network: user", field="guest_forwards")
        seen: set[tuple[str, int]] = set()
        for forward in self.guest_forwards:
            address, port, _host_port = check_guest_forward(forward)
            if (address, port) in seen:
                raise SnpError(f"{address}:{port} is forwarded twice", field="guest_forwards")
            seen.add((address, port))
        for disk in self.disks:
            if disk.format not in DISK_FORMATS:
                raise SnpError(f"must be one of {', '.join(DISK_FORMATS)}", field="disks.format")
            if not os.path.exists(disk.path):
                raise SnpError("does not exist", field="disks.path", path=disk.path)
        return self

    # -- identity ------------------------------------------------------------------------------------
    def launch_facts(self) -> dict[str, Any]:
        """What the launch is measured and checked by (the host_data binding digests this)."""
        return {"vcpus": self.vcpus, "vcpu_type": self.vcpu_type, "policy": f"0x{self.policy:x}",
                "guest_features": f"0x{self.guest_features:x}", "cmdline": self.cmdline,
                "kernel_sha256": _sha256_file(self.kernel), "initrd_sha256": _sha256_file(self.initrd),
                "firmware_sha384": _sha384_file(self.firmware), "id_block": self.id_block, "id_auth": self.id_auth,
                "author_key_enabled": self.author_key_enabled}

    def digest(self) -> str:
        """SHA-256 of the whole configuration, file contents included (what 'same VM' means)."""
        doc = asdict(self)
        for where in ("kernel", "initrd"):  # by content (launch_facts), not where a bundle was unpacked
            doc.pop(where)
        doc["host_data"] = self.host_data.hex() if self.host_data else None
        doc["launch"] = self.launch_facts()
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _sha256_file(path: str | None) -> str | None:
    return None if path is None else file_digest(path, "sha256", field="kernel")


def _sha384_file(path: str) -> str:
    return file_digest(path, "sha384", field="firmware")


def from_bundle(bundle_path: str, *, name: str, state_dir: str, firmware: str, vcpus: int | None = None,
                unpack_dir: str | None = None, **host: Any) -> VmConfig:
    """A configuration from a launch-artifacts bundle: its files are unpacked into ``state_dir/bundle``.

    The firmware given must be the one the bundle names (its SHA-384), or the launch would
    measure differently; host_data defaults to the bundle's launch-configuration digest
    unless launch.json sets it.
    """
    from ..common.fileio import atomic_write

    try:
        with open(bundle_path, "rb") as handle:
            files = read_bundle(handle.read())
    except OSError as exc:
        raise SnpError(f"cannot read: {exc.strerror}", field="bundle", path=bundle_path) from exc
    facts = parse_launch(json.loads(files["launch.json"]), field_name="bundle.launch.json")
    want = files["firmware.sha384"].decode().strip().lower()
    have = _sha384_file(firmware)
    if have != want:
        raise SnpError(f"is not the firmware the bundle was measured with (SHA-384 {have}, the bundle names {want})",
                       field="firmware", path=firmware)
    count = vcpus or (facts.vcpus[0] if facts.vcpus else 1)
    if facts.vcpus and count not in facts.vcpus:
        raise SnpError(f"the bundle was measured for {facts.vcpus} vCPUs, not {count}", field="vcpus")
    unpacked = unpack_dir or os.path.join(state_dir, "bundle")
    os.makedirs(unpacked, mode=0o700, exist_ok=True)
    for member in ("kernel", "initrd"):
        atomic_write(os.path.join(unpacked, member), files[member], mode=0o600)
    id_block = id_auth = None
    names = facts.id_block_files.get(count)
    if names:
        id_block = files[names["id_block"]].decode().strip()
        id_auth = files[names["id_auth"]].decode().strip()
    host_data = bundle_host_data(files)
    from ..bundle.launch import DEFAULT_GUEST_FEATURES

    config = VmConfig(
        name=name, state_dir=state_dir, firmware=firmware, kernel=os.path.join(unpacked, "kernel"),
        initrd=os.path.join(unpacked, "initrd"), cmdline=files["cmdline"].decode("utf-8"), vcpus=count,
        vcpu_type=facts.vcpu_type or "EPYC-v4", policy=facts.policy if facts.policy is not None else DEFAULT_POLICY,
        guest_features=facts.guest_features if facts.guest_features is not None else DEFAULT_GUEST_FEATURES,
        id_block=id_block, id_auth=id_auth,
        author_key_enabled=_author_key_enabled(id_auth), host_data=host_data,
        expected_measurement=facts.measurements.get(count), **host)
    return config


def _author_key_enabled(id_auth: str | None) -> bool:
    if id_auth is None:
        return False
    from ..snp.id_block import ID_AUTH_SIZE, IdAuth, decode_blob

    return IdAuth.from_bytes(decode_blob(id_auth, ID_AUTH_SIZE, "id_auth")).author_key_enabled


def parse_forward(value: Any, field_name: str = "forwards") -> tuple[int, int]:
    """``HOST:GUEST`` or ``{host: N, guest: M}`` → (host port, guest port)."""
    if isinstance(value, dict):
        host, guest = value.get("host"), value.get("guest")
    else:
        host, _sep, guest = str(value).partition(":")
    host_port = parse_int(host, f"{field_name}.host", minimum=1, maximum=65535)
    guest_port = parse_int(guest, f"{field_name}.guest", minimum=1, maximum=65535)
    if host_port is None or guest_port is None:
        raise SnpError(f"{value!r} is not HOST:GUEST", field=field_name)
    return host_port, guest_port


#: QEMU user networking's own addresses (network, gateway, DNS, the guest's DHCP address, broadcast).
USER_NET = "10.0.2.0/24"
USER_NET_RESERVED = ("10.0.2.0", "10.0.2.2", "10.0.2.3", "10.0.2.15", "10.0.2.255")


def check_guest_forward(forward: Any, field_name: str = "guest_forwards") -> tuple[str, int, int]:
    """(guest address, guest port, host port): an address of the user network that QEMU itself does not use."""
    import ipaddress

    try:
        address, port, host_port = forward
    except (TypeError, ValueError):
        raise SnpError(f"{forward!r} is not (guest address, guest port, host port)", field=field_name) from None
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise SnpError(f"{address!r} is not an IPv4 address", field=f"{field_name}.address") from None
    if ip not in ipaddress.IPv4Network(USER_NET) or str(ip) in USER_NET_RESERVED:
        raise SnpError(f"{ip} must be in QEMU's user network {USER_NET} and not one of its own addresses "
                       f"({', '.join(USER_NET_RESERVED)})", field=f"{field_name}.address")
    for name, value in (("port", port), ("host_port", host_port)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise SnpError(f"must be 1..65535, got {value!r}", field=f"{field_name}.{name}")
    return str(ip), port, host_port


def parse_guest_forward(value: Any, field_name: str = "guest_forwards") -> tuple[str, int, int]:
    """``ADDRESS:PORT-HOSTPORT`` (as QEMU's guestfwd) or ``{address, port, host_port}`` → a checked triple."""
    if isinstance(value, dict):
        address, port, host_port = value.get("address"), value.get("port"), value.get("host_port")
    else:
        guest, _sep, host_port = str(value).partition("-")
        address, _sep, port = guest.rpartition(":")
    parsed = (address, parse_int(port, f"{field_name}.port", minimum=1, maximum=65535),
              parse_int(host_port, f"{field_name}.host_port", minimum=1, maximum=65535))
    if None in parsed:
        raise SnpError(f"{value!r} is not ADDRESS:PORT-HOSTPORT", field=field_name)
    return check_guest_forward(parsed, field_name)


def parse_policy_value(value: Any) -> int:
    return parse_policy(DEFAULT_POLICY if value is None else value).to_int()


def parse_host_data(value: Any) -> bytes | None:
    return parse_hex(value, "host_data", size=32)
