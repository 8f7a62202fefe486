# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``launch.json``: the launch facts a bundle carries, defined once for the server, the launcher and the CLI.

Everything here changes the launch measurement or what the AMD-SP checks at launch,
so it travels with the kernel, initrd and command line; memory size, disks and
networking are the host's business and are not in it.

``vcpus``          the vCPU counts the image was measured for (the launcher picks one)
``vcpu_type``      QEMU's CPU model (e.g. ``EPYC-v4``), which fixes the VMSA's CPUID signature
``policy``         the guest policy, hex (``0x30000``)
``guest_features`` SEV_FEATURES of the VMSAs, hex (default ``0x1``)
``vmm_type``       ``QEMU`` (the VMM that builds the VMSAs; ``ec2`` and ``gce`` for completeness)
``measurements``   expected launch digest per vCPU count, hex
``host_data``      32 bytes, hex: what the host binds into the report at launch
``id_block_files`` per vCPU count, the names of its ID block / ID auth files in the bundle

``parse_launch`` refuses unknown keys and wrong types naming ``launch.<key>``, and
normalises spellings (hex lower case with 0x for integers, vCPU counts sorted), so a
bundle's launch.json is the same for the same facts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..snp.errors import SnpError
from ..snp.options import parse_hex, parse_int
from ..snp.policy import parse_policy
from ..snp.vmsa import VmmType

LAUNCH_KEYS = ("vcpus", "vcpu_type", "policy", "guest_features", "vmm_type", "measurements", "host_data",
               "id_block_files")
DEFAULT_GUEST_FEATURES = 0x1
MAX_VCPUS = 512


@dataclass
class LaunchFacts:
    vcpus: list[int] = field(default_factory=list)
    vcpu_type: str | None = None
    policy: int | None = None
    guest_features: int = DEFAULT_GUEST_FEATURES
    vmm_type: str = VmmType.QEMU.value
    measurements: dict[int, str] = field(default_factory=dict)
    host_data: str | None = None
    id_block_files: dict[int, dict[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"vcpus": sorted(self.vcpus), "guest_features": f"0x{self.guest_features:x}",
                               "vmm_type": self.vmm_type,
                               "measurements": {str(k): v for k, v in sorted(self.measurements.items())}}
        if self.vcpu_type is not None:
            out["vcpu_type"] = self.vcpu_type
        if self.policy is not None:
            out["policy"] = f"0x{self.policy:x}"
        if self.host_data is not None:
            out["host_data"] = self.host_data
        if self.id_block_files:
            out["id_block_files"] = {str(k): dict(v) for k, v in sorted(self.id_block_files.items())}
        return out

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), sort_keys=True, indent=2) + "\n").encode("utf-8")


def _vcpu_count(value: Any, field_name: str) -> int:
    count = parse_int(value, field_name, minimum=1, maximum=MAX_VCPUS)
    if count is None:
        raise SnpError("is empty", field=field_name)
    return count


def parse_launch(doc: Mapping[str, Any] | None, *, field_name: str = "launch") -> LaunchFacts:
    """Validate and normalise a launch.json document (or a registration's ``artifacts.launch``)."""
    doc = dict(doc or {})
    unknown = sorted(set(doc) - set(LAUNCH_KEYS))
    if unknown:
        raise SnpError(f"unknown keys {', '.join(unknown)} (known: {', '.join(LAUNCH_KEYS)})", field=field_name)
    facts = LaunchFacts()
    if "vcpus" in doc:
        raw = doc["vcpus"]
        items = raw if isinstance(raw, list | tuple) else [raw]
        facts.vcpus = sorted({_vcpu_count(v, f"{field_name}.vcpus") for v in items})
    if doc.get("vcpu_type") is not None:
        if not isinstance(doc["vcpu_type"], str) or not doc["vcpu_type"].strip():
            raise SnpError("must be a CPU model name such as EPYC-v4", field=f"{field_name}.vcpu_type")
        facts.vcpu_type = doc["vcpu_type"].strip()
    if doc.get("policy") is not None:
        facts.policy = parse_policy(doc["policy"], field=f"{field_name}.policy").to_int()
    if doc.get("guest_features") is not None:
        features = parse_int(doc["guest_features"], f"{field_name}.guest_features", minimum=0, maximum=(1 << 64) - 1)
        facts.guest_features = DEFAULT_GUEST_FEATURES if features is None else features
    if doc.get("vmm_type") is not None:
        try:
            facts.vmm_type = VmmType.parse(str(doc["vmm_type"])).value
        except SnpError as exc:
            raise SnpError(exc.message, field=f"{field_name}.vmm_type") from exc
    if doc.get("measurements") is not None:
        if not isinstance(doc["measurements"], Mapping):
            raise SnpError("must map vCPU counts to hex digests", field=f"{field_name}.measurements")
        for key, value in doc["measurements"].items():
            digest = parse_hex(value, f"{field_name}.measurements.{key}", size=48)
            if digest is None:
                raise SnpError("is empty", field=f"{field_name}.measurements.{key}")
            facts.measurements[_vcpu_count(key, f"{field_name}.measurements")] = digest.hex()
    if doc.get("host_data") is not None:
        data = parse_hex(doc["host_data"], f"{field_name}.host_data", size=32)
        facts.host_data = data.hex() if data is not None else None
    if doc.get("id_block_files") is not None:
        if not isinstance(doc["id_block_files"], Mapping):
            raise SnpError("must map vCPU counts to file names", field=f"{field_name}.id_block_files")
        for key, names in doc["id_block_files"].items():
            where = f"{field_name}.id_block_files.{key}"
            if not isinstance(names, Mapping) or set(names) != {"id_block", "id_auth"} or not all(
                    isinstance(v, str) for v in names.values()):
                raise SnpError("must be {id_block: NAME, id_auth: NAME}", field=where)
            facts.id_block_files[_vcpu_count(key, where)] = dict(names)
    extra = sorted(set(facts.measurements) - set(facts.vcpus)) if facts.vcpus else []
    if extra:
        raise SnpError(f"measurements for vCPU counts not in vcpus: {extra}", field=f"{field_name}.measurements")
    return facts


def launch_config_digest(facts: LaunchFacts, kernel: bytes, initrd: bytes, cmdline: bytes, firmware_sha384: str,
                         id_blocks: dict[str, bytes]) -> bytes:
    """The default HOST_DATA of a bundle: SHA-256 of its launch configuration.

    Everything the bundle fixes except HOST_DATA itself: the launch facts, the SHA-256 of
    kernel, initrd and cmdline, the firmware's SHA-384 and the ID blocks.  A VM launched
    from another bundle (or with another launch.json) carries other host data, and the
    key-release server refuses it naming ``host_data``.
    """
    doc = facts.to_json()
    doc.pop("host_data", None)
    doc.pop("id_block_files", None)
    doc.update({"kernel_sha256": hashlib.sha256(kernel).hexdigest(),
                "initrd_sha256": hashlib.sha256(initrd).hexdigest(),
                "cmdline_sha256": hashlib.sha256(cmdline).hexdigest(), "firmware_sha384": firmware_sha384.lower(),
                "id_blocks": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(id_blocks.items())}})
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).digest()


def bundle_host_data(files: dict[str, bytes]) -> bytes:
    """The HOST_DATA a bundle launches with: launch.json's ``host_data``, else ``launch_config_digest``.

    The launcher sets it and a registration of the bundle records it, so the key-release
    server refuses a guest launched from anything else, naming ``host_data``.
    """
    facts = parse_launch(json.loads(files["launch.json"]), field_name="bundle.launch.json")
    if facts.host_data:
        return bytes.fromhex(facts.host_data)
    blocks = {name: data for name, data in files.items() if name.startswith(("id_block", "id_auth"))}
    return launch_config_digest(facts, files["kernel"], files["initrd"], files["cmdline"],
                                files["firmware.sha384"].decode().strip(), blocks)
