# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Token lineage and scopes (issue 8, item 7): a child never outlives or outranks its parent;
revoking cascades; minting needs the master password or an admin token; an operator token
sees and revokes only its own lineage.  Also: tokens from before lineage become admin tokens."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from servers import ServerProcess, snpguard_cmd, snpguard_env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("lineage") / "data", ["--offline"])
    proc.start()
    yield proc
    proc.stop()


def mint(server: ServerProcess, token: str | None, **body: object) -> httpx.Response:
    body.setdefault("name", "child")
    if token is None:
        with server.client() as client:
            return client.post("/tokens", json=body, auth=("admin", server.master_password() or ""))
    with server.client(token) as client:
        return client.post("/tokens", json=body)


def iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")


def test_the_master_password_mints_operator_tokens_by_default(server: ServerProcess) -> None:
    made = mint(server, None).json()
    assert made["scope"] == "operator" and made["parent_id"] is None


def test_an_operator_token_mints_nothing(server: ServerProcess) -> None:
    operator = mint(server, None, scope="operator").json()["token"]
    response = mint(server, operator)
    assert response.status_code == 403 and response.json()["error"]["field"] == "scope"
    assert "admin" in response.json()["error"]["message"]


def test_a_child_never_outranks_its_parent(server: ServerProcess) -> None:
    admin = mint(server, None, scope="admin").json()["token"]
    child = mint(server, admin, scope="operator").json()
    assert child["scope"] == "operator" and child["parent_id"] == admin.split("_")[1]
    grandchild = mint(server, child["token"], scope="admin")  # an operator may not mint at all, let alone admin
    assert grandchild.status_code == 403


def test_a_child_never_outlives_its_parent(server: ServerProcess) -> None:
    parent = mint(server, None, scope="admin", expires_at=iso(timedelta(days=1))).json()
    inherited = mint(server, parent["token"]).json()
    assert inherited["expires_at"] == parent["expires_at"]  # no expiry asked: the parent's
    shorter = mint(server, parent["token"], expires_at=iso(timedelta(hours=1))).json()
    assert shorter["expires_at"] < parent["expires_at"]
    longer = mint(server, parent["token"], expires_at=iso(timedelta(days=30)))
    assert longer.status_code == 400 and longer.json()["error"]["field"] == "expires_at"


def test_revoking_cascades_to_every_descendant(server: ServerProcess) -> None:
    root = mint(server, None, scope="admin", name="root").json()
    child = mint(server, root["token"], scope="admin", name="child").json()
    grandchild = mint(server, child["token"], name="grandchild").json()
    with server.client(grandchild["token"]) as client:
        assert client.get("/images").status_code == 200
    with server.client(server.mint_token("revoker")) as admin:
        revoked = admin.delete(f"/tokens/{root['id']}").json()
    assert revoked["revoked"] is True and sorted(revoked["cascaded"]) == sorted([child["id"], grandchild["id"]])
    for token in (root, child, grandchild):
        with server.client(token["token"]) as client:
            response = client.get("/images")
            assert response.status_code == 401 and response.json()["error"]["code"] == "token_revoked"


def test_an_operator_sees_and_revokes_only_its_own_lineage(server: ServerProcess) -> None:
    admin = mint(server, None, scope="admin", name="admin").json()
    operator = mint(server, admin["token"], name="op").json()
    other = mint(server, None, name="someone-else").json()
    with server.client(operator["token"]) as client:
        listed = [t["id"] for t in client.get("/tokens").json()["items"]]
        assert listed == [operator["id"]]
        response = client.delete(f"/tokens/{other['id']}")
        assert response.status_code == 404  # not even told that it exists
        response = client.delete(f"/tokens/{admin['id']}")  # its parent: above it, so not its to revoke
        assert response.status_code == 404
        assert client.delete(f"/tokens/{operator['id']}").json()["revoked"] is True  # itself: yes
    with server.client(other["token"]) as client:
        assert client.get("/images").status_code == 200
    with server.client(admin["token"]) as client:
        assert client.get("/images").status_code == 200
        assert {operator["id"], other["id"], admin["id"]} <= {t["id"] for t in client.get("/tokens").json()["items"]}


def test_an_expired_token_mints_nothing(server: ServerProcess) -> None:
    expired = mint(server, None, scope="admin", expires_at=iso(timedelta(days=-1))).json()
    response = mint(server, expired["token"])
    assert response.status_code == 401 and response.json()["error"]["code"] == "token_expired"


def test_tokens_from_before_lineage_become_admin_tokens(tmp_path: Path) -> None:
    """A database at revision 0001 with a token: after the upgrade that token is an admin without a parent."""
    from sqlalchemy import insert, text

    from ansible_collections.snpguard.cvm.server.engine import make_engine
    from ansible_collections.snpguard.cvm.server.tables import migrate

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    engine = make_engine(f"sqlite+pysqlite:///{data / 'snpguard.db'}", pool_size=1)
    migrate(engine, "0001")
    from sqlalchemy import Column, MetaData, String, Table

    old_tokens = Table("tokens", MetaData(), Column("id", String), Column("name", String),
                       Column("secret_hash", String), Column("created_at"), Column("expires_at"),
                       Column("revoked_at"), Column("last_used_at"))
    with engine.begin() as conn:
        conn.execute(insert(old_tokens).values(id="00112233445566aa", name="old", secret_hash="x", created_at=1))
    engine.dispose()
    subprocess.run(snpguard_cmd("server", "init", "--data-dir", str(data)), env=snpguard_env(), check=True,
                   capture_output=True)
    engine = make_engine(f"sqlite+pysqlite:///{data / 'snpguard.db'}", pool_size=1)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT scope, parent_id FROM tokens WHERE id = '00112233445566aa'")).one()
    engine.dispose()
    assert tuple(row) == ("admin", None)
