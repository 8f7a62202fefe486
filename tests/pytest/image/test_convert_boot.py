# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Convert the stock Debian 13 cloud image (``mode: luks``), inspect it, register it, boot it.

The whole path of a user, with real parts only: ``snpguard image convert`` turns the
cached stock qcow2 (scripts/cloud_image.py) into a confidential one, its volume key sealed
to a real key-release server's ingestion key; libguestfs inspects what came out (the
LUKS2 header, the agent in the regenerated initrd, the crypttab, no SSH host keys, no
plaintext key anywhere); ``snpguard image register --staging-dir`` measures the staged
boot chain; the launcher boots the image under simulation (OVMF checks the kernel
hashes, the simulated AMD-SP signs a report of this launch) and the agent in the initrd
attests, unlocks the root and systemd reaches multi-user, where a marker written into the
encrypted root is printed on the console.

The volume key this test uses to open the container for inspection comes from the same
server by a simulated guest's handshake (``servers.Agent``): the key the conversion
sealed, released against the staged measurement, and nothing else.

Also: a rerun with the same input is a no-op (changed=false), check mode plans without
writing, and a conversion interrupted mid-way leaves no output behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import CloudImage
from conversions import convert_cli, need_tools, wait_for
from servers import GUEST_SERVER, Agent, ServerProcess, snpguard_cmd, snpguard_env, stage

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.archive import read_bundle
from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.launch import bundle_host_data
from ansible_collections.snpguard.cvm.plugins.module_utils.image import staging as stg
from ansible_collections.snpguard.cvm.plugins.module_utils.image.appliance import shell
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.config import Disk, from_bundle
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.vm import Vm

pytestmark = pytest.mark.slow
NAME = "debian13-converted"
SERVER_URL = f"https://{GUEST_SERVER[0]}"
MIB = 1 << 20


def ingestion_key(server: ServerProcess) -> str:
    with server.client() as client:
        return client.get("/public/info").json()["ingestion_public_key"]


@dataclass
class Conversion:
    source: Path
    output: Path
    staging: Path
    argv: list[str]
    result: dict[str, Any]
    stderr: str
    seconds: float

    def rerun(self, *extra: str, output: Path | None = None, staging: Path | None = None
              ) -> subprocess.CompletedProcess[str]:
        argv = list(self.argv)
        if output is not None:
            argv[argv.index(str(self.output))] = str(output)
        if staging is not None:
            argv[argv.index(str(self.staging))] = str(staging)
        return convert_cli(argv + list(extra))


@pytest.fixture(scope="module")
def conversion(tmp_path_factory: pytest.TempPathFactory, cloud_image: CloudImage, guest_server: ServerProcess,
               artifacts: Path) -> Conversion:
    need_tools()
    work = tmp_path_factory.mktemp("convert")
    output, staging = work / "cvm.qcow2", work / "cvm.staging"
    argv = [str(cloud_image.path), str(output), "--staging-dir", str(staging), "--name", NAME,
            "--server-url", SERVER_URL, "--server-ca", str(guest_server.data_dir / "tls" / "ca.pem"),
            "--ingestion-key", ingestion_key(guest_server), "--firmware", str(artifacts / "OVMF.amdsev.fd"),
            "--report-source", "channel", "--package-cache", str(work.parent / "debs"), "--force-tcg", "--json"]
    started = time.monotonic()
    proc = convert_cli(argv)
    seconds = round(time.monotonic() - started, 1)
    print(proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    print(f"stage convert: {seconds} s")
    return Conversion(cloud_image.path, output, staging, argv, json.loads(proc.stdout), proc.stderr, seconds)


@pytest.fixture(scope="module")
def token(guest_server: ServerProcess) -> str:
    return guest_server.mint_token("convert-boot")


@pytest.fixture(scope="module")
def registered(conversion: Conversion, guest_server: ServerProcess, token: str, artifacts: Path) -> dict[str, Any]:
    env = dict(snpguard_env(), SNPGUARD_TOKEN=token)
    for name in ("SNPGUARD_URL", "SNPGUARD_CA_FILE", "SNPGUARD_CONFIG"):
        env.pop(name, None)
    argv = snpguard_cmd("image", "register", NAME, "--staging-dir", str(conversion.staging), "--firmware",
                        str(artifacts / "OVMF.amdsev.fd"), "--url", guest_server.base, "--ca-file",
                        str(guest_server.data_dir / "tls" / "ca.pem"), "--json")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def bundle(registered: dict[str, Any], guest_server: ServerProcess, token: str,
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The launch bundle the server serves for the registered image (what snp_vm boots from)."""
    with guest_server.client(token) as admin:
        response = admin.get(f"/images/{registered['id']}/bundle")
    assert response.status_code == 200, response.text
    path = tmp_path_factory.mktemp("bundle") / f"{NAME}.bundle.tar.gz"
    path.write_bytes(response.content)
    return path


@pytest.fixture(scope="module")
def volume_key(registered: dict[str, Any], bundle: Path, guest_server: ServerProcess, sim) -> bytes:
    """The key the server releases to a guest launched from the bundle (its measurement and HOST_DATA)."""
    measurement = bytes.fromhex(registered["measurements"]["1"])
    host_data = bundle_host_data(read_bundle(bundle.read_bytes()))
    with guest_server.client() as client:
        response, key, _body = Agent(sim).handshake(client, measurement, host_data=host_data)
    assert response.status_code == 200, response.text
    assert key is not None
    return bytes(key)


@dataclass
class Inspected:
    luks_dump: str
    crypttab: str
    fstab: str
    initrd_files: set[str]
    agent_config: dict[str, Any]
    ssh_host_keys: list[str]
    marker: str
    overlay: Path
    initrd_sha256: str


MARKER_UNIT = """[Unit]
Description=snpguard test: print the marker of the encrypted root
After=local-fs.target

[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/bin/sh -c 'echo "SNPGUARD-TEST: marker $(cat /snpguard-marker) root $(findmnt -no SOURCE /)"'

[Install]
WantedBy=multi-user.target
"""


@pytest.fixture(scope="module")
def inspected(conversion: Conversion, volume_key: bytes,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inspected]:
    """One appliance on a copy-on-write overlay: read what the conversion made, then add the test's marker."""
    guestfs = need_tools()
    overlay = tmp_path_factory.mktemp("boot") / "boot.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(conversion.output), "-F", "qcow2",
                    str(overlay)], check=True)
    root_part = conversion.result["luks"]["device_partition"]
    marker = f"snpguard-marker-{secrets.token_hex(8)}"
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.add_drive_opts(str(overlay), format="qcow2", readonly=False)
        g.launch()
        device = f"/dev/sda{root_part}"
        dump = shell(g, "luksDump", f"cryptsetup luksDump {device}")  # the appliance's shell: nothing mounted
        g.cryptsetup_open(device, volume_key.decode("ascii"), "root")
        g.mount("/dev/mapper/root", "/")
        version = conversion.result["kernel_version"]
        initrd_files = set(g.command_lines(["lsinitramfs", f"/boot/initrd.img-{version}"]))
        initrd_sha256 = g.checksum("sha256", f"/boot/initrd.img-{version}")
        config = json.loads(g.cat("/etc/snpguard/agent.json")) if g.is_file("/etc/snpguard/agent.json") else {}
        facts = Inspected(
            luks_dump=dump, crypttab=g.cat("/etc/crypttab"), fstab=g.cat("/etc/fstab"), initrd_files=initrd_files,
            agent_config=config, ssh_host_keys=g.glob_expand("/etc/ssh/ssh_host_*"), marker=marker, overlay=overlay,
            initrd_sha256=initrd_sha256)
        g.write("/snpguard-marker", marker.encode())
        g.write("/etc/systemd/system/snpguard-test-marker.service", MARKER_UNIT.encode())
        g.mkdir_p("/etc/systemd/system/multi-user.target.wants")
        g.ln_sf("/etc/systemd/system/snpguard-test-marker.service",
                "/etc/systemd/system/multi-user.target.wants/snpguard-test-marker.service")
        g.umount_all()
        g.cryptsetup_close("/dev/mapper/root")
        g.shutdown()
    finally:
        g.close()
    yield facts


def test_conversion_reports_what_it_did(conversion: Conversion) -> None:
    result = conversion.result
    assert result["changed"] is True
    assert result["kernel_version"].endswith("-amd64")
    assert result["cmdline"].startswith("root=/dev/mapper/root ro ")
    assert "ip=dhcp" in result["cmdline"].split()
    assert result["luks"]["pbkdf"] == "argon2id" and result["luks"]["sector_size"] == 4096
    steps = "\n".join(result["steps"])
    for step in ("inspecting the stock image", "creating the LUKS2 container", "installing the agent",
                 "regenerating the initrd", "sealing the volume key"):
        assert step in steps
    assert re.search(r"copy: /usr \(\d+ of \d+ MiB, \d+%\)", steps)  # progress in bytes for the copy
    assert "convert: done:" in conversion.stderr
    print(f"\nconversion: {conversion.seconds} s; output {conversion.output.stat().st_size >> 20} MiB "
          f"(stock {conversion.source.stat().st_size >> 20} MiB); packages {result['packages']}")


def test_staging_dir_holds_the_boot_chain_and_only_the_sealed_key(conversion: Conversion, volume_key: bytes) -> None:
    staged = stg.read_staging(str(conversion.staging))  # every file matches its digest
    assert staged.image == NAME and staged.mode == "luks"
    assert sorted(os.listdir(conversion.staging)) == sorted(
        [stg.MANIFEST, stg.KERNEL, stg.INITRD, stg.CMDLINE, stg.SEALED_KEY])
    assert staged.cmdline == conversion.result["cmdline"]
    assert staged.output["sha256"] and staged.source["path"] == str(conversion.source)
    # The released key is 64 hex digits; neither it nor its bytes appear in any staged file, in the
    # output image (whose root is encrypted), or in what the conversion printed.
    assert re.fullmatch(rb"[0-9a-f]{64}", volume_key)
    raw = bytes.fromhex(volume_key.decode())
    for path in conversion.staging.iterdir():
        data = path.read_bytes()
        assert volume_key not in data and raw not in data, path
    assert volume_key.decode() not in conversion.stderr + json.dumps(conversion.result)
    assert not contains(conversion.output, [volume_key, raw]), "the plaintext volume key is in the output image"


def contains(path: Path, needles: list[bytes]) -> bool:
    overlap = max(len(n) for n in needles)
    tail = b""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            window = tail + chunk
            if any(n in window for n in needles):
                return True
            tail = window[-overlap:]
    return False


def test_the_luks2_header_has_the_documented_parameters(inspected: Inspected) -> None:
    dump = inspected.luks_dump
    assert re.search(r"^Version:\s+2$", dump, re.M), dump
    assert re.search(r"^Label:\s+cvm-root$", dump, re.M), dump
    assert re.search(r"cipher:\s+aes-xts-plain64", dump), dump
    assert re.search(r"sector:\s+4096 \[bytes\]", dump), dump
    assert re.search(r"PBKDF:\s+argon2id", dump), dump
    assert re.search(r"Memory:\s+65536", dump) and re.search(r"Time cost:\s+4", dump), dump
    assert re.search(r"Cipher key:\s+512 bits", dump), dump
    assert len(re.findall(r"^\s+\d+: luks2$", dump, re.M)) == 1, "exactly one keyslot"


def test_the_image_boots_through_the_agent(inspected: Inspected, conversion: Conversion) -> None:
    """crypttab names the container for the initrd; the regenerated initrd carries the agent, its config and CA."""
    uuid = conversion.result["luks"]["uuid"]
    assert f"root UUID={uuid} none luks,initramfs" in inspected.crypttab.splitlines()
    assert inspected.initrd_sha256 == stg.read_staging(str(conversion.staging)).initrd_sha256
    files = inspected.initrd_files
    for needed in ("scripts/local-top/snpguard-agent", "usr/sbin/cryptsetup", "etc/snpguard/agent.json",
                   "etc/snpguard/ca.pem"):
        assert any(name.endswith(needed) for name in files), f"{needed} not in the initrd"
    assert any("cryptography" in name for name in files), "the agent's cryptography is not in the initrd"
    assert inspected.agent_config["url"] == SERVER_URL and inspected.agent_config["image"] == NAME
    assert inspected.agent_config["luks_device"] == f"UUID={uuid}"


def test_the_agent_grows_the_initrd_by_at_most_15_mib(conversion: Conversion, cloud_image: CloudImage) -> None:
    """Stock initrd (the fixture's manifest) against the regenerated one, both zstd as the image makes them."""
    version = conversion.result["kernel_version"]
    stock = next(k["initrd_bytes"] for k in cloud_image.manifest["kernels"] if k["version"] == version)
    converted = (conversion.staging / stg.INITRD).stat().st_size
    growth = converted - stock
    print(f"\ninitrd: stock {stock / MIB:.1f} MiB, converted {converted / MIB:.1f} MiB (+{growth / MIB:.1f} MiB)")
    assert growth <= 15 * MIB


def test_no_ssh_host_keys_are_copied_into_the_confidential_image(inspected: Inspected) -> None:
    assert inspected.ssh_host_keys == []


def test_boot_attests_unlocks_and_reaches_multi_user(inspected: Inspected, conversion: Conversion,
                                                     registered: dict[str, Any], bundle: Path,
                                                     guest_server: ServerProcess, artifacts: Path, sim_dir: Path,
                                                     tmp_path: Path) -> None:
    stages: dict[str, float] = {"convert": conversion.seconds}
    staged = stg.read_staging(str(conversion.staging))
    t = time.monotonic()
    config = from_bundle(str(bundle), name="converted", state_dir=str(tmp_path / "vm"),
                         firmware=str(artifacts / "OVMF.amdsev.fd"), memory_mb=2048, simulate=True,
                         disks=[Disk(str(inspected.overlay), format="qcow2")], network="user",
                         guest_forwards=[(GUEST_SERVER[0], GUEST_SERVER[1], guest_server.port)]).validate()
    assert config.cmdline == staged.cmdline and config.expected_measurement == registered["measurements"]["1"]
    vm = Vm(config.name, config.state_dir, run)
    serial = Path(config.state_dir) / "serial.log"
    try:
        assert vm.start(config, simulated_amdsp=str(sim_dir)).changed
        t = stage(stages, "qemu_start", t)
        # The marker unit is wanted by multi-user.target, so the target is reached after it printed.
        text = wait_for(vm, serial, re.compile(r"Reached target multi-user|stopping this boot|Kernel panic"))
        t = stage(stages, "boot_to_marker", t)
    finally:
        vm.remove()
    agent = [line.strip() for line in text.splitlines() if "snpguard-agent:" in line]
    print("\n".join(agent) + f"\nstages (s): {stages}")
    assert any(f"attested, key released for {NAME}" in line for line in agent), text[-4000:]
    assert any("opened as /dev/mapper/root; key wiped" in line for line in agent), text[-4000:]
    assert "Reached target multi-user.target" in text or "Multi-User System" in text, text[-4000:]
    assert f"SNPGUARD-TEST: marker {inspected.marker} root /dev/mapper/root" in text, text[-4000:]
    assert "Please unlock disk" not in text


def test_a_rerun_with_the_same_input_changes_nothing(conversion: Conversion) -> None:
    before = conversion.output.stat().st_mtime_ns, (conversion.staging / stg.MANIFEST).read_bytes()
    again = conversion.rerun()
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False
    assert "up to date" in again.stderr
    assert (conversion.output.stat().st_mtime_ns, (conversion.staging / stg.MANIFEST).read_bytes()) == before


def test_check_mode_plans_and_writes_nothing(conversion: Conversion, tmp_path: Path) -> None:
    output, staging = tmp_path / "planned.qcow2", tmp_path / "planned.staging"
    planned = conversion.rerun("--check", output=output, staging=staging)
    assert planned.returncode == 0, planned.stderr
    result = json.loads(planned.stdout)
    assert result["changed"] is True and len(result["plan"]) >= 4
    assert any("encrypt the root partition with LUKS2" in line for line in result["plan"])
    assert os.listdir(tmp_path) == []


def test_an_interrupted_conversion_leaves_no_output(conversion: Conversion, tmp_path: Path) -> None:
    """Stopped inside the appliance (after the new disk exists): neither the image nor the staging dir remain."""
    from ansible_collections.snpguard.cvm.plugins.module_utils.image.cvm_image import apply

    class Interrupted(Exception):
        pass

    def progress(line: str) -> None:
        if line.startswith("creating the LUKS2 container"):
            raise Interrupted(line)

    argv = conversion.argv
    params = {"source": argv[0], "output": str(tmp_path / "cut.qcow2"), "staging_dir": str(tmp_path / "cut.staging"),
              "name": NAME, "server_url": SERVER_URL, "server_ca_file": argv[argv.index("--server-ca") + 1],
              "ingestion_public_key": argv[argv.index("--ingestion-key") + 1],
              "firmware": argv[argv.index("--firmware") + 1], "report_source": "channel",
              "package_cache": argv[argv.index("--package-cache") + 1], "force_tcg": True}
    with pytest.raises(Interrupted):
        apply(params, run, progress=progress)
    assert os.listdir(tmp_path) == [], "a partial output was left behind"


def test_check_mode_refuses_a_kernel_the_image_does_not_have(conversion: Conversion, tmp_path: Path) -> None:
    refused = conversion.rerun("--check", "--kernel", "0.0.1-nonexistent", output=tmp_path / "x.qcow2",
                               staging=tmp_path / "x.staging")
    assert refused.returncode != 0
    error = json.loads(refused.stdout)["error"]
    assert error["field"] == "kernel" and "0.0.1-nonexistent" in error["message"], error
    assert os.listdir(tmp_path) == []
