# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""keyrelease/agent_client.py against a real server: the guest agent's whole handshake, without Ansible."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from servers import Agent, ServerProcess, register, snpguard_env

from ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.agent_client import (
    AgentClient,
    Refused,
    Unreachable,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError

MEASUREMENT = bytes([0x33]) * 48


@pytest.fixture(scope="module")
def volume_key(admin) -> bytes:
    key = os.urandom(32)
    assert register(admin, "agent-image", {"1": MEASUREMENT.hex()}, key).status_code == 201
    return key


def source(sim, measurement: bytes = MEASUREMENT, **fields):
    agent = Agent(sim)

    def get_report(report_data: bytes) -> tuple[bytes, bytes]:
        import base64

        return sim.report(measurement=measurement, report_data=report_data, **fields), base64.b64decode(agent.certs())

    return get_report


def client(server: ServerProcess) -> AgentClient:
    return AgentClient(server.base, ca_file=str(server.data_dir / "tls" / "ca.pem"))


def test_release_returns_the_volume_key(server: ServerProcess, sim, volume_key: bytes) -> None:
    assert bytes(client(server).release(source(sim))) == volume_key


def test_a_refusal_names_the_check(server: ServerProcess, sim, volume_key: bytes) -> None:
    with pytest.raises(Refused) as info:
        client(server).release(source(sim, policy=0x30000 | 1 << 19))
    assert info.value.check == "policy.debug" and info.value.status == 403
    with pytest.raises(Refused) as info:
        client(server).release(source(sim, measurement=bytes([0x34]) * 48))
    assert info.value.check == "measurement"


def test_another_ca_is_unreachable_not_trusted(server: ServerProcess, sim, tmp_path) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(sim.ark.public_bytes(Encoding.PEM))  # a CA that did not issue the server's certificate
    with pytest.raises(Unreachable, match="cannot reach"):
        AgentClient(server.base, ca_file=str(other)).release(source(sim))


def test_plain_http_is_refused() -> None:
    with pytest.raises(SnpError) as info:
        AgentClient("http://127.0.0.1:1")
    assert info.value.field == "url"


def test_the_agent_client_imports_no_ansible() -> None:
    code = ("import sys; import ansible_collections.snpguard.cvm.plugins.module_utils.keyrelease.agent_client; "
            "bad = [m for m in sys.modules if m == 'ansible' or m.startswith('ansible.')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], env=snpguard_env(), capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
