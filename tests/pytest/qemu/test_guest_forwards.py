# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""guest_forwards: the guest's connections to ADDRESS:PORT reach a loopback port of the host (QEMU guestfwd).

With ``restrict=on`` the guest reaches nothing else; this is how the agent in the initrd
reaches the key-release server (booted for real in tests/pytest/agent/test_agent_boot.py).
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.argv import GUESTFWD_RELAY, build_argv
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.config import VmConfig, parse_guest_forward
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError


def config(tmp_path: Path, **overrides: object) -> VmConfig:
    for name in ("fw", "k"):
        (tmp_path / name).write_bytes(b"x")
    values: dict = {"name": "gf", "state_dir": str(tmp_path / "s"), "firmware": str(tmp_path / "fw"),
                    "kernel": str(tmp_path / "k"), "network": "user"}
    values.update(overrides)
    return VmConfig(**values)


def test_a_guest_forward_is_a_guestfwd_of_the_restricted_user_netdev(tmp_path: Path) -> None:
    vm = config(tmp_path, forwards=[(2222, 22)], guest_forwards=[("10.0.2.100", 443, 8443)]).validate()
    argv = build_argv(vm, daemonize=False, relay_python="/usr/bin/python3")
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev.startswith("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,"
                             "guestfwd=tcp:10.0.2.100:443-cmd:/usr/bin/python3 -c ")
    assert netdev.endswith(" 8443") and netdev.count("guestfwd=") == 1
    # QEMU un-doubles the commas; libslirp splits the rest like a shell: the relay and its port.
    command = netdev.split("-cmd:", 1)[1].replace(",,", ",")
    assert shlex.split(command) == ["/usr/bin/python3", "-c", GUESTFWD_RELAY, "8443"]
    assert config(tmp_path).validate().digest() != vm.digest()  # another launch configuration


@pytest.mark.parametrize(("value", "expected"), [
    ("10.0.2.100:443-8443", ("10.0.2.100", 443, 8443)),
    ({"address": "10.0.2.4", "port": "80", "host_port": 8080}, ("10.0.2.4", 80, 8080)),
])
def test_parse(value: object, expected: tuple) -> None:
    assert parse_guest_forward(value) == expected


@pytest.mark.parametrize(("value", "field"), [
    ("10.0.2.100:443", "guest_forwards"),
    ("10.0.2.100-8443", "guest_forwards.port"),
    ("10.0.2.100:0-8443", "guest_forwards.port"),
    ("10.0.2.100:443-70000", "guest_forwards.host_port"),
    ("example.com:443-8443", "guest_forwards.address"),
    ("192.168.1.5:443-8443", "guest_forwards.address"),  # outside the user network: QEMU would not route it
    ("10.0.2.2:443-8443", "guest_forwards.address"),  # the gateway (the host itself)
    ("10.0.2.3:53-5353", "guest_forwards.address"),  # QEMU's DNS
    ("10.0.2.15:443-8443", "guest_forwards.address"),  # the guest's own DHCP address
])
def test_refusals_name_the_part(value: str, field: str) -> None:
    with pytest.raises(SnpError) as info:
        parse_guest_forward(value)
    assert info.value.field == field


def test_validate_refuses_without_user_network_and_duplicates(tmp_path: Path) -> None:
    with pytest.raises(SnpError) as info:
        config(tmp_path, network="none", guest_forwards=[("10.0.2.100", 443, 8443)]).validate()
    assert info.value.field == "guest_forwards" and "network: user" in info.value.message
    with pytest.raises(SnpError) as info:
        config(tmp_path, guest_forwards=[("10.0.2.100", 443, 8443), ("10.0.2.100", 443, 9443)]).validate()
    assert "twice" in info.value.message
    with pytest.raises(SnpError) as info:
        config(tmp_path, guest_forwards=[("10.0.2.100", 443)]).validate()
    assert info.value.field == "guest_forwards"


def test_the_relay_carries_one_connection_both_ways() -> None:
    """The relay QEMU spawns, run as QEMU runs it: a connected socket as stdin, a loopback server to reach."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        guest, relay_end = socket.socketpair()
        proc = subprocess.Popen([sys.executable, "-c", GUESTFWD_RELAY, str(server.getsockname()[1])],
                                stdin=relay_end, stdout=relay_end)
        relay_end.close()
        conn, _addr = server.accept()
        guest.sendall(b"hello")
        assert conn.recv(5) == b"hello"
        conn.sendall(b"world")
        assert guest.recv(5) == b"world"
        conn.close()
        assert proc.wait(10) == 0
        guest.close()


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    from servers import snpguard_cmd, snpguard_env

    return subprocess.run(snpguard_cmd(*argv), env=snpguard_env(), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)


def describe(tmp_path: Path, output: str, *extra: str) -> subprocess.CompletedProcess[str]:
    config(tmp_path)  # the firmware and kernel files
    return cli("vm", output, "gf", "--state-dir", str(tmp_path / "s"), "--firmware", str(tmp_path / "fw"),
               "--kernel", str(tmp_path / "k"), "--cbitpos", "51", "--reduced-phys-bits", "1", "--json", *extra)


def test_the_cli_and_the_module_take_guest_forwards(tmp_path: Path) -> None:
    """``--guest-forward`` (the module's ``guest_forwards``) reaches the same netdev as VmConfig does."""
    from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.snp_vm import config_from_options

    described = describe(tmp_path, "argv", "--network", "user", "--guest-forward", "10.0.2.100:443-8443",
                         "--guest-forward", "10.0.2.101:80-8080")
    assert described.returncode == 0, described.stdout + described.stderr
    argv = json.loads(described.stdout)["argv"]
    netdev = argv[argv.index("-netdev") + 1]
    assert "guestfwd=tcp:10.0.2.100:443-cmd:" in netdev and "guestfwd=tcp:10.0.2.101:80-cmd:" in netdev
    options = {"name": "gf", "state_dir": str(tmp_path / "s"), "firmware": str(tmp_path / "fw"),
               "kernel": str(tmp_path / "k"), "network": "user", "cbitpos": 51, "reduced_phys_bits": 1,
               "guest_forwards": ["10.0.2.100:443-8443", {"address": "10.0.2.101", "port": 80, "host_port": 8080}]}
    assert config_from_options(options).guest_forwards == [("10.0.2.100", 443, 8443), ("10.0.2.101", 80, 8080)]


@pytest.mark.parametrize(("extra", "field"), [
    (["--network", "user", "--guest-forward", "10.0.2.2:443-8443"], "guest_forwards.address"),
    (["--guest-forward", "10.0.2.100:443-8443"], "guest_forwards"),  # network none
])
def test_the_cli_refuses_bad_guest_forwards_naming_the_field(tmp_path: Path, extra: list[str], field: str) -> None:
    refused = describe(tmp_path, "argv", *extra)
    assert refused.returncode != 0
    assert json.loads(refused.stdout)["error"]["field"] == field


def test_libvirt_cannot_express_a_guest_forward_and_says_so(tmp_path: Path) -> None:
    refused = describe(tmp_path, "libvirt", "--network", "user", "--guest-forward", "10.0.2.100:443-8443")
    assert refused.returncode != 0
    error = json.loads(refused.stdout)["error"]
    assert error["field"] == "guest_forwards" and "guestfwd" in error["message"]
    assert describe(tmp_path, "libvirt", "--network", "user").returncode == 0
