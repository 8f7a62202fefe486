# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Writes that never leave a half-written file, and never clobber a private key."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile

from ..snp.errors import SnpError


def file_digest(path: str, algorithm: str = "sha256", *, field: str = "path") -> str:
    """The hex digest of a file, read in 1 MiB chunks; an unreadable file is an error naming ``field``."""
    digest = hashlib.new(algorithm)
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise SnpError(f"cannot read: {exc.strerror}", field=field, path=path) from exc
    return digest.hexdigest()


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".snpguard-", dir=directory)
    except OSError as exc:
        raise SnpError(f"cannot write in {directory}: {exc.strerror}", path=path) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def create_private(path: str, data: bytes) -> None:
    """Create a new 0600 file; refuse if anything already exists at ``path``.

    The key is written to a temp file first and linked into place with ``os.link``,
    which fails if ``path`` exists: an existing key is never overwritten, and a
    crash never leaves a truncated key behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".snpguard-key-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError as exc:
            raise SnpError("refusing to overwrite an existing key", path=path) from exc
    finally:
        os.unlink(tmp)


def read_file(path: str, field: str, limit: int | None = None) -> bytes:
    """Read a whole input file, mapping OS errors to an error that names the option."""
    try:
        with open(path, "rb") as handle:
            data = handle.read() if limit is None else handle.read(limit + 1)
    except OSError as exc:
        raise SnpError(f"cannot read file: {exc.strerror}", field=field, path=path) from exc
    if limit is not None and len(data) > limit:
        raise SnpError(f"file is larger than {limit} bytes", field=field, path=path)
    return data
