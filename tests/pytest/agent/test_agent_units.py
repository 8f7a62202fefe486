# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The agent's parsers and refusals: agent.json, the kernel command line, /run/net-*.conf and ip=, the payload."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.agent import main as agent_main
from ansible_collections.snpguard.cvm.plugins.module_utils.agent.config import (
    AgentConfig,
    apply_cmdline,
    cmdline_value,
    load_config,
    parse_cmdline,
    parse_config,
    render_config,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.agent.network import (
    parse_ip_param,
    parse_net_conf,
    parse_networkd_lease,
    read_leases,
    shell_word,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.agent.payload import agent_files, agent_modules
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError

UUID = "0b0f0a0e-1111-4222-8333-944445555666"
GOOD = AgentConfig(url="https://10.0.2.100:443", image="web-1", luks_device=f"UUID={UUID}")
# What klibc's ipconfig writes (trixie, QEMU user network), byte for byte as seen in the boot test.
NET_CONF = """DEVICE='enp0s3'
PROTO='dhcp'
IPV4ADDR='10.0.2.15'
IPV4BROADCAST='10.0.2.255'
IPV4NETMASK='255.255.255.0'
IPV4GATEWAY='0.0.0.0'
IPV4DNS0='0.0.0.0'
IPV4DNS1='0.0.0.0'
HOSTNAME=''
DNSDOMAIN=''
NISDOMAIN=''
ROOTSERVER='10.0.2.2'
ROOTPATH=''
filename=''
UPTIME='41'
DHCPLEASETIME='86400'
DOMAINSEARCH=''
"""


def doc(**changes: object) -> str:
    body = json.loads(render_config(GOOD))
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not ...})


def test_render_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    path.write_bytes(render_config(GOOD))
    assert load_config(str(path)) == GOOD
    assert render_config(GOOD) == render_config(load_config(str(path)))  # deterministic bytes


@pytest.mark.parametrize(("text", "field"), [
    ("{", "agent.json"),
    ("[]", "agent.json"),
    ('{"version": 1, "url": NaN}', "agent.json"),
    (doc(version=2), "version"),
    (doc(url=...), "url"),
    (doc(image=...), "image"),
    (doc(luks_device=...), "luks_device"),
    (doc(url="http://10.0.2.100"), "url"),
    (doc(url="https://x/?q=1"), "url"),
    (doc(url="https://x:99999"), "url"),
    (doc(report_source="simulated"), "report_source"),
    (doc(report_source=None), "report_source"),
    (doc(luks_device="PARTUUID=1"), "luks_device"),
    (doc(luks_device="UUID=nope"), "luks_device"),
    (doc(luks_device="/dev/../etc/shadow"), "luks_device"),
    (doc(mapper_name="a/b"), "mapper_name"),
    (doc(retries=0), "retries"),
    (doc(retries=True), "retries"),
    (doc(timeout="15"), "timeout"),
    (doc(backoff_initial=10, backoff_max=5), "backoff_max"),
    (doc(ca_file="relative.pem"), "ca_file"),
    (doc(extra=1), "extra"),
])
def test_every_refusal_names_the_field(text: str, field: str) -> None:
    with pytest.raises(SnpError) as info:
        parse_config(text)
    assert info.value.field == field, str(info.value)


def test_a_missing_file_is_a_named_refusal(tmp_path: Path) -> None:
    with pytest.raises(SnpError) as info:
        load_config(str(tmp_path / "none.json"))
    assert info.value.field == "agent.json"
    assert agent_main.main(["--config", str(tmp_path / "none.json"), "--cmdline", "/dev/null"]) == 2


@pytest.mark.parametrize(("cmdline", "expected"), [
    ('root=/dev/mapper/root ro console=ttyS0', [("root", "/dev/mapper/root"), ("ro", None), ("console", "ttyS0")]),
    ('a="b c" "d=e f" g', [("a", "b c"), ("d", "e f"), ("g", None)]),
    ('x=1 -- snpguard.url=https://evil', [("x", "1")]),  # after -- it is init's, not the kernel's
    ('  spaced\tout\n', [("spaced", None), ("out", None)]),
])
def test_cmdline_is_split_as_the_kernel_does(cmdline: str, expected: list) -> None:
    assert parse_cmdline(cmdline) == expected


def test_the_url_override_is_the_last_one_and_must_be_https() -> None:
    line = "snpguard.url=https://a.example snpguard.url=https://b.example:8443/keys quiet"
    assert apply_cmdline(GOOD, line).url == "https://b.example:8443/keys"
    assert apply_cmdline(GOOD, "quiet") == GOOD
    with pytest.raises(SnpError) as info:
        apply_cmdline(GOOD, "snpguard.url=http://b.example")
    assert info.value.field == "snpguard.url"


@given(st.lists(st.tuples(st.from_regex(r"[a-z][a-z0-9_.]{0,8}", fullmatch=True),
                          st.one_of(st.none(), st.from_regex(r"[ -!#-~]{0,12}", fullmatch=True))), max_size=8))
def test_cmdline_round_trip(params: list) -> None:
    """Quoting each value gives back the names and values, spaces included."""
    line = " ".join(name if value is None else f'{name}="{value}"' for name, value in params)
    assert parse_cmdline(line) == params
    for name, _value in params:
        assert cmdline_value(line, name) == next(v if v is not None else "" for n, v in reversed(params)
                                                 if n == name)


def test_a_real_ipconfig_file() -> None:
    lease, problems = parse_net_conf(NET_CONF, "/run/net-enp0s3.conf")
    assert problems == [] and lease is not None
    assert (lease.device, lease.address, lease.prefix, lease.proto, lease.dns) == ("enp0s3", "10.0.2.15", 24,
                                                                                   "dhcp", ())
    assert lease.describe() == "enp0s3 10.0.2.15/24 (dhcp)"


#: A lease as systemd-networkd 257 writes it in the dracut initrd (/run/systemd/netif/leases/2).
NETWORKD_LEASE = """# This is private data. Do not parse.
ADDRESS=10.0.2.15
NETMASK=255.255.255.0
ROUTER=10.0.2.2
SERVER_ADDRESS=10.0.2.2
NEXT_SERVER=10.0.2.2
BROADCAST=10.0.2.255
T1=43200
T2=75600
LIFETIME=86400
DNS=10.0.2.3
CLIENTID=ff3b6d3c2a000201000110fba6a9525400123456
"""


def test_a_networkd_lease_in_a_dracut_initrd(tmp_path: Path) -> None:
    lease, problems = parse_networkd_lease(NETWORKD_LEASE, "enp0s3")
    assert problems == [] and lease is not None
    assert lease.describe() == "enp0s3 10.0.2.15/24 via 10.0.2.2 (dhcp)" and lease.dns == ("10.0.2.3",)
    (tmp_path / "leases").mkdir()
    (tmp_path / "leases" / "2").write_text(NETWORKD_LEASE)
    (tmp_path / "leases" / "3").write_text("DNS=1.1.1.1\nno equals sign\n")
    (tmp_path / "net" / "enp0s3").mkdir(parents=True)
    (tmp_path / "net" / "enp0s3" / "ifindex").write_text("2\n")
    leases, problems = read_leases(str(tmp_path / "none-*.conf"), str(tmp_path / "leases"), str(tmp_path / "net"))
    assert [lease.device for lease in leases] == ["enp0s3"]
    assert problems == ["networkd lease 3: line 2: not KEY=value", "networkd lease 3: no ADDRESS"]


def test_nothing_is_ever_evaluated(tmp_path: Path) -> None:
    (tmp_path / "net-eth0.conf").write_text("DEVICE='eth0'\nHOSTNAME=$(reboot)\nX=`id`\nY=a b\n"
                                            "DNSDOMAIN='it'\\''s'\nexport PROTO=\"dhcp\"\n")
    leases, problems = read_leases(str(tmp_path / "net-*.conf"))
    assert [lease.device for lease in leases] == ["eth0"]
    assert leases[0].hostname == "" and leases[0].proto == "dhcp" and leases[0].values["DNSDOMAIN"] == "it's"
    assert len(problems) == 3 and all("net-eth0.conf: line" in p for p in problems)


@given(st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\n"), max_size=40))
def test_single_quoting_round_trip(value: str) -> None:
    """What ipconfig writes (a ' as '\\'') reads back as the value."""
    assert shell_word("'" + value.replace("'", "'\\''") + "'") == value


@given(st.text(max_size=60))
def test_the_lexer_never_crashes(text: str) -> None:
    with contextlib.suppress(ValueError):
        shell_word(text)


@pytest.mark.parametrize(("value", "device", "client"), [
    ("dhcp", "", ""),
    ("10.0.2.20::10.0.2.2:255.255.255.0:host:eth0:off", "eth0", "10.0.2.20"),
    ("[fd00::5]::[fd00::1]:::eth1:none", "eth1", "fd00::5"),
])
def test_ip_param(value: str, device: str, client: str) -> None:
    parsed = parse_ip_param(value)
    assert (parsed.device, parsed.client) == (device, client)


@pytest.mark.parametrize("value", ["300.1.1.1::::::", "10.0.2.20:::255.0.255.0:::", "::::::weird"])
def test_ip_param_refusals(value: str) -> None:
    with pytest.raises(ValueError, match="ip="):
        parse_ip_param(value)


def test_the_retry_loop_prints_a_line_per_try_and_gives_up(capsys: pytest.CaptureFixture[str]) -> None:
    from servers import free_port

    config = replace(GOOD, url=f"https://127.0.0.1:{free_port()}", retries=3, backoff_initial=0.5, backoff_max=1.0,
                     ca_file=None)
    waits: list[float] = []
    status, key = agent_main.release_key(config, lambda data: (b"", None), sleep=waits.append)
    assert (status, key) == (agent_main.EXIT_NO_KEY, None) and waits == [0.5, 1.0]
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in lines[:3]] == ["try 1/3", "try 2/3", "try 3/3"]
    assert "after 3 tries" in lines[-1]


def test_the_luks_device_is_found_by_its_header_without_udev(tmp_path: Path) -> None:
    block, dev = tmp_path / "sys", tmp_path / "dev"
    block.mkdir()
    dev.mkdir()
    header = bytearray(4096)
    header[0:8] = b"LUKS\xba\xbe\x00\x02"
    header[24:29] = b"lbl-1"
    header[168:168 + 36] = UUID.encode()
    for name, data in (("vda", bytes(4096)), ("vdb", bytes(header))):
        (block / name).mkdir()
        (dev / name).write_bytes(data)
    where = {"sys_block": str(block), "dev": str(dev)}
    assert agent_main.find_device(f"UUID={UUID.upper()}", **where) == str(dev / "vdb")
    assert agent_main.find_device("LABEL=lbl-1", **where) == str(dev / "vdb")
    assert agent_main.find_device("LABEL=other", **where) is None


def test_the_payload(tmp_path: Path) -> None:
    import cryptography

    site = str(Path(cryptography.__file__).resolve().parent.parent)
    files = {f.dest: f for f in agent_files(GOOD, b"-----BEGIN CERTIFICATE-----\n", site)}
    assert json.loads(files["/etc/snpguard/agent.json"].data)["url"] == GOOD.url
    assert files["/etc/initramfs-tools/hooks/snpguard-agent"].mode == 0o755
    assert "@" not in files["/etc/initramfs-tools/scripts/local-top/snpguard-agent"].data.decode().replace(
        "$@", "")
    modules = agent_modules()
    assert "plugins/module_utils/snp/simulated_amdsp.py" not in modules  # the simulator never goes into images
    assert not any("ansible" in m.split("/")[-1] for m in modules)
    with pytest.raises(SnpError) as info:
        agent_files(GOOD, b"not pem", site)
    assert info.value.field == "ca_pem"
    with pytest.raises(SnpError) as info:
        agent_files(GOOD, b"-----BEGIN CERTIFICATE-----\n", str(tmp_path))
    assert info.value.field == "crypto_source"
    wheels = sorted(Path("/opt/pypi/files").glob("cryptography-*-abi3-*.whl"))
    if wheels:
        from_wheel = {f.dest for f in agent_files(GOOD, b"-----BEGIN CERTIFICATE-----\n", str(wheels[-1]))}
        assert from_wheel == set(files)


def test_a_missing_pinned_ca_is_a_configuration_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = replace(GOOD, ca_file=str(tmp_path / "absent.pem"))
    assert agent_main.release_key(config, lambda data: (b"", None)) == (agent_main.EXIT_CONFIG, None)
    assert "ca_file" in capsys.readouterr().err


def test_the_payload_is_the_same_from_a_checkout_and_from_ansiballz(tmp_path: Path) -> None:
    """Packed as AnsiballZ packs a module (a zip, with the empty package __init__.py files it adds - a checkout
    has no plugins/__init__.py), the agent's files are byte for byte those of the checkout: else a module's
    conversion and the CLI's would never agree that an image is up to date."""
    import hashlib
    import subprocess
    import sys
    import zipfile

    from ansible_collections.snpguard.cvm.plugins.module_utils.agent import payload

    root = Path(payload.COLLECTION_ROOT)
    packed = tmp_path / "ansiballz.zip"
    with zipfile.ZipFile(packed, "w") as archive:
        for package in ("ansible_collections", "ansible_collections/snpguard", "ansible_collections/snpguard/cvm",
                        "ansible_collections/snpguard/cvm/plugins"):
            archive.writestr(f"{package}/__init__.py", b"")
        for path in sorted((root / "plugins" / "module_utils").rglob("*.py")):
            archive.write(path, f"ansible_collections/snpguard/cvm/{path.relative_to(root)}")
    program = ("import hashlib, json\n"
               "from ansible_collections.snpguard.cvm.plugins.module_utils.agent import payload\n"
               "assert '.zip' in payload.COLLECTION_ROOT, payload.COLLECTION_ROOT\n"
               "print(json.dumps({rel: hashlib.sha256(payload.read_collection_file(rel)).hexdigest()\n"
               "                  for rel in payload.agent_modules()}))\n")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path[:0] = [{str(packed)!r}]\n{program}"],
                         capture_output=True, text=True, check=True).stdout
    here = {rel: hashlib.sha256(payload.read_collection_file(rel)).hexdigest() for rel in payload.agent_modules()}
    assert json.loads(out) == here
    assert "plugins/__init__.py" in here and "plugins/module_utils/agent/main.py" in here
