# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The key-release client (plugins/module_utils/keyrelease/admin_client.py) against a real server.

TLS pinned on first use, errors that name the field or the attestation check, every
image and token call, and the client's canonical content digest equal to the server's
(check mode depends on it).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
from servers import Agent, ServerProcess

from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease import cvm_register
from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.admin_client import (
    ApiError,
    KeyReleaseClient,
    artifact_digests,
    ca_fingerprint_pem,
    content_digest,
    fetch_server_ca,
    normalize_url,
    seal_volume_key_file,
    token_id,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError


def m(byte: str) -> str:
    return byte * 48


@pytest.fixture(scope="module")
def pinned(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA as trust on first use fetches it, written where a client keeps it."""
    pem, _fingerprint, length = fetch_server_ca(server.base)
    assert length == 2  # server certificate + its CA
    path = tmp_path_factory.mktemp("pinned") / "ca.pem"
    path.write_text(pem)
    return path


@pytest.fixture(scope="module")
def client(server: ServerProcess, pinned: Path) -> KeyReleaseClient:
    return KeyReleaseClient(server.url, server.mint_token("client-api"), ca_file=str(pinned))


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "volume.key"
    path.write_bytes(os.urandom(32))
    return path


def test_tofu_fetches_the_servers_ca(server: ServerProcess, pinned: Path) -> None:
    ca = (server.data_dir / "tls" / "ca.pem").read_bytes()
    assert pinned.read_bytes().strip() == ca.strip()
    info = KeyReleaseClient(server.url, ca_file=str(pinned)).public_info()
    assert info["tls_ca_sha256"] == ca_fingerprint_pem(ca)


def test_public_endpoints_over_the_pinned_ca(server: ServerProcess, pinned: Path) -> None:
    anonymous = KeyReleaseClient(server.base + "/", ca_file=str(pinned))
    assert anonymous.base == server.url
    assert anonymous.health() == {"status": "ok"}
    assert anonymous.ready()["status"] == "ready"
    assert len(base64.b64decode(anonymous.public_info()["ingestion_public_key"])) == 32
    assert "/v1/images" in anonymous.openapi()["paths"]


def test_another_ca_is_refused_naming_ca_file(server: ServerProcess, tmp_path: Path) -> None:
    other = KeyReleaseClient(server.url, ca_file="/etc/ssl/certs/ca-certificates.crt")
    with pytest.raises(ApiError) as info:
        other.health()
    assert info.value.field == "ca_file"
    assert "TLS verification" in str(info.value)
    with pytest.raises(SnpError, match="does not exist"):
        KeyReleaseClient(server.url, ca_file=str(tmp_path / "missing.pem"))
    # The system roots do not know a private CA either.
    with pytest.raises(ApiError) as info:
        KeyReleaseClient(server.url).health()
    assert info.value.field == "ca_file"


def test_unreachable_names_url() -> None:
    with pytest.raises(ApiError) as info:
        KeyReleaseClient("https://127.0.0.1:1", timeout=5).health()
    assert info.value.field == "url" and info.value.status is None


@pytest.mark.parametrize("url", ["ftp://x", "https://", "https://u:p@host", "https://host/?q=1", ""])
def test_bad_urls(url: str) -> None:
    with pytest.raises(SnpError) as info:
        normalize_url(url)
    assert info.value.field == "url"


def test_tokens_lifecycle(server: ServerProcess, client: KeyReleaseClient) -> None:
    created = KeyReleaseClient(server.url, ca_file=client.ca_file).create_token(
        "lifecycle", master_password=server.master_password())
    assert token_id(created["token"]) == created["id"]
    listed = {t["id"]: t for t in client.list_tokens()}
    assert listed[created["id"]]["state"] == "active" and "token" not in listed[created["id"]]
    mine = KeyReleaseClient(server.url, created["token"], ca_file=client.ca_file)
    assert mine.list_tokens()
    assert client.revoke_token(created["token"]) == {"id": created["id"], "revoked": True, "cascaded": []}
    with pytest.raises(ApiError) as info:
        mine.list_tokens()
    assert (info.value.status, info.value.code) == (401, "token_revoked")
    with pytest.raises(ApiError) as info:
        client.revoke_token("0123456789abcdef")
    assert (info.value.status, info.value.field) == (404, "id")
    with pytest.raises(SnpError, match="not a token id"):
        client.revoke_token("nope")


def test_wrong_master_password(server: ServerProcess, client: KeyReleaseClient) -> None:
    with pytest.raises(ApiError) as info:
        KeyReleaseClient(server.url, ca_file=client.ca_file).create_token("x", master_password="wrong")
    assert (info.value.status, info.value.code) == (401, "password_invalid")


def test_expired_token_and_bad_expiry(server: ServerProcess, client: KeyReleaseClient) -> None:
    old = client.create_token("expired", "2001-01-01T00:00:00Z")
    with pytest.raises(ApiError) as info:
        KeyReleaseClient(server.url, old["token"], ca_file=client.ca_file).list_images()
    assert info.value.code == "token_expired"
    with pytest.raises(ApiError) as info:
        client.create_token("bad", "yesterday")
    assert (info.value.status, info.value.field) == (400, "expires_at")


def test_register_is_idempotent_and_check_mode_agrees(client: KeyReleaseClient, key_file: Path) -> None:
    options = {"name": "api-idem", "measurements": {1: m("a1"), "4": m("a4")}, "volume_key_file": str(key_file),
               "policy": {"smt": False, "min_abi": "1.51"},
               "min_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115, "fmc": None}}
    planned = cvm_register.apply(client, options, check_mode=True)
    assert (planned["changed"], planned["action"]) == (True, "create")
    assert client.find_image("api-idem") is None
    first = cvm_register.apply(client, options)
    assert (first["changed"], first["action"]) == (True, "created")
    assert first["image"]["content_sha256"] == first["content_sha256"] == planned["content_sha256"]
    assert cvm_register.apply(client, options, check_mode=True)["changed"] is False
    again = cvm_register.apply(client, options)
    assert (again["changed"], again["action"], again["id"]) == (False, "unchanged", first["id"])
    # The diff holds public facts only.
    assert "sealed_volume_key" not in repr(first["diff"]) and "volume_key_file" not in repr(first["diff"])
    assert first["diff"]["after"]["measurements"] == {"1": m("a1"), "4": m("a4")}


def test_conflicts_name_the_field_and_replace_replaces(client: KeyReleaseClient, key_file: Path,
                                                       tmp_path: Path) -> None:
    options = {"name": "api-conflict", "measurement": m("b1"), "volume_key_file": str(key_file)}
    created = cvm_register.apply(client, options)
    changed = dict(options, host_data="11" * 32)
    planned = None
    with pytest.raises(ApiError) as info:
        cvm_register.apply(client, changed, check_mode=True)
    assert (info.value.status, info.value.field) == (409, "name") and "host_data" in str(info.value)
    planned = cvm_register.apply(client, dict(changed, replace=True), check_mode=True)
    assert (planned["changed"], planned["action"]) == (True, "replace")
    assert planned["diff"]["after"]["host_data"] == "11" * 32 and planned["diff"]["before"]["host_data"] is None
    replaced = cvm_register.apply(client, dict(changed, replace=True))
    assert (replaced["changed"], replaced["action"], replaced["id"]) == (True, "replaced", created["id"])
    # Same public content, another volume key: the server tells (check mode cannot).
    other_key = tmp_path / "other.key"
    other_key.write_bytes(os.urandom(32))
    with pytest.raises(ApiError) as info:
        cvm_register.apply(client, dict(changed, volume_key_file=str(other_key)))
    assert (info.value.status, info.value.code, info.value.field) == (409, "image_exists", "name")
    assert "volume key" in str(info.value)
    # A measurement belongs to one image.
    with pytest.raises(ApiError) as info:
        cvm_register.apply(client, {"name": "api-conflict-2", "measurement": m("b1"),
                                    "volume_key_file": str(key_file)})
    assert (info.value.code, info.value.field) == ("measurement_registered", "measurements")


def test_server_validation_names_the_field(client: KeyReleaseClient, key_file: Path) -> None:
    with pytest.raises(ApiError) as info:
        cvm_register.apply(client, {"name": "api-bad", "measurement": "abc", "volume_key_file": str(key_file)})
    assert info.value.status == 400 and info.value.field.startswith("measurements")
    with pytest.raises(SnpError) as info:
        cvm_register.apply(client, {"name": "api-bad", "measurement": m("c1"), "volume_key_file": str(key_file),
                                    "policy": {"debug": True}})
    assert info.value.field == "policy"
    with pytest.raises(SnpError) as info:
        cvm_register.apply(client, {"name": "api-bad", "measurement": m("c1")})
    assert info.value.field == "sealed_volume_key"


def test_sealed_key_sources(server: ServerProcess, client: KeyReleaseClient, key_file: Path,
                            tmp_path: Path) -> None:
    public = client.ingestion_public_key()
    sealed_b64 = seal_volume_key_file(str(key_file), public, "api-sealed")
    raw = tmp_path / "sealed.bin"
    raw.write_bytes(base64.b64decode(sealed_b64))
    text = tmp_path / "sealed.b64"
    text.write_text(sealed_b64 + "\n")
    base = {"name": "api-sealed", "measurement": m("d1")}
    first = cvm_register.apply(client, dict(base, sealed_volume_key_file=str(raw)))
    assert first["action"] == "created"
    # Every source of the same key is the same registration.
    assert cvm_register.apply(client, dict(base, sealed_volume_key_file=str(text)))["changed"] is False
    assert cvm_register.apply(client, dict(base, sealed_volume_key=sealed_b64))["changed"] is False
    assert cvm_register.apply(client, dict(base, volume_key_file=str(key_file)))["changed"] is False
    # Sealed for another image name: the server refuses to open it.
    with pytest.raises(ApiError) as info:
        cvm_register.apply(client, {"name": "api-sealed-other", "measurement": m("d2"),
                                    "sealed_volume_key": sealed_b64})
    assert (info.value.status, info.value.field) == (400, "sealed_volume_key")
    with pytest.raises(SnpError, match="plaintext"):
        client.register_image({"name": "x", "volume_key": "secret"})
    big = tmp_path / "big.key"
    big.write_bytes(b"k" * 4096)
    with pytest.raises(SnpError) as info:
        seal_volume_key_file(str(big), public, "x")
    assert info.value.field == "volume_key_file"


def test_enable_disable_bundle_delete(client: KeyReleaseClient, key_file: Path, tmp_path: Path) -> None:
    kernel, initrd, firmware = tmp_path / "vmlinuz", tmp_path / "initrd.img", tmp_path / "OVMF.fd"
    kernel.write_bytes(os.urandom(4096))
    initrd.write_bytes(os.urandom(8192))
    firmware.write_bytes(os.urandom(2048))
    options = {"name": "api-bundle", "measurements": {2: m("e2")}, "volume_key_file": str(key_file),
               "kernel": str(kernel), "initrd": str(initrd), "firmware": str(firmware),
               "cmdline": "console=ttyS0", "generate_id_keys": True, "launch": {"vmm_type": "QEMU"}}
    created = cvm_register.apply(client, options)
    image = created["image"]
    assert image["generated_id_key_digest"] and image["measurements"][0]["id_block"]
    # Generated ID keys sign anew, yet the same content is still the same registration.
    assert cvm_register.apply(client, options)["changed"] is False
    data, digest = client.bundle(image["id"])
    assert digest == image["bundle_sha256"] == hashlib.sha256(data).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = set(tar.getnames())
        assert tar.extractfile("kernel").read() == kernel.read_bytes()
    assert {"kernel", "initrd", "cmdline", "launch.json", "id_block.b64", "id_auth.b64"} <= names  # one vCPU count
    assert client.set_image_enabled(image["id"], False)["enabled"] is False
    assert cvm_register.apply(client, options)["changed"] is False  # keeps its state when not asked
    enabled = cvm_register.apply(client, dict(options, enabled=True))
    assert enabled["changed"] is True and enabled["image"]["enabled"] is True
    assert client.resolve_image("api-bundle")["id"] == client.resolve_image(image["id"])["id"]
    gone = cvm_register.apply(client, {"name": "api-bundle", "state": "absent"})
    assert (gone["changed"], gone["action"]) == (True, "deleted")
    assert cvm_register.apply(client, {"name": "api-bundle", "state": "absent"})["changed"] is False
    with pytest.raises(ApiError) as info:
        client.get_image(image["id"])
    assert (info.value.status, info.value.code, info.value.field) == (404, "not_found", "id")
    with pytest.raises(SnpError):
        client.get_image("../etc/passwd")


def test_prebuilt_bundle(client: KeyReleaseClient, key_file: Path, tmp_path: Path) -> None:
    source = {"name": "api-src", "measurement": m("f1"), "volume_key_file": str(key_file),
              "kernel": str(key_file), "initrd": str(key_file), "firmware_sha384": "ab" * 48}
    data, _digest = client.bundle(cvm_register.apply(client, source)["id"])
    path = tmp_path / "prebuilt.tar.gz"
    path.write_bytes(data)
    options = {"name": "api-prebuilt", "measurement": m("f2"), "volume_key_file": str(key_file),
               "bundle": str(path)}
    created = cvm_register.apply(client, options)
    assert created["image"]["bundle_sha256"] == hashlib.sha256(data).hexdigest()
    assert cvm_register.apply(client, options, check_mode=True)["changed"] is False


@pytest.mark.parametrize("extra", [
    {},
    {"vcpu_type": "EPYC-v4", "guest_svn": 3, "family_id": "0x" + "AB" * 16, "image_id": "cd" * 16},
    {"id_key_digests": ["AA" * 48, "0x" + "bb" * 48], "author_key_digests": ["cc" * 48]},
    {"policy": {"allow_debug": True, "single_socket": True, "migrate_ma": False, "cxl_allow": False}},
    {"min_tcb": {"bootloader": 1, "tee": 2, "snp": 3, "microcode": 4, "fmc": 5}, "host_data": "EE" * 32},
])
def test_content_digest_matches_the_server(client: KeyReleaseClient, key_file: Path, extra: dict) -> None:
    name = f"digest-{hashlib.sha256(repr(extra).encode()).hexdigest()[:10]}"
    body = cvm_register.build_body({"name": name, "measurements": {"3": m("9" + name[-1])}, **extra})
    body["sealed_volume_key"] = client.seal_key(bytearray(key_file.read_bytes()), name)
    _status, image = client.register_image(body)
    assert image["content_sha256"] == content_digest(body, artifact_digests(body))


def test_attestation_refusal_names_the_check(server: ServerProcess, client: KeyReleaseClient, sim) -> None:
    """The client maps a refusal's check; the agent's report is for an unregistered measurement."""
    agent = Agent(sim)
    with server.client() as http:
        challenge = http.post("/attest/challenge").json()
    nonce = base64.b64decode(challenge["nonce"])
    from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import AgentSession

    session = AgentSession()
    report = sim.report(measurement=bytes.fromhex("7f" * 48), report_data=session.report_data(nonce))
    body = {"session_id": challenge["session_id"], "report": base64.b64encode(report).decode(),
            "agent_public_key": base64.b64encode(session.public_key).decode(), "certs": agent.certs()}
    with pytest.raises(ApiError) as info:
        client.request("POST", "/attest/verify", body, auth="none")
    assert (info.value.status, info.value.code) == (403, "attestation_refused")
    assert info.value.check and info.value.field == f"check {info.value.check}"
    assert info.value.as_dict()["check"] == info.value.check
