#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: snp_vm
short_description: Launch, stop or describe an AMD SEV-SNP guest with QEMU
version_added: 0.2.0
description:
  - Launches an SEV-SNP guest from a launch-artifacts bundle (kernel, initrd, command line, C(launch.json), ID
    blocks) or from the same facts given one by one, with QEMU's C(sev-snp-guest) object and C(kernel-hashes=on),
    so the launch measurement pins firmware, kernel, initrd and command line.
  - Idempotent by a digest of the launch configuration (file contents included) - the same configuration running
    reports no change; another configuration running is reported (RV(config_differs)) and relaunched only with
    O(state=restarted).
  - Stops gracefully - ACPI power-down over QMP, then quit, then kill as the last resort.
  - O(cbitpos) and O(reduced_phys_bits) come from the host's CPUID 0x8000001F; a host that is not SNP-capable is
    refused with the reasons (see M(snpguard.cvm.snp_host_info)) unless O(simulate=true).
  - With O(simulate=true) (hosts without SEV-SNP, labs and CI) the same firmware, kernel, initrd and command line
    run under TCG with the kernel-hashes table placed at the firmware's hashes page, so OVMF itself verifies what
    it boots; a host-side simulated AMD-SP answers the guest's report requests over a virtio-serial port, with
    MEASUREMENT computed from exactly these files and options, and refuses the launch where the AMD-SP would
    (an ID block for another measurement or policy, a bad signature).
  - O(output=libvirt) renders the equivalent libvirt domain (C(launchSecurity type='sev-snp')), O(output=argv) the
    QEMU command line, without launching.
author:
  - snpguard maintainers (@snpguard)
extends_documentation_fragment:
  - snpguard.cvm.attributes
attributes:
  check_mode:
    support: full
    details: Check mode computes the configuration and returns the command line it would run.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: The same configuration running is no change.
  platform:
    support: full
    platforms: posix
options:
  name:
    description: The guest's name (letters, digits, C(.), C(_), C(-)); QEMU's process is C(snpguard-<name>).
    type: str
    required: true
  state:
    description:
      - V(started) launches unless this configuration already runs; V(restarted) relaunches; V(stopped) powers
        down; V(absent) stops and removes the state directory.
    type: str
    choices: [started, stopped, restarted, absent]
    default: started
  output:
    description: V(qemu) launches; V(argv) returns QEMU's command line; V(libvirt) returns the domain XML.
    type: str
    choices: [qemu, argv, libvirt]
    default: qemu
  state_dir:
    description: Where pidfile, QMP socket, serial log and the unpacked bundle go (mode 0700).
    type: path
  bundle:
    description: A launch-artifacts bundle (C(tar.gz)) as the key-release server returns it.
    type: path
  firmware:
    description: The SNP firmware (Debian's C(ovmf-amdsev)); with O(bundle), its SHA-384 must be the bundle's.
    type: path
    default: /usr/share/ovmf/OVMF.amdsev.fd
  kernel:
    description: The kernel, without O(bundle).
    type: path
  initrd:
    description: The initrd, without O(bundle).
    type: path
  cmdline:
    description: The kernel command line, without O(bundle).
    type: str
  vcpus:
    description: vCPUs; with O(bundle) one of the counts it was measured for (default its first).
    type: int
  vcpu_type:
    description: QEMU's CPU model (it fixes the CPUID signature in the VMSAs, so the measurement).
    type: str
  memory_mb:
    description: Guest memory in MiB.
    type: int
    default: 2048
  policy:
    description: Guest policy (C(0x30000), or names like C(smt=1,debug=0)), without O(bundle).
    type: str
  guest_features:
    description: SEV_FEATURES of the VMSAs, without O(bundle).
    type: str
  id_block:
    description: ID block, base64 (without O(bundle)).
    type: str
  id_auth:
    description: ID auth block, base64 (without O(bundle)).
    type: str
  author_key_enabled:
    description: Whether the ID auth block's author key is used (without O(bundle); a bundle's block says).
    type: bool
    default: false
  host_data:
    description:
      - 32 bytes, hex, bound into every report as HOST_DATA.
      - Default with O(bundle) - the bundle's own C(host_data), else the SHA-256 of its launch configuration (what a
        server registration of the bundle enforces).
    type: str
  cbitpos:
    description: C-bit position (default - this host's CPUID).
    type: int
  reduced_phys_bits:
    description: Physical address bits taken by memory encryption (default - this host's CPUID).
    type: int
  disks:
    description: Disks, each a path or C({path, format, readonly, serial}) (virtio-blk).
    type: list
    elements: raw
  network:
    description: V(none), or V(user) (QEMU's user network; reaches nothing inbound except O(forwards)).
    type: str
    choices: [none, user]
    default: none
  forwards:
    description: With O(network=user), C(HOST:GUEST) TCP ports forwarded from 127.0.0.1.
    type: list
    elements: str
  guest_forwards:
    description:
      - With O(network=user), connections the guest makes to C(ADDRESS:PORT) reach a TCP port on the
        host's 127.0.0.1 (QEMU guestfwd), e.g. the key-release server for the agent in the initrd.
      - Each is C(ADDRESS:PORT-HOSTPORT) or C({address, port, host_port}); ADDRESS is in QEMU's user
        network 10.0.2.0/24 and not one of its own addresses (.2 gateway, .3 DNS, .15 the guest).
      - Not with O(output=libvirt) (libvirt's user network has no guestfwd).
    type: list
    elements: raw
  simulate:
    description: A simulated SNP launch under TCG (no SEV-SNP hardware; test labs only, see description).
    type: bool
    default: false
  simulated_amdsp:
    description: With O(simulate), the simulated AMD-SP directory (C(snpguard sim init DIR)) that signs reports.
    type: path
  qemu:
    description: The QEMU binary.
    type: str
    default: qemu-system-x86_64
  stop_timeout:
    description: Seconds to wait for the guest to power down before QEMU is told to quit.
    type: int
    default: 60
requirements:
  - QEMU >= 9.1 (C(sev-snp-guest)) on SNP hosts; any QEMU for O(simulate).
seealso:
  - module: snpguard.cvm.snp_host_info
  - module: snpguard.cvm.snp_guest_report
"""

EXAMPLES = r"""
- name: Boot a registered image on an SNP host from its bundle
  snpguard.cvm.snp_vm:
    name: web-1
    bundle: /var/lib/snpguard/bundles/debian-13.bundle.tar.gz
    disks:
      - {path: /var/lib/snpguard/images/web-1.qcow2}
    network: user
    forwards: ["2222:22"]

- name: The same guest, simulated on a host without SEV-SNP
  snpguard.cvm.snp_vm:
    name: web-1
    bundle: /var/lib/snpguard/bundles/debian-13.bundle.tar.gz
    firmware: /root/.cache/snpguard/artifacts/OVMF.amdsev.fd
    simulate: true
    simulated_amdsp: /var/lib/snpguard/simulated-amdsp

- name: The libvirt domain for it
  snpguard.cvm.snp_vm:
    name: web-1
    bundle: /var/lib/snpguard/bundles/debian-13.bundle.tar.gz
    output: libvirt
  register: domain

- name: Power it down
  snpguard.cvm.snp_vm:
    name: web-1
    state: stopped
"""

RETURN = r"""
state:
  description: V(running), V(stopped), V(absent), or V(described) (with O(output=argv) or O(output=libvirt)).
  returned: always
  type: str
argv:
  description: QEMU's command line (started, or in check mode would be).
  returned: when launching or describing
  type: list
  elements: str
xml:
  description: The libvirt domain.
  returned: O(output=libvirt)
  type: str
digest:
  description: SHA-256 of the launch configuration (file contents included).
  returned: when a configuration was given
  type: str
config_differs:
  description: A guest of this name runs with another configuration (not relaunched without O(state=restarted)).
  returned: O(state=started)
  type: bool
pid:
  description: QEMU's process id while it runs.
  returned: success
  type: int
serial_log:
  description: The guest's serial console log.
  returned: success
  type: str
host_data:
  description: The HOST_DATA the guest was launched with (hex).
  returned: when launching
  type: str
measurement:
  description: With O(simulate), the launch measurement the simulated AMD-SP signs (hex).
  returned: when a simulated guest was started
  type: str
field:
  description: The option that is wrong.
  returned: on failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snpguard.cvm.plugins.module_utils.common.ansible_glue import require_cryptography
from ansible_collections.snpguard.cvm.plugins.module_utils.common.process import module_runner
from ansible_collections.snpguard.cvm.plugins.module_utils.qemu.snp_vm import apply
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["started", "stopped", "restarted", "absent"], "default": "started"},
            "output": {"type": "str", "choices": ["qemu", "argv", "libvirt"], "default": "qemu"},
            "state_dir": {"type": "path"},
            "bundle": {"type": "path"},
            "firmware": {"type": "path", "default": "/usr/share/ovmf/OVMF.amdsev.fd"},
            "kernel": {"type": "path"},
            "initrd": {"type": "path"},
            "cmdline": {"type": "str"},
            "vcpus": {"type": "int"},
            "vcpu_type": {"type": "str"},
            "memory_mb": {"type": "int", "default": 2048},
            "policy": {"type": "str"},
            "guest_features": {"type": "str"},
            "id_block": {"type": "str"},
            "id_auth": {"type": "str"},
            "author_key_enabled": {"type": "bool", "default": False},
            "host_data": {"type": "str"},
            "cbitpos": {"type": "int"},
            "reduced_phys_bits": {"type": "int"},
            "disks": {"type": "list", "elements": "raw"},
            "network": {"type": "str", "choices": ["none", "user"], "default": "none"},
            "forwards": {"type": "list", "elements": "str"},
            "guest_forwards": {"type": "list", "elements": "raw"},
            "simulate": {"type": "bool", "default": False},
            "simulated_amdsp": {"type": "path"},
            "qemu": {"type": "str", "default": "qemu-system-x86_64"},
            "stop_timeout": {"type": "int", "default": 60},
        },
        mutually_exclusive=[("bundle", "kernel"), ("bundle", "cmdline"), ("bundle", "id_block")],
        required_together=[("id_block", "id_auth")],
        supports_check_mode=True,
    )
    require_cryptography(module)
    try:
        result = apply(module.params, module_runner(module), check_mode=module.check_mode)
    except SnpError as exc:
        module.fail_json(**exc.as_dict())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
