# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""kill -9 the server while it registers images and releases keys, restart it, check the database.

Every registration that returned 201 must be intact (its volume key opens under the
KEK and equals what was sent; its measurements and bundle are there), and nothing may
be half-written: no image without measurements, no orphan rows, every consumed
session with exactly one audit row and every audit row's session consumed, release
counters equal to the audit log.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import threading
import time
from pathlib import Path

import httpx
import pytest
from servers import Agent, Postgres, ServerProcess, register
from sqlalchemy import create_engine, text

from ansible_collections.snpguard.cvm.server import kek as kek_mod

CYCLES = 3


def _registrations(proc: ServerProcess, token: str, stop: threading.Event, done: dict, errors: list,
                   counter: list) -> None:
    with proc.client(token, timeout=10) as client:
        while not stop.is_set():
            counter[0] += 1
            n = counter[0]
            name, key = f"img-{n}", os.urandom(32)
            measurements = {"1": hashlib.sha384(f"m1-{n}".encode()).hexdigest(),
                            "2": hashlib.sha384(f"m2-{n}".encode()).hexdigest()}
            artifacts = {"kernel_b64": base64.b64encode(os.urandom(20000)).decode(),
                         "initrd_b64": base64.b64encode(os.urandom(40000)).decode(), "cmdline": f"n={n}",
                         "firmware_sha384": "cd" * 48}
            try:
                response = register(client, name, measurements, key, artifacts=artifacts, generate_id_keys=n % 2 == 0)
            except (httpx.HTTPError, OSError):
                return
            if response.status_code == 201:
                done[name] = (response.json()["id"], key, measurements)
            elif response.status_code >= 500:
                errors.append(response.text)


def _handshakes(proc: ServerProcess, agent: Agent, measurement: bytes, stop: threading.Event, released: list,
                errors: list) -> None:
    with proc.client(timeout=10) as client:
        while not stop.is_set():
            try:
                response, _key, body = agent.handshake(client, measurement)
            except (httpx.HTTPError, OSError):
                return
            if response.status_code == 200:
                released.append(body["session_id"])
            elif response.status_code >= 500:
                errors.append(response.text)


def _check_database(url: str, kek: bytes, done: dict, released: list) -> None:
    engine = create_engine(url)
    with engine.connect() as conn:
        def q(sql: str) -> list:
            return conn.execute(text(sql)).all()

        if url.startswith("sqlite"):
            assert q("PRAGMA integrity_check") == [("ok",)]
        assert q("SELECT i.id FROM images i LEFT JOIN measurements m ON m.image_id = i.id WHERE m.id IS NULL") == []
        assert q("SELECT m.id FROM measurements m LEFT JOIN images i ON i.id = m.image_id WHERE i.id IS NULL") == []
        assert q("SELECT b.image_id FROM bundles b LEFT JOIN images i ON i.id = b.image_id WHERE i.id IS NULL") == []
        rows = {r.name: r for r in conn.execute(text(
            "SELECT i.id, i.name, i.volume_key_enc, i.bundle_sha256, b.sha256 AS stored, b.data "
            "FROM images i LEFT JOIN bundles b ON b.image_id = i.id")).all()}
        for name, (image_id, key, measurements) in done.items():
            row = rows[name]
            assert row.id == image_id
            opened = kek_mod.open_blob(kek, bytes(row.volume_key_enc), kek_mod.VOLUME_KEY_AAD + image_id.encode(),
                                       what="volume key")
            assert bytes(opened) == key
            assert row.bundle_sha256 == row.stored == hashlib.sha256(bytes(row.data)).hexdigest()
            got = {str(v): m for v, m in conn.execute(text(
                "SELECT vcpus, measurement FROM measurements WHERE image_id = :i"), {"i": image_id}).all()}
            assert got == measurements
        for name, row in rows.items():  # registrations whose 201 was lost in the kill are whole too
            if name != "target":
                assert row.bundle_sha256 == row.stored
        consumed = {r[0] for r in q("SELECT id FROM attest_sessions WHERE consumed_at IS NOT NULL")}
        audited = q("SELECT session_id, result FROM audit WHERE session_id IS NOT NULL")
        assert sorted(s for s, _result in audited) == sorted(consumed), "each consumed session has exactly one decision"
        assert set(released) <= {s for s, result in audited if result == "released"}
        for image_id, count in q("SELECT id, release_count FROM images"):
            logged = conn.execute(text("SELECT COUNT(*) FROM audit WHERE image_id = :i AND result = 'released'"),
                                  {"i": image_id}).scalar_one()
            assert logged == count
    engine.dispose()


def _run_fault_cycles(tmp_path: Path, args: list[str], db_url: str, sim) -> None:
    rng = random.Random(1234)
    proc = ServerProcess(tmp_path / "data", args).start()
    token = proc.mint_token()
    measurement = bytes([0x5A]) * 48
    with proc.client(token) as client:
        assert register(client, "target", {"1": measurement.hex()}, os.urandom(32)).status_code == 201
    agent = Agent(sim)
    done: dict = {}
    released: list = []
    errors: list = []
    counter = [0]
    kills = 0
    for _cycle in range(CYCLES):
        stop = threading.Event()
        threads = [threading.Thread(target=_registrations, args=(proc, token, stop, done, errors, counter)),
                   threading.Thread(target=_handshakes, args=(proc, agent, measurement, stop, released, errors)),
                   threading.Thread(target=_handshakes, args=(proc, agent, measurement, stop, released, errors))]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(1.0, 2.0))
        proc.kill9()
        kills += 1
        stop.set()
        for thread in threads:
            thread.join(30)
        proc = ServerProcess(proc.data_dir, args, port=proc.port).start()
    with proc.client(token) as client:
        listed = {i["name"]: i for i in client.get("/images").json()["items"]}
        for name, (image_id, _key, _m) in done.items():
            assert listed[name]["id"] == image_id
        # The restarted server still releases the target's key.
        response, _key, _body = agent.handshake(client, measurement)
        assert response.status_code == 200
    proc.stop()
    assert not errors, errors[:3]
    print(f"fault: {kills} kills, {len(done)} registrations, {len(released)} releases acknowledged")
    assert kills == CYCLES and len(done) >= CYCLES and released, (len(done), len(released))
    _check_database(db_url, (proc.data_dir / "kek.key").read_bytes() if "--kek-file" not in args else
                    Path(args[args.index("--kek-file") + 1]).read_bytes(), done, released)


@pytest.mark.slow
def test_kill9_during_registrations_and_handshakes_sqlite(tmp_path: Path, sim, sim_root: Path) -> None:
    _run_fault_cycles(tmp_path, ["--simulated-root", str(sim_root), "--offline", "--rate-limit", "100000"],
                      f"sqlite:///{tmp_path / 'data' / 'snpguard.db'}", sim)


@pytest.mark.slow
def test_kill9_during_registrations_and_handshakes_postgresql(tmp_path: Path, postgres: Postgres, sim,
                                                              sim_root: Path) -> None:
    admin_engine = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:
        conn.execute(text("CREATE DATABASE fault"))
    admin_engine.dispose()
    url = postgres.url.rsplit("/", 1)[0] + "/fault"
    _run_fault_cycles(tmp_path, ["--db-url", url, "--simulated-root", str(sim_root), "--offline", "--rate-limit",
                                 "100000"], url, sim)
