# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Measurement inputs from files: reading, and hashing the initrd on a second core.

``snp/measure.py`` computes digests from bytes; this supplies them from the paths in a
``LaunchConfig``.  The initrd (the largest input) is hashed in one worker thread while
the firmware is measured on the calling thread, and the kernel after it: one worker
plus the caller matches the two cores a builder typically has, and hashlib releases
the GIL on large buffers.  Regular files are hashed through mmap (no copy).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from ..snp.errors import MeasurementError
from ..snp.measure import LaunchConfig, Measurement
from ..snp.measure import firmware_digest as _firmware_digest
from ..snp.measure import measure as _measure


def sha256_file(path: str, field: str) -> bytes:
    """SHA-256 of a whole file (mmap for regular files, chunks for pipes and devices)."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > 0:
                with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    return hashlib.sha256(mapped).digest()
            digest = hashlib.sha256()
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
            return digest.digest()
    except OSError as exc:
        raise MeasurementError(f"cannot read file: {exc.strerror}", field=field, path=path) from exc


def read_file(path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise MeasurementError(f"cannot read file: {exc.strerror}", field=field, path=path) from exc


class FileInputs:
    """``snp.measure.Inputs`` over the file system; a context manager that owns the hashing thread."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def read(self, path: str, field: str) -> bytes:
        return read_file(path, field)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def start_hashes(self, kernel: str, initrd: str | None) -> Callable[[], tuple[bytes, bytes | None]]:
        pending = None
        if initrd is not None:
            self._pool = self._pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="snpguard-hash")
            pending = self._pool.submit(sha256_file, initrd, "initrd")

        def collect() -> tuple[bytes, bytes | None]:
            kernel_sha = sha256_file(kernel, "kernel")
            return kernel_sha, pending.result() if pending is not None else None

        return collect

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> FileInputs:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def measure(config: LaunchConfig) -> Measurement:
    """The launch digest(s) of ``config``, its paths read from the file system."""
    with FileInputs() as inputs:
        return _measure(config, inputs)


def firmware_digest(ovmf: str) -> bytes:
    """The firmware-only SNP launch digest of the OVMF image at ``ovmf``."""
    return _firmware_digest(read_file(ovmf, "ovmf"), ovmf)
