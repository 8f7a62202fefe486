# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""API tokens as desired state: the backend of ``cvm_api_token``.

A token's secret exists only in the answer that created it (the server keeps hashes),
so "present" means: an active token of this name exists — or, with a token file, the
token in that file is active and has this name.  A new secret is written 0600 to the
file through a temp file and a rename.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ..common.fileio import atomic_write
from ..snp.errors import SnpError
from .admin_client import ApiError, token_id
from .module_args import client_from_params


def _read_token_file(path: str | None) -> str | None:
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(4096).strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        raise SnpError(f"cannot read the token file: {exc}", field="token_file", path=path) from exc


def _public(tokens: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [t for t in tokens if t["name"] == name and t["state"] == "active"]


def _file_token_state(params: dict[str, Any], file_token: str | None) -> tuple[str, list[dict[str, Any]]]:
    """'ok' (active, this name), 'stale' (unusable: replace it) for the token in the file; with its listing."""
    ident = token_id(file_token or "")
    if ident is None:
        return "stale", []
    try:
        listing = client_from_params(params, token=file_token).list_tokens()
    except ApiError as exc:
        if exc.status == 401:
            return "stale", []
        raise
    mine = next((t for t in listing if t["id"] == ident), None)
    if mine is None or mine["state"] != "active":
        return "stale", listing
    if mine["name"] != params["name"]:
        raise SnpError(f"holds the active token {ident} named {mine['name']!r}, not {params['name']!r}; "
                       "refusing to overwrite it", field="token_file", path=params["token_file"])
    return "ok", listing


def apply(params: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
    name, state = params["name"], params.get("state") or "present"
    token_file = params.get("token_file")
    file_token = _read_token_file(token_file)
    api_token = params.get("token")
    if state == "absent":
        return _absent(params, api_token or file_token, token_file, file_token, check_mode)

    if token_file:
        status, listing = _file_token_state(params, file_token) if file_token else ("stale", [])
        if status == "ok":
            return {"changed": False, "id": token_id(file_token or ""), "tokens": _public(listing, name)}
    elif api_token:
        existing = _public(client_from_params(params).list_tokens(), name)
        if existing:
            return {"changed": False, "tokens": existing}
    else:
        raise SnpError("give token (an API token) or master_password with token_file", field="token")

    if check_mode:
        return {"changed": True}
    password = None if api_token else params.get("master_password")
    if not api_token and not password:
        raise SnpError("creating a token needs token (an API token) or master_password", field="token")
    created = client_from_params(params).create_token(name, params.get("expires_at"), master_password=password,
                                                      scope=params.get("scope"))
    if token_file:
        atomic_write(token_file, (created["token"] + "\n").encode(), mode=0o600)
    return {"changed": True, "token": created["token"], "id": created["id"],
            "tokens": [{k: created.get(k) for k in ("id", "name", "created_at", "expires_at", "scope", "parent_id")}]}


def _absent(params: dict[str, Any], auth: str | None, token_file: str | None, file_token: str | None,
            check_mode: bool) -> dict[str, Any]:
    if not auth:
        raise SnpError("revoking tokens needs token (an API token)", field="token")
    client = client_from_params(params, token=auth)
    try:
        existing = _public(client.list_tokens(), params["name"])
    except ApiError as exc:
        # The file's own token may be the one already revoked: nothing of it is left to do.
        if exc.status == 401 and not params.get("token") and file_token:
            existing = []
        else:
            raise
    own = token_id(auth)
    ids = sorted((t["id"] for t in existing), key=lambda i: i == own)  # our own token last
    remove_file = bool(token_file and os.path.exists(token_file))
    if not check_mode:
        for ident in ids:
            client.revoke_token(ident)
        if remove_file and token_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(token_file)
    return {"changed": bool(ids) or remove_file, "revoked": ids, "tokens": existing}
