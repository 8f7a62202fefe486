#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cvm_register
short_description: Register a confidential VM image with the snpguard key-release server
version_added: 0.1.0
description:
  - Registers an image with the key-release server - its launch measurement per vCPU count, the guest-policy
    constraints, the minimum TCB, ID and author key digests, family and image id, host data, optionally its boot
    artifacts (from which the server builds the launch bundle) - together with its volume key.
  - The volume key never travels or rests in plaintext. Give it sealed to the server's ingestion key
    (O(sealed_volume_key), O(sealed_volume_key_file), as the conversion writes it), or give a raw key file in
    O(volume_key_file) that the module seals in memory just before sending (the plaintext is wiped after use).
  - Idempotent. Registering identical content again reports RV(ignore:changed=false). The server compares the
    public content and, in constant time, the volume key. An image of the same name with other content is an error
    unless O(replace=true).
  - In check mode the module reads the image the server has under O(name) and compares its public content with
    the request (the volume key is compared only by a real registration).
  - With O(state=absent) the image and its volume key are deleted. VMs of that image then no longer unlock.
  - With O(staging_dir) (what M(snpguard.cvm.cvm_image) writes next to a converted image) the module takes kernel,
    initrd, command line, launch facts and the sealed volume key from that directory, checks every file against
    the digests in its C(manifest.json), computes the launch measurement for each staged vCPU count from exactly
    those files and O(firmware), and registers them with a launch bundle built from the same bytes. Measurements
    given as well must equal the computed ones.
author:
  - snpguard maintainers (@snpguard)
extends_documentation_fragment:
  - snpguard.cvm.keyrelease_server
  - snpguard.cvm.attributes
  - snpguard.cvm.attributes.actiongroup_keyrelease
attributes:
  check_mode:
    support: full
    details: Reads the registered image and reports what would change; registers nothing.
  diff_mode:
    support: full
    details: Shows the image's public facts (measurements, policy, digests, ids, enabled), never a key.
  idempotent:
    support: full
    details: Registering the same content and volume key again reports no change.
  platform:
    support: full
    platforms: posix
options:
  name:
    description: Name of the image on the server (letters, digits, C(.), C(_), C(-); at most 128 characters).
    type: str
    required: true
  state:
    description: Whether the image is registered (V(present)) or deleted with its volume key (V(absent)).
    type: str
    choices: [present, absent]
    default: present
  enabled:
    description:
      - Whether the server releases the key to this image. A new image is enabled unless this is V(false).
      - When not set, an existing image keeps its state.
    type: bool
  measurements:
    description:
      - 'Launch measurement (96 hex digits) per vCPU count, for example C({1: "ab12...", 4: "cd34..."}).'
      - One of O(measurements), O(measurement) and O(staging_dir) is required with O(state=present).
      - With O(staging_dir) the measurements are computed; any given here must equal the computed ones.
    type: dict
  staging_dir:
    description:
      - A staging directory written by the conversion (C(manifest.json), C(vmlinuz), C(initrd.img), C(cmdline),
        C(sealed-volume-key) for luks).
      - Every file is checked against the manifest's digests; the image O(name) must be the staged image name (the
        volume key is sealed to it); O(firmware) is required and must have the staged SHA-384.
      - The measurements are computed from these files for each vCPU count of the staged launch facts.
      - Not together with O(kernel), O(initrd), O(cmdline), O(launch), O(bundle) and O(firmware_sha384), nor with
        O(sealed_volume_key), O(sealed_volume_key_file) or O(volume_key_file) - a luks staging dir carries the sealed
        key, and a verity one registers the image integrity-only (no key to release; its launches are attested at run
        time, and a report asking for a key is refused with the check C(image.integrity_only)).
    type: path
    version_added: 0.2.0
  measurement:
    description: A single launch measurement, for O(vcpus) vCPUs.
    type: str
  vcpus:
    description: The vCPU count O(measurement) is for.
    type: int
    default: 1
  vcpu_type:
    description: The vCPU type the image launches with (for example C(EPYC-v4)); recorded and put into the bundle.
    type: str
  policy:
    description: Guest-policy constraints a report must meet; unset flags are not checked.
    type: dict
    suboptions:
      allow_debug:
        description: Accept a policy that allows debugging (the host can then read guest memory).
        type: bool
      smt:
        description: Required value of the SMT policy bit.
        type: bool
      single_socket:
        description: Required value of the single-socket bit.
        type: bool
      migrate_ma:
        description: Required value of the migration-agent bit.
        type: bool
      cxl_allow:
        description: Required value of the CXL bit.
        type: bool
      min_abi:
        description: Minimum firmware ABI the policy demands, as C(MAJOR.MINOR).
        type: str
  min_tcb:
    description: Minimum TCB of the platform; C(bootloader), C(tee), C(snp) and C(microcode) together, C(fmc) on Turin.
    type: dict
    suboptions:
      bootloader:
        description: Minimum boot loader SVN.
        type: int
      tee:
        description: Minimum TEE SVN.
        type: int
      snp:
        description: Minimum SNP firmware SVN.
        type: int
      microcode:
        description: Minimum microcode SVN.
        type: int
      fmc:
        description: Minimum FMC SVN (Turin).
        type: int
  id_key_digests:
    description: Accepted ID key digests (SHA-384 of the SEV public-key structure, 96 hex digits).
    type: list
    elements: str
  author_key_digests:
    description: Accepted author key digests.
    type: list
    elements: str
  generate_id_keys:
    description: The server generates an ID key for this image and signs the ID blocks in the bundle with it.
    type: bool
    default: false
  family_id:
    description: Expected FAMILY_ID (32 hex digits).
    type: str
  image_id:
    description: Expected IMAGE_ID (32 hex digits).
    type: str
  guest_svn:
    description: Minimum GUEST_SVN (and the SVN of server-signed ID blocks).
    type: int
  host_data:
    description: Expected HOST_DATA (64 hex digits).
    type: str
  sealed_volume_key:
    description: The volume key sealed to the server's ingestion key (HPKE), base64.
    type: str
  sealed_volume_key_file:
    description: File holding the sealed volume key (raw or base64), as the conversion writes it.
    type: path
  volume_key_file:
    description:
      - File holding the raw volume key (16 to 128 bytes). The module seals it to the server's ingestion key in
        memory and wipes the plaintext; the plaintext is never sent.
      - Exactly one of O(sealed_volume_key), O(sealed_volume_key_file) and O(volume_key_file) is required with
        O(state=present).
    type: path
  kernel:
    description: Kernel of the image, for the launch bundle. Needs O(initrd) and O(firmware) or O(firmware_sha384).
    type: path
  initrd:
    description: Initrd of the image, for the launch bundle.
    type: path
  cmdline:
    description: Kernel command line, for the launch bundle.
    type: str
  firmware:
    description:
      - The OVMF image the guest boots; its SHA-384 goes into the bundle.
      - Required with O(staging_dir), which is measured with it.
    type: path
  firmware_sha384:
    description: SHA-384 of the firmware (96 hex digits), instead of O(firmware).
    type: str
  launch:
    description: Content of the bundle's C(launch.json) (vCPUs, vCPU type, guest policy, guest features, VMM type).
    type: dict
  id_blocks:
    description:
      - ID block and ID auth block (base64, as QEMU takes them) per vCPU count, for the bundle.
      - 'For example C({1: {id_block: "...", id_auth: "..."}}). Not together with O(generate_id_keys).'
    type: dict
  bundle:
    description: A prebuilt launch bundle (tar.gz) instead of O(kernel) and O(initrd).
    type: path
  replace:
    description:
      - Replace an image of the same name that has other content or another volume key.
      - Without it, such an image makes the task fail, naming what differs.
    type: bool
    default: false
requirements:
  - cryptography >= 47 (to seal O(volume_key_file))
seealso:
  - module: snpguard.cvm.cvm_api_token
  - module: snpguard.cvm.snp_measure
  - module: snpguard.cvm.snp_id_block
"""

EXAMPLES = r"""
- name: Register an image with its sealed volume key
  snpguard.cvm.cvm_register:
    url: https://keys.example.com:8443
    token: "{{ snpguard_api_token }}"
    ca_file: /etc/snpguard/ca.pem
    name: debian13-web
    measurements:
      1: "{{ measure_1.measurement }}"
      4: "{{ measure_4.measurement }}"
    policy:
      smt: true
      min_abi: "1.55"
    min_tcb: {bootloader: 9, tee: 0, snp: 23, microcode: 213}
    id_key_digests:
      - "{{ id_block.id_key_digest }}"
    sealed_volume_key_file: /srv/images/debian13-web/volume-key.sealed
  delegate_to: localhost

- name: Register with boot artifacts (the server builds the launch bundle), sealing a key file here
  snpguard.cvm.cvm_register:
    url: https://keys.example.com:8443
    ca_file: /etc/snpguard/ca.pem
    name: ubuntu2404-db
    measurement: "{{ measured.measurement }}"
    vcpus: 2
    volume_key_file: /run/staging/volume.key
    kernel: /srv/images/ubuntu2404-db/vmlinuz
    initrd: /srv/images/ubuntu2404-db/initrd.img
    cmdline: "console=ttyS0 root=/dev/mapper/root"
    firmware: /usr/share/ovmf/OVMF.amdsev.fd
    generate_id_keys: true
  delegate_to: localhost
  environment:
    SNPGUARD_TOKEN: "{{ vault_snpguard_token }}"

- name: Register what a conversion staged (measurements computed from the staged files)
  snpguard.cvm.cvm_register:
    url: https://keys.example.com:8443
    ca_file: /etc/snpguard/ca.pem
    name: debian13-web
    staging_dir: /srv/images/debian13-web.staging
    firmware: /usr/share/ovmf/OVMF.amdsev.fd
    policy:
      smt: true
    min_tcb: {bootloader: 9, tee: 0, snp: 23, microcode: 213}
  delegate_to: localhost
  register: registered

- name: Stop releasing the key to an image
  snpguard.cvm.cvm_register:
    url: https://keys.example.com:8443
    ca_file: /etc/snpguard/ca.pem
    name: debian13-web
    measurements: "{{ web_measurements }}"
    sealed_volume_key_file: /srv/images/debian13-web/volume-key.sealed
    enabled: false

- name: Delete an image and its volume key
  snpguard.cvm.cvm_register:
    url: https://keys.example.com:8443
    ca_file: /etc/snpguard/ca.pem
    name: debian12-old
    state: absent
"""

RETURN = r"""
action:
  description:
    - What happened - V(created), V(replaced), V(unchanged), V(deleted), V(absent) (nothing to delete).
    - In check mode what would happen - V(create), V(replace), V(none).
  returned: always
  type: str
  sample: created
id:
  description: The server's id of the image (UUID).
  returned: when the image exists (or existed)
  type: str
  sample: 3b0f585f-f766-4395-b900-ffb40ec8f22d
image:
  description:
    - The image as the server describes it - name, id, enabled, measurements (with server-signed ID blocks),
      policy, min_tcb, digests, ids, host data, C(content_sha256), C(bundle_sha256), release and refusal counts.
    - In check mode the image as it is now (null when it does not exist).
  returned: success with O(state=present)
  type: dict
  contains:
    id:
      description: The image's id (UUID).
      type: str
      returned: when the image exists
    name:
      description: Name of the image.
      type: str
      returned: when the image exists
    enabled:
      description: Whether the server releases the key to this image.
      type: bool
      returned: when the image exists
    measurements:
      description: One entry per vCPU count - C(vcpus), C(measurement), and the server-signed C(id_block) and
        C(id_auth) (V(null) unless O(generate_id_keys)).
      type: list
      elements: dict
      returned: when the image exists
    vcpu_type:
      description: The vCPU type, or V(null).
      type: str
      returned: when the image exists
    policy:
      description: The guest-policy constraints.
      type: dict
      returned: when the image exists
    min_tcb:
      description: The minimum TCB, or V(null).
      type: dict
      returned: when the image exists
    id_key_digests:
      description: Accepted ID key digests.
      type: list
      elements: str
      returned: when the image exists
    author_key_digests:
      description: Accepted author key digests.
      type: list
      elements: str
      returned: when the image exists
    generated_id_key_digest:
      description: Digest of the ID key the server generated for this image, or V(null).
      type: str
      returned: when the image exists
    family_id:
      description: Expected FAMILY_ID, or V(null).
      type: str
      returned: when the image exists
    image_id:
      description: Expected IMAGE_ID, or V(null).
      type: str
      returned: when the image exists
    guest_svn:
      description: Minimum GUEST_SVN, or V(null).
      type: int
      returned: when the image exists
    host_data:
      description: Expected HOST_DATA, or V(null).
      type: str
      returned: when the image exists
    content_sha256:
      description: SHA-256 of the registration's canonical public content.
      type: str
      returned: when the image exists
    bundle_sha256:
      description: SHA-256 of the launch bundle, or V(null).
      type: str
      returned: when the image exists
    release_count:
      description: How often the key was released.
      type: int
      returned: when the image exists
    refusal_count:
      description: How often a release was refused.
      type: int
      returned: when the image exists
    last_release_at:
      description: Time of the last release (ISO 8601), or V(null).
      type: str
      returned: when the image exists
    created_at:
      description: When the image was registered (ISO 8601).
      type: str
      returned: when the image exists
    updated_at:
      description: When it last changed (ISO 8601).
      type: str
      returned: when the image exists
content_sha256:
  description: SHA-256 of the registration's canonical public content (the server's C(content_sha256)).
  returned: success with O(state=present)
  type: str
measurements:
  description: The launch measurements computed from O(staging_dir), per vCPU count (96 hex digits each).
  returned: success with O(staging_dir)
  type: dict
  sample: {"1": "8b7f...", "4": "1c2d..."}
  version_added: 0.2.0
volume_key_compared:
  description: Whether the server compared the volume key (false in check mode, where only public content is compared).
  returned: success with O(state=present)
  type: bool
field:
  description: The option (or server field) that is wrong.
  returned: failure
  type: str
status:
  description: HTTP status of the server's refusal.
  returned: when the server refused
  type: int
  sample: 409
code:
  description: The server's error code, for example C(image_exists), C(measurement_registered), C(token_invalid).
  returned: when the server refused
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snpguard.cvm.plugins.module_utils.common.ansible_glue import require_cryptography
from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.cvm_register import apply
from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.module_args import (
    SERVER_ARGSPEC,
    client_from_params,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError


def main() -> None:
    flag = {"type": "bool"}
    spl = {"type": "int"}
    module = AnsibleModule(
        argument_spec={
            **SERVER_ARGSPEC,
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "enabled": {"type": "bool"},
            "measurements": {"type": "dict"},
            "measurement": {"type": "str"},
            "vcpus": {"type": "int", "default": 1},
            "vcpu_type": {"type": "str"},
            "policy": {"type": "dict", "options": {
                "allow_debug": flag, "smt": flag, "single_socket": flag, "migrate_ma": flag, "cxl_allow": flag,
                "min_abi": {"type": "str"}}},
            "min_tcb": {"type": "dict", "options": {
                "bootloader": spl, "tee": spl, "snp": spl, "microcode": spl, "fmc": spl}},
            "id_key_digests": {"type": "list", "elements": "str", "no_log": False},
            "author_key_digests": {"type": "list", "elements": "str", "no_log": False},
            "generate_id_keys": {"type": "bool", "default": False, "no_log": False},
            "family_id": {"type": "str"},
            "image_id": {"type": "str"},
            "guest_svn": {"type": "int"},
            "host_data": {"type": "str"},
            "sealed_volume_key": {"type": "str", "no_log": False},
            "sealed_volume_key_file": {"type": "path", "no_log": False},
            "volume_key_file": {"type": "path", "no_log": False},
            "kernel": {"type": "path"},
            "initrd": {"type": "path"},
            "cmdline": {"type": "str"},
            "firmware": {"type": "path"},
            "firmware_sha384": {"type": "str"},
            "launch": {"type": "dict"},
            "id_blocks": {"type": "dict"},
            "bundle": {"type": "path"},
            "staging_dir": {"type": "path"},
            "replace": {"type": "bool", "default": False},
        },
        mutually_exclusive=[("sealed_volume_key", "sealed_volume_key_file", "volume_key_file"),
                            ("bundle", "kernel"), ("bundle", "initrd"), ("firmware", "firmware_sha384"),
                            ("generate_id_keys", "id_blocks"),
                            *(("staging_dir", other) for other in ("kernel", "initrd", "cmdline", "launch", "bundle",
                                                                   "firmware_sha384"))],
        required_together=[("kernel", "initrd")],
        required_if=[("state", "present", ("measurements", "measurement", "staging_dir"), True),
                     ("state", "present", ("sealed_volume_key", "sealed_volume_key_file", "volume_key_file",
                                           "staging_dir"), True)],
        supports_check_mode=True,
    )
    if module.params["volume_key_file"]:
        require_cryptography(module)
    try:
        client = client_from_params(module.params)
        result = apply(client, module.params, check_mode=module.check_mode)
    except SnpError as exc:
        module.fail_json(**exc.as_dict())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
