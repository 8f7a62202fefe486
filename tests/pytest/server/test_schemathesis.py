# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""schemathesis against /v1/openapi.json of a real server: no 5xx, and the document tells the truth.

Deterministic generation, bounded examples.  Beyond "no server error" every check
schemathesis has is on (status codes, content types, response schemas, Allow
headers, refusing schema-violating input, auth really enforced) except
``positive_data_acceptance``: a schema-valid body can still be refused with a 4xx
for what no schema can say (a sealed key that does not open, an unknown session).
Token revocation runs in a second pass so the fuzzer cannot revoke its own token.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from servers import ServerProcess, register

MAX_EXAMPLES = 25


def _schemathesis(server: ServerProcess, token: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    argv = [exe, "run", server.url + "/openapi.json", "--tls-verify", str(server.data_dir / "tls" / "ca.pem"),
            "-H", f"Authorization: Bearer {token}", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic", "--no-color",
            "--phases", "examples,coverage,fuzzing", "--generation-with-security-parameters", "false",
            "--request-timeout", "30", *extra]
    env = dict(os.environ, SCHEMATHESIS_HOOKS="", NO_COLOR="1")
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=400, check=False)


@pytest.mark.slow
def test_openapi_fuzzing_finds_no_server_error(tmp_path: Path, sim_root: Path) -> None:
    proc = ServerProcess(tmp_path / "data", ["--simulated-root", str(sim_root), "--offline",
                                             "--rate-limit", "100000"]).start()
    try:
        token = proc.mint_token("schemathesis")
        with proc.client(token) as client:
            artifacts = {"kernel_b64": "AAAA", "initrd_b64": "AAAA", "cmdline": "x", "firmware_sha384": "ab" * 48}
            image = register(client, "fuzz", {"1": "ab" * 48}, os.urandom(32), artifacts=artifacts).json()
            # Real ids for the {image_id} operations (else they would only ever see 404s).
            (tmp_path / "schemathesis.toml").write_text(f'parameters = {{ image_id = "{image["id"]}" }}\n')
            main = _schemathesis(proc, token, tmp_path, "--exclude-operation-id", "revoke_token")
            assert main.returncode == 0, main.stdout[-6000:] + main.stderr[-2000:]
            revoke = _schemathesis(proc, token, tmp_path, "--include-operation-id", "revoke_token")
            assert revoke.returncode == 0, revoke.stdout[-6000:] + revoke.stderr[-2000:]
        for run in (main, revoke):
            assert " passed" in run.stdout and "failed" not in run.stdout.split("SUMMARY")[-1]
        assert proc.proc.poll() is None
        assert "Traceback" not in proc.log() and "internal_error" not in proc.log()
    finally:
        proc.stop()
