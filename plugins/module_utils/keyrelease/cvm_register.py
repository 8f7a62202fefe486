# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Registering an image with the key-release server: the backend of ``cvm_register`` and ``snpguard image register``.

Options (the module's parameter names) become one ``POST /v1/images`` body.  The
backend reads what the server has under the name first, so it can say what would
change (check mode), diff only public facts (measurements, policy, digests — never a
key), and report ``changed`` truthfully: the server answers an identical registration
with ``created=false`` and refuses a different one unless ``replace`` is set.

The volume key is never sent in plaintext: the caller gives it sealed to the server's
ingestion key (``sealed_volume_key``/``sealed_volume_key_file``; none for a verity staging dir: the
image is registered integrity-only), or a raw key file that
is sealed in memory just before the request (``volume_key_file``).

With ``staging_dir`` (what a conversion writes, ``image/staging.py``) the boot chain, the
launch facts and the sealed key come from that directory: its files are read once, checked
against the manifest's digests, measured from those very bytes for every vCPU count of
the staged launch, and sent as the bundle's artifacts, so what the server registers is
exactly what was measured.  Measurements the caller gives as well are cross-checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from ..image.staging import Staging, read_staging
from ..measurement.snp_measure import build_config
from ..snp.errors import SnpError
from ..snp.measure import BytesInputs
from ..snp.measure import measure as measure_launch
from . import registration
from .admin_client import (
    ApiError,
    KeyReleaseClient,
    artifact_digests,
    content_digest,
    image_facts,
    read_sealed_key_file,
)

MAX_ARTIFACT = 512 << 20
POLICY_KEYS = tuple(registration.POLICY_DEFAULTS)
TCB_KEYS = registration.MIN_TCB_FIELDS
KEY_SOURCES = ("sealed_volume_key", "sealed_volume_key_file", "volume_key_file")
#: What a staging dir supplies itself; giving any of these with ``staging_dir`` is an error.
STAGING_EXCLUSIVE = ("kernel", "initrd", "cmdline", "bundle", "launch", "firmware_sha384")


def _read(path: str, field: str) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > MAX_ARTIFACT:
            raise SnpError(f"is larger than {MAX_ARTIFACT} bytes", field=field, path=path)
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise SnpError(f"cannot read: {exc.strerror}", field=field, path=path) from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _measurements(options: dict[str, Any]) -> dict[str, str]:
    given = options.get("measurements") or {}
    if not isinstance(given, dict):
        raise SnpError("must be a mapping of vCPU count to measurement", field="measurements")
    out: dict[str, str] = {}
    for vcpus, value in given.items():
        try:
            count = int(vcpus)
        except (TypeError, ValueError) as exc:
            raise SnpError(f"{vcpus!r} is not a vCPU count", field="measurements") from exc
        if count < 1:
            raise SnpError(f"{vcpus!r} is not a vCPU count", field="measurements")
        out[str(count)] = str(value).strip()
    if options.get("measurement"):
        vcpus = str(int(options.get("vcpus") or 1))
        if vcpus in out and out[vcpus].lower() != str(options["measurement"]).strip().lower():
            raise SnpError(f"two measurements for {vcpus} vCPUs", field="measurement")
        out[vcpus] = str(options["measurement"]).strip()
    if not out:
        raise SnpError("give the launch measurement(s): measurements (per vCPU count) or measurement",
                       field="measurements")
    return out


def _id_blocks(given: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {str(int(k)): {"id_block": "".join(str(v["id_block"]).split()),
                          "id_auth": "".join(str(v["id_auth"]).split())} for k, v in given.items()}


@dataclass
class Staged:
    """A staging dir made ready for registration: its artifacts body and computed measurements."""

    staging: Staging
    artifacts: dict[str, Any]
    measurements: dict[str, str]


def _read_checked(path: str, expected_sha256: str, field: str) -> bytes:
    data = _read(path, field)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise SnpError(f"changed while it was being registered (SHA-256 {actual}, manifest {expected_sha256})",
                       field=field, path=path)
    return data


def _given_measurements(options: dict[str, Any]) -> dict[str, str]:
    """The measurements the caller gave next to a staging dir (maybe none), normalised."""
    if not (options.get("measurements") or options.get("measurement")):
        return {}
    return {k: registration.hex_value(v) or "" for k, v in _measurements(options).items()}


def load_staged(options: dict[str, Any]) -> Staged:
    """Read ``staging_dir``, measure its boot chain with ``firmware``, and cross-check the caller's options."""
    directory = options["staging_dir"]
    clashing = [k for k in STAGING_EXCLUSIVE if options.get(k)]
    if clashing:
        raise SnpError(f"the staging dir supplies {', '.join(clashing)}; give staging_dir or "
                       f"{', '.join(clashing)}, not both", field=clashing[0])
    staging = read_staging(directory)
    given = [k for k in KEY_SOURCES if options.get(k)]
    if staging.sealed_volume_key and given:
        raise SnpError(f"the staging dir carries the sealed volume key; do not give {', '.join(given)} too",
                       field=given[0])
    if staging.mode == "verity" and given:
        raise SnpError("a verity image has no volume key (it is registered integrity-only); leave out "
                       + ", ".join(given), field=given[0])
    if not staging.sealed_volume_key and not given and staging.mode != "verity":
        raise SnpError(f"the {staging.mode} staging dir carries no sealed volume key: give one of "
                       + ", ".join(KEY_SOURCES), field="sealed_volume_key")
    if options.get("name") != staging.image:
        raise SnpError(f"must be {staging.image!r}: the staged volume key is sealed to that image name "
                       f"(got {options.get('name')!r})", field="name")
    if not options.get("firmware"):
        raise SnpError("a staging dir is measured with the firmware the guest boots: give firmware (the OVMF file)",
                       field="firmware")
    firmware = _read(options["firmware"], "firmware")
    firmware_sha384 = hashlib.sha384(firmware).hexdigest()
    if firmware_sha384 != staging.firmware_sha384:
        raise SnpError(f"is not the firmware the image was staged for (SHA-384 {firmware_sha384}, "
                       f"staged {staging.firmware_sha384})", field="firmware", path=options["firmware"])
    kernel = _read_checked(staging.kernel, staging.kernel_sha256, "kernel")
    initrd = _read_checked(staging.initrd, staging.initrd_sha256, "initrd")
    launch = staging.launch
    if options.get("vcpu_type") and launch.vcpu_type and options["vcpu_type"] != launch.vcpu_type:
        raise SnpError(f"the image was staged for vCPU type {launch.vcpu_type!r}, not {options['vcpu_type']!r}",
                       field="vcpu_type")
    vcpus = list(launch.vcpus) or [1]
    config = build_config({"ovmf": options["firmware"], "kernel": staging.kernel, "initrd": staging.initrd,
                           "append": staging.cmdline, "vcpus": vcpus,
                           "vcpu_type": launch.vcpu_type or options.get("vcpu_type"),
                           "guest_features": launch.guest_features, "vmm_type": launch.vmm_type})
    inputs = BytesInputs({options["firmware"]: firmware, staging.kernel: kernel, staging.initrd: initrd})
    measured = measure_launch(config, inputs)
    computed = {str(count): digest.hex() for count, digest in sorted(measured.digests.items())}
    for count, value in _given_measurements(options).items():
        if count not in computed:
            raise SnpError(f"the staging dir is measured for {', '.join(computed)} vCPUs, not {count}",
                           field="measurements")
        if value != computed[count]:
            raise SnpError(f"for {count} vCPUs: given {value}, computed from the staging dir {computed[count]}",
                           field="measurements")
    facts = launch.to_json()
    facts.pop("measurements", None)
    facts["vcpus"] = vcpus
    if facts.get("vcpu_type") is None and options.get("vcpu_type"):
        facts["vcpu_type"] = options["vcpu_type"]
    artifacts: dict[str, Any] = {"kernel_b64": _b64(kernel), "initrd_b64": _b64(initrd), "cmdline": staging.cmdline,
                                 "firmware_sha384": firmware_sha384, "launch": facts}
    return Staged(staging=staging, artifacts=artifacts, measurements=computed)


def _artifacts(options: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(``artifacts`` body or None, ``bundle_b64`` or None)."""
    bundle = options.get("bundle")
    kernel, initrd = options.get("kernel"), options.get("initrd")
    if bundle and (kernel or initrd):
        raise SnpError("give a prebuilt bundle or kernel/initrd, not both", field="bundle")
    if bundle:
        return None, _b64(_read(bundle, "bundle"))
    if not (kernel or initrd):
        for name in ("cmdline", "firmware", "firmware_sha384", "launch", "id_blocks"):
            if options.get(name):
                raise SnpError("boot artifacts need kernel and initrd", field=name)
        return None, None
    if not (kernel and initrd):
        raise SnpError("give both kernel and initrd", field="initrd" if kernel else "kernel")
    firmware_sha384 = options.get("firmware_sha384")
    if options.get("firmware"):
        if firmware_sha384:
            raise SnpError("give firmware or firmware_sha384, not both", field="firmware_sha384")
        firmware_sha384 = hashlib.sha384(_read(options["firmware"], "firmware")).hexdigest()
    if not firmware_sha384:
        raise SnpError("boot artifacts need the firmware (firmware or firmware_sha384)", field="firmware")
    launch = options.get("launch") or {}
    if isinstance(launch, str):
        try:
            launch = json.loads(_read(launch, "launch"))
        except ValueError as exc:
            raise SnpError(f"is not JSON: {exc}", field="launch", path=options["launch"]) from exc
    if not isinstance(launch, dict):
        raise SnpError("must be a mapping (or the path of a launch.json)", field="launch")
    artifacts: dict[str, Any] = {
        "kernel_b64": _b64(_read(kernel, "kernel")),
        "initrd_b64": _b64(_read(initrd, "initrd")),
        "cmdline": options.get("cmdline") or "",
        "firmware_sha384": str(firmware_sha384).lower().removeprefix("0x"),
        "launch": launch,
    }
    if options.get("id_blocks"):
        artifacts["id_blocks"] = _id_blocks(options["id_blocks"])
    return artifacts, None


def build_body(options: dict[str, Any], staged: Staged | None = None) -> dict[str, Any]:
    """The registration body without the sealed volume key (what is compared and shown)."""
    name = options.get("name")
    if not name:
        raise SnpError("the image needs a name", field="name")
    measurements = staged.measurements if staged else _measurements(options)
    body: dict[str, Any] = {"name": name, "measurements": dict(measurements)}
    vcpu_type = (staged.artifacts["launch"].get("vcpu_type") if staged else None) or options.get("vcpu_type")
    if vcpu_type:
        body["vcpu_type"] = vcpu_type
    policy = {k: v for k, v in (options.get("policy") or {}).items() if v is not None}
    unknown = sorted(set(policy) - set(POLICY_KEYS))
    if unknown:
        raise SnpError(f"unknown policy constraints {', '.join(unknown)} (known: {', '.join(POLICY_KEYS)})",
                       field="policy")
    if policy:
        body["policy"] = policy
    min_tcb = {k: v for k, v in (options.get("min_tcb") or {}).items() if v is not None}
    if min_tcb:
        unknown = sorted(set(min_tcb) - set(TCB_KEYS))
        if unknown:
            raise SnpError(f"unknown TCB components {', '.join(unknown)}", field="min_tcb")
        missing = [k for k in registration.REQUIRED_TCB_FIELDS if k not in min_tcb]
        if missing:
            raise SnpError(f"min_tcb needs {', '.join(missing)}", field="min_tcb")
        body["min_tcb"] = {k: int(v) for k, v in min_tcb.items()}
    for name_ in ("id_key_digests", "author_key_digests"):
        if options.get(name_):
            body[name_] = [str(d).strip() for d in options[name_]]
    if options.get("generate_id_keys"):
        body["generate_id_keys"] = True
    for name_ in ("family_id", "image_id", "host_data"):
        if options.get(name_):
            body[name_] = str(options[name_]).strip()
    if options.get("guest_svn") is not None:
        body["guest_svn"] = int(options["guest_svn"])
    if staged is not None:
        artifacts, bundle = dict(staged.artifacts), None
        if options.get("id_blocks"):
            artifacts["id_blocks"] = _id_blocks(options["id_blocks"])
    else:
        artifacts, bundle = _artifacts(options)
    if artifacts:
        body["artifacts"] = artifacts
    if bundle:
        body["bundle_b64"] = bundle
    return body


def sealed_key(client: KeyReleaseClient, options: dict[str, Any], name: str,
               staged: Staged | None = None) -> str | None:
    """The volume key sealed to the server's ingestion key, from whichever source was given; None for a verity
    staging dir (an integrity-only image: its launches are attested at run time, nothing is released at boot)."""
    if staged is not None and staged.staging.sealed_volume_key:
        return read_sealed_key_file(staged.staging.sealed_volume_key)
    if staged is not None and staged.staging.mode == "verity":
        return None
    given = [k for k in KEY_SOURCES if options.get(k)]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise SnpError("give exactly one of " + ", ".join(KEY_SOURCES) + got, field="sealed_volume_key")
    if given[0] == "sealed_volume_key":
        return "".join(str(options["sealed_volume_key"]).split())
    if given[0] == "sealed_volume_key_file":
        return read_sealed_key_file(options["sealed_volume_key_file"])
    return client.seal_key_file(options["volume_key_file"], name)


def public(facts: dict[str, Any]) -> dict[str, Any]:
    """Facts for a diff: everything public, minus bookkeeping."""
    return {k: v for k, v in facts.items() if k != "content_sha256"}


def apply(client: KeyReleaseClient, options: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """Make the server hold the image as described; returns changed, action, image, diff."""
    state = options.get("state") or "present"
    name = options.get("name")
    if not name:
        raise SnpError("the image needs a name", field="name")
    existing = client.find_image(name)
    before = image_facts(existing)
    if state == "absent":
        if existing is None:
            return {"changed": False, "action": "absent", "image": None, "diff": {"before": {}, "after": {}}}
        if not check_mode:
            client.delete_image(existing["id"])
        return {"changed": True, "action": "deleted", "image": None, "id": existing["id"],
                "diff": {"before": public(before), "after": {}}}

    staged = load_staged(options) if options.get("staging_dir") else None
    body = build_body(options, staged)
    want_enabled = options.get("enabled")
    desired = image_facts(body)
    desired["enabled"] = bool(existing["enabled"]) if existing is not None and want_enabled is None else \
        (True if want_enabled is None else bool(want_enabled))
    content = content_digest(body, artifact_digests(body))
    same_content = existing is not None and existing.get("content_sha256") == content
    result: dict[str, Any] = {"diff": {"before": public(before), "after": public(desired)},
                              "content_sha256": content}
    if staged is not None:
        result["measurements"] = dict(staged.measurements)
    if existing is not None and not same_content and not options.get("replace"):
        differs = sorted(k for k in set(before) | set(desired)
                         if k not in ("content_sha256", "enabled") and before.get(k) != desired.get(k))
        raise ApiError(f"an image named {name!r} is registered with other content"
                       + (f" ({', '.join(differs)} differ)" if differs else " (boot artifacts differ)")
                       + "; set replace to replace it", status=409, code="image_exists", field="name")

    if check_mode:
        changed = existing is None or not same_content or desired["enabled"] != bool(existing["enabled"])
        action = "create" if existing is None else ("replace" if not same_content else "none")
        result.update(changed=changed, action=action, image=existing, id=existing["id"] if existing else None,
                      volume_key_compared=False)
        return result

    key = sealed_key(client, options, name, staged)
    if key is not None:
        body["sealed_volume_key"] = key
    if options.get("replace"):
        body["replace"] = True
    status, image = client.register_image(body)
    created = bool(image.get("created")) or status == 201
    replaced = bool(image.get("replaced"))
    changed = created or replaced
    if bool(image["enabled"]) != desired["enabled"]:
        image = dict(image, **client.set_image_enabled(image["id"], desired["enabled"]))
        changed = True
    result.update(changed=changed, action="created" if created else "replaced" if replaced else "unchanged",
                  image=image, id=image["id"], volume_key_compared=True)
    result["diff"]["after"] = public(image_facts(image))
    return result
