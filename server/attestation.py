# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The server's half of the key-release protocol (v1, see ``keyrelease``): challenge, verify, release.

A verify request runs in three steps so that the database is locked only briefly:

1. one statement, outside any transaction, reads the rate-limit count, the session
   and the image registered for the report's measurement;
2. no transaction: first everything that needs no certificate (session unknown,
   replayed or expired; the agent's key, refused if it is a low-order point; the
   report's format and signature shape; measurement registered, image enabled), then
   the certificates (the request's, the cache, or AMD KDS off the event loop: see
   ``collateral_fetch``) and ``attest()`` (chain, signature, REPORT_DATA binding,
   measurement, policy, minimum TCB, ID/author keys, host data, VMPL 0); only if
   everything passed is the volume key HPKE-sealed to the agent's key.  An unexpected
   exception here is a refusal named ``internal``, never a 500;
3. one write transaction makes the decision durable: count the request against the
   rate limit, consume the session (only if still unconsumed and unexpired — a
   concurrent replay loses here), count the release on the image (only if it is still
   enabled, unchanged and the owner of the measurement), and write the audit row.
   The sealed key leaves the server only after that commit.

Every request that passes schema validation is audited and consumes its session,
whatever the outcome.  The caller learns the failed check's name and a short reason;
the audit log (admins only) has the whole message, with expected values.  The key,
the nonce and the report's secrets never appear in either.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from ..plugins.module_utils.keyrelease.protocol import (
    HPKE_SUITE_NAME,
    X25519_KEY_SIZE,
    check_public_key,
    seal_volume_key,
    wipe,
)
from ..plugins.module_utils.snp import sev_keys
from ..plugins.module_utils.snp.attest import attest
from ..plugins.module_utils.snp.binding import NONCE_SIZE, report_data_binding
from ..plugins.module_utils.snp.cert_table import parse_cert_table
from ..plugins.module_utils.snp.checks import VerificationError
from ..plugins.module_utils.snp.errors import SnpError
from ..plugins.module_utils.snp.report import REPORT_SIZE, AttestationReport, parse_report
from . import kek, ratelimit
from .collateral_fetch import Refused
from .context import ServerContext
from .engine import autocommit, now_ms, read_tx, write_tx
from .errors import ApiError
from .hotpath import HotSql, hot_batch
from .images import expectations_for
from .schemas import VerifyRequest
from .tables import audit

log = logging.getLogger("snpguard.server")

SWEEP_PROBABILITY = 0.01
KEEP_SESSIONS_MS = 3600 * 1000

# The statements every handshake runs, as plain SQL (see hotpath.HotSql).
_INSERT_SESSION = HotSql("INSERT INTO attest_sessions (id, nonce, source, created_at, expires_at) "
                         "VALUES (:id, :nonce, :source, :created_at, :expires_at)")
_SWEEP_SESSIONS = HotSql("DELETE FROM attest_sessions WHERE expires_at < :before")
# Step 1 in one statement (one round trip): the rate-limit count, the session and the image, each maybe absent.
_LOOKUP = HotSql(f"""
    SELECT ({ratelimit.COUNT_SQL}) AS rate_count,
           s.nonce AS nonce, s.expires_at AS expires_at, s.consumed_at AS consumed_at,
           i.id AS id, i.name AS name, i.enabled AS enabled, i.spec AS spec, i.volume_key_enc AS volume_key_enc,
           i.id_key_digest AS id_key_digest, i.updated_at AS updated_at
    FROM (SELECT 1 AS one) AS anchor
    LEFT JOIN attest_sessions s ON s.id = :session_id
    LEFT JOIN measurements m ON m.measurement = :measurement
    LEFT JOIN images i ON i.id = m.image_id""")
# The final transaction re-checks what the decision relied on: the session unconsumed and unexpired; the
# image enabled, unchanged since step 1 (replace and enable/disable move updated_at), and still the owner of
# the measurement.
_CONSUME = HotSql("UPDATE attest_sessions SET consumed_at = :now "
                  "WHERE id = :id AND consumed_at IS NULL AND expires_at > :now")
_RELEASED = HotSql("UPDATE images SET release_count = release_count + 1, last_release_at = :now "
                   "WHERE id = :id AND enabled = TRUE AND updated_at = :updated_at AND EXISTS "
                   "(SELECT 1 FROM measurements m WHERE m.image_id = images.id AND m.measurement = :measurement)")
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
    message: str  # the whole story, for the audit log (may hold expected values and server paths)
    image: Any = None
    product: Any = None

    @property
    def released(self) -> bool:
        return self.check is None

    @property
    def public_message(self) -> str:
        """What an unauthenticated caller is told: the check and a short reason, never expected values."""
        assert self.check is not None
        reason = PUBLIC_REASONS.get(self.check)
        if reason is None:
            reason = f"the report failed the {self.check} check"
        return reason + " (details in the server's audit log)"


#: Short reasons for the refusals decided here; verification checks say only their name.
PUBLIC_REASONS = {
    "session.unknown": "no such session (ask /v1/attest/challenge for one)",
    "session.replayed": "this session was already used; every nonce is single-use",
    "session.expired": "the nonce has expired",
    "request.agent_public_key": "agent_public_key must be a raw 32-byte X25519 public key of full order, base64",
    "report.format": f"report must be {REPORT_SIZE} bytes of a valid attestation report, base64",
    "report.signature_shape": "the report's signature is not an ECDSA P-384 signature",
    "request.certs": "certs must be a base64 certificate table",
    "collateral": "the certificate chain for this report could not be assembled",
    "collateral.busy": "too many certificate fetches from AMD KDS in progress; retry",
    "measurement": "the launch measurement is not registered to any image",
    "image.disabled": "the image is disabled",
    "image.integrity_only": "the image is integrity-only: it has no volume key to release",
    "image.changed": "the image was changed or removed during the handshake; retry",
    "internal": "internal error while deciding",
}

P384_ORDER = int("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973", 16)


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


@dataclass
class Request:
    """A verify request, decoded (each part None when it did not decode)."""

    body: VerifyRequest
    raw_report: bytes | None
    report: AttestationReport | None
    agent_key: bytes | None
    certs: bytes | None

    @classmethod
    def decode(cls, body: VerifyRequest) -> Request:
        raw_report = _b64(body.report)
        report = None
        if raw_report is not None and len(raw_report) == REPORT_SIZE:
            try:
                report = parse_report(raw_report)
            except SnpError:
                report = None
        return cls(body, raw_report, report, _b64(body.agent_public_key),
                   _b64(body.certs) if body.certs is not None else None)


def _cheap_checks(req: Request, session: Any, image: Any, now: int) -> Decision | None:
    """Everything decidable without certificates, in order; None when the report must be verified."""
    if session is None:
        return Decision("session.unknown", "no such session (ask /v1/attest/challenge for one)", image)
    if session.consumed_at is not None:
        return Decision("session.replayed", "this session was already used; every nonce is single-use", image)
    if session.expires_at <= now:
        return Decision("session.expired", f"the nonce expired {(now - session.expires_at) // 1000} s ago", image)
    if req.agent_key is None or len(req.agent_key) != X25519_KEY_SIZE:
        return Decision("request.agent_public_key", "agent_public_key must be a raw 32-byte X25519 key, base64",
                        image)
    try:
        check_public_key(req.agent_key, "agent_public_key")
    except SnpError as exc:
        return Decision("request.agent_public_key", str(exc), image)
    report = req.report
    if report is None:
        return Decision("report.format", f"report must be {REPORT_SIZE} bytes of a valid attestation report, base64",
                        image)
    if report.signature_algo != sev_keys.ALGO_ECDSA_P384_SHA384 or not (
            0 < report.signature_r < P384_ORDER and 0 < report.signature_s < P384_ORDER):
        return Decision("report.signature_shape", f"SIGNATURE_ALGO {report.signature_algo}, R and S must be in "
                        "[1, n) of P-384", image)
    if req.body.certs is not None and req.certs is None:
        return Decision("request.certs", "certs is not valid base64", image)
    if image is None:
        return Decision("measurement", f"measurement {report.measurement.hex()} is not registered to any image")
    if not image.enabled:
        return Decision("image.disabled", f"image {image.name!r} is disabled", image)
    if image.volume_key_enc is None:
        return Decision("image.integrity_only", f"image {image.name!r} has no volume key (integrity-only)", image)
    return None


async def _verified(ctx: ServerContext, req: Request, session: Any, image: Any) -> Decision:
    """The report's authenticity and the image's policy (certificates from the request, cache or KDS)."""
    report = req.report
    assert report is not None and req.agent_key is not None
    try:
        extended = parse_cert_table(req.certs, field="certs") if req.certs else None
    except SnpError as exc:
        return Decision("request.certs", f"certs is not a certificate table: {exc}", image)
    try:
        collateral = await ctx.collateral.resolve(report, extended)
    except Refused as exc:
        return Decision(exc.check, exc.detail, image)
    binding = report_data_binding(bytes(session.nonce), req.agent_key)
    try:
        expect = expectations_for(json.loads(image.spec), image.id_key_digest, report.measurement, binding)
        result = attest(report, collateral, ctx.trust(), expect)
    except VerificationError as exc:
        return Decision(exc.check, str(exc), image)
    except SnpError as exc:
        return Decision(exc.field or "report", str(exc), image)
    return Decision(None, "released", image, result.product)


async def verify(ctx: ServerContext, source: str, body: VerifyRequest) -> dict[str, Any]:
    settings = ctx.settings
    now = now_ms()
    req = Request.decode(body)
    report = req.report
    measurement = report.measurement.hex() if report is not None else None

    # 1. rate limit, session, image: one read (the request is counted in step 3).
    with autocommit(ctx.engine) as conn:
        row = _LOOKUP(conn, session_id=body.session_id, measurement=measurement,
                      **ratelimit.count_params(f"attest:{source}", settings.rate_window, now)).first()
    ratelimit.refuse_if_over(row.rate_count, settings.rate_limit, settings.rate_window, now)
    session = row if row.expires_at is not None else None
    image = row if row.id is not None else None

    # 2. the decision (cheap checks first; certificates maybe from KDS, off the loop), then sealing.  Whatever
    # goes wrong here is a refusal that is audited and consumes the session, never a 500 that leaves it usable.
    sealed: bytes | None = None
    try:
        decision = _cheap_checks(req, session, image, now) or await _verified(ctx, req, session, image)
        if decision.released:
            volume_key = ctx.keys.open(image.volume_key_enc, kek.VOLUME_KEY_AAD + image.id.encode(),
                                       what="volume key")
            try:
                sealed = seal_volume_key(volume_key, req.agent_key, body.session_id, req.raw_report)
            finally:
                wipe(volume_key)
    except Exception as exc:  # a bug or a broken key store: refuse (and log), never release
        log.exception("attestation: unexpected error while deciding", exc_info=exc)
        decision, sealed = Decision("internal", f"unexpected {type(exc).__name__} while deciding: {exc}", image), None

    # 3. the decision, durable and atomic: count the request, consume the session (only if still unconsumed and
    # unexpired), count the release (only if the image is still the same and enabled) or the refusal, write the
    # audit row -- one batch (one round trip on PostgreSQL).  If the session or the image changed meanwhile,
    # the same transaction turns the release into that refusal before it commits.
    decided = now_ms()  # expiry is judged now, not when the request arrived
    with write_tx(ctx.engine) as conn:
        calls: list[tuple[HotSql, dict[str, Any]]] = []
        if settings.rate_limit > 0:
            calls.append(ratelimit.hit_call(f"attest:{source}", settings.rate_window, now))
        consume_at = release_at = None
        if session is not None:
            consume_at = len(calls)
            calls.append((_CONSUME, {"now": decided, "id": body.session_id}))
        if decision.released:
            release_at = len(calls)
            calls.append((_RELEASED, {"now": now, "id": image.id, "updated_at": image.updated_at,
                                      "measurement": measurement}))
        elif decision.image is not None:
            calls.append((_REFUSED, {"id": decision.image.id}))
        calls.append((_AUDIT, {
            "at": now, "source": source[:64], "session_id": body.session_id if session is not None else None,
            "image_id": decision.image.id if decision.image is not None else None,
            "image_name": decision.image.name if decision.image is not None else None,
            "measurement": measurement, "reported_tcb": _reported_tcb(report, decision.product),
            "result": "released" if decision.released else "refused", "check_name": decision.check,
            "message": None if decision.released else decision.message[:2000]}))
        results = hot_batch(conn, calls)
        consumed = consume_at is None or results[consume_at].rowcount == 1
        counted = release_at is None or results[release_at].rowcount == 1
        late = None
        if not consumed and decision.check not in ("session.replayed", "session.expired"):
            late = Decision("session.replayed", "this session was used concurrently, or expired during the "
                            "handshake", decision.image, decision.product)
        elif not counted:
            late = Decision("image.changed", f"image {image.name!r} was disabled, replaced or deleted during the "
                            "handshake", image, decision.product)
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
        raise ApiError(403, "attestation_refused", decision.public_message, check=decision.check)
    return {"image": {"id": image.id, "name": image.name}, "sealed_key": base64.b64encode(sealed).decode(),
            "session_id": body.session_id, "hpke_suite": HPKE_SUITE_NAME}


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
