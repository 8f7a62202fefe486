# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The backend of ``snpguard.cvm.snp_vm`` and ``snpguard vm``: options in, a launched (or described) guest out.

Options name a bundle (``bundle``: kernel, initrd, cmdline, launch.json, ID blocks) or the
same facts one by one; the host adds the firmware file, memory, disks and network.  On a
host that is not SNP-capable the launch is refused, listing why, unless ``simulate`` is
set (then a simulated AMD-SP directory is required: ``snpguard sim init DIR``).
"""

from __future__ import annotations

import os
from typing import Any

from ..common.process import Runner
from ..snp.errors import SnpError
from ..snp.options import parse_int
from .argv import build_argv
from .config import Disk, VmConfig, from_bundle, parse_forward, parse_guest_forward, parse_host_data, parse_policy_value
from .host import gather
from .libvirt import domain_xml
from .vm import Vm, qemu_version

DEFAULT_STATE_ROOT = "/var/lib/snpguard/vms"
DEFAULT_FIRMWARE = "/usr/share/ovmf/OVMF.amdsev.fd"
STATES = ("started", "stopped", "restarted", "absent")


def _disks(value: Any) -> list[Disk]:
    disks = []
    for index, item in enumerate(value or []):
        where = f"disks[{index}]"
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or not item.get("path"):
            raise SnpError("must be a path or {path, format, readonly, serial}", field=where)
        unknown = sorted(set(item) - {"path", "format", "readonly", "serial"})
        if unknown:
            raise SnpError(f"unknown keys {', '.join(unknown)}", field=where)
        disks.append(Disk(path=os.path.abspath(item["path"]), format=item.get("format") or "qcow2",
                          readonly=bool(item.get("readonly")), serial=item.get("serial")))
    return disks


def config_from_options(options: dict[str, Any], *, check_mode: bool = False) -> VmConfig:
    """A validated configuration (the bundle's facts, the host's choices, explicit overrides)."""
    name = options.get("name") or ""
    state_dir = os.path.abspath(options.get("state_dir") or os.path.join(DEFAULT_STATE_ROOT, name))
    firmware = os.path.abspath(options.get("firmware") or DEFAULT_FIRMWARE)
    host: dict[str, Any] = {
        "memory_mb": parse_int(options.get("memory_mb"), "memory_mb") or 2048,
        "disks": _disks(options.get("disks")),
        "network": options.get("network") or "none",
        "forwards": [parse_forward(f) for f in options.get("forwards") or []],
        "guest_forwards": [parse_guest_forward(f) for f in options.get("guest_forwards") or []],
        "simulate": bool(options.get("simulate")),
        "qemu": options.get("qemu") or "qemu-system-x86_64",
        "cbitpos": parse_int(options.get("cbitpos"), "cbitpos", minimum=0, maximum=63),
        "reduced_phys_bits": parse_int(options.get("reduced_phys_bits"), "reduced_phys_bits", minimum=0,
                                       maximum=63),
    }
    vcpus = parse_int(options.get("vcpus"), "vcpus", minimum=1, maximum=512)
    if options.get("bundle"):
        for explicit in ("kernel", "initrd", "cmdline", "id_block", "id_auth"):
            if options.get(explicit) is not None:
                raise SnpError(f"comes from the bundle; give {explicit} or bundle, not both", field=explicit)
        unpack_dir = None
        if check_mode:  # nothing is written in check mode: unpack where it is thrown away
            import atexit
            import shutil
            import tempfile

            unpack_dir = tempfile.mkdtemp(prefix="snpguard-check-")
            atexit.register(shutil.rmtree, unpack_dir, True)
        else:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
        config = from_bundle(os.path.abspath(options["bundle"]), name=name, state_dir=state_dir, firmware=firmware,
                             vcpus=vcpus, unpack_dir=unpack_dir, **host)
        if options.get("host_data") is not None:
            config.host_data = parse_host_data(options["host_data"])
    else:
        if not options.get("kernel"):
            raise SnpError("give a bundle, or at least a kernel", field="kernel")
        config = VmConfig(
            name=name, state_dir=state_dir, firmware=firmware, kernel=os.path.abspath(options["kernel"]),
            initrd=os.path.abspath(options["initrd"]) if options.get("initrd") else None,
            cmdline=options.get("cmdline") or "", vcpus=vcpus or 1, vcpu_type=options.get("vcpu_type") or "EPYC-v4",
            policy=parse_policy_value(options.get("policy")),
            guest_features=parse_int(options.get("guest_features"), "guest_features", minimum=0) or 0x1,
            id_block=options.get("id_block"), id_auth=options.get("id_auth"),
            author_key_enabled=bool(options.get("author_key_enabled")),
            host_data=parse_host_data(options.get("host_data")), **host)
    if options.get("vcpu_type") and options.get("bundle"):
        config.vcpu_type = options["vcpu_type"]
    return config.validate()


def _fill_sev_bits(config: VmConfig, run: Runner, *, launching: bool) -> None:
    """cbitpos and reduced-phys-bits from this host's CPUID when not given; refuse a host that is not SNP-capable.

    Describing a launch for another host (argv, libvirt) needs no SNP here when both values are given.
    """
    if not launching and config.cbitpos is not None and config.reduced_phys_bits is not None:
        return
    facts = gather(run, config.qemu, config.firmware)
    if not facts.snp_capable:
        hint = " (set simulate: true for a simulated launch under TCG)" if launching else \
            " (give cbitpos and reduced_phys_bits to describe a launch for another host)"
        raise SnpError("this host cannot launch SEV-SNP guests: " + "; ".join(facts.problems) + hint,
                       field="simulate" if launching else "cbitpos")
    if facts.cpu is not None:
        if config.cbitpos is None:
            config.cbitpos = facts.cpu.cbitpos
        if config.reduced_phys_bits is None:
            config.reduced_phys_bits = facts.cpu.reduced_phys_bits


def apply(options: dict[str, Any], run: Runner, *, check_mode: bool = False) -> dict[str, Any]:
    state = options.get("state") or "started"
    if state not in STATES:
        raise SnpError(f"must be one of {', '.join(STATES)}", field="state")
    name = options.get("name") or ""
    state_dir = os.path.abspath(options.get("state_dir") or os.path.join(DEFAULT_STATE_ROOT, name))
    vm = Vm(name, state_dir, run)
    if state == "stopped":
        result = vm.stop(timeout=float(options.get("stop_timeout") or 60), check_mode=check_mode).as_dict()
        return {**result, **_status(vm)}
    if state == "absent":
        return {**vm.remove(check_mode=check_mode).as_dict(), "state_dir": state_dir}
    config = config_from_options(options, check_mode=check_mode)
    output = options.get("output") or "qemu"
    if not config.simulate:
        _fill_sev_bits(config, run, launching=output == "qemu")
    if output == "libvirt":
        return {"changed": False, "xml": domain_xml(config), "digest": config.digest(), "state": "described"}
    if output == "argv":
        gpa = None
        if config.simulate:
            from ..snp.ovmf import parse_firmware

            with open(config.firmware, "rb") as handle:
                gpa = parse_firmware(handle.read(), config.firmware).hash_table_gpa
        argv = build_argv(config, hashes_table_gpa=gpa, qemu_version=qemu_version(config.qemu, run))
        return {"changed": False, "argv": argv, "digest": config.digest(), "state": "described"}
    result = vm.start(config, simulated_amdsp=options.get("simulated_amdsp"), restart=state == "restarted",
                      check_mode=check_mode).as_dict()
    result.update(_status(vm) if not check_mode else {})
    result["host_data"] = config.host_data.hex() if config.host_data else None
    if config.simulate and not check_mode and result["changed"]:
        import json

        with open(os.path.join(state_dir, "launch.json"), encoding="utf-8") as handle:
            result["measurement"] = json.load(handle)["measurement"]
    return result


def _status(vm: Vm) -> dict[str, Any]:
    status = vm.status()
    return {"pid": status["pid"], "serial_log": status["serial_log"], "state_dir": status["state_dir"],
            "running": status["state"] == "running"}
