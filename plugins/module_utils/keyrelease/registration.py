# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""An image registration's vocabulary and canonical form, shared by the server and its clients.

The server stores ``content_sha256`` = SHA-256 of the canonical form of what was
registered (never the key); a client computes the same digest from the body it is
about to send, so check mode and idempotence are decided without asking twice, and
a field added here is added for both ends at once.  Pure: dicts and bytes in, dicts
and hex out.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ..snp.tcb import SPL_NAMES

#: Guest-policy flags a registration may require (each true, false or unset = not checked).
POLICY_FLAGS = ("smt", "single_socket", "migrate_ma", "cxl_allow")
#: Every field of a registration's ``policy`` object, with its default.
POLICY_DEFAULTS: dict[str, Any] = {"allow_debug": False, **dict.fromkeys(POLICY_FLAGS), "min_abi": None}
#: ``min_tcb`` fields: the first four are required together, ``fmc`` only on Turin.
MIN_TCB_FIELDS = SPL_NAMES
REQUIRED_TCB_FIELDS = SPL_NAMES[:4]


def hex_value(value: str | None) -> str | None:
    """Hex as the server stores it: lower case, no 0x."""
    return None if value is None else value.lower().removeprefix("0x")


def hex_values(values: list[str] | None) -> list[str]:
    return sorted(hex_value(v) or "" for v in values or [])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_sha256(value: Any) -> str:
    return _sha256(json.dumps(value, sort_keys=True).encode())


def boot_artifact_digests(*, kernel: bytes, initrd: bytes, cmdline: str, firmware_sha384: str,
                          launch: Mapping[str, Any] | None, id_blocks: Mapping[str, Any] | None) -> dict[str, str]:
    """What a registration records of its boot artifacts (from their bytes)."""
    out = {"kernel": _sha256(kernel), "initrd": _sha256(initrd), "cmdline": _sha256(cmdline.encode()),
           "firmware_sha384": hex_value(firmware_sha384) or "", "launch": _json_sha256(dict(launch or {}))}
    if id_blocks:
        out["id_blocks"] = _json_sha256({str(k): dict(v) for k, v in id_blocks.items()})
    return out


def bundle_digests(bundle: bytes) -> dict[str, str]:
    return {"bundle": _sha256(bundle)}


def _b64(text: str) -> bytes:
    return base64.b64decode("".join(text.split()))


def artifact_digests(body: Mapping[str, Any]) -> dict[str, str] | None:
    """The artifact digests of a registration body as sent (base64 members), or None without artifacts."""
    artifacts = body.get("artifacts")
    if artifacts:
        return boot_artifact_digests(kernel=_b64(artifacts["kernel_b64"]), initrd=_b64(artifacts["initrd_b64"]),
                                     cmdline=artifacts["cmdline"], firmware_sha384=artifacts["firmware_sha384"],
                                     launch=artifacts.get("launch"), id_blocks=artifacts.get("id_blocks"))
    if body.get("bundle_b64"):
        return bundle_digests(_b64(body["bundle_b64"]))
    return None


def canonical_spec(body: Mapping[str, Any], artifacts: Mapping[str, str] | None) -> dict[str, Any]:
    """The canonical, non-secret content of a registration (what ``content_sha256`` digests)."""
    policy = dict(POLICY_DEFAULTS)
    policy.update(body.get("policy") or {})
    min_tcb = body.get("min_tcb")
    measurements = sorted((body.get("measurements") or {}).items(), key=lambda item: int(item[0]))
    return {
        "measurements": {str(int(k)): hex_value(v) for k, v in measurements},
        "vcpu_type": body.get("vcpu_type"),
        "policy": policy,
        "min_tcb": {k: v for k, v in min_tcb.items() if v is not None} if min_tcb else None,
        "id_key_digests": hex_values(body.get("id_key_digests")),
        "author_key_digests": hex_values(body.get("author_key_digests")),
        "generate_id_keys": bool(body.get("generate_id_keys", False)),
        "family_id": hex_value(body.get("family_id")),
        "image_id": hex_value(body.get("image_id")),
        "guest_svn": body.get("guest_svn"),
        "host_data": hex_value(body.get("host_data")),
        "artifacts": dict(artifacts) if artifacts is not None else None,
    }


def content_digest(spec: Mapping[str, Any]) -> str:
    return _json_sha256(spec)
