# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The server's half of the key-release protocol (DESIGN §3): challenge, verify, release.

A verify request runs in three steps so that the database is locked only briefly:

1. one statement, outside any transaction, reads the rate-limit count, the session
   and the image registered for the report's measurement (step 3 re-checks what
   matters atomically: that the session is unconsumed and the image enabled);
2. no transaction: the report is verified completely by ``attest()`` (AMD chain or a
   configured simulated root, signature, REPORT_DATA binding, measurement, policy,
   minimum TCB, ID/author keys, host data, VMPL 0) and, only if everything passed,
   the volume key is HPKE-sealed to the agent's key;
3. one write transaction makes the decision durable: count the request against the
   rate limit, consume the session (only if still unconsumed — a concurrent replay
   loses here), count the release on the image (only if still enabled), and write
   the audit row.  The sealed key leaves the
   server only after that commit.

Every refusal names the failed check (to the caller and in the audit log); the key,
the nonce and the report's secrets never appear in either.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from ..plugins.module_utils.collateral import CollateralSources, resolve_collateral
from ..plugins.module_utils.keyrelease import HPKE_SUITE_NAME, X25519_KEY_SIZE, seal_volume_key, wipe
from ..plugins.module_utils.snp.attest import attest
from ..plugins.module_utils.snp.binding import NONCE_SIZE, report_data_binding
from ..plugins.module_utils.snp.cert_table import parse_cert_table
from ..plugins.module_utils.snp.checks import VerificationError
from ..plugins.module_utils.snp.errors import SnpError
from ..plugins.module_utils.snp.report import REPORT_SIZE, AttestationReport, parse_report
from ..plugins.module_utils.snp.validate import Expectations
from . import kek, ratelimit
from .context import ServerContext
from .db import HotSql, audit, autocommit, hot_batch, now_ms, read_tx, write_tx
from .errors import ApiError
from .images import expectations_for
from .schemas import VerifyRequest

SWEEP_PROBABILITY = 0.01
KEEP_SESSIONS_MS = 3600 * 1000

# The statements every handshake runs, as plain SQL (see db.HotSql).
_INSERT_SESSION = HotSql("INSERT INTO attest_sessions (id, nonce, source, created_at, expires_at) "
                         "VALUES (:id, :nonce, :source, :created_at, :expires_at)")
_SWEEP_SESSIONS = HotSql("DELETE FROM attest_sessions WHERE expires_at < :before")
# Step 1 in one statement (one round trip): the rate-limit count, the session and the image, each maybe absent.
_LOOKUP = HotSql(f"""
    SELECT ({ratelimit.COUNT_SQL}) AS rate_count,
           s.nonce AS nonce, s.expires_at AS expires_at, s.consumed_at AS consumed_at,
           i.id AS id, i.name AS name, i.enabled AS enabled, i.spec AS spec, i.volume_key_enc AS volume_key_enc,
           i.id_key_digest AS id_key_digest
    FROM (SELECT 1 AS one) AS anchor
    LEFT JOIN attest_sessions s ON s.id = :session_id
    LEFT JOIN measurements m ON m.measurement = :measurement
    LEFT JOIN images i ON i.id = m.image_id""")
_CONSUME = HotSql("UPDATE attest_sessions SET consumed_at = :now WHERE id = :id AND consumed_at IS NULL")
_RELEASED = HotSql("UPDATE images SET release_count = release_count + 1, last_release_at = :now "
                   "WHERE id = :id AND enabled = TRUE")
_REFUSED = HotSql("UPDATE images SET refusal_count = refusal_count + 1 WHERE id = :id")
_UNRELEASE = HotSql("UPDATE images SET release_count = release_count - 1 WHERE id = :id")
_AUDIT = HotSql("INSERT INTO audit (at, source, session_id, image_id, image_name, measurement, reported_tcb, "
                "result, check_name, message) VALUES (:at, :source, :session_id, :image_id, :image_name, "
                ":measurement, :reported_tcb, :result, :check_name, :message) RETURNING id")
_AUDIT_REFUSED = HotSql("UPDATE audit SET result = 'refused', check_name = :check_name, message = :message "
                        "WHERE id = :id")


@dataclass
class Decision:
    check: str | None  # None: released
    message: str
    image: Any = None
    product: Any = None

    @property
    def released(self) -> bool:
        return self.check is None


def _iso(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def challenge(ctx: ServerContext, source: str) -> dict[str, Any]:
    """A fresh single-use nonce, stored with its expiry (any replica can verify it)."""
    settings = ctx.settings
    now = now_ms()
    session_id = str(uuid.uuid4())
    nonce = os.urandom(NONCE_SIZE)
    expires = now + settings.nonce_ttl * 1000
    calls = [(_INSERT_SESSION, {"id": session_id, "nonce": nonce, "source": source[:64], "created_at": now,
                                "expires_at": expires})]
    if settings.rate_limit > 0:
        calls.append(ratelimit.hit_call(f"attest:{source}", settings.rate_window, now))
        calls.append(ratelimit.count_call(f"attest:{source}", settings.rate_window, now))
    with write_tx(ctx.engine) as conn:
        results = hot_batch(conn, calls)
        if settings.rate_limit > 0:
            # Over the limit: raising rolls the new session back with the count.
            ratelimit.refuse_if_over(results[2].scalar() - 1, settings.rate_limit, settings.rate_window, now)
            ratelimit.maybe_sweep(conn, settings.rate_window, now)
        if random.random() < SWEEP_PROBABILITY:
            _SWEEP_SESSIONS(conn, before=now - KEEP_SESSIONS_MS)
    return {"session_id": session_id, "nonce": base64.b64encode(nonce).decode(), "expires_at": _iso(expires)}


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _reported_tcb(report: AttestationReport | None, product: Any) -> str | None:
    if report is None:
        return None
    if product is not None:
        try:
            return json.dumps(report.tcb("reported", product).components(), sort_keys=True)
        except SnpError:
            pass
    return json.dumps({"raw": f"{report.reported_tcb_raw:016x}"})


def _decide(ctx: ServerContext, req: VerifyRequest, session: Any, report: AttestationReport | None,
            image: Any, generated: str | None, agent_key: bytes | None, certs: bytes | None,
            now: int) -> Decision:
    """Every check, in order: session, request shape, report authenticity, then the image's policy."""
    if session is None:
        return Decision("session.unknown", "no such session (ask /v1/attest/challenge for one)", image)
    if session.consumed_at is not None:
        return Decision("session.replayed", "this session was already used; every nonce is single-use", image)
    if session.expires_at <= now:
        return Decision("session.expired", f"the nonce expired {(now - session.expires_at) // 1000} s ago", image)
    if agent_key is None or len(agent_key) != X25519_KEY_SIZE:
        return Decision("request.agent_public_key", "agent_public_key must be a raw 32-byte X25519 key, base64")
    if report is None:
        return Decision("report.format", f"report must be {REPORT_SIZE} bytes of a valid attestation report, base64")
    if req.certs is not None and certs is None:
        return Decision("request.certs", "certs is not valid base64")
    try:
        extended = parse_cert_table(certs, field="certs") if certs else None
        collateral = resolve_collateral(report, CollateralSources(extended=extended, kds=ctx.kds,
                                                                  fetch_crl=ctx.settings.require_crl))
    except SnpError as exc:
        return Decision("collateral", f"cannot assemble the certificate chain: {exc}")
    binding = report_data_binding(bytes(session.nonce), agent_key)
    spec = json.loads(image.spec) if image is not None else None
    try:
        if spec is not None:
            expect = expectations_for(spec, generated, report.measurement, binding)
        else:
            expect = Expectations(report_data=binding, vmpl=0)
        result = attest(report, collateral, ctx.trust(), expect)
    except VerificationError as exc:
        return Decision(exc.check, str(exc), image)
    except SnpError as exc:
        return Decision(exc.field or "report", str(exc), image)
    if image is None:
        return Decision("measurement", f"measurement {report.measurement.hex()} is not registered to any image",
                        None, result.product)
    if not image.enabled:
        return Decision("image.disabled", f"image {image.name!r} is disabled", image, result.product)
    return Decision(None, "released", image, result.product)


def verify(ctx: ServerContext, source: str, req: VerifyRequest) -> dict[str, Any]:
    settings = ctx.settings
    now = now_ms()
    raw_report = _b64(req.report)
    agent_key = _b64(req.agent_public_key)
    certs = _b64(req.certs) if req.certs is not None else None
    report: AttestationReport | None = None
    if raw_report is not None and len(raw_report) == REPORT_SIZE:
        try:
            report = parse_report(raw_report)
        except SnpError:
            report = None
    measurement = report.measurement.hex() if report is not None else None

    # 1. rate limit, session, image: one read (the request is counted in step 3).
    with autocommit(ctx.engine) as conn:
        row = _LOOKUP(conn, session_id=req.session_id, measurement=measurement,
                      **ratelimit.count_params(f"attest:{source}", settings.rate_window, now)).first()
    ratelimit.refuse_if_over(row.rate_count, settings.rate_limit, settings.rate_window, now)
    session = row if row.expires_at is not None else None
    image = row if row.id is not None else None

    # 2. verification and sealing, outside any transaction.
    decision = _decide(ctx, req, session, report, image, image.id_key_digest if image is not None else None,
                       agent_key, certs, now)
    sealed: bytes | None = None
    if decision.released:
        volume_key = kek.open_blob(ctx.kek, bytes(image.volume_key_enc), kek.VOLUME_KEY_AAD + image.id.encode(),
                                   what="volume key")
        try:
            sealed = seal_volume_key(volume_key, agent_key, req.session_id, raw_report)
        finally:
            wipe(volume_key)

    # 3. the decision, durable and atomic: count the request, consume the session, count the release or
    # refusal, write the audit row -- one batch (one round trip on PostgreSQL).  If a concurrent request
    # consumed the session or disabled the image meanwhile, the same transaction turns the release into
    # that refusal before it commits.
    with write_tx(ctx.engine) as conn:
        calls: list[tuple[HotSql, dict[str, Any]]] = []
        if settings.rate_limit > 0:
            calls.append(ratelimit.hit_call(f"attest:{source}", settings.rate_window, now))
        consume_at = release_at = None
        if session is not None:
            consume_at = len(calls)
            calls.append((_CONSUME, {"now": now, "id": req.session_id}))
        if decision.released:
            release_at = len(calls)
            calls.append((_RELEASED, {"now": now, "id": image.id}))
        elif decision.image is not None:
            calls.append((_REFUSED, {"id": decision.image.id}))
        calls.append((_AUDIT, {
            "at": now, "source": source[:64], "session_id": req.session_id if session is not None else None,
            "image_id": decision.image.id if decision.image is not None else None,
            "image_name": decision.image.name if decision.image is not None else None,
            "measurement": measurement, "reported_tcb": _reported_tcb(report, decision.product),
            "result": "released" if decision.released else "refused", "check_name": decision.check,
            "message": None if decision.released else decision.message[:2000]}))
        results = hot_batch(conn, calls)
        consumed = consume_at is None or results[consume_at].rowcount == 1
        counted = release_at is None or results[release_at].rowcount == 1
        late = None
        if not consumed and decision.check != "session.replayed":
            late = Decision("session.replayed", "this session was used concurrently", decision.image,
                            decision.product)
        elif not counted:
            late = Decision("image.disabled", f"image {image.name!r} was disabled", image, decision.product)
        if late is not None:
            fixes = [(_AUDIT_REFUSED, {"id": results[-1].scalar_one(), "check_name": late.check,
                                       "message": late.message})]
            if decision.released and late.image is not None:
                fixes.append((_REFUSED, {"id": late.image.id}))
                if counted:
                    fixes.append((_UNRELEASE, {"id": late.image.id}))
            hot_batch(conn, fixes)
            decision, sealed = late, None

    if not decision.released or sealed is None:
        raise ApiError(403, "attestation_refused", decision.message, check=decision.check)
    return {"image": {"id": image.id, "name": image.name}, "sealed_key": base64.b64encode(sealed).decode(),
            "session_id": req.session_id, "hpke_suite": HPKE_SUITE_NAME}


def audit_entries(ctx: ServerContext, limit: int, offset: int, image: str | None) -> list[dict[str, Any]]:
    query = select(audit).order_by(audit.c.id.desc()).limit(limit).offset(offset)
    if image:
        query = query.where((audit.c.image_id == image) | (audit.c.image_name == image))
    with read_tx(ctx.engine) as conn:
        rows = conn.execute(query).all()
    return [{"id": r.id, "at": _iso(r.at), "source": r.source, "session_id": r.session_id, "image_id": r.image_id,
             "image_name": r.image_name, "measurement": r.measurement,
             "reported_tcb": json.loads(r.reported_tcb) if r.reported_tcb else None, "result": r.result,
             "check": r.check_name, "message": r.message} for r in rows]
