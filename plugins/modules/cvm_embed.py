#!/usr/bin/python
# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cvm_embed
short_description: Write a launch bundle into the LAUNCH_ARTIFACTS partition of a confidential VM image
version_added: 0.2.0
description:
  - Writes a launch-artifacts bundle (the C(tar.gz) the key-release server builds at registration, see
    M(snpguard.cvm.cvm_register)) into a partition of a qcow2 or raw image, so the image carries what its host
    needs to launch it.
  - The partition has the GPT name C(LAUNCH_ARTIFACTS) and an ext4 file system labelled C(LAUNCH_ARTIFACTS). When
    the image has none, the image is grown (C(qemu-img resize)) and one of O(size) is added after the last
    partition. The image must have a GPT.
  - The bundle is checked first and unpacked into the inactive one of two directories C(a/) and C(b/); then the
    C(artifacts) symlink is switched to it atomically (C(artifacts.new) is created and renamed over C(artifacts)).
    Readers always see one whole bundle.
  - Each slot records the SHA-256 of its files in C(.snpguard-bundle.json); the same bundle already active (its files
    checked again) reports RV(ignore:changed=false) and does not write the image.
  - A failure leaves the image as it was where that can be avoided - a bundle that is not valid is refused before
    the image is opened; a new partition, its file system and the bundle are written into a temporary overlay that
    is committed into the image only when all of it worked; with an existing partition only the inactive slot is
    written before the switch.
  - Runs libguestfs on the host that holds the image. On a host without KVM set the environment variables
    C(LIBGUESTFS_BACKEND=direct) and C(LIBGUESTFS_BACKEND_SETTINGS=force_tcg).
author:
  - snpguard maintainers (@snpguard)
extends_documentation_fragment:
  - snpguard.cvm.attributes
attributes:
  check_mode:
    support: full
    details: Reads the partition table (and the partition, read-only) and says what would be written.
  diff_mode:
    support: full
    details: Shows the active slot and the active bundle's digest before and after.
  idempotent:
    support: full
    details: The same bundle already active changes nothing.
  platform:
    support: full
    platforms: posix
options:
  image:
    description: The image (qcow2 or raw). It must not be in use by a running VM.
    type: path
    required: true
  bundle:
    description: The launch bundle (C(tar.gz)), for example as M(snpguard.cvm.cvm_register) or C(snpguard image
      bundle) got it from the server.
    type: path
    required: true
  size:
    description:
      - Size of the C(LAUNCH_ARTIFACTS) partition when it has to be created, in bytes or with a binary unit
        (C(512M), C(1G)); a whole number of MiB, at least 16 MiB. An existing partition keeps its size.
    type: str
    default: 512M
  format:
    description: The image's format; by default what C(qemu-img info) detects.
    type: str
    choices: [qcow2, raw]
requirements:
  - qemu-img
  - libguestfs with its Python bindings (C(python3-guestfs)) for the Python that runs the module
seealso:
  - module: snpguard.cvm.cvm_register
  - module: snpguard.cvm.cvm_image
  - module: snpguard.cvm.snp_vm
"""

EXAMPLES = r"""
- name: Get the launch bundle the server built for the image
  ansible.builtin.command:
    cmd: snpguard image bundle debian13-web -o /srv/images/debian13-web.bundle.tar.gz
  changed_when: false

- name: Put it into the image
  snpguard.cvm.cvm_embed:
    image: /srv/images/debian13-web.qcow2
    bundle: /srv/images/debian13-web.bundle.tar.gz
  register: embedded

- name: A smaller partition in a raw image, without KVM
  snpguard.cvm.cvm_embed:
    image: /srv/images/tiny.raw
    format: raw
    bundle: /srv/images/tiny.bundle.tar.gz
    size: 128M
  environment:
    LIBGUESTFS_BACKEND: direct
    LIBGUESTFS_BACKEND_SETTINGS: force_tcg
"""

RETURN = r"""
action:
  description:
    - What was done (or, in check mode, would be done) - V(created) (partition added, bundle written to C(a/)),
      V(switched) (bundle written to the inactive slot and C(artifacts) switched to it), V(unchanged).
  returned: success
  type: str
  sample: switched
slot:
  description: The active slot afterwards, V(a) or V(b).
  returned: success
  type: str
  sample: b
previous_slot:
  description: The slot that was active before, or V(null).
  returned: success
  type: str
previous_bundle_digest:
  description: Digest of the bundle that was active before (see RV(bundle_digest)), or V(null).
  returned: success
  type: str
bundle_digest:
  description: The bundle's identity - SHA-256 of the sorted map of its file names to their SHA-256.
  returned: success
  type: str
  sample: 5c1b0f1d2e8f8a7a1dcd3a4b0e3f0b2a8f5e1c2d3b4a5968778695a4b3c2d1e0
bundle_sha256:
  description: SHA-256 of the bundle file itself.
  returned: success
  type: str
format:
  description: The image's format.
  returned: success
  type: str
  sample: qcow2
grown_by:
  description: How many bytes the image grew (0 unless the partition was created).
  returned: success
  type: int
  sample: 537919488
partition:
  description: The C(LAUNCH_ARTIFACTS) partition.
  returned: success
  type: dict
  contains:
    number:
      description: Its partition number (V(null) in check mode when it would be created).
      type: int
    start:
      description: Its first byte on the disk.
      type: int
    size:
      description: Its size in bytes.
      type: int
    label:
      description: The ext4 label.
      type: str
    created:
      description: Whether this run created it.
      type: bool
msg:
  description: What was done, in words.
  returned: success
  type: str
field:
  description: The option that is wrong (V(image), V(bundle), V(size), V(format), V(guestfs)).
  returned: failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.snpguard.cvm.plugins.module_utils.common.ansible_glue import run
from ansible_collections.snpguard.cvm.plugins.module_utils.common.process import module_runner
from ansible_collections.snpguard.cvm.plugins.module_utils.image.embed import embed


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "image": {"type": "path", "required": True},
            "bundle": {"type": "path", "required": True},
            "size": {"type": "str", "default": "512M"},
            "format": {"type": "str", "choices": ["qcow2", "raw"]},
        },
        supports_check_mode=True,
    )
    params = module.params
    run(module, lambda: embed(params["image"], params["bundle"], runner=module_runner(module), size=params["size"],
                              image_format=params["format"], check_mode=module.check_mode))


if __name__ == "__main__":
    main()
