# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard.cvm.cvm_bundle`` in a real ansible-playbook run against a real server.

An image registered with Debian's firmware, kernel and initrd (the server builds its bundle) is fetched:
check mode writes nothing, the first run writes the server's bundle (its digest, the registered
measurement), a rerun changes nothing, a damaged file is replaced; an image without boot artifacts
and a directory as ``dest`` are refused by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from servers import ServerProcess
from test_client_modules import run_playbook

from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.archive import read_bundle


@pytest.fixture(scope="module")
def variables(server: ServerProcess) -> dict[str, Any]:
    return {"url": server.base, "ca_file": str(server.data_dir / "tls" / "ca.pem"),
            "api_token": server.mint_token("bundle-tests")}


TASKS = """
    - name: Measure the launch
      snpguard.cvm.snp_measure:
        ovmf: "{{ artifacts }}/OVMF.amdsev.fd"
        kernel: "{{ artifacts }}/vmlinuz"
        initrd: "{{ artifacts }}/initrd.img"
        append: console=ttyS0
        vcpus: 1
        vcpu_type: EPYC-v4
      register: measured
    - name: Register with boot artifacts
      snpguard.cvm.cvm_register:
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        token: "{{ api_token }}"
        name: bundle-image
        measurement: "{{ measured.measurement }}"
        vcpu_type: EPYC-v4
        volume_key_file: "{{ work }}/volume.key"
        kernel: "{{ artifacts }}/vmlinuz"
        initrd: "{{ artifacts }}/initrd.img"
        cmdline: console=ttyS0
        firmware: "{{ artifacts }}/OVMF.amdsev.fd"
    - name: Register another without
      snpguard.cvm.cvm_register:
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        token: "{{ api_token }}"
        name: no-bundle-image
        measurement: "{{ 'ab' * 48 }}"
        volume_key_file: "{{ work }}/volume.key"
    - name: Check mode
      snpguard.cvm.cvm_bundle: &fetch
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        token: "{{ api_token }}"
        name: bundle-image
        dest: "{{ work }}/bundle.tar.gz"
      check_mode: true
      register: planned
    - name: Not written in check mode
      ansible.builtin.stat:
        path: "{{ work }}/bundle.tar.gz"
      register: after_check
    - name: Fetch
      snpguard.cvm.cvm_bundle: *fetch
      register: fetched
    - name: Its digest on disk
      ansible.builtin.stat:
        path: "{{ work }}/bundle.tar.gz"
        checksum_algorithm: sha256
      register: on_disk
    - name: Again
      snpguard.cvm.cvm_bundle: *fetch
      register: again
    - name: Damage the file
      ansible.builtin.copy:
        content: "not a bundle"
        dest: "{{ work }}/bundle.tar.gz"
        mode: "0644"
    - name: Repaired
      snpguard.cvm.cvm_bundle: *fetch
      register: repaired
    - name: An image without a bundle
      snpguard.cvm.cvm_bundle:
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        token: "{{ api_token }}"
        name: no-bundle-image
        dest: "{{ work }}/none.tar.gz"
      register: no_bundle
      ignore_errors: true
    - name: A directory as dest
      snpguard.cvm.cvm_bundle:
        url: "{{ url }}"
        ca_file: "{{ ca_file }}"
        token: "{{ api_token }}"
        name: bundle-image
        dest: "{{ work }}"
      register: into_dir
      ignore_errors: true
    - ansible.builtin.assert:
        that:
          - planned is changed and not after_check.stat.exists
          - fetched is changed and fetched.sha256 == on_disk.stat.checksum and on_disk.stat.mode == '0644'
          - fetched.measurements['1'] == measured.measurement and fetched.enabled
          - fetched.expect.allow_debug is false
          - again is not changed and again.sha256 == fetched.sha256
          - repaired is changed and repaired.sha256 == fetched.sha256
          - no_bundle is failed and no_bundle.field == 'name' and 'no launch bundle' in no_bundle.msg
          - into_dir is failed and into_dir.field == 'dest'
"""


def test_bundle_module(variables: dict[str, Any], tmp_path: Path, artifacts: Path) -> None:
    (tmp_path / "volume.key").write_bytes(os.urandom(32))
    values = dict(variables, artifacts=str(artifacts), work=str(tmp_path))
    rc, output, recap = run_playbook(tmp_path, TASKS, values)
    assert rc == 0, output[-6000:]
    assert recap["failed"] == 0 and recap["changed"] >= 5, output[-3000:]
    bundle = read_bundle((tmp_path / "bundle.tar.gz").read_bytes())  # a bundle as snp_vm reads it
    assert bundle["kernel"] == (artifacts / "vmlinuz").read_bytes() and bundle["cmdline"] == b"console=ttyS0"
