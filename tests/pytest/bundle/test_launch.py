# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""bundle/launch.py: the one definition of launch.json (normalised; unknown keys and bad values refused)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.launch import LAUNCH_KEYS, parse_launch
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError

DIGEST = "ab" * 48


def test_spellings_are_normalised() -> None:
    facts = parse_launch({"vcpus": [4, "2", 2], "vcpu_type": " EPYC-v4 ", "policy": "smt=1",
                          "guest_features": 1, "vmm_type": "qemu", "measurements": {"2": "0x" + DIGEST.upper()},
                          "host_data": "CD" * 32})
    assert facts.to_json() == {"vcpus": [2, 4], "vcpu_type": "EPYC-v4", "policy": "0x30000",
                               "guest_features": "0x1", "vmm_type": "QEMU", "measurements": {"2": DIGEST},
                               "host_data": "cd" * 32}


def test_defaults() -> None:
    assert parse_launch(None).to_json() == {"vcpus": [], "guest_features": "0x1", "vmm_type": "QEMU",
                                            "measurements": {}}


@pytest.mark.parametrize(("doc", "field"), [
    ({"memory": 4096}, "launch"),
    ({"vcpus": [0]}, "launch.vcpus"),
    ({"vcpus": ["many"]}, "launch.vcpus"),
    ({"vcpu_type": 4}, "launch.vcpu_type"),
    ({"policy": "0x1"}, "launch.policy"),  # bit 17 (reserved, must be one) is missing
    ({"guest_features": "-1"}, "launch.guest_features"),
    ({"vmm_type": "xen"}, "launch.vmm_type"),
    ({"measurements": {"1": "ab"}}, "launch.measurements.1"),
    ({"measurements": ["ab"]}, "launch.measurements"),
    ({"host_data": "ab"}, "launch.host_data"),
    ({"id_block_files": {"1": {"id_block": "x"}}}, "launch.id_block_files.1"),
    ({"vcpus": [1], "measurements": {"2": DIGEST}}, "launch.measurements"),
])
def test_bad_documents_name_the_field(doc: dict, field: str) -> None:
    with pytest.raises(SnpError) as info:
        parse_launch(doc)
    assert info.value.field == field


@given(st.lists(st.integers(1, 512), min_size=1, max_size=4, unique=True), st.integers(0, (1 << 64) - 1),
       st.sampled_from(["QEMU", "ec2", "gce"]))
def test_round_trip(vcpus: list[int], features: int, vmm: str) -> None:
    doc = {"vcpus": vcpus, "guest_features": hex(features), "vmm_type": vmm, "policy": "0x30000",
           "measurements": {str(v): DIGEST for v in vcpus}}
    facts = parse_launch(doc)
    again = parse_launch(json.loads(facts.dumps()))
    assert again == facts and set(json.loads(facts.dumps())) <= set(LAUNCH_KEYS)
