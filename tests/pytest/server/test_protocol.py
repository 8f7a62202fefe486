# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The key-release protocol against a real server and the simulated AMD-SP: release and every refusal.

Each refusal must come back as 403 ``attestation_refused`` naming the check, be in
the audit log with that check, and never carry the volume key.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from servers import Agent, ServerProcess, register, snpguard_cmd, snpguard_env

from ansible_collections.snpguard.cvm.plugins.module_utils.bundle.archive import read_bundle
from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import AgentSession
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import TcbVersion


def measurement(tag: int) -> bytes:
    return bytes([tag]) * 48


def refused(response: httpx.Response, check: str) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "attestation_refused"
    assert error["check"] == check, error


@pytest.fixture(scope="module")
def agent(sim) -> Agent:
    return Agent(sim)


@pytest.fixture(scope="module")
def image(admin: httpx.Client) -> dict:
    key = os.urandom(32)
    response = register(admin, "debian-13", {"1": measurement(1).hex(), "2": measurement(2).hex()}, key,
                        vcpu_type="EPYC-Milan", policy={"allow_debug": False, "smt": True})
    assert response.status_code == 201, response.text
    return {"key": key, **response.json()}


def test_release_opens_to_the_exact_volume_key(admin, agent, image):
    response, key, _body = agent.handshake(admin, measurement(2))
    assert response.status_code == 200, response.text
    assert bytes(key) == image["key"]
    assert response.json()["image"] == {"id": image["id"], "name": "debian-13"}
    shown = admin.get(f"/images/{image['id']}").json()
    assert shown["release_count"] >= 1 and shown["last_release_at"]
    entry = admin.get("/audit", params={"image": image["id"], "limit": 1}).json()["items"][0]
    assert entry["result"] == "released" and entry["check"] is None
    assert entry["measurement"] == measurement(2).hex()
    assert entry["reported_tcb"] == {"bootloader": 9, "tee": 0, "snp": 23, "microcode": 72}


def test_unknown_measurement(admin, agent, image):
    refused(agent.handshake(admin, measurement(0x77))[0], "measurement")


def test_replayed_session_is_refused(admin, agent, image):
    response, _key, body = agent.handshake(admin, measurement(1))
    assert response.status_code == 200
    refused(admin.post("/attest/verify", json=body), "session.replayed")


def test_refused_session_is_consumed_too(admin, agent, image):
    response, _key, body = agent.handshake(admin, measurement(0x78))
    refused(response, "measurement")
    refused(admin.post("/attest/verify", json=body), "session.replayed")


def test_unknown_session(admin, agent, image):
    response, _key, _body = agent.handshake(admin, measurement(1), session_id="00000000-0000-4000-8000-000000000000",
                                            nonce=bytes(32))
    refused(response, "session.unknown")


@pytest.mark.slow
def test_expired_nonce(admin, agent, image):
    challenge = admin.post("/attest/challenge").json()
    time.sleep(3.3)  # the fixture's server runs with --nonce-ttl 3
    response, _key, _body = agent.handshake(admin, measurement(1), session_id=challenge["session_id"],
                                            nonce=base64.b64decode(challenge["nonce"]))
    refused(response, "session.expired")


def test_report_data_not_bound_to_this_key(admin, agent, image):
    refused(agent.handshake(admin, measurement(1), bind_key=os.urandom(32))[0], "report_data")


def test_report_data_bound_to_another_nonce(admin, agent, image):
    other = base64.b64decode(admin.post("/attest/challenge").json()["nonce"])
    challenge = admin.post("/attest/challenge").json()
    response, _key, _body = agent.handshake(admin, measurement(1), session_id=challenge["session_id"],
                                            nonce=other)
    refused(response, "report_data")


def test_debug_policy(admin, agent, image):
    refused(agent.handshake(admin, measurement(1), policy=0x30000 | 1 << 19)[0], "policy.debug")


def test_policy_constraint(admin, agent, image):
    refused(agent.handshake(admin, measurement(1), policy=0x20000)[0], "policy.smt")  # image requires SMT=1


def test_tcb_below_image_minimum(admin, agent, sim):
    response = register(admin, "needs-new-tcb", {"1": measurement(3).hex()}, os.urandom(32),
                        min_tcb={"bootloader": 9, "tee": 0, "snp": 24, "microcode": 72})
    assert response.status_code == 201, response.text
    response, _key, _body = agent.handshake(admin, measurement(3))
    refused(response, "min_tcb.current")
    # The caller learns the check, not the image's minimum; the audit log (admins) has both values.
    message = response.json()["error"]["message"]
    assert "24" not in message and "snp" not in message.lower().replace("snp_", "")
    entry = admin.get("/audit", params={"image": "needs-new-tcb", "limit": 1}).json()["items"][0]
    assert entry["check"] == "min_tcb.current" and "24" in entry["message"]


def test_old_reported_tcb_with_its_own_vcek(admin, sim, image):
    """A platform rolled back to an older TCB signs with that TCB's VCEK: refused on the minimum."""
    response = register(admin, "min-tcb-2", {"1": measurement(4).hex()}, os.urandom(32),
                        min_tcb={"bootloader": 9, "tee": 0, "snp": 23, "microcode": 72})
    assert response.status_code == 201
    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product

    old = TcbVersion.from_components(Product.MILAN, bootloader=9, tee=0, snp=20, microcode=72)
    from ansible_collections.snpguard.cvm.plugins.module_utils.snp.simulated_amdsp import SimulatedAmdSp

    rolled = SimulatedAmdSp(sim.product, sim.ark, sim._ark_key, sim.ask, sim._ask_key, None, sim._vcek_key,
                            sim.chip_id, old)
    rolled.vcek = rolled.issue_vcek(old)
    refused(Agent(rolled).handshake(admin, measurement(4))[0], "min_tcb.current")


def test_wrong_id_key_digest(admin, agent):
    response = register(admin, "signed-image", {"1": measurement(5).hex()}, os.urandom(32),
                        id_key_digests=[os.urandom(48).hex()])
    assert response.status_code == 201
    refused(agent.handshake(admin, measurement(5), id_key_digest=os.urandom(48))[0], "id_key_digest")


def test_server_generated_id_keys(admin, agent):
    key = os.urandom(64)
    family, image_id = os.urandom(16), os.urandom(16)
    response = register(admin, "with-id-block", {"4": measurement(6).hex()}, key, generate_id_keys=True,
                        family_id=family.hex(), image_id=image_id.hex(), guest_svn=2)
    assert response.status_code == 201, response.text
    out = response.json()
    digest = bytes.fromhex(out["generated_id_key_digest"])
    assert out["measurements"][0]["id_block"] and out["measurements"][0]["id_auth"]
    # Without the ID block the firmware would report no ID key: refused.
    refused(agent.handshake(admin, measurement(6), family_id=family, image_id=image_id, guest_svn=2)[0],
            "id_key_digest")
    response, opened, _body = agent.handshake(admin, measurement(6), id_key_digest=digest, family_id=family,
                                              image_id=image_id, guest_svn=2)
    assert response.status_code == 200, response.text
    assert bytes(opened) == key
    refused(agent.handshake(admin, measurement(6), id_key_digest=digest, family_id=family, image_id=image_id,
                            guest_svn=1)[0], "guest_svn")
    # Registering the same again keeps the same ID key.
    again = register(admin, "with-id-block", {"4": measurement(6).hex()}, key, generate_id_keys=True,
                     family_id=family.hex(), image_id=image_id.hex(), guest_svn=2)
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["generated_id_key_digest"] == out["generated_id_key_digest"]


def test_disabled_image(admin, agent, image):
    assert admin.post(f"/images/{image['id']}/disable").json()["enabled"] is False
    try:
        refused(agent.handshake(admin, measurement(1))[0], "image.disabled")
    finally:
        assert admin.post(f"/images/{image['id']}/enable").json()["enabled"] is True
    assert agent.handshake(admin, measurement(1))[0].status_code == 200


def test_bad_report_signature(admin, agent, sim, image):
    challenge = admin.post("/attest/challenge").json()
    nonce = base64.b64decode(challenge["nonce"])
    from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import AgentSession

    session = AgentSession()
    report = bytearray(sim.report(measurement=measurement(1), report_data=session.report_data(nonce)))
    report[0x140] ^= 1  # REPORT_ID: inside the signed bytes, checked by nothing but the signature
    body = {"session_id": challenge["session_id"], "report": base64.b64encode(bytes(report)).decode(),
            "agent_public_key": base64.b64encode(session.public_key).decode(), "certs": agent.certs()}
    refused(admin.post("/attest/verify", json=body), "report.signature")


def test_garbage_report(admin, agent, image):
    challenge = admin.post("/attest/challenge").json()
    body = {"session_id": challenge["session_id"], "report": base64.b64encode(b"x" * 100).decode(),
            "agent_public_key": base64.b64encode(AgentSession().public_key).decode()}
    refused(admin.post("/attest/verify", json=body), "report.format")


def test_missing_vcek_offline(admin, sim, image):
    """No certificates sent and the server is offline: refused on the collateral, not a 5xx."""
    refused(Agent(sim, send_certs=False).handshake(admin, measurement(1))[0], "collateral")


def test_audit_names_checks_and_never_the_key(server, admin, image):
    items = admin.get("/audit", params={"limit": 1000}).json()["items"]
    checks = {item["check"] for item in items if item["result"] == "refused"}
    assert {"measurement", "session.replayed", "report_data", "policy.debug", "image.disabled",
            "report.signature"} <= checks
    secret_forms = (image["key"].hex(), base64.b64encode(image["key"]).decode())
    dump = str(items) + server.log()
    assert not any(form in dump for form in secret_forms)
    assert server.proc.poll() is None


def test_registration_idempotence_and_conflicts(admin):
    key = os.urandom(32)
    args = ("idem", {"1": measurement(0x10).hex()})
    first = register(admin, *args, key)
    assert first.status_code == 201 and first.json()["created"] is True
    second = register(admin, *args, key)
    assert second.status_code == 200 and second.json()["created"] is False
    assert second.json()["id"] == first.json()["id"]
    conflict = register(admin, "idem", {"1": measurement(0x11).hex()}, key)
    assert conflict.status_code == 409 and conflict.json()["error"]["field"] == "name"
    other_key = register(admin, *args, os.urandom(32))
    assert other_key.status_code == 409 and "volume key" in other_key.json()["error"]["message"]
    taken = register(admin, "idem-2", {"1": measurement(0x10).hex()}, key)
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "measurement_registered"
    replaced = register(admin, "idem", {"1": measurement(0x11).hex()}, key, replace=True)
    assert replaced.status_code == 200 and replaced.json()["replaced"] is True
    assert replaced.json()["measurements"][0]["measurement"] == measurement(0x11).hex()
    wrong_name = register(admin, "idem-3", {"1": measurement(0x12).hex()}, key)
    assert wrong_name.status_code == 201
    info = admin.get("/public/info").json()
    from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import seal_for_ingestion

    sealed_for_other = seal_for_ingestion(key, base64.b64decode(info["ingestion_public_key"]), "idem")
    moved = admin.post("/images", json={"name": "idem-4", "measurements": {"1": measurement(0x13).hex()},
                                        "sealed_volume_key": base64.b64encode(sealed_for_other).decode()})
    assert moved.status_code == 400 and moved.json()["error"]["field"] == "sealed_volume_key"
    assert admin.delete(f"/images/{first.json()['id']}").json() == {"id": first.json()["id"], "deleted": True}
    assert admin.get(f"/images/{first.json()['id']}").status_code == 404


def test_bundle_from_artifacts(admin):
    kernel, initrd = os.urandom(5000), os.urandom(7000)
    artifacts = {"kernel_b64": base64.b64encode(kernel).decode(), "initrd_b64": base64.b64encode(initrd).decode(),
                 "cmdline": "console=ttyS0 roothash=ab", "firmware_sha384": "ab" * 48,
                 "launch": {"vmm_type": "QEMU", "policy": "0x30000"}}
    response = register(admin, "bundled", {"1": measurement(0x20).hex(), "2": measurement(0x21).hex()},
                        os.urandom(32), artifacts=artifacts, generate_id_keys=True)
    assert response.status_code == 201, response.text
    image_id = response.json()["id"]
    bundle = admin.get(f"/images/{image_id}/bundle")
    assert bundle.status_code == 200 and bundle.headers["content-type"] == "application/gzip"
    assert 'filename="bundled.bundle.tar.gz"' in bundle.headers["content-disposition"]
    files = read_bundle(bundle.content)
    assert files["kernel"] == kernel and files["initrd"] == initrd
    assert files["cmdline"] == b"console=ttyS0 roothash=ab"
    assert {"id_block.1.b64", "id_auth.2.b64"} <= set(files)
    import json

    launch = json.loads(files["launch.json"])
    assert launch["vcpus"] == [1, 2] and launch["id_block_files"]["2"]["id_auth"] == "id_auth.2.b64"
    assert bundle.headers["x-content-sha256"] == response.json()["bundle_sha256"]
    assert admin.get("/images/not-a-uuid/bundle").status_code == 400
    assert admin.get("/images/..%2f..%2fetc%2fpasswd/bundle").status_code in (400, 404)
    assert admin.get("/images/00000000-0000-4000-8000-000000000000/bundle").status_code == 404


def test_errors_are_json_4xx(server, admin):
    with server.client() as anonymous:
        bad_json = anonymous.post("/attest/verify", content=b"{not json", headers={"content-type": "application/json"})
        assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_request"
        missing = anonymous.post("/attest/verify", json={"session_id": "x"})
        assert missing.status_code == 400 and missing.json()["error"]["field"]
        huge = anonymous.post("/attest/verify", content=b"{" + b" " * 200_000 + b"}",
                              headers={"content-type": "application/json"})
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"
        assert anonymous.get("/nothing-here").status_code == 404
    bad = admin.post("/images", json={"name": "../../x", "measurements": {"1": "00"}, "sealed_volume_key": ""})
    assert bad.status_code == 400 and bad.json()["error"]["field"].startswith(("name", "measurements"))


def test_tokens_revoked_expired_and_invalid(server, admin):
    with server.client() as anonymous:
        assert anonymous.get("/images").json()["error"]["code"] == "unauthenticated"
    created = admin.post("/tokens", json={"name": "ci"}).json()
    assert created["token"].startswith(f"sgt_{created['id']}_")
    with server.client(created["token"]) as ci:
        assert ci.get("/images").status_code == 200
        revoked = admin.delete(f"/tokens/{created['id']}").json()
        assert revoked == {"id": created["id"], "revoked": True, "cascaded": []}
        response = ci.get("/images")
        assert response.status_code == 401 and response.json()["error"]["code"] == "token_revoked"
        assert ci.post("/tokens", json={"name": "escalate"}).status_code == 401
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    short = admin.post("/tokens", json={"name": "short", "expires_at": soon}).json()
    time.sleep(1.2)
    with server.client(short["token"]) as expired:
        response = expired.get("/images")
        assert response.status_code == 401 and response.json()["error"]["code"] == "token_expired"
    forged = created["token"][:-4] + "AAAA"
    with server.client(forged) as client:
        assert client.get("/images").json()["error"]["code"] in ("token_invalid", "token_revoked")
    with server.client("sgt_0123456789abcdef_" + "A" * 43) as client:
        assert client.get("/images").json()["error"]["code"] == "token_invalid"
    listed = {t["id"]: t for t in admin.get("/tokens").json()["items"]}
    assert listed[created["id"]]["state"] == "revoked" and listed[short["id"]]["state"] == "expired"
    assert "token" not in listed[created["id"]] and "secret_hash" not in listed[created["id"]]
    with server.client() as anonymous:
        wrong = anonymous.post("/tokens", json={"name": "x"}, auth=("admin", "not-the-password"))
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "password_invalid"


def test_reset_master_password(server):
    old = server.master_password()
    result = subprocess.run(snpguard_cmd("server", "reset-master-password", "--data-dir", str(server.data_dir)),
                            env=snpguard_env(), capture_output=True, text=True, check=True)
    new = result.stdout.split("hash):\n\n", 1)[1].split()[0]
    assert new != old
    with server.client() as anonymous:
        assert anonymous.post("/tokens", json={"name": "x"}, auth=("admin", old)).status_code == 401
        assert anonymous.post("/tokens", json={"name": "x"}, auth=("admin", new)).status_code == 201


@pytest.mark.slow
def test_without_simulated_root_the_chain_is_refused_and_rate_limited(tmp_path: Path, sim):
    """A default server trusts AMD's roots only; and /v1/attest/* is rate-limited per address."""
    proc = ServerProcess(tmp_path / "data", ["--offline", "--rate-limit", "4", "--rate-window", "60"]).start()
    try:
        with proc.client() as client:
            assert client.get("/public/info").json()["trusts_simulated_root"] is False
            with proc.client(proc.mint_token()) as admin:
                assert register(admin, "amd-only", {"1": measurement(1).hex()}, os.urandom(32)).status_code == 201
            refused(Agent(sim).handshake(client, measurement(1))[0], "ark.pinned")
            statuses = [client.post("/attest/challenge").status_code for _attempt in range(3)]
            assert statuses == [200, 200, 429]
            limited = client.post("/attest/challenge")
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
            assert limited.json()["error"]["code"] == "rate_limited"
            assert client.get("/health").status_code == 200  # only /v1/attest/* is limited
    finally:
        proc.stop()


def test_concurrent_replays_release_exactly_once(server, admin, agent, image):
    """The same verify body sent 8 times at once: one release, seven refusals, one count, one audit release."""
    from concurrent.futures import ThreadPoolExecutor

    before = admin.get(f"/images/{image['id']}").json()["release_count"]
    challenge = admin.post("/attest/challenge").json()
    nonce = base64.b64decode(challenge["nonce"])
    from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import AgentSession

    session = AgentSession()
    report = agent.sim.report(measurement=measurement(1), report_data=session.report_data(nonce))
    body = {"session_id": challenge["session_id"], "report": base64.b64encode(report).decode(),
            "agent_public_key": base64.b64encode(session.public_key).decode(), "certs": agent.certs()}

    def send(_index: int) -> httpx.Response:
        with server.client() as client:
            return client.post("/attest/verify", json=body)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, range(8)))
    assert sorted(r.status_code for r in responses) == [200] + [403] * 7
    assert {r.json()["error"]["check"] for r in responses if r.status_code == 403} == {"session.replayed"}
    assert admin.get(f"/images/{image['id']}").json()["release_count"] == before + 1
    decisions = [e for e in admin.get("/audit", params={"limit": 50}).json()["items"]
                 if e["session_id"] == challenge["session_id"]]
    assert sorted(e["result"] for e in decisions) == ["refused"] * 7 + ["released"]
