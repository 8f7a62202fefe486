# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The libvirt domain that launches the same SEV-SNP guest as ``argv.build_argv``.

``<launchSecurity type='sev-snp'>`` as libvirt's domain schema has it (domaincommon.rng
of libvirt 11.3 and 12.8, checked with virt-xml-validate in tests/pytest/qemu/):
``kernelHashes`` and ``authorKey`` are yes/no attributes; ``policy`` (required) is hex,
lower case, which libvirt always reads as hex (so it is written ``0x…``); ``cbitpos``,
``reducedPhysBits``; ``idBlock``, ``idAuth``, ``hostData`` base64.  Memory is memfd and
private, as KVM needs for guest-private memory.  libvirt has no simulated launch: the
XML is for SNP hosts.
"""

from __future__ import annotations

import base64
from xml.sax.saxutils import escape, quoteattr

from ..snp.errors import SnpError
from .argv import AMDSP_PORT
from .config import VmConfig


def _el(name: str, text: str | int, indent: str) -> str:
    return f"{indent}<{name}>{escape(str(text))}</{name}>"


def domain_xml(config: VmConfig, *, amdsp_socket: str | None = None) -> str:
    """The domain XML; ``amdsp_socket`` adds the channel of a simulated AMD-SP (for completeness only)."""
    if config.guest_forwards:
        raise SnpError("libvirt's user network has no guestfwd: let the guest reach the server by routing, or "
                       "launch with QEMU directly", field="guest_forwards")
    i2, i4 = "  ", "    "
    lines = ["<domain type='kvm'>", _el("name", config.name, i2), _el("memory", config.memory_mb, i2)
             .replace("<memory>", "<memory unit='MiB'>"), _el("vcpu", config.vcpus, i2), f"{i2}<os>",
             f"{i4}<type arch='x86_64' machine='q35'>hvm</type>",
             f"{i4}<loader type='rom' stateless='yes'>{escape(config.firmware)}</loader>",
             _el("kernel", config.kernel, i4)]
    if config.initrd:
        lines.append(_el("initrd", config.initrd, i4))
    lines += [_el("cmdline", config.cmdline, i4), f"{i2}</os>",
              f"{i2}<cpu mode='custom' match='exact'>",
              f"{i4}<model fallback='forbid'>{escape(config.vcpu_type)}</model>", f"{i2}</cpu>",
              f"{i2}<memoryBacking>", f"{i4}<source type='memfd'/>", f"{i4}<access mode='private'/>",
              f"{i2}</memoryBacking>", f"{i2}<devices>", f"{i4}<console type='pty'/>"]
    for index, disk in enumerate(config.disks):
        lines += [f"{i4}<disk type='file' device='disk'>",
                  f"{i4}  <driver name='qemu' type={quoteattr(disk.format)} cache='none' discard='unmap'/>",
                  f"{i4}  <source file={quoteattr(disk.path)}/>",
                  f"{i4}  <target dev='vd{chr(ord('a') + index)}' bus='virtio'/>"]
        if disk.readonly:
            lines.append(f"{i4}  <readonly/>")
        if disk.serial:
            lines.append(f"{i4}  <serial>{escape(disk.serial)}</serial>")
        lines.append(f"{i4}</disk>")
    if config.network == "user":
        lines += [f"{i4}<interface type='user'>", f"{i4}  <model type='virtio'/>"]
        for host_port, guest_port in config.forwards:
            lines += [f"{i4}  <portForward proto='tcp' address='127.0.0.1'>",
                      f"{i4}    <range start='{host_port}' to='{guest_port}'/>", f"{i4}  </portForward>"]
        lines.append(f"{i4}</interface>")
    if amdsp_socket:
        lines += [f"{i4}<channel type='unix'>", f"{i4}  <source mode='connect' path={quoteattr(amdsp_socket)}/>",
                  f"{i4}  <target type='virtio' name='{AMDSP_PORT}'/>", f"{i4}</channel>"]
    lines.append(f"{i2}</devices>")
    author = "yes" if config.id_block is not None and config.author_key_enabled else "no"
    lines.append(f"{i2}<launchSecurity type='sev-snp' kernelHashes='yes' authorKey='{author}'>")
    if config.cbitpos is not None:
        lines.append(_el("cbitpos", config.cbitpos, i4))
    if config.reduced_phys_bits is not None:
        lines.append(_el("reducedPhysBits", config.reduced_phys_bits, i4))
    lines.append(_el("policy", f"0x{config.policy:x}", i4))
    if config.id_block is not None and config.id_auth is not None:
        lines += [_el("idBlock", config.id_block, i4), _el("idAuth", config.id_auth, i4)]
    if config.host_data is not None:
        lines.append(_el("hostData", base64.b64encode(config.host_data).decode(), i4))
    lines += [f"{i2}</launchSecurity>", "</domain>"]
    return "\n".join(lines) + "\n"
