# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""What early-boot networking found: /run/net-*.conf (klibc ipconfig), systemd-networkd's leases, ``ip=``.

initramfs-tools' ``configure_networking`` runs klibc's ``ipconfig``, which writes one
``/run/net-<device>.conf`` per configured interface as ``KEY='value'`` lines (a single
quote inside a value written as ``'\\''``); initramfs-tools then *sources* it.  The agent
never sources or evaluates anything: this module reads the same lines with a small
lexer that knows single quotes, double quotes and backslashes, and refuses (skips,
naming the line) anything that would need a shell, such as ``$`` or backticks outside
single quotes.  Standard library only.

In a dracut initrd with systemd-networkd, the DHCP result is in
``/run/systemd/netif/leases/<ifindex>`` instead (``KEY=value`` lines, no quoting); those are
read as plain text, the interface named through ``/sys/class/net/*/ifindex``.  Either way the
result is only shown on the console: the agent's trust rests on the pinned CA, not on them.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
from dataclasses import dataclass, field

NET_GLOB = "/run/net-*.conf"
NETWORKD_LEASES = "/run/systemd/netif/leases"
SYS_NET = "/sys/class/net"
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_FILE = 1 << 16


@dataclass(frozen=True)
class Lease:
    """One interface as ipconfig configured it (empty strings where it said nothing)."""

    device: str
    proto: str = ""
    address: str = ""
    netmask: str = ""
    gateway: str = ""
    dns: tuple[str, ...] = ()
    hostname: str = ""
    source: str = ""
    values: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def prefix(self) -> int | None:
        try:
            return ipaddress.IPv4Network(f"0.0.0.0/{self.netmask}").prefixlen if self.netmask else None
        except ValueError:
            return None

    def describe(self) -> str:
        where = self.address + (f"/{self.prefix}" if self.prefix is not None else "")
        parts = [self.device, where or "(no address)"]
        if self.gateway and self.gateway != "0.0.0.0":
            parts.append(f"via {self.gateway}")
        if self.proto:
            parts.append(f"({self.proto})")
        return " ".join(parts)


class ShellSyntaxError(ValueError):
    """A line that only a shell could interpret."""


def _key_value_lines(text: str, problems: list[str]) -> list[tuple[int, str, str]]:
    """(line number, KEY, raw value) of each ``KEY=value`` line; comments and blank lines skipped, others named."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export "):].lstrip()
        key, sep, rest = stripped.partition("=")
        if not sep or not _KEY_RE.match(key):
            problems.append(f"line {number}: not KEY=value")
            continue
        out.append((number, key, rest))
    return out


def parse_assignments(text: str) -> tuple[dict[str, str], list[str]]:
    """``KEY=value`` lines with shell quoting (never evaluated) → (values, problems)."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for number, key, rest in _key_value_lines(text, problems):
        try:
            values[key] = shell_word(rest)
        except ShellSyntaxError as exc:
            problems.append(f"line {number} ({key}): {exc}")
    return values, problems


def shell_word(text: str) -> str:
    """One shell word without expansion: quotes and backslashes as sh reads them; ``$``/`` ` `` refused."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated single quote")
            out.append(text[i + 1:end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise ShellSyntaxError("unterminated double quote")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c in "$`":
                    raise ShellSyntaxError(f"{c!r} would need a shell")
                if c == "\\" and i + 1 < n and text[i + 1] in '$`"\\\n':
                    out.append(text[i + 1])
                    i += 2
                    continue
                out.append(c)
                i += 1
        elif c == "\\":
            if i + 1 >= n:
                raise ShellSyntaxError("trailing backslash")
            out.append(text[i + 1])
            i += 2
        elif c.isspace():
            if text[i:].strip() and not text[i:].strip().startswith("#"):
                raise ShellSyntaxError("more than one word")
            break
        elif c in "$`;&|<>(){}*?[~":
            raise ShellSyntaxError(f"{c!r} would need a shell")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_net_conf(text: str, source: str = "") -> tuple[Lease | None, list[str]]:
    values, problems = parse_assignments(text)
    device = values.get("DEVICE", "")
    if not device:
        return None, [*problems, "no DEVICE"]
    dns = tuple(v for v in (values.get("IPV4DNS0", ""), values.get("IPV4DNS1", "")) if v and v != "0.0.0.0")
    return Lease(device=device, proto=values.get("PROTO", ""), address=values.get("IPV4ADDR", ""),
                 netmask=values.get("IPV4NETMASK", ""), gateway=values.get("IPV4GATEWAY", ""), dns=dns,
                 hostname=values.get("HOSTNAME", ""), source=source, values=values), problems


def parse_networkd_lease(text: str, device: str, source: str = "") -> tuple[Lease | None, list[str]]:
    """One systemd-networkd DHCPv4 lease (``ADDRESS=``, ``NETMASK=``, ``ROUTER=``, ``DNS=``...), values as written."""
    problems: list[str] = []
    values = {key: value for _number, key, value in _key_value_lines(text, problems)}
    if not values.get("ADDRESS"):
        return None, [*problems, "no ADDRESS"]
    return Lease(device=device, proto="dhcp", address=values["ADDRESS"], netmask=values.get("NETMASK", ""),
                 gateway=values.get("ROUTER", "").split()[0] if values.get("ROUTER") else "",
                 dns=tuple(values.get("DNS", "").split()), hostname=values.get("HOSTNAME", ""), source=source,
                 values=values), problems


def interface_names(sys_net: str = SYS_NET) -> dict[str, str]:
    """ifindex → interface name, from sysfs."""
    names: dict[str, str] = {}
    try:
        entries = sorted(os.listdir(sys_net))
    except OSError:
        return names
    for name in entries:
        try:
            with open(os.path.join(sys_net, name, "ifindex"), encoding="ascii") as handle:
                names[handle.read().strip()] = name
        except OSError:
            continue
    return names


def _read(path: str, problems: list[str]) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(MAX_FILE)
    except OSError as exc:
        problems.append(f"{path}: {exc.strerror}")
        return None


def read_leases(pattern: str = NET_GLOB, networkd: str = NETWORKD_LEASES,
                sys_net: str = SYS_NET) -> tuple[list[Lease], list[str]]:
    """Every /run/net-*.conf and networkd lease, parsed; (leases, problems naming file and line)."""
    leases: list[Lease] = []
    problems: list[str] = []
    for path in sorted(glob.glob(pattern)):
        text = _read(path, problems)
        if text is None:
            continue
        lease, found = parse_net_conf(text, path)
        problems += [f"{os.path.basename(path)}: {p}" for p in found]
        if lease is not None:
            leases.append(lease)
    names = interface_names(sys_net) if os.path.isdir(networkd) else {}
    for path in sorted(glob.glob(os.path.join(networkd, "*"))):
        text = _read(path, problems)
        if text is None:
            continue
        index = os.path.basename(path)
        lease, found = parse_networkd_lease(text, names.get(index, f"ifindex {index}"), path)
        problems += [f"networkd lease {index}: {p}" for p in found]
        if lease is not None:
            leases.append(lease)
    return leases, problems


@dataclass(frozen=True)
class IpParam:
    """The kernel's ``ip=`` (Documentation/admin-guide/nfs/nfsroot.rst), as initramfs-tools reads it."""

    autoconf: str  # dhcp, on, any, off, none, static, bootp, rarp, both
    client: str = ""
    server: str = ""
    gateway: str = ""
    netmask: str = ""
    hostname: str = ""
    device: str = ""
    dns: tuple[str, ...] = ()


IP_KEYWORDS = ("dhcp", "on", "any", "off", "none", "bootp", "rarp", "both", "dhcp6", "auto6")


def parse_ip_param(value: str) -> IpParam:
    """``ip=dhcp`` or ``ip=<client>:<server>:<gw>:<netmask>:<host>:<device>:<autoconf>:<dns0>:<dns1>:…``.

    IPv6 addresses are written in brackets.  Raises ``ValueError`` naming the bad part.
    """
    if value in IP_KEYWORDS:
        return IpParam(autoconf=value)
    parts = _split_colons(value)
    parts += [""] * (10 - len(parts))
    client, server, gateway, netmask, hostname, device, autoconf, dns0, dns1 = parts[:9]
    for name, address in (("client", client), ("server", server), ("gateway", gateway), ("dns0", dns0),
                          ("dns1", dns1)):
        if address:
            try:
                ipaddress.ip_address(address.strip("[]"))
            except ValueError:
                raise ValueError(f"ip=: {name} {address!r} is not an IP address") from None
    if netmask:
        try:
            ipaddress.IPv4Network(f"0.0.0.0/{netmask}")
        except ValueError:
            raise ValueError(f"ip=: netmask {netmask!r} is not a netmask") from None
    autoconf = autoconf or ("static" if client else "on")
    if autoconf not in (*IP_KEYWORDS, "static"):
        raise ValueError(f"ip=: unknown autoconf {autoconf!r}")
    return IpParam(autoconf=autoconf, client=client.strip("[]"), server=server.strip("[]"),
                   gateway=gateway.strip("[]"), netmask=netmask, hostname=hostname, device=device,
                   dns=tuple(d.strip("[]") for d in (dns0, dns1) if d))


def _split_colons(value: str) -> list[str]:
    parts, current, depth = [], [], 0
    for c in value:
        if c == "[":
            depth += 1
        elif c == "]":
            depth = max(0, depth - 1)
        if c == ":" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def summary(leases: list[Lease], ip_param: str | None) -> str:
    """One console line: what the initrd's network looks like."""
    words = [lease.describe() for lease in leases] or ["no DHCP lease found (no answer yet?)"]
    if ip_param is not None:
        words.append(f"ip={ip_param}")
    return "; ".join(words)
