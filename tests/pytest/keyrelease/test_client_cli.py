# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""``snpguard config|image|token`` as a person runs them, against a real server.

Each command is a subprocess with its own HOME/XDG_CONFIG_HOME, so ``config login``
writes (and the other commands read) a real ~/.config/snpguard/config.json.
"""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from servers import ServerProcess, snpguard_cmd, snpguard_env

from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.admin_client import ca_fingerprint_pem


def m(byte: str) -> str:
    return byte * 48


class Cli:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = snpguard_env()
        self.env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
        for name in ("SNPGUARD_URL", "SNPGUARD_TOKEN", "SNPGUARD_CA_FILE", "SNPGUARD_CONFIG",
                     "SNPGUARD_MASTER_PASSWORD"):
            self.env.pop(name, None)

    def run(self, *argv: str, ok: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(snpguard_cmd(*argv), env={**self.env, **(env or {})}, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120, check=False)
        if ok:
            assert proc.returncode == 0, f"{argv}: {proc.stdout}\n{proc.stderr}"
        return proc

    def json(self, *argv: str) -> Any:
        return json.loads(self.run(*argv, "--json").stdout)

    @property
    def config(self) -> Path:
        return self.home / ".config" / "snpguard" / "config.json"


@pytest.fixture(scope="module")
def token(server: ServerProcess) -> str:
    return server.mint_token("cli-tests")


@pytest.fixture(scope="module")
def cli(server: ServerProcess, token: str, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A user who logged in once (trusting the CA on first use)."""
    user = Cli(tmp_path_factory.mktemp("cli-home"))
    user.run("config", "login", "--url", server.base, "--token", token, "--yes")
    return user


def test_login_pins_the_ca_and_stores_0600(server: ServerProcess, token: str, tmp_path: Path) -> None:
    user = Cli(tmp_path)
    fingerprint = ca_fingerprint_pem((server.data_dir / "tls" / "ca.pem").read_bytes())
    out = user.run("config", "login", "--url", server.base, "--token", token, "--yes").stdout
    assert fingerprint in out and "configuration saved" in out
    assert stat.S_IMODE(user.config.stat().st_mode) == 0o600
    assert stat.S_IMODE(user.config.parent.stat().st_mode) == 0o700
    saved = json.loads(user.config.read_text())
    assert saved["url"] == server.url and saved["ca_sha256"] == fingerprint and saved["token"] == token
    assert Path(saved["ca_file"]).read_bytes().strip() == (server.data_dir / "tls" / "ca.pem").read_bytes().strip()
    shown = user.json("config", "show")
    assert shown["token_id"] == token.split("_")[1] and token not in json.dumps(shown)


def test_login_token_from_the_environment(server: ServerProcess, token: str, tmp_path: Path) -> None:
    user = Cli(tmp_path)
    proc = user.run("config", "login", "--url", server.base, "--yes", env={"SNPGUARD_TOKEN": token})
    assert "configuration saved" in proc.stdout and "warning" not in proc.stderr
    assert json.loads(user.config.read_text())["token"] == token


def test_login_token_on_the_command_line_warns(server: ServerProcess, token: str, tmp_path: Path) -> None:
    user = Cli(tmp_path)
    proc = user.run("config", "login", "--url", server.base, "--token", token, "--yes")
    assert "warning: --token puts the API token in the process list" in proc.stderr
    assert "shell history" in proc.stderr and json.loads(user.config.read_text())["token"] == token


def test_login_without_token_or_terminal_is_a_usage_error(server: ServerProcess, tmp_path: Path) -> None:
    user = Cli(tmp_path)
    proc = user.run("config", "login", "--url", server.base, "--yes", ok=False)
    assert proc.returncode == 2 and "SNPGUARD_TOKEN" in proc.stderr and "terminal" in proc.stderr
    assert proc.stdout == "" and not user.config.exists()  # refused before contacting the server
    proc = user.run("config", "login", "--url", server.base, "--yes", "--json", ok=False)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 2 and doc["exit_code"] == 2
    assert doc["error"]["field"] == "token" and doc["error"]["code"] == "no_token"


def _read_until(fd: int, needle: bytes, seen: bytearray, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {needle!r} from the terminal; got {bytes(seen)!r}"
        ready, _w, _x = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            assert chunk, f"the terminal closed before {needle!r}; got {bytes(seen)!r}"
            seen += chunk


def test_login_prompts_for_the_token_on_a_terminal(server: ServerProcess, token: str, tmp_path: Path) -> None:
    """On a pseudo-terminal, with no SNPGUARD_TOKEN and no --token, login asks; the answer is not echoed."""
    user = Cli(tmp_path)
    argv = snpguard_cmd("config", "login", "--url", server.base, "--yes")
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        try:
            os.execve(argv[0], argv, user.env)
        finally:
            os._exit(127)
    seen = bytearray()
    try:
        _read_until(fd, b"API token (input hidden): ", seen)
        os.write(fd, token.encode() + b"\n")
        _read_until(fd, b"configuration saved", seen)
        with_rest = bytearray()
        while True:  # drain until the child closes the terminal
            ready, _w, _x = select.select([fd], [], [], 30)
            try:
                chunk = os.read(fd, 4096) if ready else b""
            except OSError:
                chunk = b""
            if not chunk:
                break
            with_rest += chunk
        seen += with_rest
    finally:
        _pid, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, bytes(seen)
    assert token.encode() not in seen and b"warning" not in seen
    assert json.loads(user.config.read_text())["token"] == token


def test_login_declined_on_a_terminal(server: ServerProcess, token: str, tmp_path: Path) -> None:
    """Answering no is a refusal (exit 1); the question goes to stderr, so --json keeps stdout one document."""
    user = Cli(tmp_path)
    for extra in ((), ("--json",)):
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen(snpguard_cmd("config", "login", "--url", server.base, *extra), stdin=slave,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env={**user.env, "SNPGUARD_TOKEN": token})
            os.write(master, b"n\n")
            out, err = proc.communicate(timeout=60)
        finally:
            os.close(master)
            os.close(slave)
        assert proc.returncode == 1, (out, err)
        assert "Trust this CA for this server? [y/N]" in err and not user.config.exists()
        if extra:
            doc = json.loads(out)
            assert doc["exit_code"] == 1 and doc["error"]["code"] == "declined"
        else:
            assert "not saved" in out


def test_login_without_a_terminal_needs_yes(server: ServerProcess, token: str, tmp_path: Path) -> None:
    user = Cli(tmp_path)
    proc = user.run("config", "login", "--url", server.base, "--token", token, ok=False)
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert not user.config.exists()


def test_login_with_expected_fingerprint(server: ServerProcess, token: str, tmp_path: Path) -> None:
    user = Cli(tmp_path)
    proc = user.run("config", "login", "--url", server.base, "--token", token, "--ca-sha256", "00" * 32, ok=False)
    assert proc.returncode == 1 and "not the expected" in proc.stderr and not user.config.exists()  # refused
    fingerprint = ca_fingerprint_pem((server.data_dir / "tls" / "ca.pem").read_bytes())
    summary = user.json("config", "login", "--url", server.url, "--token", token, "--ca-sha256", fingerprint.upper())
    assert summary["ca_sha256"] == fingerprint


def test_login_with_ca_file_and_a_bad_token(server: ServerProcess, token: str, tmp_path: Path) -> None:
    user = Cli(tmp_path)
    ca = str(server.data_dir / "tls" / "ca.pem")
    bad = "sgt_0123456789abcdef_" + "A" * 43
    proc = user.run("config", "login", "--url", server.base, "--token", bad, "--ca-file", ca, ok=False)
    assert proc.returncode == 1 and "401" in proc.stderr and not user.config.exists()  # the server refused
    assert not (user.config.parent / "ca.pem").exists()
    user.run("config", "login", "--url", server.base, "--token", token, "--ca-file", ca)
    assert isinstance(user.json("image", "list"), list)


def test_no_configuration(tmp_path: Path) -> None:
    proc = Cli(tmp_path).run("image", "list", ok=False)
    assert proc.returncode == 2 and "config login" in proc.stderr


def test_image_commands(cli: Cli, tmp_path: Path) -> None:
    key = tmp_path / "volume.key"
    key.write_bytes(os.urandom(32))
    args = ["image", "register", "cli-image", "--measurement", m("c1"), "--measurement", "4=" + m("c4"),
            "--policy", "smt=false", "--policy", "min_abi=1.51", "--min-tcb", "bootloader=1", "--min-tcb", "tee=0",
            "--min-tcb", "snp=8", "--min-tcb", "microcode=100", "--host-data", "ab" * 32,
            "--volume-key-file", str(key)]
    assert "would be created" in cli.run(*args, "--check").stdout
    created = cli.json(*args)
    assert created["action"] == "created" and created["changed"] is True
    assert "unchanged" in cli.run(*args).stdout
    assert cli.json(*args, "--check")["changed"] is False
    conflict = cli.run(*[a if a != "ab" * 32 else "cd" * 32 for a in args], ok=False)
    assert conflict.returncode == 1 and "host_data" in conflict.stderr and "replace" in conflict.stderr
    listed = cli.run("image", "list").stdout
    assert "cli-image" in listed and created["id"] in listed
    shown = cli.json("image", "show", "cli-image")
    assert shown["id"] == created["id"] and [x["vcpus"] for x in shown["measurements"]] == [1, 4]
    assert shown["policy"]["smt"] is False and shown["min_tcb"]["snp"] == 8
    human = cli.run("image", "show", created["id"]).stdout
    assert "4 vCPUs: " + m("c4") in human and "min TCB:" in human
    assert "disabled" in cli.run("image", "disable", "cli-image").stdout
    assert "(already)" in cli.run("image", "disable", "cli-image").stdout
    assert cli.json("image", "enable", "cli-image")["enabled"] is True
    missing = cli.run("image", "bundle", "cli-image", ok=False)
    assert missing.returncode == 1 and "404" in missing.stderr
    refused = cli.run("image", "delete", "cli-image", ok=False)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert "deleted" in cli.run("image", "delete", "cli-image", "--yes").stdout
    gone = cli.run("image", "show", "cli-image", ok=False)
    assert gone.returncode == 1 and "no image named" in gone.stderr


def test_image_bundle_download(cli: Cli, tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(os.urandom(1024))
    initrd.write_bytes(os.urandom(1024))
    key = tmp_path / "volume.key"
    key.write_bytes(os.urandom(64))
    cli.run("image", "register", "cli-bundle", "--measurement", m("b1"), "--volume-key-file", str(key),
            "--kernel", str(kernel), "--initrd", str(initrd), "--firmware-sha384", "12" * 48, "--cmdline", "quiet",
            "--generate-id-keys")
    out = tmp_path / "dl.tar.gz"
    result = cli.json("image", "bundle", "cli-bundle", "-o", str(out))
    assert out.stat().st_size == result["size"] and result["sha256"] == cli.json("image", "show",
                                                                                 "cli-bundle")["bundle_sha256"]
    cwd_run = subprocess.run(snpguard_cmd("image", "bundle", "cli-bundle"), env=cli.env, cwd=tmp_path,
                             capture_output=True, text=True, check=True)
    assert (tmp_path / "cli-bundle.bundle.tar.gz").read_bytes() == out.read_bytes(), cwd_run.stderr


def test_token_commands(server: ServerProcess, cli: Cli, tmp_path: Path) -> None:
    proc = cli.run("token", "create", "cli-made")
    secret = proc.stdout.strip()
    assert secret.startswith("sgt_") and "shown only this once" in proc.stderr
    ident = secret.split("_")[1]
    listed = cli.json("token", "list")
    assert any(t["id"] == ident and t["state"] == "active" for t in listed)
    assert secret not in cli.run("token", "list").stdout
    # The master password (file or environment) mints a token without an API token.
    password_file = tmp_path / "pw"
    password_file.write_text(server.master_password() + "\n")
    fresh = Cli(tmp_path / "fresh")
    bootstrap = fresh.json("token", "create", "bootstrap", "--url", server.base,
                           "--ca-file", str(server.data_dir / "tls" / "ca.pem"),
                           "--master-password-file", str(password_file))
    assert bootstrap["token"].startswith("sgt_")
    expiring = cli.json("token", "create", "short", "--expires-at", "2099-01-01T00:00:00Z")
    assert expiring["expires_at"].startswith("2099-01-01")
    assert "revoked" in cli.run("token", "revoke", ident).stdout
    assert cli.json("token", "revoke", bootstrap["token"])["revoked"] is True
    states = {t["id"]: t["state"] for t in cli.json("token", "list")}
    assert states[ident] == "revoked" and states[bootstrap["id"]] == "revoked"
    unknown = cli.run("token", "revoke", "fedcba9876543210", ok=False)
    assert unknown.returncode == 1 and "no token" in unknown.stderr


def test_environment_overrides_the_saved_token(cli: Cli) -> None:
    proc = cli.run("image", "list", ok=False, env={"SNPGUARD_TOKEN": "sgt_0123456789abcdef_" + "B" * 43})
    assert proc.returncode == 1 and "token" in proc.stderr  # 401: the server refused it
