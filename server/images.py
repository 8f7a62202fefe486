# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Image registration and management: idempotent, atomic, and never a plaintext volume key at rest.

Registration opens the sealed volume key with the ingestion key, compares it with
what is stored (constant time), and stores it again only under the KEK.  Everything
expensive (ID-key signing, building the bundle) happens before the write transaction;
the transaction itself only inserts or replaces rows, so an image is either there
with all its measurements and its bundle, or not there at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..plugins.module_utils.bundle.archive import build_launch_bundle, read_bundle
from ..plugins.module_utils.bundle.launch import bundle_host_data
from ..plugins.module_utils.keyrelease import registration
from ..plugins.module_utils.keyrelease.protocol import open_ingestion, same_secret, wipe
from ..plugins.module_utils.snp import sev_keys
from ..plugins.module_utils.snp.errors import SnpError
from ..plugins.module_utils.snp.id_block import IdAuth, IdBlock, decode_blob
from ..plugins.module_utils.snp.policy import GuestPolicy, parse_policy
from ..plugins.module_utils.snp.validate import Expectations, expectations_from_options
from . import kek, keys
from .context import ServerContext
from .engine import now_ms, read_tx, write_tx
from .errors import ApiError
from .schemas import ImageCreate
from .tables import bundles, images, measurements

MAX_BUNDLE = 512 << 20


def _ts(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


_hex = registration.hex_value


def b64decode(value: str, field: str) -> bytes:
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_request", "is not valid base64", field=field) from exc


def _spec(req: ImageCreate, artifact_digests: dict[str, str] | None) -> dict[str, Any]:
    """The canonical, non-secret content of a registration (what idempotence compares)."""
    return registration.canonical_spec(req.model_dump(mode="json"), artifact_digests)


def _launch_policy(req: ImageCreate) -> GuestPolicy:
    """The policy the guest launches with (what an ID block must carry).

    ``artifacts.launch.policy`` when given, else the policy the constraints describe.
    """
    launch = req.artifacts.launch if req.artifacts else {}
    if "policy" in launch:
        try:
            return parse_policy(launch["policy"])
        except SnpError as exc:
            raise ApiError(400, "invalid_request", exc.message, field="artifacts.launch.policy") from exc
    p = req.policy
    abi_major, abi_minor = (int(x) for x in p.min_abi.split(".")) if p.min_abi else (0, 0)
    try:
        return GuestPolicy(abi_major=abi_major, abi_minor=abi_minor, smt=True if p.smt is None else p.smt,
                           debug=False, single_socket=bool(p.single_socket), migrate_ma=bool(p.migrate_ma),
                           cxl_allow=bool(p.cxl_allow))
    except SnpError as exc:
        raise ApiError(400, "invalid_request", exc.message, field="policy.min_abi") from exc


def expectations_for(spec: dict[str, Any], generated_digest: str | None, measurement: bytes,
                     report_data: bytes) -> Expectations:
    """What a report must show to be released this image's key (the server's binding policy)."""
    policy = spec["policy"]
    digests = list(spec["id_key_digests"]) + ([generated_digest] if generated_digest else [])
    options = {
        "measurements": [measurement.hex()],
        "report_data": report_data.hex(),
        "vmpl": 0,
        "allow_debug": bool(policy.get("allow_debug")),
        "policy": {k: policy[k] for k in registration.POLICY_FLAGS if policy.get(k) is not None},
        "min_abi": policy.get("min_abi"),
        "min_tcb": spec.get("min_tcb") or {},
        "id_key_digests": digests,
        "author_key_digests": spec["author_key_digests"],
        "family_id": spec.get("family_id"),
        "image_id": spec.get("image_id"),
        "min_guest_svn": spec.get("guest_svn"),
        "host_data": spec.get("host_data"),
    }
    return expectations_from_options(options)


def image_out(conn: Connection, row: Any, **flags: Any) -> dict[str, Any]:
    spec = json.loads(row.spec)
    rows = conn.execute(select(measurements).where(measurements.c.image_id == row.id)
                        .order_by(measurements.c.vcpus)).all()
    out = {
        "id": row.id, "name": row.name, "enabled": bool(row.enabled),
        "measurements": [{"vcpus": m.vcpus, "measurement": m.measurement, "id_block": m.id_block,
                          "id_auth": m.id_auth} for m in rows],
        "vcpu_type": spec.get("vcpu_type"), "policy": spec["policy"], "min_tcb": spec.get("min_tcb"),
        "id_key_digests": spec["id_key_digests"], "author_key_digests": spec["author_key_digests"],
        "generated_id_key_digest": row.id_key_digest, "family_id": spec.get("family_id"),
        "image_id": spec.get("image_id"), "guest_svn": spec.get("guest_svn"), "host_data": spec.get("host_data"),
        "integrity_only": row.volume_key_enc is None, "content_sha256": row.content_sha256,
        "bundle_sha256": row.bundle_sha256,
        "release_count": row.release_count, "refusal_count": row.refusal_count,
        "last_release_at": _ts(row.last_release_at), "created_at": _ts(row.created_at),
        "updated_at": _ts(row.updated_at),
    }
    out.update(flags)
    return out


def _check_consistency(req: ImageCreate) -> None:
    if req.artifacts and req.bundle_b64:
        raise ApiError(400, "invalid_request", "give artifacts or bundle_b64, not both", field="bundle_b64")
    if req.generate_id_keys and req.artifacts and req.artifacts.id_blocks:
        raise ApiError(400, "invalid_request", "give artifacts.id_blocks or generate_id_keys, not both",
                       field="generate_id_keys")
    if req.artifacts and req.artifacts.id_blocks:
        unknown = sorted(set(req.artifacts.id_blocks) - set(req.measurements), key=int)
        if unknown:
            raise ApiError(400, "invalid_request", f"ID blocks for vCPU counts without a measurement: {unknown}",
                           field="artifacts.id_blocks")
    if len({_hex(m) for m in req.measurements.values()}) != len(req.measurements):
        raise ApiError(400, "invalid_request", "two vCPU counts with the same measurement cannot be told apart",
                       field="measurements")


def _id_blocks(req: ImageCreate, id_key: Any, policy: GuestPolicy) -> dict[int, tuple[str, str]]:
    """Server-signed ID block + ID auth per vCPU count (or the caller's, checked)."""
    out: dict[int, tuple[str, str]] = {}
    for vcpus, measurement in req.measurements.items():
        if id_key is not None:
            try:
                block = IdBlock.build(_hex(measurement), req.family_id and _hex(req.family_id),
                                      req.image_id and _hex(req.image_id), req.guest_svn or 0, policy)
            except SnpError as exc:
                raise ApiError(400, "invalid_request", exc.message, field=exc.field) from exc
            auth = IdAuth.build(block, id_key)
            out[int(vcpus)] = (block.to_b64(), auth.to_b64())
        elif req.artifacts and req.artifacts.id_blocks and vcpus in req.artifacts.id_blocks:
            pair = req.artifacts.id_blocks[vcpus]
            field = f"artifacts.id_blocks.{vcpus}"
            try:
                block = IdBlock.from_bytes(decode_blob(pair.id_block, 0x60, f"{field}.id_block"))
                auth = IdAuth.from_bytes(decode_blob(pair.id_auth, 0x1000, f"{field}.id_auth"))
                auth.verify(block)
            except SnpError as exc:
                raise ApiError(400, "invalid_request", exc.message, field=field) from exc
            if block.ld.hex() != _hex(measurement):
                raise ApiError(400, "invalid_request", "the ID block is for another measurement", field=field)
            out[int(vcpus)] = (block.to_b64(), auth.to_b64())
    return out


def register(ctx: ServerContext, req: ImageCreate) -> tuple[int, dict[str, Any]]:
    """POST /v1/images: 201 created, 200 unchanged or replaced, 409 on a conflicting name or measurement."""
    _check_consistency(req)
    if req.sealed_volume_key is None:  # integrity-only: nothing to release
        return _register(ctx, req, None)
    sealed = b64decode(req.sealed_volume_key, "sealed_volume_key")
    volume_key = _open_sealed_volume_key(ctx, sealed, req.name)
    try:
        return _register(ctx, req, volume_key)
    finally:
        wipe(volume_key)


def _open_sealed_volume_key(ctx: ServerContext, sealed: bytes, name: str) -> bytearray:
    """Open with the current ingestion key, else with the previous one during its grace period."""
    with read_tx(ctx.engine) as conn:
        try:
            privates = keys.ingestion_privates(conn, ctx.keys)
        except SnpError as exc:  # this host's KEK is not the database's (a rotation elsewhere)
            raise ApiError(503, "kek_changed", "this server's KEK file does not open the stored keys (was the KEK "
                           "rotated? install the new KEK file on this host)", field="kek_file") from exc
    try:
        error: SnpError | None = None
        for private in privates:
            try:
                return open_ingestion(sealed, private, name)
            except SnpError as exc:
                error = error or exc
        assert error is not None
        raise ApiError(400, "invalid_request", error.message, field="sealed_volume_key") from error
    finally:
        for private in privates:
            wipe(private)


def _register(ctx: ServerContext, req: ImageCreate, volume_key: bytearray | None) -> tuple[int, dict[str, Any]]:
    kernel = initrd = prebuilt = None
    digests: dict[str, str] | None = None
    if req.artifacts:
        kernel = b64decode(req.artifacts.kernel_b64, "artifacts.kernel_b64")
        initrd = b64decode(req.artifacts.initrd_b64, "artifacts.initrd_b64")
        digests = registration.boot_artifact_digests(
            kernel=kernel, initrd=initrd, cmdline=req.artifacts.cmdline, firmware_sha384=req.artifacts.firmware_sha384,
            launch=req.artifacts.launch,
            id_blocks={k: v.model_dump() for k, v in req.artifacts.id_blocks.items()} if req.artifacts.id_blocks
            else None)
    elif req.bundle_b64:
        prebuilt = b64decode(req.bundle_b64, "bundle_b64")
        try:
            read_bundle(prebuilt, max_size=MAX_BUNDLE)
        except SnpError as exc:
            raise ApiError(400, "invalid_request", exc.message, field="bundle_b64") from exc
        digests = registration.bundle_digests(prebuilt)
    spec = _spec(req, digests)
    content = registration.content_digest(spec)

    with read_tx(ctx.engine) as conn:
        existing = conn.execute(select(images).where(images.c.name == req.name)).first()
    if existing is not None:
        if existing.volume_key_enc is None or volume_key is None:
            same_key = existing.volume_key_enc is None and volume_key is None
        else:
            old_key = ctx.keys.open(existing.volume_key_enc, kek.VOLUME_KEY_AAD + existing.id.encode(),
                                    what="volume key")
            try:
                same_key = same_secret(old_key, volume_key)
            finally:
                wipe(old_key)
        if existing.content_sha256 == content and same_key:
            with read_tx(ctx.engine) as conn:
                return 200, image_out(conn, existing, created=False, replaced=False)
        if not req.replace:
            what = "content" if same_key else "volume key"
            raise ApiError(409, "image_exists", f"an image named {req.name!r} exists with another {what}; "
                           "set replace to true to replace it", field="name")

    image_id = existing.id if existing is not None else str(uuid.uuid4())
    kek_now = ctx.keys.current()  # every blob of this registration under one KEK, checked in the write below
    id_key_enc = id_key_digest = None
    id_key = None
    if req.generate_id_keys:
        if existing is not None and existing.id_key_enc is not None:
            pem = ctx.keys.open(existing.id_key_enc, kek.ID_KEY_AAD + image_id.encode(), what="ID key")
            id_key = sev_keys.load_private_key(bytes(pem), field="id_key")
            wipe(pem)
            id_key_enc = existing.id_key_enc
        else:
            id_key, pem = sev_keys.generate_private_key()
            id_key_enc = kek.seal(kek_now, pem, kek.ID_KEY_AAD + image_id.encode())
        id_key_digest = sev_keys.key_digest(id_key).hex()
    blocks = _id_blocks(req, id_key, _launch_policy(req))
    bundle = prebuilt
    if req.artifacts:
        launch = dict(req.artifacts.launch)
        launch.setdefault("vcpus", sorted(int(v) for v in req.measurements))
        launch.setdefault("measurements", {str(k): _hex(v) for k, v in req.measurements.items()})
        if req.vcpu_type:
            launch.setdefault("vcpu_type", req.vcpu_type)
        try:
            bundle = build_launch_bundle(kernel=kernel or b"", initrd=initrd or b"", cmdline=req.artifacts.cmdline,
                                         firmware_sha384=req.artifacts.firmware_sha384, launch=launch,
                                         id_blocks=blocks)
        except SnpError as exc:
            raise ApiError(400, "invalid_request", exc.message, field=exc.field) from exc
    if bundle is not None and spec.get("host_data") is None:
        # The binding a launch from this bundle carries (bundle/launch.py): enforced at release, like given host_data.
        spec["host_data"] = bundle_host_data(read_bundle(bundle, max_size=MAX_BUNDLE)).hex()
    volume_key_enc = None if volume_key is None else kek.seal(kek_now, volume_key,
                                                              kek.VOLUME_KEY_AAD + image_id.encode())
    now = now_ms()
    values = {
        "name": req.name, "content_sha256": content, "spec": json.dumps(spec, sort_keys=True),
        "volume_key_enc": volume_key_enc, "id_key_enc": id_key_enc, "id_key_digest": id_key_digest,
        "bundle_sha256": hashlib.sha256(bundle).hexdigest() if bundle is not None else None, "updated_at": now,
    }
    try:
        with write_tx(ctx.engine) as conn:
            try:
                keys.require_kek(conn, kek_now)
            except SnpError as exc:
                raise ApiError(503, "kek_changed", exc.message, field="kek_file") from exc
            current = conn.execute(select(images.c.id, images.c.updated_at).where(images.c.name == req.name)).first()
            if (current is None) != (existing is None) or (
                    current is not None and existing is not None and current.updated_at != existing.updated_at):
                raise ApiError(409, "conflict", "the image changed while it was being registered; retry",
                               field="name")
            if existing is None:
                conn.execute(insert(images).values(id=image_id, enabled=True, release_count=0, refusal_count=0,
                                                   created_at=now, **values))
            else:
                conn.execute(update(images).where(images.c.id == image_id).values(**values))
                conn.execute(delete(measurements).where(measurements.c.image_id == image_id))
                conn.execute(delete(bundles).where(bundles.c.image_id == image_id))
            rows = []
            for vcpus, m in sorted(req.measurements.items(), key=lambda i: int(i[0])):
                block, auth = blocks.get(int(vcpus), (None, None))
                rows.append({"image_id": image_id, "vcpus": int(vcpus), "measurement": _hex(m), "id_block": block,
                             "id_auth": auth})
            conn.execute(insert(measurements), rows)
            if bundle is not None:
                conn.execute(insert(bundles).values(image_id=image_id, sha256=values["bundle_sha256"],
                                                    size=len(bundle), data=bundle))
            row = conn.execute(select(images).where(images.c.id == image_id)).one()
            out = image_out(conn, row, created=existing is None, replaced=existing is not None)
    except IntegrityError as exc:
        text = str(exc.orig).lower()
        if "measurement" in text:
            raise ApiError(409, "measurement_registered", "a measurement is already registered to another image",
                           field="measurements") from None
        raise ApiError(409, "conflict", "an image with this name was registered concurrently; retry",
                       field="name") from None
    return (201 if existing is None else 200), out


def get_row(conn: Connection, image_id: str) -> Any:
    row = conn.execute(select(images).where(images.c.id == image_id)).first()
    if row is None:
        raise ApiError(404, "not_found", "no such image", field="id")
    return row


def set_enabled(ctx: ServerContext, image_id: str, enabled: bool) -> dict[str, Any]:
    with write_tx(ctx.engine) as conn:
        get_row(conn, image_id)
        conn.execute(update(images).where(images.c.id == image_id).values(enabled=enabled, updated_at=now_ms()))
        return image_out(conn, get_row(conn, image_id))


def delete_image(ctx: ServerContext, image_id: str) -> None:
    with write_tx(ctx.engine) as conn:
        get_row(conn, image_id)
        # Explicit deletes: SQLite enforces ON DELETE CASCADE only with foreign_keys=ON on every connection.
        conn.execute(delete(measurements).where(measurements.c.image_id == image_id))
        conn.execute(delete(bundles).where(bundles.c.image_id == image_id))
        conn.execute(delete(images).where(images.c.id == image_id))


def list_images(ctx: ServerContext) -> list[dict[str, Any]]:
    with read_tx(ctx.engine) as conn:
        return [image_out(conn, row) for row in conn.execute(select(images).order_by(images.c.name)).all()]


def get_image(ctx: ServerContext, image_id: str) -> dict[str, Any]:
    with read_tx(ctx.engine) as conn:
        return image_out(conn, get_row(conn, image_id))


def get_bundle(ctx: ServerContext, image_id: str) -> tuple[str, bytes, str]:
    """(image name, bundle bytes, sha256)."""
    with read_tx(ctx.engine) as conn:
        row = get_row(conn, image_id)
        found = conn.execute(select(bundles).where(bundles.c.image_id == image_id)).first()
    if found is None:
        raise ApiError(404, "not_found", "this image was registered without boot artifacts", field="bundle")
    return row.name, bytes(found.data), found.sha256
