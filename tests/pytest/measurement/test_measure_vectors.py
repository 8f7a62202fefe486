# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Every collected measurement vector (../shared/vectors/measurement/vectors.json), read in place.

Each vector is its own test.  The vector counts are asserted, so a file that silently
shrank (or a kind that disappeared) fails instead of passing with fewer checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.snpguard.cvm.cli import main as cli_main
from ansible_collections.snpguard.cvm.plugins.module_utils.measurement.files import firmware_digest, measure
from ansible_collections.snpguard.cvm.plugins.module_utils.measurement.snp_measure import build_config
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.kernel_hashes import KernelHashes, cmdline_bytes
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.launch_digest import LaunchDigest, PageType
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.ovmf import SEV_METADATA_GUID, parse_firmware

REPO = Path(__file__).resolve().parents[3]
VECTORS_DIR = Path(os.environ.get("SNPGUARD_VECTORS", REPO.parent / "shared" / "vectors"))
VECTORS_FILE = VECTORS_DIR / "measurement" / "vectors.json"

# What the collected file holds (README: 35 launch digests, 1 OVMF hash, 2 PAGE_INFO primitives,
# 1 SEV-hashes component, 1 OVMF metadata parse, 1 VMSA-dump behaviour).
EXPECTED_KINDS = {
    "launch_measurement": 35,
    "ovmf_hash": 1,
    "snp_page_info_primitive": 2,
    "sev_hashes_component": 1,
    "ovmf_metadata_parse": 1,
    "vmsa_dump_behaviour": 1,
}
EXPECTED_STATUS = {"current": 29, "legacy_ec2_vmsa": 4, "legacy_seves_vmsa": 2}


def _load() -> list[dict[str, Any]]:
    if not VECTORS_FILE.exists():
        return []
    return json.loads(VECTORS_FILE.read_text())["vectors"]


ALL = _load()


def _ids(kind: str) -> list[Any]:
    found = [v["id"] for v in ALL if v["kind"] == kind]
    # Without the file, one placeholder per kind lets the `vectors` fixture skip (or fail under CI).
    return found or ["vectors-missing"]


def _vector(vectors: Path, vector_id: str) -> dict[str, Any]:
    assert VECTORS_FILE.exists(), f"{VECTORS_FILE} missing"
    (vector,) = [v for v in ALL if v["id"] == vector_id]
    return vector


def test_vector_counts(vectors: Path) -> None:
    counts: dict[str, int] = {}
    for vector in ALL:
        counts[vector["kind"]] = counts.get(vector["kind"], 0) + 1
    assert counts == EXPECTED_KINDS
    assert len(ALL) == sum(EXPECTED_KINDS.values()) == 41
    statuses: dict[str, int] = {}
    for vector in ALL:
        if vector["kind"] == "launch_measurement":
            statuses[vector["status"]] = statuses.get(vector["status"], 0) + 1
    assert statuses == EXPECTED_STATUS
    assert len({v["id"] for v in ALL}) == len(ALL)


# --- launch measurements ---


def _file(vectors: Path, value: str | None, empty: Path) -> str | None:
    if value is None:
        return None
    if value == "EMPTY_FILE":
        return str(empty)
    return str(vectors / value)


def _features(value: Any) -> list[str]:
    """guest_features as given, or both usual values when the vector says it is ignored (SEV-ES)."""
    if value is None:
        return ["0x1"]
    if isinstance(value, str) and value.startswith("ignored"):
        return ["0x1", "0x21"]
    return [str(value)]


def _signature_variants(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The vCPU given as type, as family/model/stepping and as signature: all must agree."""
    variants = []
    if inputs.get("vcpu_type"):
        variants.append({"vcpu_type": inputs["vcpu_type"]})
    if inputs.get("vcpu_family") is not None:
        variants.append({"vcpu_family": inputs["vcpu_family"], "vcpu_model": inputs["vcpu_model"],
                         "vcpu_stepping": inputs["vcpu_stepping"]})
    if inputs.get("vcpu_sig"):
        variants.append({"vcpu_sig": inputs["vcpu_sig"]})
    return variants or [{}]


def _options(vector: dict[str, Any], vectors: Path, empty: Path) -> list[dict[str, Any]]:
    inputs = vector["inputs"]
    base: dict[str, Any] = {
        "mode": inputs["mode"],
        "vmm_type": inputs.get("vmm_type") or "QEMU",
        "kernel": _file(vectors, inputs.get("kernel"), empty),
        "initrd": _file(vectors, inputs.get("initrd"), empty),
        "append": inputs.get("append"),
        "svsm": _file(vectors, inputs.get("svsm"), empty),
        "vars_size": inputs.get("vars_size"),
    }
    if inputs.get("vcpus") is not None:
        base["vcpus"] = [inputs["vcpus"]]
    if "ovmf_metadata_wrapper" in inputs:
        # The wrapper carries the firmware digest itself; check it is the one the vector names.
        wrapper = vectors / inputs["ovmf_metadata_wrapper"]
        assert json.loads(wrapper.read_text())["OVMFHash"] == inputs["snp_ovmf_hash"]
        base["ovmf_metadata"] = str(wrapper)
    else:
        base["ovmf"] = str(vectors / inputs["ovmf"])
        base["ovmf_hash"] = inputs.get("snp_ovmf_hash")
    if vector["status"] == "legacy_ec2_vmsa":
        base["ec2_vmsa"] = "legacy"
    elif vector["status"] == "legacy_seves_vmsa":
        base["kvm_init"] = "legacy"
    else:
        assert vector["status"] == "current"
    out = []
    for features in _features(inputs.get("guest_features")):
        for signature in _signature_variants(inputs) if inputs["mode"] != "sev" else [{}]:
            out.append({**base, "guest_features": features, **signature})
    return out


@pytest.mark.parametrize("vector_id", _ids("launch_measurement"))
def test_launch_measurement(vectors: Path, vector_id: str, tmp_path: Path) -> None:
    vector = _vector(vectors, vector_id)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    expected = vector["expected"]
    for options in _options(vector, vectors, empty):
        if "error" in expected:
            if options["vmm_type"] == "QEMU" and options["mode"] != "sev" and not _signature_variants(
                    vector["inputs"])[0]:
                # sev-snp-measure's API test passes no vCPU type; we refuse that first (QEMU needs one),
                # so check that refusal, then the firmware refusal the vector is about.
                with pytest.raises(SnpError) as info:
                    measure(build_config(options))
                assert info.value.field == "vcpu_type"
                options = {**options, "vcpu_type": "EPYC-v4"}
            with pytest.raises(SnpError) as info:
                measure(build_config(options))
            # The firmware cannot measure a kernel: the error names the firmware and its path.
            assert info.value.field == "ovmf", options
            assert info.value.path == options["ovmf"]
            assert re.search(r"SNP_KERNEL_HASHES|hash table|kernel", info.value.message)
            continue
        result = measure(build_config(options))
        assert result.digest.hex() == expected["digest"], options
        if options["mode"] != "sev":
            assert result.digests == {options["vcpus"][0]: result.digest}


@pytest.mark.parametrize("vector_id", _ids("ovmf_hash"))
def test_ovmf_hash(vectors: Path, vector_id: str) -> None:
    vector = _vector(vectors, vector_id)
    ovmf = str(vectors / vector["inputs"]["ovmf"])
    assert vector["inputs"]["mode"] == "snp:ovmf-hash"
    assert firmware_digest(ovmf).hex() == vector["expected"]["ovmf_hash"]
    result = measure(build_config({"mode": "snp:ovmf-hash", "ovmf": ovmf}))
    assert result.digests == {0: bytes.fromhex(vector["expected"]["ovmf_hash"])}


# --- primitives ---


def _page_type(text: str) -> PageType:
    match = re.search(r"\((\d+)\)", text)
    assert match, text
    page_type = PageType(int(match.group(1)))
    assert text.startswith(page_type.name)
    return page_type


@pytest.mark.parametrize("vector_id", _ids("snp_page_info_primitive"))
def test_page_info_primitive(vectors: Path, vector_id: str) -> None:
    vector = _vector(vectors, vector_id)
    inputs = vector["inputs"]
    ld = LaunchDigest(bytes.fromhex(inputs["initial_digest"]))
    gpa = int(inputs["gpa_start"], 0)
    page_type = _page_type(inputs["page_type"])
    if page_type is PageType.NORMAL:
        # The contents are described in words; build exactly what they say.
        assert "b'LGTM'*4 + b'\\x00'*(12288-32) + b'LGTM'*4" in inputs["contents"]
        data = b"LGTM" * 4 + b"\x00" * (12288 - 32) + b"LGTM" * 4
        ld.normal_pages("vector", gpa, data)
    else:
        assert "all-zero" in inputs["contents_digest"]
        ld.empty_pages("vector", page_type, gpa, inputs["pages"] * 0x1000)
    assert ld.value.hex() == vector["expected"]["digest"]


@pytest.mark.parametrize("vector_id", _ids("sev_hashes_component"))
def test_sev_hashes_component(vectors: Path, vector_id: str) -> None:
    vector = _vector(vectors, vector_id)
    expected = vector["expected"]
    assert hashlib.sha256(cmdline_bytes(vector["inputs"]["append"])).hexdigest() == expected["cmdline_hash_sha256"]
    hashes = KernelHashes.from_digests(bytes(32), None, None)
    assert hashes.cmdline.hex() == expected["cmdline_hash_when_append_absent"]
    assert hashes.initrd.hex() == expected["initrd_hash_when_initrd_absent"]
    with_append = KernelHashes.from_digests(bytes(32), None, vector["inputs"]["append"])
    assert with_append.cmdline.hex() == expected["cmdline_hash_sha256"]


@pytest.mark.parametrize("vector_id", _ids("ovmf_metadata_parse"))
def test_ovmf_metadata_parse(vectors: Path, vector_id: str) -> None:
    vector = _vector(vectors, vector_id)
    expected = vector["expected"]
    path = vectors / vector["inputs"]["ovmf"]
    data = path.read_bytes()
    firmware = parse_firmware(data, str(path))
    assert [{"gpa": s.gpa, "size": s.size, "section_type": s.type.value, "name": s.type.name}
            for s in firmware.sections] == expected["metadata_items"]
    assert len(firmware.table) == expected["footer_table_entries"]
    assert {str(guid): payload.hex() for guid, payload in firmware.table.items()} == expected["footer_table"]
    # The ASEV header the metadata entry points to.
    start = len(data) - int.from_bytes(firmware.table[SEV_METADATA_GUID][:4], "little")
    signature, size, version, count = struct.unpack_from("<4sIII", data, start)
    assert (signature, version) == (b"ASEV", 1)
    assert {"size": size, "num_items": count} == expected["sev_metadata_header"]
    assert firmware.sev_es_reset_eip == int.from_bytes(
        bytes.fromhex(expected["footer_table"]["00f771de-1a7e-4fcb-890e-68c77e2fb44e"]), "little")
    assert uuid.UUID("7255371f-3a3b-4b04-927b-1da6efa8d454") in firmware.table and firmware.has_hash_table


# --- VMSA dumps (the CLI writes vmsa<N>.bin into the working directory) ---


@pytest.mark.parametrize("vector_id", _ids("vmsa_dump_behaviour"))
def test_vmsa_dump_behaviour(vectors: Path, vector_id: str, tmp_path: Path, monkeypatch, capsys) -> None:
    vector = _vector(vectors, vector_id)
    expected = vector["expected"]
    fixtures = vectors / "measurement" / "fixtures" / "sev-snp-measure"
    match = re.search(r"[0-9a-f]{96}", vector["notes"])
    assert match, "the notes name the snp_ovmf_hash used by the snp dump test"
    runs = {
        "seves_4_vcpus": ["--mode", "seves", "--vcpus", "4", "--vcpu-type", "EPYC-v4",
                          "--ovmf", str(fixtures / "ovmf_AmdSev_suffix.bin")],
        "snp_1_vcpu_with_ovmf_hash": ["--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC-v4",
                                      "--ovmf", str(fixtures / "ovmf_AmdSev_suffix.bin"),
                                      "--snp-ovmf-hash", match.group(0)],
        "snp_svsm_2_vcpus": ["--mode", "snp:svsm", "--vcpus", "2", "--vcpu-type", "EPYC-v4",
                             "--ovmf", str(fixtures / "svsm_ovmf.fd"), "--svsm", str(fixtures / "svsm.bin"),
                             "--vars-size", "540672"],
    }
    assert set(runs) == set(expected)
    for name, argv in runs.items():
        workdir = tmp_path / name
        workdir.mkdir()
        monkeypatch.chdir(workdir)
        assert cli_main.main(["measure", *argv, "--dump-vmsa"]) == 0
        capsys.readouterr()
        assert sorted(p.name for p in workdir.iterdir()) == expected[name]
        assert all(p.stat().st_size == 4096 for p in workdir.iterdir())
