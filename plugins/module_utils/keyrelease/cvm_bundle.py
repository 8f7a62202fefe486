# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""A registered image's launch bundle as a file: the backend of ``cvm_bundle`` (``snpguard image bundle``).

The server announces each image's ``bundle_sha256``; a file at ``dest`` with exactly that
digest is up to date, anything else is replaced by the server's bundle, checked against
the digest it announced (and against the image's, so a bundle that changed during the
download is refused, not written), through a temp file and a rename.  A bundle holds no
secret (kernel, initrd, command line, launch facts, ID blocks), so it is written 0644.
"""

from __future__ import annotations

import os
from typing import Any

from ..common.fileio import atomic_write, file_digest
from ..snp.errors import SnpError
from .admin_client import image_facts
from .module_args import client_from_params

#: Registration policy keys that are guest-policy flags for the verifiers (the rest have options of their own).
POLICY_FLAGS = ("smt", "single_socket", "migrate_ma", "cxl_allow")


def expectations(facts: dict[str, Any]) -> dict[str, Any]:
    """What the server enforces for the image, in the options of ``snp_report_verify`` and ``attest``."""
    policy = facts.get("policy") or {}
    return {"allow_debug": bool(policy.get("allow_debug", False)),
            "policy": {k: v for k, v in policy.items() if k in POLICY_FLAGS},
            "min_abi": policy.get("min_abi"), "min_tcb": facts.get("min_tcb"), "host_data": facts.get("host_data")}


def apply(params: dict[str, Any], *, check_mode: bool = False) -> dict[str, Any]:
    dest = params["dest"]
    if os.path.isdir(dest):
        raise SnpError("is a directory; give the bundle's file name", field="dest", path=dest)
    client = client_from_params(params)
    image = client.resolve_image(params["name"])
    want = image.get("bundle_sha256")
    if not want:
        raise SnpError(f"image {image['name']!r} has no launch bundle (it was registered without boot artifacts)",
                       field="name")
    facts = image_facts(image)
    result = {"dest": dest, "id": image["id"], "image": image["name"], "sha256": want,
              "enabled": bool(image.get("enabled", True)), "measurements": facts["measurements"],
              "policy": facts["policy"], "min_tcb": facts["min_tcb"], "host_data": facts["host_data"],
              "expect": expectations(facts)}
    have = file_digest(dest, field="dest") if os.path.isfile(dest) else None
    if have == want:
        return dict(result, changed=False)
    diff = {"before": {"sha256": have}, "after": {"sha256": want}}
    if check_mode:
        return dict(result, changed=True, diff=diff)
    data, digest = client.bundle(image["id"])
    if digest != want:
        raise SnpError(f"the server's bundle has SHA-256 {digest}, not the image's {want} (was the image replaced "
                       "meanwhile? run again)", field="bundle")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise SnpError("the directory does not exist", field="dest", path=parent)
    atomic_write(dest, data, 0o644)
    return dict(result, changed=True, diff=diff)
