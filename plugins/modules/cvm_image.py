#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cvm_image
short_description: Convert a stock cloud image into a confidential one (LUKS2 root unlocked by attestation)
version_added: 0.2.0
description:
  - Converts a stock qcow2 cloud image (Debian or Ubuntu; GPT, ext4 root as its last partition) into a new qcow2
    whose root partition is LUKS2 (argon2id keyslot, a fresh random volume key), with the key-release agent, its
    configuration and the server's CA in a regenerated initrd. The stock image is never modified.
  - Writes a staging directory beside it - the kernel, that initrd, the measured command line, the volume key
    sealed to the server's ingestion key (HPKE) and a manifest - that M(snpguard.cvm.cvm_register) registers with
    O(snpguard.cvm.cvm_register#module:staging_dir).
  - All changes happen inside libguestfs' appliance (no loop devices, device mapper or mounts on this host).
    Packages the image lacks (cryptsetup, cffi's backend) are resolved against the image's own dpkg status,
    fetched on this host for the image's release, and installed offline.
  - Refuses, naming the reason, what it cannot convert faithfully - an unknown distribution, an LVM or non-ext4
    root, separate file systems, a kernel without SEV-SNP guest support (naming the missing kernel option).
  - Nothing is written until everything succeeded; image and staging directory appear by rename.
author:
  - snpguard maintainers (@snpguard)
extends_documentation_fragment:
  - snpguard.cvm.attributes
attributes:
  check_mode:
    support: full
    details: Check mode inspects the stock image (read-only) and returns the plan, the kernel and the command line.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: The manifest records the stock image's SHA-256 and the options; a rerun with both unchanged and the
      output intact reports no change.
  platform:
    support: full
    platforms: posix
options:
  source:
    description: The stock qcow2 image.
    type: path
    required: true
  output:
    description: The confidential qcow2 image to write.
    type: path
    required: true
  staging_dir:
    description: The staging directory to write (kernel, initrd, cmdline, sealed key, manifest).
    type: path
    required: true
  name:
    description: The image's name on the key-release server; the sealed volume key is bound to it.
    type: str
    required: true
  mode:
    description:
      - V(luks) - an encrypted root unlocked by the agent after attestation.
      - V(verity) - a read-only root in the clear, every block checked by dm-verity against a root hash on the
        measured command line; /var, /home, /root and /tmp are tmpfs and /etc an overlay (nothing written at run
        time persists). No volume key; secrets reach such a VM after a runtime attestation.
    type: str
    choices: [luks, verity]
    default: luks
  server_url:
    description: The key-release server the agent asks (C(https://)); written into the measured initrd. Required
      with O(mode=luks).
    type: str
  server_ca_file:
    description: The server's CA (PEM) the agent pins; written into the measured initrd. Required with
      O(mode=luks).
    type: path
  ingestion_public_key:
    description:
      - The server's ingestion public key (base64, C(ingestion_public_key) of its C(/v1/info)); the volume key
        leaves the conversion only sealed to it.
      - With O(mode=luks) exactly one of O(ingestion_public_key) and O(volume_key_file) is required; with
        O(mode=verity) neither.
    type: str
  volume_key_file:
    description: Write the plaintext volume key to this file (mode 0600) instead of sealing it. Only when asked.
    type: path
  firmware:
    description: The SNP firmware the image will be launched with; its SHA-384 goes into the staging manifest.
    type: path
    default: /usr/share/ovmf/OVMF.amdsev.fd
  kernel:
    description: The kernel version to boot (as in C(/boot/vmlinuz-VERSION)); default the newest.
    type: str
  vcpus:
    description: The vCPU counts the image will be measured for.
    type: list
    elements: int
    default: [1]
  vcpu_type:
    description: QEMU's CPU model for the launch.
    type: str
    default: EPYC-v4
  policy:
    description: The guest policy (integer or hex).
    type: str
    default: '0x30000'
  guest_features:
    description: SEV_FEATURES of the VMSAs (hex).
    type: str
    default: '0x1'
  extra_cmdline:
    description: Arguments appended to the measured kernel command line.
    type: str
  report_source:
    description: Where the agent asks for the report - V(auto) (configfs-tsm, then /dev/sev-guest), or one of them,
      or V(channel) (the simulated AMD-SP of a simulated launch; labs only).
    type: str
    choices: [auto, configfs, sev-guest, channel]
    default: auto
  crypto_source:
    description: The C(cryptography) the agent brings (a site-packages directory or an abi3 wheel); default this
      Python's.
    type: path
  pbkdf_memory_kib:
    description: Argon2id memory of the LUKS keyslot. The key is 256 random bits, so stretching adds nothing.
    type: int
    default: 65536
  pbkdf_iterations:
    description: Argon2id iterations of the LUKS keyslot.
    type: int
    default: 4
  integrity:
    description: Add dm-integrity (HMAC-SHA256) under the encryption (slower; writes the whole device).
    type: bool
    default: false
  package_mirror:
    description: The Debian archive to fetch missing packages from; default the one this host's apt uses.
    type: str
  package_cache:
    description: Where fetched packages and apt's private state are kept; default beside O(output).
    type: path
  force_tcg:
    description: Run libguestfs' appliance without KVM (hosts where /dev/kvm does not work).
    type: bool
    default: false
requirements:
  - libguestfs with its Python binding (Debian python3-guestfs, libguestfs-tools)
  - qemu-img, apt-get
  - cryptography >= 47
seealso:
  - module: snpguard.cvm.cvm_register
  - module: snpguard.cvm.snp_vm
"""

EXAMPLES = r"""
- name: Convert Debian's genericcloud image
  snpguard.cvm.cvm_image:
    source: /srv/images/debian-13-genericcloud-amd64.qcow2
    output: /srv/images/debian-13-cvm.qcow2
    staging_dir: /srv/images/debian-13-cvm.staging
    name: debian-13-cvm
    server_url: https://keys.example.com:8443
    server_ca_file: /etc/snpguard/ca.pem
    ingestion_public_key: "{{ server_info.json.ingestion_public_key }}"

- name: Plan only
  snpguard.cvm.cvm_image:
    source: /srv/images/debian-13-genericcloud-amd64.qcow2
    output: /srv/images/debian-13-cvm.qcow2
    staging_dir: /srv/images/debian-13-cvm.staging
    name: debian-13-cvm
    server_url: https://keys.example.com:8443
    server_ca_file: /etc/snpguard/ca.pem
    ingestion_public_key: "{{ server_info.json.ingestion_public_key }}"
  check_mode: true

- name: A read-only root checked by dm-verity (integrity only; secrets after runtime attestation)
  snpguard.cvm.cvm_image:
    source: /srv/images/debian-13-genericcloud-amd64.qcow2
    output: /srv/images/debian-13-ro.qcow2
    staging_dir: /srv/images/debian-13-ro.staging
    name: debian-13-ro
    mode: verity
"""

RETURN = r"""
output:
  description: The confidential image.
  returned: success
  type: str
staging_dir:
  description: The staging directory.
  returned: success
  type: str
plan:
  description: What the conversion does (or did).
  returned: when something changes (or would)
  type: list
  elements: str
kernel_version:
  description: The kernel the image boots.
  returned: success
  type: str
cmdline:
  description: The measured kernel command line.
  returned: success
  type: str
image:
  description: What the stock image is (distribution, release, root, kernels, initrd generator).
  returned: when the image was inspected
  type: dict
verity:
  description: The dm-verity parameters of the new root (root hash, hash algorithm, block sizes, data blocks,
    hash offset, salt, partition UUID), as the staging manifest records them.
  returned: when converted with O(mode=verity)
  type: dict
luks:
  description: The LUKS2 parameters of the new root (UUID, PBKDF, cipher, sector size, mapper name).
  returned: when converted
  type: dict
packages:
  description: The packages installed offline into the image.
  returned: when converted
  type: list
  elements: str
steps:
  description: The progress lines of the conversion, each after the seconds since it started (C([ 12.3 s] ...)).
  returned: always
  type: list
  elements: str
field:
  description: The option that is wrong.
  returned: on failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snpguard.cvm.plugins.module_utils.common.ansible_glue import require_cryptography
from ansible_collections.snpguard.cvm.plugins.module_utils.common.process import module_runner
from ansible_collections.snpguard.cvm.plugins.module_utils.image.cvm_image import apply
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "source": {"type": "path", "required": True},
            "output": {"type": "path", "required": True},
            "staging_dir": {"type": "path", "required": True},
            "name": {"type": "str", "required": True},
            "mode": {"type": "str", "choices": ["luks", "verity"], "default": "luks"},
            "server_url": {"type": "str"},
            "server_ca_file": {"type": "path"},
            "ingestion_public_key": {"type": "str"},
            "volume_key_file": {"type": "path", "no_log": False},
            "firmware": {"type": "path", "default": "/usr/share/ovmf/OVMF.amdsev.fd"},
            "kernel": {"type": "str"},
            "vcpus": {"type": "list", "elements": "int", "default": [1]},
            "vcpu_type": {"type": "str", "default": "EPYC-v4"},
            "policy": {"type": "str", "default": "0x30000"},
            "guest_features": {"type": "str", "default": "0x1"},
            "extra_cmdline": {"type": "str"},
            "report_source": {"type": "str", "choices": ["auto", "configfs", "sev-guest", "channel"],
                              "default": "auto"},
            "crypto_source": {"type": "path"},
            "pbkdf_memory_kib": {"type": "int", "default": 65536},
            "pbkdf_iterations": {"type": "int", "default": 4},
            "integrity": {"type": "bool", "default": False},
            "package_mirror": {"type": "str"},
            "package_cache": {"type": "path"},
            "force_tcg": {"type": "bool", "default": False},
        },
        required_if=[("mode", "luks", ("server_url", "server_ca_file")),
                     ("mode", "luks", ("ingestion_public_key", "volume_key_file"), True)],
        mutually_exclusive=[("ingestion_public_key", "volume_key_file")],
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
