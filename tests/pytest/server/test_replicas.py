# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Two server processes on one PostgreSQL: no state in process memory.

Challenge on A and verify on B (and the reverse) must both release; a session
consumed on one replica must be refused on the other; both must share the ingestion
key (one KEK file) and see the same images, tokens and audit log.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from servers import Agent, Postgres, ServerProcess, register

from ansible_collections.snpguard.cvm.server.tables import head_revision


@pytest.mark.slow
def test_two_replicas_on_one_postgresql(tmp_path: Path, postgres: Postgres, sim, sim_root: Path) -> None:
    kek = tmp_path / "shared" / "kek.key"
    common = ["--db-url", postgres.url, "--kek-file", str(kek), "--simulated-root", str(sim_root), "--offline"]
    a = ServerProcess(tmp_path / "a", common)
    a.start()
    # Replica B: its own data dir, the same database and KEK, and A's TLS material (one CA to pin).
    shutil.copytree(tmp_path / "a" / "tls", tmp_path / "b" / "tls")
    b = ServerProcess(tmp_path / "b", common).start()
    try:
        assert b.master_password() is None, "the second replica must not make a new master password"
        token = a.mint_token()
        with a.client(token) as ca, b.client(token) as cb:
            assert ca.get("/public/info").json()["ingestion_public_key"] == \
                cb.get("/public/info").json()["ingestion_public_key"]
            key = os.urandom(32)
            measurement = bytes([0x42]) * 48
            registered = register(ca, "replicated", {"2": measurement.hex()}, key)  # sealed with A's info
            assert registered.status_code == 201, registered.text
            assert cb.get(f"/images/{registered.json()['id']}").status_code == 200
            agent = Agent(sim)
            for first, second in ((ca, cb), (cb, ca), (ca, cb)):
                response, opened, body = agent.handshake(first, measurement, verify_client=second)
                assert response.status_code == 200, response.text
                assert bytes(opened) == key
                replay = first.post("/attest/verify", json=body)  # the other replica consumed it
                assert replay.status_code == 403 and replay.json()["error"]["check"] == "session.replayed"
            # The same verify body to both replicas at once, 8 times: exactly one release.
            from concurrent.futures import ThreadPoolExecutor

            response, _key, body = agent.handshake(ca, measurement, verify_client=cb)
            assert response.status_code == 200
            challenge = ca.post("/attest/challenge").json()
            body = dict(body, session_id=challenge["session_id"])
            from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import AgentSession

            session = AgentSession()
            import base64 as b64

            report = sim.report(measurement=measurement, report_data=session.report_data(
                b64.b64decode(challenge["nonce"])))
            body.update(report=b64.b64encode(report).decode(),
                        agent_public_key=b64.b64encode(session.public_key).decode())

            def send(index: int) -> int:
                with (a if index % 2 else b).client() as client:
                    return client.post("/attest/verify", json=body).status_code

            with ThreadPoolExecutor(8) as pool:
                assert sorted(pool.map(send, range(8))) == [200] + [403] * 7
            revoked = ca.post("/tokens", json={"name": "temp"}).json()
            assert cb.delete(f"/tokens/{revoked['id']}").status_code == 200
            with a.client(revoked["token"]) as stale:
                assert stale.get("/images").json()["error"]["code"] == "token_revoked"
            audit_a = ca.get("/audit", params={"image": "replicated"}).json()["items"]
            audit_b = cb.get("/audit", params={"image": "replicated"}).json()["items"]
            assert audit_a == audit_b
            assert [e["result"] for e in audit_a].count("released") == 5
            assert [e["check"] for e in audit_a].count("session.replayed") == 3 + 7
            assert ca.get(f"/images/{registered.json()['id']}").json()["release_count"] == 5
            for proc in (a, b):
                assert proc.proc.poll() is None
                assert "Traceback" not in proc.log()
    finally:
        a.stop()
        b.stop()


@pytest.mark.slow
def test_replicas_initialising_at_once_agree(tmp_path: Path, postgres: Postgres) -> None:
    """Three first starts at the same moment on one new database: one master password, one ingestion key."""
    import subprocess

    from servers import snpguard_cmd, snpguard_env
    from sqlalchemy import create_engine, text

    admin_engine = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:
        conn.execute(text("CREATE DATABASE racing"))
    admin_engine.dispose()
    url = postgres.url.rsplit("/", 1)[0] + "/racing"
    kek = tmp_path / "kek.key"
    procs = [subprocess.Popen(snpguard_cmd("server", "init", "--data-dir", str(tmp_path / f"r{i}"), "--db-url", url,
                                           "--kek-file", str(kek)), env=snpguard_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert sum("shown ONCE" in out for out in outputs) == 1, outputs
    assert sum("already initialised" in out for out in outputs) == 2
    engine = create_engine(url)
    with engine.connect() as conn:
        names = sorted(r[0] for r in conn.execute(text("SELECT name FROM settings")))
        assert names == ["ingestion_private_key", "ingestion_public_key", "kek_check", "master_password_hash"]
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head_revision()
    engine.dispose()
