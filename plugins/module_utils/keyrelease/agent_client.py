# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The guest agent's side of key release, over HTTPS: challenge, report, verify, open.

Standard library and ``cryptography`` only — it runs in an initrd, where Ansible is not.
The report comes from a callable (configfs-tsm, /dev/sev-guest, or the simulated
channel: ``attestation/report_sources.py``), so this module never guesses where it is.

One call of ``release(get_report)``:

1. ``POST /v1/attest/challenge`` → session id and a 32-byte nonce;
2. a fresh X25519 key; ``get_report(REPORT_DATA)`` with REPORT_DATA bound to the nonce and
   that key → the report (and, when the host attached them, the certificates);
3. ``POST /v1/attest/verify``; a refusal raises ``Refused`` with the server's check name;
4. the sealed volume key opened with the ephemeral key, returned as a ``bytearray`` the
   caller wipes once it has unlocked the disk.  The ephemeral key is dropped either way.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import urllib.error
from collections.abc import Callable
from typing import Any

from ..common.http import open_url, verifying_context
from ..snp.errors import SnpError
from .protocol import AgentSession

#: What the agent asks of the platform: REPORT_DATA in, (report, certificate table or None) out.
ReportSource = Callable[[bytes], "tuple[bytes, bytes | None]"]
MAX_ANSWER = 1 << 16
USER_AGENT = "snpguard-agent"


class Refused(SnpError):
    """The server refused to release the key; ``check`` names the failed check."""

    def __init__(self, message: str, *, check: str | None, status: int) -> None:
        super().__init__(message, field=check)
        self.check = check
        self.status = status


class Unreachable(SnpError):
    """No answer from the server (network, TLS, timeout): the caller may retry."""


class AgentClient:
    """One key-release server, its pinned CA, and the timeout of each request."""

    def __init__(self, url: str, *, ca_file: str | None = None, timeout: float = 15.0) -> None:
        url = url.rstrip("/")
        if not url.startswith("https://"):
            raise SnpError("the key-release server must be an https:// URL", field="url")
        self.base = url if url.endswith("/v1") else url + "/v1"
        self.timeout = timeout
        try:
            self.context = verifying_context(ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SnpError(f"cannot load the pinned CA: {exc}", field="ca_file", path=ca_file) from exc

    def _post(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        data = json.dumps(body or {}).encode()
        try:
            with open_url("POST", self.base + path, data=data, headers={"Content-Type": "application/json"},
                          timeout=self.timeout, context=self.context, user_agent=USER_AGENT) as response:
                payload = response.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            error = _error_of(exc)
            if exc.code == 403 or error.get("check"):
                raise Refused(f"{error.get('check') or 'refused'}: {error.get('message') or exc.reason}",
                              check=error.get("check"), status=exc.code) from None
            if exc.code in (429, 500, 502, 503, 504):
                raise Unreachable(f"{path}: HTTP {exc.code} {error.get('message') or ''}".strip(),
                                  field="url") from None
            raise Refused(f"{path}: HTTP {exc.code} {error.get('code') or ''}: {error.get('message') or ''}",
                          check=None, status=exc.code) from None
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            raise Unreachable(f"cannot reach {self.base}: {getattr(exc, 'reason', exc)}", field="url") from exc
        if len(payload) > MAX_ANSWER:
            raise SnpError(f"the answer to {path} is too large", field="url")
        try:
            answer = json.loads(payload)
        except ValueError as exc:
            raise SnpError(f"the answer to {path} is not JSON", field="url") from exc
        if not isinstance(answer, dict):
            raise SnpError(f"the answer to {path} is not a JSON object", field="url")
        return answer

    def release(self, get_report: ReportSource) -> bytearray:
        """One whole handshake; the volume key, or ``Refused`` / ``Unreachable`` / ``SnpError``."""
        challenge = self._post("/attest/challenge", None)
        session_id, nonce = challenge.get("session_id"), _b64(challenge.get("nonce"), "nonce")
        if not isinstance(session_id, str) or len(nonce) != 32:
            raise SnpError("the challenge has no session id or a nonce that is not 32 bytes", field="challenge")
        with AgentSession() as session:
            report, certs = get_report(session.report_data(nonce))
            body = {"session_id": session_id, "report": base64.b64encode(report).decode(),
                    "agent_public_key": base64.b64encode(session.public_key).decode()}
            if certs:
                body["certs"] = base64.b64encode(certs).decode()
            answer = self._post("/attest/verify", body)
            return session.open(_b64(answer.get("sealed_key"), "sealed_key"), session_id, report)


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise SnpError("is missing from the server's answer", field=field)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SnpError("is not base64", field=field) from exc


def _error_of(exc: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        decoded = json.loads(exc.read(MAX_ANSWER))
    except (ValueError, OSError):
        return {}
    error = decoded.get("error") if isinstance(decoded, dict) else None
    return error if isinstance(error, dict) else {}
