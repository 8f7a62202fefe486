# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The ``keyrelease`` action group and the file options of ``cvm_api_token``, against a real server.

* ``module_defaults: {group/snpguard.cvm.keyrelease: {url, ca_file, token}}`` is all the
  connection the tasks get (SNPGUARD_URL and friends are removed from the environment), so
  the tasks only work when meta/runtime.yml puts both modules in the group.
* ``token_file`` takes ``mode``/``owner``/``group``: a changed mode alone is a change (and
  check mode says so without touching the file), the token itself stays.

Playbooks run as in test_client_modules.py (its ``run_playbook``).
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from servers import ServerProcess
from test_client_modules import run_playbook

from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.admin_client import KeyReleaseClient


@pytest.fixture(scope="module")
def variables(server: ServerProcess) -> dict[str, Any]:
    return {"url": server.base, "ca_file": str(server.data_dir / "tls" / "ca.pem"),
            "master_password": server.master_password(), "api_token": server.mint_token("group-and-file-tests")}


GROUP_TASKS = """
    - name: The key-release modules with the group's defaults only
      module_defaults:
        group/snpguard.cvm.keyrelease:
          url: "{{ url }}"
          ca_file: "{{ ca_file }}"
          token: "{{ api_token }}"
          timeout: 30
      block:
        - name: A token, nothing but its name given
          snpguard.cvm.cvm_api_token:
            name: grouped-token
          register: token
          no_log: true
        - name: An image, no connection options given
          snpguard.cvm.cvm_register:
            name: grouped-image
            measurement: "{{ 'b7' * 48 }}"
            volume_key_file: "{{ work }}/volume.key"
          register: image
        - name: The same again
          snpguard.cvm.cvm_register:
            name: grouped-image
            measurement: "{{ 'b7' * 48 }}"
            volume_key_file: "{{ work }}/volume.key"
          register: image_again
        - name: A task's own option wins over the group's default
          snpguard.cvm.cvm_api_token:
            name: grouped-token
            token: sgt_0000000000000000_not-a-token
          register: overridden
          ignore_errors: true
    - ansible.builtin.assert:
        that:
          - token is changed and token.token is match('sgt_[0-9a-f]{16}_')
          - image is changed and image.action == 'created'
          - image_again is not changed and image_again.id == image.id
          - overridden is failed
    - name: Outside the group's block, the same task has no server
      snpguard.cvm.cvm_register:
        name: grouped-image
        measurement: "{{ 'b7' * 48 }}"
        volume_key_file: "{{ work }}/volume.key"
      register: outside
      ignore_errors: true
    - ansible.builtin.assert:
        that: outside is failed and 'url' in outside.msg
"""


def test_keyrelease_action_group_in_module_defaults(server: ServerProcess, variables: dict[str, Any],
                                                    tmp_path: Path) -> None:
    (tmp_path / "volume.key").write_bytes(bytes(range(32)))
    rc, output, recap = run_playbook(tmp_path, GROUP_TASKS, dict(variables, work=str(tmp_path)))
    assert rc == 0, output
    assert recap["changed"] == 2 and recap["failed"] == 0, output
    client = KeyReleaseClient(server.url, variables["api_token"], ca_file=variables["ca_file"])
    assert [t["name"] for t in client.list_tokens()].count("grouped-token") == 1
    assert client.find_image("grouped-image")["measurements"][0]["measurement"] == "b7" * 48


FILE_TASKS = """
    - name: A token file with a mode of its own
      snpguard.cvm.cvm_api_token: &token
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        token: "{{ api_token }}"
        name: filed
        token_file: "{{ work }}/filed.token"
        mode: "0640"
        owner: root
        group: root
      register: created
      no_log: true
    - name: Again
      snpguard.cvm.cvm_api_token: *token
      register: again
    - name: Another mode, in check mode
      snpguard.cvm.cvm_api_token:
        <<: *token
        mode: "0600"
      check_mode: true
      register: planned
    - ansible.builtin.stat:
        path: "{{ work }}/filed.token"
      register: after_check
    - name: Another mode
      snpguard.cvm.cvm_api_token:
        <<: *token
        mode: "0600"
      register: remoded
    - ansible.builtin.assert:
        that:
          - created is changed
          - again is not changed and again.id == created.id
          - planned is changed and after_check.stat.mode == '0640'
          - remoded is changed and remoded.id == created.id and remoded.token is not defined
"""


def test_token_file_takes_the_file_options(variables: dict[str, Any], tmp_path: Path) -> None:
    rc, output, recap = run_playbook(tmp_path, FILE_TASKS, dict(variables, work=str(tmp_path)),
                                     env={"ANSIBLE_DUPLICATE_YAML_DICT_KEY": "ignore"})
    assert rc == 0, output
    assert recap["changed"] == 3 and recap["failed"] == 0, output
    path = tmp_path / "filed.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_uid == 0 and path.stat().st_gid == 0
    assert path.read_text().startswith("sgt_") and path.read_text().strip() not in output
