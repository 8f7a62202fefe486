# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""convert → register → boot → attest with the playbooks, behind two key-release replicas on PostgreSQL.

The session's ``pipeline`` (conftest.py) ran ``convert.yml`` (a luks and a verity image of the real
Debian 13 fixture, on two image builders at once) and ``register.yml`` against replica A.  Here:

* three luks VMs boot at once (``boot.yml --forks 3``), their agents attesting to replica A or B
  (each VM's guest forward picks one); each reaches multi-user (sshd answers on the unlocked root),
  each console shows exactly one release, systemd in each says multi-user.target is active (asked over SSH:
  under load the serial console can lag the guest by minutes), and the shared audit log exactly three - one key per VM,
  once; a second ``boot.yml`` changes nothing;
* a verity VM passes ``attest.yml`` (boot report from its console, verified; its host key pinned; a
  fresh attestation over that connection) and gets the secret; the gate fails closed, before the
  secret, when Ansible's connection reaches another VM than the one that proved its key, and when
  the image is disabled on the server.

Each test prints the time of its stages; the refusals of key release are test_refusals.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conversions import console, wait_for
from pipeline import DEVROOT, LUKS, PLAYBOOK_BIN, VERITY, Pipeline
from test_convert_verity import check_boot_report

from ansible_collections.snpguard.cvm.cli.process import run
from ansible_collections.snpguard.cvm.plugins.module_utils.image import staging as stg
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.vm import Vm

pytestmark = pytest.mark.slow


def releases(replicas: Any, image: str) -> list[dict[str, Any]]:
    with replicas.a.client(replicas.token) as admin:
        response = admin.get("/audit", params={"limit": 500, "image": image})
    assert response.status_code == 200, response.text
    return [entry for entry in response.json()["items"] if entry["result"] == "released"]


def test_three_luks_vms_boot_at_once_behind_two_replicas_and_each_gets_its_key_once(
        pipeline: Pipeline, replicas: Any) -> None:
    before = len(releases(replicas, LUKS))
    vms = {"luks-1": (2311, replicas.a.port), "luks-2": (2312, replicas.b.port), "luks-3": (2313, replicas.a.port)}
    for name, (ssh_port, replica) in vms.items():
        pipeline.add_vm(name, LUKS, ssh_port, replica)
    try:
        booted = pipeline.run("boot.yml", "--forks", "3", "--limit", ",".join(vms), stage="boot_3_luks_vms")
        assert booted.returncode == 0, "boot.yml failed:\n" + booted.output[-6000:] + "".join(
            f"\n--- {name} console, last lines:\n{console(pipeline.serial(name))[-2500:]}" for name in vms)
        for name in vms:
            state = pipeline.wait_active(name, "multi-user.target")  # sshd answered; systemd may not be done yet
            text = console(pipeline.serial(name))
            agent = [line.strip() for line in text.splitlines() if "snpguard-agent:" in line]
            print(f"{name}: multi-user.target {state}; " + " | ".join(agent[-3:]))
            assert sum("attested, key released" in line for line in agent) == 1, text[-3000:]
            assert any("opened as /dev/mapper/root; key wiped" in line for line in agent), text[-3000:]
            assert state == "active", f"{name}: multi-user.target is {state!r}; console tail:\n{text[-3000:]}"
        released = releases(replicas, LUKS)
        assert len(released) - before == 3, released
        assert len({entry["session_id"] for entry in released[:3]}) == 3  # newest first: three handshakes
        again = pipeline.must("boot.yml", "--forks", "3", "--limit", ",".join(vms), stage="boot_again")
        assert again.changed() == 0, again.output[-4000:]
        print(f"stages (s): {pipeline.times}; first boot recap {booted.recap()}")
    finally:
        pipeline.stop(*vms)


def ansible(pipeline: Pipeline, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    """An ad-hoc command on a VM over the inventory's (pinned) SSH connection."""
    env = {"ANSIBLE_COLLECTIONS_PATH": str(DEVROOT), "ANSIBLE_HOME": str(pipeline.work / "ansible-home"),
           "ANSIBLE_NOCOLOR": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(Path.home())}
    return subprocess.run([str(PLAYBOOK_BIN.parent / "ansible"), "-i", str(pipeline.inventory), host, *args],
                          env=env, capture_output=True, text=True, timeout=600, check=False)


def test_a_verity_vm_passes_the_attest_gate_and_gets_the_secret_and_the_gate_fails_closed(
        pipeline: Pipeline, replicas: Any, artifacts: Path, sim: Any, tmp_path: Path) -> None:
    pipeline.add_vm("verity-1", VERITY, 2321, replicas.a.port)
    pipeline.add_vm("verity-2", VERITY, 2322, replicas.b.port)
    secret = "/run/snpguard/secret"
    try:
        pipeline.must("boot.yml", "--forks", "2", "--limit", "verity-1,verity-2", stage="boot_2_verity_vms")
        # The root read-only through dm-verity, the writable layers, sshd with a key made at this boot. boot.yml
        # returns once sshd answers; the boot report's unit runs after ssh.service, so wait for its line.
        text = wait_for(Vm("verity-1", str(pipeline.vm_dir("verity-1")), run), pipeline.serial("verity-1"),
                        re.compile("snpguard-boot-report: report "), deadline=600)
        assert "opened as /dev/mapper/root (dm-verity" in text, text[-4000:]
        assert "snpguard-verity: root /dev/mapper/root mounted ro" in text and "/etc an overlay" in text
        assert re.search(r"Started ssh\.service", text) and "is corrupted" not in text, text[-4000:]
        check_boot_report(text, stg.read_staging(str(pipeline.staging(VERITY))), artifacts, sim, tmp_path)
        attested = pipeline.must("attest.yml", "--limit", "verity-1", stage="attest")
        assert "boot report and fresh report verified" in attested.output
        known = (pipeline.controller_dir / "known_hosts").read_text()
        assert "[127.0.0.1]:2321 ssh-ed25519 " in known
        read = ansible(pipeline, "verity-1", "-b", "-m", "ansible.builtin.command", "-a", f"cat {secret}")
        assert read.returncode == 0 and "the pipeline test's secret" in read.stdout, read.stdout + read.stderr
        again = pipeline.must("attest.yml", "--limit", "verity-1", stage="attest_again")
        assert again.changed() == 0, again.output[-4000:]

        # The secret is removed; then the connection for verity-1 is pointed at verity-2's sshd (what a relay or a
        # swapped VM looks like): its report proves verity-1's key, the connection meets another - no secret.
        removed = ansible(pipeline, "verity-1", "-b", "-m", "ansible.builtin.file", "-a", f"path={secret} state=absent")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        swapped = pipeline.run("attest.yml", "--limit", "verity-1", "-e", "ansible_port=2322", stage="attest_swapped")
        assert swapped.returncode != 0
        assert re.search(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED", swapped.output), \
            swapped.output[-4000:]
        absent = ansible(pipeline, "verity-1", "-b", "-m", "ansible.builtin.stat", "-a", f"path={secret}")
        assert '"exists": false' in absent.stdout, absent.stdout + absent.stderr

        # Disabled on the server: refused before anything reaches the VM.
        with replicas.a.client(replicas.token) as admin:
            image_id = next(i["id"] for i in admin.get("/images").json()["items"] if i["name"] == VERITY)
            assert admin.post(f"/images/{image_id}/disable").status_code == 200
        try:
            disabled = pipeline.run("attest.yml", "--limit", "verity-1", stage="attest_disabled")
        finally:
            with replicas.a.client(replicas.token) as admin:
                admin.post(f"/images/{image_id}/enable")
        assert disabled.returncode != 0 and "is disabled on the key-release server" in disabled.output
        absent = ansible(pipeline, "verity-1", "-b", "-m", "ansible.builtin.stat", "-a", f"path={secret}")
        assert '"exists": false' in absent.stdout, absent.stdout + absent.stderr
        print(f"stages (s): {pipeline.times}")
    finally:
        pipeline.stop("verity-1", "verity-2")
