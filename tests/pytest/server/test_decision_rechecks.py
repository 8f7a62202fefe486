# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The final transaction re-checks what the decision relied on (issue 8, item 6).

These run the server's own ``attestation.verify`` in process on a real SQLite database,
with the certificate step replaced by one that changes the world *while* the report is
being verified — the window a concurrent admin or a slow KDS opens.  Each change must turn
the release into a named, audited refusal in the same transaction.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import Agent

from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import AgentSession, seal_for_ingestion
from ansible_collections.snpguard.cvm.server import attestation, images
from ansible_collections.snpguard.cvm.server.config import load_settings
from ansible_collections.snpguard.cvm.server.context import ServerContext, build_context
from ansible_collections.snpguard.cvm.server.engine import read_tx
from ansible_collections.snpguard.cvm.server.errors import ApiError
from ansible_collections.snpguard.cvm.server.keys import ingestion_public
from ansible_collections.snpguard.cvm.server.schemas import ImageCreate, VerifyRequest
from ansible_collections.snpguard.cvm.server.state import initialize

MEASUREMENT = bytes([0x71]) * 48


@pytest.fixture
def ctx(tmp_path: Path, sim_root: Path) -> Iterator[ServerContext]:
    settings = load_settings(str(tmp_path / "data"), {"simulated_roots": [str(sim_root)], "offline": True,
                                                      "nonce_ttl": 2})
    initialize(settings)
    context = build_context(settings)
    yield context
    context.close()


def register(ctx: ServerContext, name: str, measurement: bytes, key: bytes, **extra: Any) -> dict[str, Any]:
    with read_tx(ctx.engine) as conn:
        public = ingestion_public(conn).public
    body = ImageCreate(name=name, measurements={"1": measurement.hex()},
                       sealed_volume_key=base64.b64encode(seal_for_ingestion(key, public, name)).decode(), **extra)
    return images.register(ctx, body)[1]


def verify_while(ctx: ServerContext, sim: Any, change: Callable[[], None]) -> tuple[str, dict[str, Any]]:
    """One handshake whose certificate step runs ``change`` first; returns (check or "released", audit row)."""
    challenge = attestation.challenge(ctx, "127.0.0.1")
    nonce = base64.b64decode(challenge["nonce"])
    agent = AgentSession()
    report = sim.report(measurement=MEASUREMENT, report_data=agent.report_data(nonce))
    request = VerifyRequest(session_id=challenge["session_id"], report=base64.b64encode(report).decode(),
                            agent_public_key=base64.b64encode(agent.public_key).decode(), certs=Agent(sim).certs())
    original = ctx.collateral.resolve

    async def resolve_after_change(*args: Any) -> Any:
        change()
        return await original(*args)

    ctx.collateral.resolve = resolve_after_change  # type: ignore[method-assign]
    try:
        outcome = asyncio.run(attestation.verify(ctx, "127.0.0.1", request))
        check = "released"
        assert outcome["sealed_key"]
    except ApiError as exc:
        assert exc.status == 403, exc.body()
        check = exc.extra["check"]
    finally:
        ctx.collateral.resolve = original  # type: ignore[method-assign]
    entries = attestation.audit_entries(ctx, 1, 0, None)
    return check, entries[0]


def release_count(ctx: ServerContext, name: str) -> int:
    return next(i for i in images.list_images(ctx) if i["name"] == name)["release_count"]


def test_nothing_changes_and_the_key_is_released(ctx: ServerContext, sim) -> None:
    register(ctx, "steady", MEASUREMENT, os.urandom(32))
    check, entry = verify_while(ctx, sim, lambda: None)
    assert check == "released" and entry["result"] == "released" and release_count(ctx, "steady") == 1


def test_the_nonce_expires_during_verification(ctx: ServerContext, sim) -> None:
    register(ctx, "slow", MEASUREMENT, os.urandom(32))
    check, entry = verify_while(ctx, sim, lambda: time.sleep(2.2))  # the fixture's nonce TTL is 2 s
    assert check == "session.replayed" and entry["check"] == "session.replayed"
    assert "expired" in entry["message"] and release_count(ctx, "slow") == 0


def test_the_image_is_replaced_during_verification(ctx: ServerContext, sim) -> None:
    register(ctx, "replaced", MEASUREMENT, os.urandom(32))

    # Same name and measurement, another volume key: the old decision must not release either key.
    def replace() -> None:
        register(ctx, "replaced", MEASUREMENT, os.urandom(32), replace=True)

    check, entry = verify_while(ctx, sim, replace)
    assert check == "image.changed" and entry["check"] == "image.changed"
    assert release_count(ctx, "replaced") == 0


def test_the_measurement_moves_to_another_image_during_verification(ctx: ServerContext, sim) -> None:
    first = register(ctx, "first", MEASUREMENT, os.urandom(32))

    def move() -> None:
        images.delete_image(ctx, first["id"])
        register(ctx, "second", MEASUREMENT, os.urandom(32))

    check, _entry = verify_while(ctx, sim, move)
    assert check == "image.changed"
    assert release_count(ctx, "second") == 0


def test_the_image_is_disabled_and_enabled_again_during_verification(ctx: ServerContext, sim) -> None:
    made = register(ctx, "flapping", MEASUREMENT, os.urandom(32))

    def flap() -> None:
        images.set_enabled(ctx, made["id"], False)
        images.set_enabled(ctx, made["id"], True)

    check, _entry = verify_while(ctx, sim, flap)
    assert check == "image.changed"  # the decision was made about a state that no longer is
