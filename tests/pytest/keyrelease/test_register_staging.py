# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Registration from a staging dir (``cvm_register staging_dir``, ``snpguard image register --staging-dir``).

The staging dirs are built here as a conversion writes them (``image/staging.py``):
the real Debian 13 kernel and an initrd from the artifact cache, a command line, and the
volume key sealed to the test server's ingestion key.  The measurements the server
registers must be what ``snpguard measure`` computes from the same files, a second run
changes nothing, and every way a staging dir can disagree with the request is refused
naming the field.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import DEVROOT, ServerProcess, snpguard_cmd, snpguard_env

from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.archive import read_bundle
from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.launch import parse_launch
from ansible_collections.snpguard.cvm.plugins.module_utils.image import staging as staging_mod
from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import seal_for_ingestion

CMDLINE = "console=ttyS0 root=/dev/mapper/root ro snpguard.test=1"


def cmdline_of(image: str) -> str:
    """Each test image has its own command line: a measurement is registered to one image only."""
    return f"{CMDLINE} snpguard.image={image}"


LAUNCH = {"vcpus": [1, 2], "vcpu_type": "EPYC-v4", "policy": "0x30000", "guest_features": "0x1", "vmm_type": "QEMU"}
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sha384(path: Path) -> str:
    return hashlib.sha384(path.read_bytes()).hexdigest()


def ingestion_key(server: ServerProcess) -> bytes:
    with httpx.Client(base_url=server.url, verify=server.ca, timeout=30) as client:
        return base64.b64decode(client.get("/public/info").json()["ingestion_public_key"])


def make_staging(directory: Path, artifacts: Path, server: ServerProcess, image: str, *,
                 mode: str = "luks", firmware: str = "OVMF.amdsev.fd") -> Path:
    """A staging dir as the conversion writes it (sealed key to the server's ingestion key)."""
    directory.mkdir(parents=True)
    kernel, initrd = directory / staging_mod.KERNEL, directory / staging_mod.INITRD
    shutil.copyfile(artifacts / "vmlinuz-trixie", kernel)
    shutil.copyfile(artifacts / "initrd.img", initrd)
    sealed = None
    if mode == "luks":
        blob = seal_for_ingestion(os.urandom(64), ingestion_key(server), image)
        (directory / staging_mod.SEALED_KEY).write_text(base64.b64encode(blob).decode() + "\n")
        sealed = str(directory / staging_mod.SEALED_KEY)
    staged = staging_mod.Staging(
        directory=str(directory), image=image, mode=mode, kernel_version="6.12.57+deb13-amd64",
        cmdline=cmdline_of(image) + (f" snpguard.verity.roothash={'ab' * 32}" if mode == "verity" else ""),
        firmware_sha384=sha384(artifacts / firmware), launch=parse_launch(LAUNCH),
        kernel_sha256=sha256(kernel), initrd_sha256=sha256(initrd), sealed_volume_key=sealed,
        verity={"root_hash": "ab" * 32} if mode == "verity" else None,
        source={"path": "/srv/stock.qcow2", "sha256": "00" * 32},
        output={"path": "/srv/out.qcow2", "sha256": "11" * 32},
        options_digest="22" * 32)
    staging_mod.write_manifest(str(directory), staged)
    return directory


def expected_measurements(artifacts: Path, staging: Path) -> dict[str, str]:
    """What ``snpguard measure`` says for the staged files (the independent front end)."""
    cmdline = (staging / "cmdline").read_text().rstrip("\n")
    proc = subprocess.run(snpguard_cmd("measure", "--ovmf", str(artifacts / "OVMF.amdsev.fd"),
                                       "--kernel", str(staging / "vmlinuz"), "--initrd", str(staging / "initrd.img"),
                                       "--append", cmdline, "--vcpus", "1,2", "--vcpu-type", "EPYC-v4", "--json"),
                          env=snpguard_env(), capture_output=True, text=True, timeout=300, check=True)
    return json.loads(proc.stdout)["measurements"]


@pytest.fixture(scope="module")
def token(server: ServerProcess) -> str:
    return server.mint_token("staging-tests")


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, artifacts: Path, server: ServerProcess) -> Path:
    return make_staging(tmp_path_factory.mktemp("staged") / "debian13-staged", artifacts, server, "debian13-staged")


@pytest.fixture(scope="module")
def expected(artifacts: Path, staged: Path) -> dict[str, str]:
    return expected_measurements(artifacts, staged)


class Cli:
    def __init__(self, server: ServerProcess, token: str) -> None:
        self.env = snpguard_env()
        for name in ("SNPGUARD_URL", "SNPGUARD_CA_FILE", "SNPGUARD_CONFIG"):
            self.env.pop(name, None)
        self.env.update(SNPGUARD_TOKEN=token)
        self.connection = ["--url", server.base, "--ca-file", str(server.data_dir / "tls" / "ca.pem")]

    def register(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(snpguard_cmd("image", "register", *argv, *self.connection), env=self.env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300, check=False)


@pytest.fixture(scope="module")
def cli(server: ServerProcess, token: str) -> Cli:
    return Cli(server, token)


def edited_copy(staged: Path, tmp_path: Path, name: str | None = None) -> Path:
    copy = tmp_path / (name or staged.name)
    shutil.copytree(staged, copy)
    return copy


# -- the CLI ---------------------------------------------------------------------------------------


def test_cli_registers_the_measured_staging_dir(cli: Cli, staged: Path, expected: dict[str, str],
                                                artifacts: Path, admin: httpx.Client) -> None:
    firmware = str(artifacts / "OVMF.amdsev.fd")
    check = cli.register("debian13-staged", "--staging-dir", str(staged), "--firmware", firmware, "--check")
    assert check.returncode == 0 and "would be created" in check.stdout, check.stderr
    first = cli.register("debian13-staged", "--staging-dir", str(staged), "--firmware", firmware, "--json")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["action"] == "created" and result["measurements"] == expected
    registered = {str(m["vcpus"]): m["measurement"] for m in result["image"]["measurements"]}
    assert registered == expected
    # The server's bundle holds exactly the staged files.
    bundle = admin.get(f"/images/{result['id']}/bundle")
    assert bundle.status_code == 200
    files = read_bundle(bundle.content)
    assert files["kernel"] == (staged / "vmlinuz").read_bytes()
    assert files["initrd"] == (staged / "initrd.img").read_bytes()
    assert files["cmdline"].decode() == cmdline_of("debian13-staged")
    assert files["firmware.sha384"].decode().strip() == sha384(artifacts / "OVMF.amdsev.fd")
    launch = json.loads(files["launch.json"])
    assert launch["vcpus"] == [1, 2] and launch["vcpu_type"] == "EPYC-v4" and launch["policy"] == "0x30000"
    assert launch["measurements"] == expected
    again = cli.register("debian13-staged", "--staging-dir", str(staged), "--firmware", firmware,
                         "--measurement", "2=" + expected["2"])
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stderr
    assert f"measured 2 vCPUs: {expected['2']}" in again.stdout


def refusal(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode in (1, 2), (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)["error"]


def test_cli_refusals(cli: Cli, staged: Path, expected: dict[str, str], artifacts: Path, tmp_path: Path) -> None:
    firmware = str(artifacts / "OVMF.amdsev.fd")

    def register(directory: Path, *extra: str, name: str = "debian13-staged",
                 firmware_path: str = firmware) -> dict[str, Any]:
        return refusal(cli.register(name, "--staging-dir", str(directory), "--firmware", firmware_path, "--json",
                                    *extra))

    initrd_changed = edited_copy(staged, tmp_path / "initrd")
    with open(initrd_changed / "initrd.img", "r+b") as handle:
        handle.seek(1 << 20)
        handle.write(b"\x00tampered")
    error = register(initrd_changed)
    assert error["field"] == "initrd" and "initrd.img" in error["message"]

    cmdline_edited = edited_copy(staged, tmp_path / "cmdline")
    (cmdline_edited / "cmdline").write_text(cmdline_of("debian13-staged") + " init=/bin/sh\n")
    assert register(cmdline_edited)["field"] == "cmdline"

    not_json = edited_copy(staged, tmp_path / "notjson")
    (not_json / "manifest.json").write_text("{not json")
    error = register(not_json)
    assert error["field"] == "staging_dir" and "not JSON" in error["message"]

    wrong_format = edited_copy(staged, tmp_path / "format")
    doc = json.loads((wrong_format / "manifest.json").read_text())
    (wrong_format / "manifest.json").write_text(json.dumps(dict(doc, format="snpguard-staging/0")))
    assert register(wrong_format)["field"] == "manifest.format"

    error = register(staged, firmware_path=str(artifacts / "OVMF.fd"))
    assert error["field"] == "firmware" and "SHA-384" in error["message"]

    wrong = "00" * 48
    error = register(staged, "--measurement", "2=" + wrong)
    assert error["field"] == "measurements" and wrong in error["message"] and expected["2"] in error["message"]
    assert register(staged, "--measurement", "4=" + expected["1"])["field"] == "measurements"

    error = register(staged, name="debian13-other")
    assert error["field"] == "name" and "debian13-staged" in error["message"]

    no_key = edited_copy(staged, tmp_path / "nokey")
    (no_key / "sealed-volume-key").unlink()
    assert register(no_key)["field"] == "sealed_volume_key"
    doc = json.loads((no_key / "manifest.json").read_text())
    (no_key / "manifest.json").write_text(json.dumps(dict(doc, sealed_volume_key=None)))
    assert register(no_key)["field"] == "manifest.sealed_volume_key"

    assert register(staged, "--kernel", str(staged / "vmlinuz"))["field"] == "kernel"
    assert register(staged, "--sealed-key-file", str(staged / "sealed-volume-key"))["field"] == \
        "sealed_volume_key_file"
    missing_firmware = refusal(cli.register("debian13-staged", "--staging-dir", str(staged), "--json"))
    assert missing_firmware["field"] == "firmware"
    usage = cli.register("debian13-staged", "--json")
    assert usage.returncode == 2 and json.loads(usage.stdout)["error"]["field"] == "measurements"


def test_cli_verity_staging_dir_registers_integrity_only(cli: Cli, artifacts: Path, server: ServerProcess,
                                                         tmp_path: Path) -> None:
    """A verity image has no volume key: registered without one, and a key given for it is refused by name."""
    staged = make_staging(tmp_path / "verity", artifacts, server, "debian13-verity", mode="verity")
    firmware = str(artifacts / "OVMF.amdsev.fd")
    key = tmp_path / "volume.key"
    key.write_bytes(os.urandom(32))
    with_key = refusal(cli.register("debian13-verity", "--staging-dir", str(staged), "--firmware", firmware,
                                    "--volume-key-file", str(key), "--json", "--check"))
    assert with_key["field"] == "volume_key_file" and "no volume key" in with_key["message"]
    done = cli.register("debian13-verity", "--staging-dir", str(staged), "--firmware", firmware, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["action"] == "created" and result["image"]["integrity_only"] is True


# -- the module ------------------------------------------------------------------------------------


MODULE_TASKS = """
    - name: Register the staging dir (check mode)
      snpguard.cvm.cvm_register: &staged
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        token: "{{ api_token }}"
        name: "{{ image }}"
        staging_dir: "{{ staging }}"
        firmware: "{{ firmware }}"
      check_mode: true
      register: planned
    - name: Register the staging dir
      snpguard.cvm.cvm_register: *staged
      register: first
    - name: Again, with a cross-checked measurement
      snpguard.cvm.cvm_register:
        <<: *staged
        measurements:
          2: "{{ expected['2'] }}"
      register: again
    - name: A mismatching measurement
      snpguard.cvm.cvm_register:
        <<: *staged
        measurement: "{{ '00' * 48 }}"
      register: mismatch
      ignore_errors: true
    - name: The wrong name
      snpguard.cvm.cvm_register:
        <<: *staged
        name: someone-else
      register: wrong_name
      ignore_errors: true
    - name: The wrong firmware
      snpguard.cvm.cvm_register:
        <<: *staged
        firmware: "{{ other_firmware }}"
      register: wrong_firmware
      ignore_errors: true
    - name: An initrd modified after staging
      snpguard.cvm.cvm_register:
        <<: *staged
        staging_dir: "{{ tampered }}"
      register: tampered_initrd
      ignore_errors: true
    - name: A staging dir and a kernel
      snpguard.cvm.cvm_register:
        <<: *staged
        kernel: "{{ staging }}/vmlinuz"
        initrd: "{{ staging }}/initrd.img"
      register: both
      ignore_errors: true
    - ansible.builtin.assert:
        that:
          - planned is changed and planned.action == 'create' and planned.measurements == expected
          - first is changed and first.action == 'created' and first.measurements == expected
          - first.image.measurements | map(attribute='measurement') | list == [expected['1'], expected['2']]
          - first.image.bundle_sha256 is string
          - again is not changed and again.action == 'unchanged' and again.id == first.id
          - mismatch is failed and mismatch.field == 'measurements' and expected['1'] in mismatch.msg
          - wrong_name is failed and wrong_name.field == 'name'
          - wrong_firmware is failed and wrong_firmware.field == 'firmware'
          - tampered_initrd is failed and tampered_initrd.field == 'initrd'
          - both is failed and 'mutually exclusive' in both.msg and 'staging_dir' in both.msg
"""


def test_module_registers_a_staging_dir(server: ServerProcess, token: str, artifacts: Path,
                                        tmp_path: Path) -> None:
    staging = make_staging(tmp_path / "module-image", artifacts, server, "module-image")
    expected = expected_measurements(artifacts, staging)
    tampered = edited_copy(staging, tmp_path / "tampered")
    with open(tampered / "initrd.img", "ab") as handle:
        handle.write(b"\x00")
    variables = {"url": server.base, "ca_file": str(server.data_dir / "tls" / "ca.pem"), "api_token": token,
                 "image": "module-image", "staging": str(staging), "firmware": str(artifacts / "OVMF.amdsev.fd"),
                 "other_firmware": str(artifacts / "OVMF.fd"), "tampered": str(tampered),
                 "expected": expected}
    play = tmp_path / "play.yml"
    play.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n" + MODULE_TASKS)
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    environment = dict(os.environ)
    for name in ("SNPGUARD_URL", "SNPGUARD_TOKEN", "SNPGUARD_CA_FILE"):
        environment.pop(name, None)
    environment.update({
        "ANSIBLE_COLLECTIONS_PATH": str(DEVROOT), "ANSIBLE_HOME": str(tmp_path / ".ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".ansible-tmp"), "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0", "PYTHONPATH": "",
        "ANSIBLE_DUPLICATE_YAML_DICT_KEY": "ignore"})
    proc = subprocess.run([str(PLAYBOOK), "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={sys.executable}", "-e", f"@{tmp_path / 'vars.json'}",
                           str(play)], env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    assert "failed=0" in proc.stdout
