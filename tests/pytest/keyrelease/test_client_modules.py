# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard.cvm.cvm_register`` and ``snpguard.cvm.cvm_api_token`` in real ansible-playbook runs.

The collection is found through ANSIBLE_COLLECTIONS_PATH=build/devroot (the link that
tests/pytest/conftest.py makes), modules run with this venv's interpreter, and they
talk to a real server over HTTPS with its CA pinned.  The playbooks assert on the
registered results themselves; the tests check the recap, the diff output and that no
secret reached the output.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from servers import DEVROOT, ServerProcess

from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.admin_client import KeyReleaseClient
from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import seal_for_ingestion

PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
RECAP = re.compile(r"^localhost\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def run_playbook(tmp_path: Path, tasks: str, variables: dict[str, Any], *flags: str,
                 env: dict[str, str] | None = None) -> tuple[int, str, dict[str, int]]:
    play = tmp_path / f"play-{len(list(tmp_path.glob('play-*')))}.yml"
    play.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n" + tasks)
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    environment = dict(os.environ)
    for name in ("SNPGUARD_URL", "SNPGUARD_TOKEN", "SNPGUARD_CA_FILE"):
        environment.pop(name, None)
    environment.update({
        "ANSIBLE_COLLECTIONS_PATH": str(DEVROOT), "ANSIBLE_HOME": str(tmp_path / ".ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".ansible-tmp"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0", "PYTHONPATH": "",
        # The playbooks override YAML merge keys ("<<: *image" then one option): intended, not a typo.
        "ANSIBLE_DUPLICATE_YAML_DICT_KEY": "ignore",
        **(env or {})})
    proc = subprocess.run([str(PLAYBOOK), "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={sys.executable}", "-e", f"@{tmp_path / 'vars.json'}",
                           str(play), *flags], env=environment, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False)
    output = proc.stdout + proc.stderr
    match = RECAP.search(proc.stdout)
    recap = dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups()), strict=True)) \
        if match else {}
    return proc.returncode, output, recap


@pytest.fixture(scope="module")
def variables(server: ServerProcess) -> dict[str, Any]:
    return {"url": server.base, "ca_file": str(server.data_dir / "tls" / "ca.pem"),
            "master_password": server.master_password(), "api_token": server.mint_token("module-tests")}


TOKEN_TASKS = """
    - name: First token from the master password
      snpguard.cvm.cvm_api_token: &boot
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        name: boot
        scope: admin
        master_password: "{{ master_password }}"
        token_file: "{{ work }}/boot.token"
      register: first
    - name: Again
      snpguard.cvm.cvm_api_token: *boot
      register: again
    - ansible.builtin.assert:
        that:
          - first is changed and first.token is match('sgt_[0-9a-f]{16}_')
          - first.token == lookup('ansible.builtin.file', work ~ '/boot.token')
          - again is not changed and again.id == first.id and again.token is not defined
    - name: A named token in check mode (nothing created)
      snpguard.cvm.cvm_api_token: &named
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        token: "{{ lookup('ansible.builtin.file', work ~ '/boot.token') }}"
        name: playbook-named
      check_mode: true
      register: planned
    - name: The named token
      snpguard.cvm.cvm_api_token: *named
      register: named
      no_log: true
    - name: The named token again
      snpguard.cvm.cvm_api_token: *named
      register: named_again
    - ansible.builtin.assert:
        that:
          - planned is changed and planned.token is not defined
          - named is changed and named.token is defined
          - named_again is not changed and named_again.tokens | length == 1
          - named_again.tokens[0].id == named.id
    - name: Revoke it
      snpguard.cvm.cvm_api_token:
        <<: *named
        state: absent
      register: revoked
    - name: Revoke it again
      snpguard.cvm.cvm_api_token:
        <<: *named
        state: absent
      register: revoked_again
    - ansible.builtin.assert:
        that:
          - revoked is changed and revoked.revoked == [named.id]
          - revoked_again is not changed and revoked_again.revoked == []
    - name: The master password alone cannot tell whether a token exists
      snpguard.cvm.cvm_api_token:
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        name: nowhere
        master_password: "{{ master_password }}"
      register: refused
      ignore_errors: true
    - ansible.builtin.assert:
        that: refused is failed and 'token_file' in refused.msg
    - name: Revoke the boot token with itself; the file goes too
      snpguard.cvm.cvm_api_token:
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        name: boot
        token_file: "{{ work }}/boot.token"
        state: absent
      register: boot_gone
    - ansible.builtin.stat:
        path: "{{ work }}/boot.token"
      register: boot_file
    - ansible.builtin.assert:
        that: boot_gone is changed and boot_gone.revoked == [first.id] and not boot_file.stat.exists
"""


def test_api_token_module(server: ServerProcess, variables: dict[str, Any], tmp_path: Path) -> None:
    rc, output, recap = run_playbook(tmp_path, TOKEN_TASKS, dict(variables, work=str(tmp_path)), "-v")
    assert rc == 0, output
    assert recap["failed"] == 0 and recap["changed"] == 5, output
    assert variables["master_password"] not in output
    # With -v results are printed: the no_log task's is censored (the first task's shows its token, as documented).
    listed = KeyReleaseClient(server.url, variables["api_token"], ca_file=variables["ca_file"]).list_tokens()
    named = [t for t in listed if t["name"] == "playbook-named"]
    assert len(named) == 1 and named[0]["state"] == "revoked"
    assert "censored" in output


def test_token_file_is_private(variables: dict[str, Any], tmp_path: Path) -> None:
    tasks = """
    - snpguard.cvm.cvm_api_token:
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        name: private
        master_password: "{{ master_password }}"
        token_file: "{{ work }}/private.token"
      no_log: true
"""
    rc, output, _recap = run_playbook(tmp_path, tasks, dict(variables, work=str(tmp_path)))
    assert rc == 0, output
    path = tmp_path / "private.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() not in output


REGISTER_TASKS = """
    - name: Check mode on a new image
      snpguard.cvm.cvm_register: &image
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        token: "{{ api_token }}"
        name: playbook-image
        measurements:
          1: "{{ m1 }}"
          2: "{{ m2 }}"
        policy:
          smt: true
          min_abi: "1.51"
        min_tcb: {bootloader: 2, tee: 0, snp: 9, microcode: 200}
        family_id: "{{ '0f' * 16 }}"
        host_data: "{{ 'aa' * 32 }}"
        sealed_volume_key_file: "{{ sealed_file }}"
      check_mode: true
      register: planned
    - name: Register
      snpguard.cvm.cvm_register: *image
      register: created
    - name: Register again
      snpguard.cvm.cvm_register: *image
      register: again
    - name: Check mode again
      snpguard.cvm.cvm_register: *image
      check_mode: true
      register: planned_again
    - name: The same key, sealed here from the key file
      snpguard.cvm.cvm_register:
        <<: *image
        sealed_volume_key_file: "{{ omit }}"
        volume_key_file: "{{ key_file }}"
      register: from_key_file
    - ansible.builtin.assert:
        that:
          - planned is changed and planned.action == 'create' and planned.image is none
          - created is changed and created.action == 'created'
          - created.image.measurements | map(attribute='vcpus') | list == [1, 2]
          - created.image.content_sha256 == planned.content_sha256
          - again is not changed and again.action == 'unchanged' and again.id == created.id
          - planned_again is not changed and planned_again.action == 'none'
          - from_key_file is not changed
    - name: Other host data without replace
      snpguard.cvm.cvm_register:
        <<: *image
        host_data: "{{ 'bb' * 32 }}"
      register: conflict
      ignore_errors: true
    - ansible.builtin.assert:
        that:
          - conflict is failed and conflict.field == 'name' and conflict.code == 'image_exists'
          - "'host_data' in conflict.msg"
    - name: Other host data, replaced
      snpguard.cvm.cvm_register:
        <<: *image
        host_data: "{{ 'bb' * 32 }}"
        replace: true
      register: replaced
      diff: true
    - name: Disable it
      snpguard.cvm.cvm_register:
        <<: *image
        host_data: "{{ 'bb' * 32 }}"
        enabled: false
      register: disabled
    - name: Disabled again
      snpguard.cvm.cvm_register:
        <<: *image
        host_data: "{{ 'bb' * 32 }}"
        enabled: false
      register: disabled_again
    - ansible.builtin.assert:
        that:
          - replaced is changed and replaced.action == 'replaced' and replaced.id == created.id
          - disabled is changed and not disabled.image.enabled
          - disabled_again is not changed
    - name: No volume key given
      snpguard.cvm.cvm_register:
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        token: "{{ api_token }}"
        name: playbook-nokey
        measurement: "{{ m3 }}"
      register: nokey
      ignore_errors: true
    - name: A bad measurement, named by the server
      snpguard.cvm.cvm_register:
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        token: "{{ api_token }}"
        name: playbook-bad
        measurement: "xyz"
        volume_key_file: "{{ key_file }}"
      register: bad
      ignore_errors: true
    - name: A wrong token
      snpguard.cvm.cvm_register:
        <<: *image
        token: "sgt_0123456789abcdef_{{ 'C' * 43 }}"
      register: unauthorised
      ignore_errors: true
    - ansible.builtin.assert:
        that:
          - nokey is failed and 'sealed_volume_key' in nokey.msg
          - bad is failed and bad.status == 400 and bad.field.startswith('measurements')
          - unauthorised is failed and unauthorised.status == 401 and unauthorised.code == 'token_invalid'
    - name: Connection options from the environment
      snpguard.cvm.cvm_register:
        name: playbook-image
        state: absent
      environment:
        SNPGUARD_URL: "{{ url }}"
        SNPGUARD_TOKEN: "{{ api_token }}"
        SNPGUARD_CA_FILE: "{{ ca_file }}"
      register: deleted
    - name: Deleted again
      snpguard.cvm.cvm_register:
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        token: "{{ api_token }}"
        name: playbook-image
        state: absent
      register: deleted_again
    - ansible.builtin.assert:
        that:
          - deleted is changed and deleted.action == 'deleted' and deleted.id == created.id
          - deleted_again is not changed and deleted_again.action == 'absent'
"""


def test_register_module(server: ServerProcess, variables: dict[str, Any], tmp_path: Path) -> None:
    key = os.urandom(32)
    key_file = tmp_path / "volume.key"
    key_file.write_bytes(key)
    info = KeyReleaseClient(server.url, ca_file=variables["ca_file"]).public_info()
    sealed = seal_for_ingestion(key, base64.b64decode(info["ingestion_public_key"]), "playbook-image")
    sealed_file = tmp_path / "volume.key.sealed"
    sealed_file.write_bytes(sealed)
    values = dict(variables, m1="e1" * 48, m2="e2" * 48, m3="e3" * 48, key_file=str(key_file),
                  sealed_file=str(sealed_file))
    rc, output, recap = run_playbook(tmp_path, REGISTER_TASKS, values)
    assert rc == 0, output
    assert recap["changed"] == 5 and recap["failed"] == 0, output  # check mode's "would create" counts
    # --diff shows public facts before and after, never a key.
    assert re.search(r'-\s+"host_data": "a{64}"', output) and re.search(r'\+\s+"host_data": "b{64}"', output), output
    assert variables["api_token"] not in output
    assert base64.b64encode(sealed).decode() not in output and key.hex() not in output


def test_register_module_docs(tmp_path: Path) -> None:
    """ansible-doc renders both modules (their documentation fragment included)."""
    for name in ("cvm_register", "cvm_api_token"):
        proc = subprocess.run([str(Path(sys.executable).parent / "ansible-doc"), "--json", f"snpguard.cvm.{name}"],
                              env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(DEVROOT),
                                       ANSIBLE_HOME=str(tmp_path / ".ansible-home")),
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)[f"snpguard.cvm.{name}"]["doc"]
        assert {"url", "token", "ca_file", "validate_certs"} <= set(doc["options"])
