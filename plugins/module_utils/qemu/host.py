# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""What makes a host able to launch SEV-SNP guests, read from the host itself.

Every item is a fact with where it came from, so a report says *why* a host is not
SNP-capable: the CPU (CPUID 0x8000001F through /dev/cpu/0/cpuid — the ``cpuid`` kernel
module), KVM (``kvm_amd`` with ``sev_snp=Y``), the AMD-SP device (``/dev/sev``), the SNP
firmware version (``/sys/module/kvm_amd/parameters``, ``/sys/firmware``…, where the
kernel exposes it), the kernel, memory, a QEMU that has ``sev-snp-guest``, and the SNP
firmware image (Debian's ``ovmf-amdsev`` ``OVMF.amdsev.fd``).
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from typing import Any

from ..common.process import Runner
from ..snp.sev_cpuid import LEAF, SevCapabilities

OVMF_AMDSEV_PATHS = ("/usr/share/ovmf/OVMF.amdsev.fd", "/usr/share/OVMF/OVMF.amdsev.fd")


@dataclass
class HostFacts:
    cpu: SevCapabilities | None = None
    cpu_source: str = ""
    kvm_amd_sev_snp: bool | None = None
    dev_sev: bool = False
    dev_kvm: bool = False
    kernel: str = ""
    memory_mb: int = 0
    qemu: str | None = None
    qemu_version: str | None = None
    qemu_sev_snp_guest: bool = False
    firmware: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def snp_capable(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"snp_capable": self.snp_capable, "problems": list(self.problems),
                "cpu": self.cpu.as_dict() if self.cpu else None, "cpu_source": self.cpu_source,
                "kvm_amd_sev_snp": self.kvm_amd_sev_snp, "dev_sev": self.dev_sev, "dev_kvm": self.dev_kvm,
                "kernel": self.kernel, "memory_mb": self.memory_mb, "qemu": self.qemu,
                "qemu_version": self.qemu_version, "qemu_sev_snp_guest": self.qemu_sev_snp_guest,
                "firmware": self.firmware}


def read_cpuid(cpu: int = 0) -> tuple[SevCapabilities | None, str]:
    """CPUID 0x8000001F from /dev/cpu/N/cpuid (offset = leaf), or why it could not be read."""
    path = f"/dev/cpu/{cpu}/cpuid"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return None, f"{path}: {exc.strerror} (modprobe cpuid)"
    try:
        max_leaf = int.from_bytes(os.pread(fd, 16, 0x80000000)[:4], "little")
        if max_leaf < LEAF:
            return SevCapabilities(False, False, False, 0, 0), f"{path}: extended CPUID stops at 0x{max_leaf:x}"
        return SevCapabilities.from_bytes(os.pread(fd, 16, LEAF)), path
    except OSError as exc:
        return None, f"{path}: {exc.strerror}"
    finally:
        os.close(fd)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _memory_mb() -> int:
    text = _read_text("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def qemu_has_snp(binary: str, run: Runner) -> tuple[bool, str | None]:
    """(knows sev-snp-guest, version line) — by asking that QEMU."""
    rc, version, _err = run([binary, "--version"], 30)
    if rc != 0:
        return False, None
    rc, helped, _err = run([binary, "-object", "sev-snp-guest,help"], 30)
    knows = rc == 0 and "sev-snp-guest" in helped
    return knows, version.splitlines()[0] if version else None


def gather(run: Runner, qemu: str = "qemu-system-x86_64", firmware: str | None = None) -> HostFacts:
    facts = HostFacts(kernel=platform.release(), memory_mb=_memory_mb())
    facts.cpu, facts.cpu_source = read_cpuid()
    if facts.cpu is None:
        facts.problems.append(f"cannot read CPUID 0x8000001F ({facts.cpu_source})")
    elif not facts.cpu.snp:
        facts.problems.append("the CPU does not support SEV-SNP (CPUID 0x8000001F EAX bit 4 is clear)")
    snp_param = _read_text("/sys/module/kvm_amd/parameters/sev_snp")
    facts.kvm_amd_sev_snp = None if snp_param is None else snp_param in ("Y", "1")
    if not facts.kvm_amd_sev_snp:
        facts.problems.append("kvm_amd is not loaded with sev_snp=Y" if snp_param is not None
                              else "kvm_amd is not loaded (no /sys/module/kvm_amd)")
    facts.dev_sev = os.path.exists("/dev/sev")
    facts.dev_kvm = os.path.exists("/dev/kvm")
    if not facts.dev_sev:
        facts.problems.append("no /dev/sev (the AMD-SP driver, ccp, is not there)")
    path = shutil.which(qemu) if not os.path.isabs(qemu) else qemu
    facts.qemu = path
    if path:
        facts.qemu_sev_snp_guest, facts.qemu_version = qemu_has_snp(path, run)
        if not facts.qemu_sev_snp_guest:
            facts.problems.append(f"{path} ({facts.qemu_version}) has no sev-snp-guest object (QEMU >= 9.1 has)")
    else:
        facts.problems.append(f"no {qemu} on PATH")
    candidates = [firmware] if firmware else list(OVMF_AMDSEV_PATHS)
    facts.firmware = next((p for p in candidates if p and os.path.isfile(p)), None)
    if facts.firmware is None:
        facts.problems.append(f"no SNP firmware at {', '.join(c for c in candidates if c)} (Debian: ovmf-amdsev)")
    return facts
