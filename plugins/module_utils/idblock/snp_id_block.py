# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The ID block writer shared by the ``snp_id_block`` module and ``snpguard id-block``.

It works like community.crypto's backends: read what exists, decide whether it
must be regenerated, write through a temp file and an atomic rename, and diff
only public facts.  ``changed`` is decided on *verified content*, never on bytes:
ECDSA signatures are randomised, so re-signing the same block gives different
bytes every run.  An existing ID auth file is kept when it parses, its ID block
signature verifies over the wanted ID block, its author signature verifies, and
its embedded public keys are the current keys.

Private keys are only ever created (0600, ``fileio.create_private``), never
overwritten, and only when ``generate_keys`` asks for it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..common.fileio import atomic_write, create_private, read_file
from ..snp import sev_keys
from ..snp.errors import SnpError
from ..snp.id_block import ID_AUTH_SIZE, ID_BLOCK_SIZE, IdAuth, IdBlock, decode_blob, qemu_properties
from ..snp.policy import DEFAULT_POLICY

#: Key files and blocks are small; refuse to slurp anything absurd by mistake.
_MAX_INPUT = 64 * 1024
#: Marker used in check-mode results for a key that would be generated.
NEW_KEY = "(new key)"


@dataclasses.dataclass(frozen=True)
class IdBlockRequest:
    """What the caller wants; option names match the module's and the CLI's."""

    id_key: str
    measurement: Any
    author_key: str | None = None
    generate_keys: bool = False
    family_id: Any = None
    image_id: Any = None
    guest_svn: Any = 0
    policy: Any = DEFAULT_POLICY
    id_block_path: str | None = None
    id_auth_path: str | None = None
    id_key_passphrase: str | None = None
    author_key_passphrase: str | None = None
    check_mode: bool = False


@dataclasses.dataclass
class _Key:
    field: str
    path: str
    key: Any
    pem_to_create: bytes | None  # set when the key does not exist yet

    @property
    def created(self) -> bool:
        return self.pem_to_create is not None


def _load_or_plan_key(path: str, field: str, generate: bool, passphrase: str | None) -> _Key:
    if os.path.lexists(path):
        data = read_file(path, field, limit=_MAX_INPUT)
        return _Key(field, path, sev_keys.load_private_key(data, field=field, path=path, password=passphrase), None)
    if not generate:
        raise SnpError("the key file does not exist (set generate_keys to create it)", field=field, path=path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise SnpError(f"cannot create the key: directory {directory} does not exist", field=field, path=path)
    key, pem = sev_keys.generate_private_key(passphrase)
    return _Key(field, path, key, pem)


def _read_existing(path: str | None, size: int, field: str, parse: Any) -> Any:
    """The parsed file, or None when absent or unparsable (then it is rewritten)."""
    if path is None or not os.path.lexists(path):
        return None
    data = read_file(path, field, limit=_MAX_INPUT)
    try:
        return parse(decode_blob(data, size, field, path=path))
    except SnpError:
        return None


def _auth_is_current(existing: IdAuth | None, block: IdBlock, id_key: _Key, author_key: _Key | None) -> bool:
    """True when ``existing`` is a valid ID auth of ``block`` by exactly the current keys."""
    if existing is None or id_key.created or (author_key is not None and author_key.created):
        return False
    if author_key is None and existing.author_key_enabled:
        return False
    try:
        existing.verify(
            block,
            id_public_key=id_key.key,
            author_public_key=author_key.key if author_key is not None else None,
        )
    except SnpError:
        return False
    return True


def _facts(block: IdBlock | None, id_digest: str | None, author_digest: str | None) -> dict[str, Any]:
    """The public facts shown in the diff; never key material."""
    out: dict[str, Any] = dict.fromkeys(("ld", "family_id", "image_id", "guest_svn", "policy"))
    if block is not None:
        facts = block.to_dict()
        out.update({name: facts[name] for name in out})
    out["id_key_digest"] = id_digest
    out["author_key_digest"] = author_digest
    return out


def _write(path: str, data: bytes, field: str) -> None:
    try:
        atomic_write(path, data, mode=0o644)
    except SnpError as exc:
        raise SnpError(exc.message, field=field, path=path) from exc
    except OSError as exc:
        raise SnpError(f"cannot write: {exc.strerror}", field=field, path=path) from exc


def _create_key(key: _Key) -> None:
    if key.pem_to_create is None:
        return
    try:
        create_private(key.path, key.pem_to_create)
    except SnpError as exc:
        raise SnpError(exc.message, field=key.field, path=key.path) from exc
    except OSError as exc:
        raise SnpError(f"cannot create the key: {exc.strerror}", field=key.field, path=key.path) from exc


def ensure_id_block(request: IdBlockRequest) -> dict[str, Any]:
    """Bring the key files and the ID block / ID auth files to the requested state.

    Returns the module/CLI result: ``changed``, ``id_block`` and ``id_auth``
    (base64), ``id_key_digest`` / ``author_key_digest`` (hex; ``None`` without an
    author key, or in check mode for a key that would be generated),
    ``author_key_enabled``, ``qemu`` (the ``sev-snp-guest`` properties),
    ``keys_created``, ``files_written`` and ``diff`` (before/after public facts).
    """
    # Validate every input before touching the filesystem.
    block = IdBlock.build(
        request.measurement,
        family_id=request.family_id,
        image_id=request.image_id,
        guest_svn=request.guest_svn,
        policy=request.policy,
    )
    if request.author_key is not None and os.path.abspath(request.author_key) == os.path.abspath(request.id_key):
        raise SnpError("must be a different key file than id_key", field="author_key", path=request.author_key)
    for name in ("id_block_path", "id_auth_path"):
        path = getattr(request, name)
        if path is None:
            continue
        if os.path.isdir(path):
            raise SnpError("is a directory, expected a file path", field=name, path=path)
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise SnpError(f"directory {directory} does not exist", field=name, path=path)
    if request.id_block_path is not None and request.id_block_path == request.id_auth_path:
        raise SnpError("must differ from id_block_path", field="id_auth_path", path=request.id_auth_path)

    id_key = _load_or_plan_key(request.id_key, "id_key", request.generate_keys, request.id_key_passphrase)
    author_key = (
        None
        if request.author_key is None
        else _load_or_plan_key(request.author_key, "author_key", request.generate_keys, request.author_key_passphrase)
    )
    keys = [k for k in (id_key, author_key) if k is not None]

    existing_block = _read_existing(request.id_block_path, ID_BLOCK_SIZE, "id_block_path", IdBlock.from_bytes)
    existing_auth = _read_existing(request.id_auth_path, ID_AUTH_SIZE, "id_auth_path", IdAuth.from_bytes)

    block_current = request.id_block_path is None or existing_block == block
    auth_current = request.id_auth_path is None or _auth_is_current(existing_auth, block, id_key, author_key)

    # The ID auth: keep a verified existing one (stable output), else sign now (in
    # memory even in check mode), unless a key exists only as a plan.
    pending_keys = request.check_mode and any(k.created for k in keys)
    id_auth: IdAuth | None
    if request.id_auth_path is not None and auth_current:
        id_auth = existing_auth
    elif pending_keys:
        id_auth = None
    else:
        id_auth = IdAuth.build(block, id_key.key, author_key.key if author_key is not None else None)

    def digest(key: _Key | None) -> str | None:
        if key is None:
            return None
        if key.created and request.check_mode:
            return NEW_KEY
        return sev_keys.key_digest(key.key, field=key.field).hex()

    id_digest, author_digest = digest(id_key), digest(author_key)

    # Before: what the managed files (or, without files, the keys) say today.
    if request.id_block_path is not None:
        before_block = existing_block
    elif request.id_auth_path is None or auth_current:
        before_block = block
    else:
        before_block = None
    if request.id_auth_path is not None:
        before_id = existing_auth.id_key_digest.hex() if existing_auth is not None else None
        before_author_bytes = existing_auth.author_key_digest if existing_auth is not None else None
        before_author = before_author_bytes.hex() if before_author_bytes is not None else None
    else:
        before_id = None if id_key.created else id_digest
        before_author = None if author_key is None or author_key.created else author_digest
    before = _facts(before_block, before_id, before_author)
    after = _facts(block, id_digest, author_digest)

    files_written: list[str] = []
    to_write: list[tuple[str, bytes, str]] = []
    if not block_current and request.id_block_path is not None:
        to_write.append((request.id_block_path, (block.to_b64() + "\n").encode("ascii"), "id_block_path"))
    if not auth_current and request.id_auth_path is not None:
        # In check mode with a pending key, the content is not known yet; nothing is written anyway.
        content = (id_auth.to_b64() + "\n").encode("ascii") if id_auth is not None else b""
        to_write.append((request.id_auth_path, content, "id_auth_path"))

    keys_created = [k.path for k in keys if k.created]
    changed = bool(keys_created or to_write)
    if not request.check_mode:
        for key in keys:
            _create_key(key)
        for path, data, field in to_write:
            _write(path, data, field)
            files_written.append(path)
    else:
        files_written = [path for path, _data, _field in to_write]

    return {
        "changed": changed,
        "id_block": block.to_b64(),
        "id_auth": id_auth.to_b64() if id_auth is not None else None,
        "id_key_digest": None if id_digest == NEW_KEY else id_digest,
        "author_key_digest": None if author_digest == NEW_KEY else author_digest,
        "author_key_enabled": author_key is not None,
        "policy": block.policy.to_int(),
        "qemu": qemu_properties(block, id_auth) if id_auth is not None else None,
        "keys_created": keys_created,
        "files_written": files_written,
        "diff": {"before": before, "after": after},
    }
