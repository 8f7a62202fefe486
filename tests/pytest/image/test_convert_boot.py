# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``mode: luks``: the stock Debian 13 image as convert.yml converted it, inspected; the CLI agrees with it.

The session's pipeline (conftest.py) converted the cached stock qcow2 (scripts/cloud_image.py) with the
``snpguard.cvm.cvm_image`` module, its volume key sealed to the replicas' ingestion key, and registered it
with register.yml.  Here libguestfs inspects what came out (the LUKS2 header, the agent in the regenerated
initrd, the crypttab, no SSH host keys, no plaintext key anywhere) with the key the server releases to a
(simulated) guest of exactly that launch.  ``snpguard image convert`` run with the options the module had is
a no-op (the CLI and the module make the same conversion), check mode plans without writing, and a
conversion interrupted mid-way leaves no output behind.  The image boots in test_pipeline.py (three VMs at
once) and is refused in test_refusals.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import CloudImage
from conversions import convert_cli, need_tools
from pipeline import LUKS, Pipeline
from servers import GUEST_SERVER, Agent

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.archive import read_bundle
from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.launch import bundle_host_data
from ansible_collections.snpguard.cvm.plugins.module_utils.image import staging as stg
from ansible_collections.snpguard.cvm.plugins.module_utils.image.appliance import shell

pytestmark = pytest.mark.slow
NAME = LUKS
SERVER_URL = f"https://{GUEST_SERVER[0]}"
MIB = 1 << 20


@dataclass
class Conversion:
    source: Path
    output: Path
    staging: Path
    argv: list[str]
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
def conversion(pipeline: Pipeline, replicas: Any, cloud_image: CloudImage, artifacts: Path) -> Conversion:
    """The pipeline's luks image, and the CLI's arguments for the very options convert.yml gave the module."""
    with replicas.a.client() as client:
        ingestion = client.get("/public/info").json()["ingestion_public_key"]
    output, staging = pipeline.image_path(LUKS), pipeline.staging(LUKS)
    argv = [str(cloud_image.path), str(output), "--staging-dir", str(staging), "--name", NAME,
            "--server-url", SERVER_URL, "--server-ca", str(pipeline.hosts_dir / "server-ca.pem"),
            "--ingestion-key", ingestion, "--firmware", str(pipeline.firmware), "--report-source", "channel",
            "--package-cache", str(pipeline.hosts_dir / "debs"), "--force-tcg", "--json"]
    return Conversion(cloud_image.path, output, staging, argv, pipeline.times.get("convert_both", 0.0))


@pytest.fixture(scope="module")
def registered(replicas: Any) -> dict[str, Any]:
    with replicas.a.client(replicas.token) as admin:
        return next(i for i in admin.get("/images").json()["items"] if i["name"] == NAME)


@pytest.fixture(scope="module")
def bundle(registered: dict[str, Any], replicas: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The launch bundle the server serves for the registered image (what snp_vm boots from)."""
    with replicas.a.client(replicas.token) as admin:
        response = admin.get(f"/images/{registered['id']}/bundle")
    assert response.status_code == 200, response.text
    path = tmp_path_factory.mktemp("bundle") / f"{NAME}.bundle.tar.gz"
    path.write_bytes(response.content)
    return path


@pytest.fixture(scope="module")
def volume_key(registered: dict[str, Any], bundle: Path, replicas: Any, sim) -> bytes:
    """The key the server releases to a guest launched from the bundle (its measurement, HOST_DATA, ID key)."""
    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.id_block import ID_AUTH_SIZE, IdAuth, decode_blob

    entry = registered["measurements"][0]
    auth = IdAuth.from_bytes(decode_blob(entry["id_auth"], ID_AUTH_SIZE, "id_auth"))
    host_data = bundle_host_data(read_bundle(bundle.read_bytes()))
    with replicas.b.client() as client:
        response, key, _body = Agent(sim).handshake(client, bytes.fromhex(entry["measurement"]),
                                                    host_data=host_data, id_key_digest=auth.id_key_digest)
    assert response.status_code == 200, response.text
    assert key is not None
    return bytes(key)


@dataclass
class Inspected:
    luks_dump: str
    luks_uuid: str
    crypttab: str
    fstab: str
    initrd_files: set[str]
    agent_config: dict[str, Any]
    ssh_host_keys: list[str]
    initrd_sha256: str
    kernel_version: str


@pytest.fixture(scope="module")
def inspected(conversion: Conversion, volume_key: bytes, cloud_image: CloudImage) -> Inspected:
    """The converted image read-only in one appliance, opened with the key the server releases."""
    guestfs = need_tools()
    root_part = next(p["number"] for p in cloud_image.manifest["disk"]["partitions"] if p["role"] == "root")
    version = stg.read_staging(str(conversion.staging)).kernel_version
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.add_drive_opts(str(conversion.output), format="qcow2", readonly=True, label="image")
        g.launch()
        device = f"/dev/sda{root_part}"  # libguestfs' name (API calls); a shell gets the kernel's through the label
        shell_device = f"/dev/disk/guestfs/image{root_part}"
        dump = shell(g, "luksDump", f"cryptsetup luksDump {shell_device}")  # the appliance's shell: nothing mounted
        uuid = shell(g, "luksUUID", f"cryptsetup luksUUID {shell_device}").splitlines()[-1].strip()
        g.cryptsetup_open(device, volume_key.decode("ascii"), "root", readonly=True)
        g.mount_ro("/dev/mapper/root", "/")
        config = json.loads(g.cat("/etc/snpguard/agent.json")) if g.is_file("/etc/snpguard/agent.json") else {}
        facts = Inspected(
            luks_dump=dump, luks_uuid=uuid, crypttab=g.cat("/etc/crypttab"), fstab=g.cat("/etc/fstab"),
            initrd_files=set(g.command_lines(["lsinitramfs", f"/boot/initrd.img-{version}"])), agent_config=config,
            ssh_host_keys=g.glob_expand("/etc/ssh/ssh_host_*"),
            initrd_sha256=g.checksum("sha256", f"/boot/initrd.img-{version}"), kernel_version=version)
        g.umount_all()
        g.cryptsetup_close("/dev/mapper/root")
        g.shutdown()
    finally:
        g.close()
    return facts


def test_convert_yml_converted_and_the_staging_dir_records_it(pipeline: Pipeline, conversion: Conversion) -> None:
    staged = stg.read_staging(str(conversion.staging))
    assert staged.kernel_version.endswith("-amd64")
    assert staged.cmdline.startswith("root=/dev/mapper/root ro ") and "ip=dhcp" in staged.cmdline.split()
    assert f"{LUKS}: converted" in pipeline.converted.output, pipeline.converted.output[-3000:]
    print(f"\nconversion (two at once, convert.yml --forks 2): {conversion.seconds} s; output "
          f"{conversion.output.stat().st_size >> 20} MiB (stock {conversion.source.stat().st_size >> 20} MiB)")


def test_staging_dir_holds_the_boot_chain_and_only_the_sealed_key(conversion: Conversion, volume_key: bytes,
                                                                  pipeline: Pipeline) -> None:
    staged = stg.read_staging(str(conversion.staging))  # every file matches its digest
    assert staged.image == NAME and staged.mode == "luks"
    assert sorted(os.listdir(conversion.staging)) == sorted(
        [stg.MANIFEST, stg.KERNEL, stg.INITRD, stg.CMDLINE, stg.SEALED_KEY])
    assert staged.output["sha256"] and staged.source["path"] == str(conversion.source)
    # The released key is 64 hex digits; neither it nor its bytes appear in any staged file, in the
    # output image (whose root is encrypted), or in what the conversion printed.
    assert re.fullmatch(rb"[0-9a-f]{64}", volume_key)
    raw = bytes.fromhex(volume_key.decode())
    for path in conversion.staging.iterdir():
        data = path.read_bytes()
        assert volume_key not in data and raw not in data, path
    assert volume_key.decode() not in pipeline.converted.output + pipeline.registered.output
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
    uuid = inspected.luks_uuid
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
    version = stg.read_staging(str(conversion.staging)).kernel_version
    stock = next(k["initrd_bytes"] for k in cloud_image.manifest["kernels"] if k["version"] == version)
    converted = (conversion.staging / stg.INITRD).stat().st_size
    growth = converted - stock
    print(f"\ninitrd: stock {stock / MIB:.1f} MiB, converted {converted / MIB:.1f} MiB (+{growth / MIB:.1f} MiB)")
    assert growth <= 15 * MIB


def test_no_ssh_host_keys_are_copied_into_the_confidential_image(inspected: Inspected) -> None:
    assert inspected.ssh_host_keys == []


def test_a_rerun_with_the_same_input_changes_nothing(conversion: Conversion) -> None:
    before = conversion.output.stat().st_mtime_ns, (conversion.staging / stg.MANIFEST).read_bytes()
    # Planned first: a rerun that would convert again must not replace the registered image the
    # other tests boot (its initrd names the LUKS UUID the server's measurement vouches for).
    planned = conversion.rerun("--check")
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["changed"] is False, json.loads(planned.stdout).get("plan")
    again = conversion.rerun()
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False, again.stderr[-3000:]  # the module's conversion, to the CLI
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
