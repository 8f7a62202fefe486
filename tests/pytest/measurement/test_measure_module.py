# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The snp_measure module, run for real by ansible-playbook; results are written as JSON and checked here."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible_run import PLAYBOOK_BIN, run_playbook_file

from ansible_collections.snpguard.cvm.plugins.module_utils.measurement.files import measure
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.measure import LaunchConfig
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.vmsa import Ec2Vmsa, VmmType

EPYC_V4 = 0x800F12

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars:
    ansible_python_interpreter: {python}
    common: &common
      ovmf: {ovmf}
      kernel: {kernel}
      initrd: {initrd}
      append: "console=ttyS0 root=/dev/vda ro"
      vcpu_type: EPYC-v4
  tasks:
    - name: vCPU list
      snpguard.cvm.snp_measure:
        <<: *common
        vcpus: [4, 1, 2]
      register: listed

    - name: explain
      snpguard.cvm.snp_measure:
        <<: *common
        vcpus: 2
        explain: true
      register: explained

    - name: cross-check with sev-snp-measure
      snpguard.cvm.snp_measure:
        <<: *common
        vcpus: [1, 3]
        cross_check: true
      register: checked

    - name: ec2, legacy VMSA
      snpguard.cvm.snp_measure:
        ovmf: {ovmf}
        vmm_type: ec2
        ec2_vmsa: legacy
        vcpus: 2
      register: ec2_legacy

    - name: a file that is not an OVMF image
      snpguard.cvm.snp_measure:
        ovmf: {junk}
        vcpu_type: EPYC-v4
      register: not_ovmf
      ignore_errors: true

    - name: initrd without kernel
      snpguard.cvm.snp_measure:
        ovmf: {ovmf}
        initrd: {initrd}
        vcpu_type: EPYC-v4
      register: no_kernel
      ignore_errors: true

    - name: unknown vCPU type
      snpguard.cvm.snp_measure:
        ovmf: {ovmf}
        vcpu_type: EPYC-v9
      register: bad_type
      ignore_errors: true

    - name: write the results
      ansible.builtin.copy:
        content: "{{{{ dict(listed=listed, explained=explained, checked=checked, ec2_legacy=ec2_legacy,
                   not_ovmf=not_ovmf, no_kernel=no_kernel, bad_type=bad_type) | to_nice_json }}}}"
        dest: {out}
      check_mode: false
"""


def _playbook(tmp: Path, name: str, files: dict[str, str], check: bool) -> dict[str, Any]:
    out = tmp / f"{name}.json"
    book = tmp / f"{name}.yml"
    book.write_text(PLAYBOOK.format(python=sys.executable, out=out, **files))
    flags = ["--check"] if check else []
    run_playbook_file(book, tmp, *flags, timeout=300, ANSIBLE_DEPRECATION_WARNINGS="0")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def inputs(vectors: Path, tmp_path_factory) -> dict[str, str]:
    if not PLAYBOOK_BIN.exists():
        pytest.skip("ansible-playbook is not installed beside this Python")
    tmp = tmp_path_factory.mktemp("module")
    (tmp / "vmlinuz").write_bytes(b"MZ" + bytes(range(256)) * 40)
    (tmp / "initrd.img").write_bytes(b"\x1f\x8b" + b"initrd" * 500)
    (tmp / "junk.fd").write_bytes(b"\x00" * 8192)
    return {"ovmf": str(vectors / "measurement/fixtures/sev-snp-measure/ovmf_AmdSev_suffix.bin"),
            "kernel": str(tmp / "vmlinuz"), "initrd": str(tmp / "initrd.img"), "junk": str(tmp / "junk.fd"),
            "tmp": str(tmp)}


@pytest.fixture(scope="module")
def runs(inputs: dict[str, str]) -> dict[str, dict[str, Any]]:
    tmp = Path(inputs["tmp"])
    files = {k: v for k, v in inputs.items() if k != "tmp"}
    return {"normal": _playbook(tmp, "normal", files, check=False),
            "check": _playbook(tmp, "check", files, check=True)}


def engine(inputs: dict[str, str], vcpus: tuple[int, ...]) -> dict[str, str]:
    result = measure(LaunchConfig(ovmf=inputs["ovmf"], kernel=inputs["kernel"], initrd=inputs["initrd"],
                                  append="console=ttyS0 root=/dev/vda ro", vcpus=vcpus, vcpu_sig=EPYC_V4))
    return {str(count): digest.hex() for count, digest in result.digests.items()}


def test_vcpu_list_gives_measurements_dict(runs, inputs) -> None:
    listed = runs["normal"]["listed"]
    assert listed["changed"] is False and not listed.get("failed")
    assert listed["measurements"] == engine(inputs, (4, 1, 2))
    # Key order does not survive to_nice_json (sorted keys); `measurement` is the first count's digest.
    assert listed["measurement"] == listed["measurements"]["4"]
    kernel = Path(inputs["kernel"]).read_bytes()
    assert listed["inputs"]["kernel"] == {"path": inputs["kernel"], "sha256": hashlib.sha256(kernel).hexdigest(),
                                          "size": len(kernel)}
    assert listed["inputs"]["vcpus"] == [4, 1, 2]
    assert listed["inputs"]["vcpu_sig"] == "0x800f12"


def test_check_mode_gives_the_same_digest(runs) -> None:
    for task in ("listed", "explained", "checked", "ec2_legacy"):
        normal, checked = runs["normal"][task], runs["check"][task]
        assert checked["changed"] is False
        assert checked["measurements"] == normal["measurements"], task
        assert checked["measurement"] == normal["measurement"]


def test_explain_returns_a_list(runs, inputs) -> None:
    explained = runs["normal"]["explained"]
    steps = explained["explain"]
    assert isinstance(steps, list) and all(isinstance(step, dict) for step in steps)
    assert [s["what"] for s in steps][-2:] == ["VMSA vCPU 0 (BSP)", "VMSA vCPU 1 (AP)"]
    assert steps[-1]["digest_after"] == explained["measurement"] == engine(inputs, (2,))["2"]
    assert {s["page_type"] for s in steps} == {"NORMAL", "ZERO", "SECRETS", "CPUID", "VMSA"}
    assert "explain" not in runs["normal"]["listed"]


def test_cross_check_agrees(runs, inputs) -> None:
    checked = runs["normal"]["checked"]
    assert not checked.get("failed"), checked.get("msg")
    assert checked["cross_check"] == checked["measurements"] == engine(inputs, (1, 3))


def test_ec2_legacy(runs, inputs) -> None:
    legacy = runs["normal"]["ec2_legacy"]
    expected = measure(LaunchConfig(ovmf=inputs["ovmf"], vcpus=(2,), vmm=VmmType.EC2, ec2_vmsa=Ec2Vmsa.LEGACY))
    assert expected.digest != measure(LaunchConfig(ovmf=inputs["ovmf"], vcpus=(2,), vmm=VmmType.EC2)).digest
    assert legacy["measurement"] == expected.digest.hex()
    assert legacy["inputs"]["ec2_vmsa"] == "legacy"


def test_not_an_ovmf_file_names_field_and_path(runs, inputs) -> None:
    for run in ("normal", "check"):
        failed = runs[run]["not_ovmf"]
        assert failed["failed"] is True
        assert failed["field"] == "ovmf"
        assert failed["path"] == inputs["junk"]
        assert inputs["junk"] in failed["msg"] and "not an OVMF image" in failed["msg"]
        assert "measurement" not in failed


def test_initrd_without_kernel_is_refused_by_the_argument_spec(runs) -> None:
    failed = runs["normal"]["no_kernel"]
    assert failed["failed"] is True
    assert "initrd" in failed["msg"] and "kernel" in failed["msg"]
    assert "required by" in failed["msg"]  # AnsibleModule's required_by, before any measuring
    assert "field" not in failed


def test_unknown_vcpu_type_is_refused_by_choices(runs) -> None:
    failed = runs["normal"]["bad_type"]
    assert failed["failed"] is True
    assert "vcpu_type" in failed["msg"] and "EPYC-v9" in failed["msg"]
