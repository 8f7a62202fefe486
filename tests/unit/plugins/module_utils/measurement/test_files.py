# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""measurement/files.py: hashing and reading measurement inputs from the file system."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ansible_collections.snpguard.cvm.plugins.module_utils.measurement.files import sha256_file
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import MeasurementError

SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_sha256_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    data = tmp_path / "data"
    content = os.urandom(3 * 1024 * 1024 + 17)
    data.write_bytes(content)
    assert sha256_file(str(empty), "kernel").hex() == SHA256_EMPTY
    assert sha256_file(str(data), "kernel") == hashlib.sha256(content).digest()


def test_sha256_of_a_non_regular_file() -> None:
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    assert sha256_file("/dev/null", "initrd").hex() == SHA256_EMPTY


def test_sha256_file_fifo(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    payload = b"x" * 100_000

    def writer() -> None:
        with open(fifo, "wb") as handle:
            handle.write(payload)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert sha256_file(str(fifo), "kernel") == hashlib.sha256(payload).digest()
    finally:
        thread.join(10)


@pytest.mark.parametrize("field", ["kernel", "initrd"])
def test_sha256_file_errors_name_the_field(tmp_path: Path, field: str) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(MeasurementError, match="cannot read file") as info:
        sha256_file(str(missing), field)
    assert info.value.field == field and info.value.path == str(missing)
    with pytest.raises(MeasurementError) as info:
        sha256_file(str(tmp_path), field)
    assert info.value.field == field and info.value.path == str(tmp_path)
