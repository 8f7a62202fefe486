# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""State files, key rotation, backup and restore (issue 8): each against real servers and real files.

* The data dir: created 0700, refused when group/world-accessible, files tightened to 0600.
* ``rotate-kek``: every blob re-wrapped in one transaction; a running server on the host
  follows the new file; the old KEK opens nothing any more; an interrupted rotation is
  finished or undone at the next start.
* ``rotate-ingestion-key``: the new key is published; registrations sealed to the old one
  are accepted during the grace period and refused after it.
* ``backup`` / ``restore``: onto a fresh data dir (a fresh machine: nothing shared but the
  file), the restored server keeps its CA and releases the same volume key; SQLite into
  PostgreSQL too.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from servers import Agent, ServerProcess, register, snpguard_cmd, snpguard_env

from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.protocol import seal_for_ingestion

MEASUREMENT = bytes([0x61]) * 48


def cli(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(snpguard_cmd("server", *argv), env=snpguard_env(), capture_output=True, text=True,
                            check=False)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the data dir -----------------------------------------------------------------------------------------


def test_a_group_readable_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    result = cli("init", "--data-dir", str(data), check=False)
    assert result.returncode != 0
    assert "data_dir" in result.stderr and "0755" in result.stderr and "chmod 700" in result.stderr
    assert not (data / "snpguard.db").exists() and not (data / "kek.key").exists()


def test_state_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = subprocess.run(["sh", "-c", "umask 022 && exec \"$@\"", "sh",
                             *snpguard_cmd("server", "init", "--data-dir", str(data))],
                            env=snpguard_env(), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert mode(data) == 0o700
    for path in data.rglob("*"):
        if path.is_file() and path.read_bytes().startswith(b"-----BEGIN CERTIFICATE"):
            continue  # public certificates (the CA clients pin) may be readable; keys and state may not
        assert mode(path) & 0o077 == 0, f"{path} is {mode(path):04o}"
    # A file made wider by hand (or by an older version) is tightened at the next start.
    (data / "snpguard.db").chmod(0o644)
    cli("init", "--data-dir", str(data))
    assert mode(data / "snpguard.db") == 0o600


# -- KEK rotation --------------------------------------------------------------------------------------------


def test_rotate_kek_rewraps_everything_and_a_running_server_follows(tmp_path: Path, sim, sim_root: Path) -> None:
    proc = ServerProcess(tmp_path / "data", ["--simulated-root", str(sim_root), "--offline"]).start()
    try:
        key = os.urandom(32)
        with proc.client(proc.mint_token()) as admin:
            made = register(admin, "rotating", {"1": MEASUREMENT.hex()}, key, generate_id_keys=True)
            assert made.status_code == 201, made.text
            digest = bytes.fromhex(made.json()["generated_id_key_digest"])
            old_kek = (proc.data_dir / "kek.key").read_bytes()
            out = cli("rotate-kek", "--data-dir", str(proc.data_dir)).stdout
            assert "3 stored keys re-wrapped" in out  # ingestion key, volume key, ID key
            new_kek = (proc.data_dir / "kek.key").read_bytes()
            assert new_kek != old_kek and mode(proc.data_dir / "kek.key") == 0o600
            assert not (proc.data_dir / "kek.key.new").exists()
            # The running server picks up the new file: it still releases, and registers.
            response, opened, _body = Agent(sim).handshake(admin, MEASUREMENT, id_key_digest=digest)
            assert response.status_code == 200, response.text
            assert bytes(opened) == key
            assert register(admin, "after-rotation", {"1": (b"\x62" * 48).hex()}, os.urandom(32)).status_code == 201
    finally:
        proc.stop()
    # The old KEK opens nothing: a server started with it refuses to start.
    (tmp_path / "old.key").write_bytes(old_kek)
    (tmp_path / "old.key").chmod(0o600)
    result = cli("init", "--data-dir", str(proc.data_dir), "--kek-file", str(tmp_path / "old.key"), check=False)
    assert result.returncode != 0 and "kek_file" in result.stderr


def test_a_replica_with_the_old_kek_refuses_to_register(tmp_path: Path, pg_url: str) -> None:
    """Two hosts on one PostgreSQL: after rotation on one, the other (old KEK file) must not write blobs."""
    first = ServerProcess(tmp_path / "a", ["--offline", "--db-url", pg_url]).start()
    try:
        (tmp_path / "b").mkdir(mode=0o700)
        (tmp_path / "b" / "kek.key").write_bytes((tmp_path / "a" / "kek.key").read_bytes())
        (tmp_path / "b" / "kek.key").chmod(0o600)
        second = ServerProcess(tmp_path / "b", ["--offline", "--db-url", pg_url]).start()
        try:
            cli("rotate-kek", "--data-dir", str(first.data_dir), "--db-url", pg_url)
            with second.client(first.mint_token()) as admin:
                response = register(admin, "stale-replica", {"1": (b"\x63" * 48).hex()}, os.urandom(32))
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "kek_changed"
        finally:
            second.stop()
    finally:
        first.stop()


def test_an_interrupted_rotation_is_finished_at_the_next_start(tmp_path: Path) -> None:
    """A crash after the re-wrap committed but before the rename: the next start finishes the rename."""
    from ansible_collections.snpguard.cvm.server import keys
    from ansible_collections.snpguard.cvm.server.engine import make_engine

    data = tmp_path / "data"
    cli("init", "--data-dir", str(data))
    engine = make_engine(f"sqlite+pysqlite:///{data / 'snpguard.db'}", pool_size=1)
    original = os.replace
    try:
        def crash(src: str, dst: str) -> None:
            raise KeyboardInterrupt("power cut")

        os.replace = crash  # type: ignore[assignment]
        with pytest.raises(KeyboardInterrupt):
            keys.rotate_kek(engine, str(data / "kek.key"))
    finally:
        os.replace = original  # type: ignore[assignment]
        engine.dispose()
    assert (data / "kek.key.new").exists()  # what a power cut after the commit leaves behind
    out = cli("init", "--data-dir", str(data)).stdout  # opens the ingestion key: only the new KEK can
    assert not (data / "kek.key.new").exists()
    assert "already initialised" in out


def test_a_rotation_that_never_committed_is_undone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cli("init", "--data-dir", str(data))
    kek = (data / "kek.key").read_bytes()
    (data / "kek.key.new").write_bytes(os.urandom(32))
    (data / "kek.key.new").chmod(0o600)
    cli("init", "--data-dir", str(data))
    assert not (data / "kek.key.new").exists() and (data / "kek.key").read_bytes() == kek


# -- ingestion-key rotation ------------------------------------------------------------------------------------


def test_rotate_ingestion_key_with_a_grace_period(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data", ["--offline"]).start()
    try:
        with proc.client(proc.mint_token()) as admin:
            old_public = base64.b64decode(admin.get("/public/info").json()["ingestion_public_key"])
            sealed_early = seal_for_ingestion(os.urandom(32), old_public, "sealed-before")
            cli("rotate-ingestion-key", "--data-dir", str(proc.data_dir), "--grace", "1h")
            new_public = base64.b64decode(admin.get("/public/info").json()["ingestion_public_key"])
            assert new_public != old_public
            body = {"name": "sealed-before", "measurements": {"1": (b"\x64" * 48).hex()},
                    "sealed_volume_key": base64.b64encode(sealed_early).decode()}
            assert admin.post("/images", json=body).status_code == 201  # the old key, within its grace
            assert register(admin, "sealed-after", {"1": (b"\x65" * 48).hex()}, os.urandom(32)).status_code == 201
            # A grace of 0: the key sealed to the first key no longer registers.
            cli("rotate-ingestion-key", "--data-dir", str(proc.data_dir), "--grace", "0")
            older = seal_for_ingestion(os.urandom(32), new_public, "too-late")
            cli("rotate-ingestion-key", "--data-dir", str(proc.data_dir), "--grace", "0")
            body = {"name": "too-late", "measurements": {"1": (b"\x66" * 48).hex()},
                    "sealed_volume_key": base64.b64encode(older).decode()}
            response = admin.post("/images", json=body)
            assert response.status_code == 400 and response.json()["error"]["field"] == "sealed_volume_key"
    finally:
        proc.stop()


# -- backup and restore ----------------------------------------------------------------------------------------------


def _backup_with_image(tmp_path: Path, sim_root: Path) -> tuple[Path, bytes, str, str]:
    source = ServerProcess(tmp_path / "source", ["--simulated-root", str(sim_root), "--offline"]).start()
    try:
        key = os.urandom(32)
        token = source.mint_token("survives")
        with source.client(token) as admin:
            assert register(admin, "backed-up", {"1": MEASUREMENT.hex()}, key).status_code == 201
            ca = admin.get("/public/info").json()["tls_ca_sha256"]
        backup = tmp_path / "snpguard.backup"
        out = cli("backup", "--data-dir", str(source.data_dir), "--out", str(backup)).stdout
        assert "images 1" in out and "tokens 1" in out
    finally:
        source.stop()
    assert mode(backup) == 0o600
    with tarfile.open(backup) as tar:
        names = set(tar.getnames())
    assert {"manifest.json", "kek.key", "tls/ca.pem", "tables/images.jsonl"} <= names
    return backup, key, token, ca


def test_restore_onto_a_fresh_machine_releases_the_key(tmp_path: Path, sim, sim_root: Path) -> None:
    backup, key, token, ca = _backup_with_image(tmp_path, sim_root)
    fresh = tmp_path / "fresh-machine" / "data"
    fresh.parent.mkdir()
    cli("restore", str(backup), "--data-dir", str(fresh))
    restored = ServerProcess(fresh, ["--simulated-root", str(sim_root), "--offline"]).start()
    try:
        with restored.client(token) as admin:  # the old token works, the CA is the same one clients pinned
            assert admin.get("/public/info").json()["tls_ca_sha256"] == ca
            response, opened, _body = Agent(sim).handshake(admin, MEASUREMENT)
            assert response.status_code == 200 and bytes(opened) == key
    finally:
        restored.stop()
    # Restoring over existing state is refused (nothing is overwritten).
    result = cli("restore", str(backup), "--data-dir", str(fresh), check=False)
    assert result.returncode != 0 and "empty data dir" in result.stderr


def test_restore_sqlite_backup_into_postgresql(tmp_path: Path, sim, sim_root: Path, pg_url: str) -> None:
    backup, key, token, _ca = _backup_with_image(tmp_path, sim_root)
    fresh = tmp_path / "pg-machine" / "data"
    fresh.parent.mkdir()
    cli("restore", str(backup), "--data-dir", str(fresh), "--db-url", pg_url)
    restored = ServerProcess(fresh, ["--simulated-root", str(sim_root), "--offline", "--db-url", pg_url]).start()
    try:
        with restored.client(token) as admin:
            response, opened, _body = Agent(sim).handshake(admin, MEASUREMENT)
            assert response.status_code == 200 and bytes(opened) == key
            assert admin.get("/audit").json()["items"][0]["result"] == "released"
    finally:
        restored.stop()


def test_a_tampered_backup_is_refused(tmp_path: Path, sim_root: Path) -> None:
    backup, _key, _token, _ca = _backup_with_image(tmp_path, sim_root)
    import io

    forged = tmp_path / "forged.backup"
    with tarfile.open(backup) as source, tarfile.open(forged, "w:gz") as tar:
        for member in source:
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "kek.key":
                data = os.urandom(32)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    target = tmp_path / "target"
    result = cli("restore", str(forged), "--data-dir", str(target), check=False)
    assert result.returncode != 0 and "kek.key does not match" in result.stderr
    assert not (target / "kek.key").exists()
