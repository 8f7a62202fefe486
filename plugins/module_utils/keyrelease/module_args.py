# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""What every key-release-server module shares: the connection options and the client they make."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import env_fallback

from .admin_client import KeyReleaseClient

SERVER_ARGSPEC: dict[str, dict[str, Any]] = {
    "url": {"type": "str", "required": True, "fallback": (env_fallback, ["SNPGUARD_URL"])},
    "token": {"type": "str", "no_log": True, "fallback": (env_fallback, ["SNPGUARD_TOKEN"])},
    "ca_file": {"type": "path", "fallback": (env_fallback, ["SNPGUARD_CA_FILE"])},
    "validate_certs": {"type": "bool", "default": True},
    "timeout": {"type": "int", "default": 60},
}


def client_from_params(params: dict[str, Any], token: str | None = None) -> KeyReleaseClient:
    """A client for the server the module's connection options name (``token`` overrides the option)."""
    return KeyReleaseClient(params["url"], token or params.get("token"), ca_file=params.get("ca_file"),
                            validate_certs=params.get("validate_certs", True), timeout=params.get("timeout") or 60)
