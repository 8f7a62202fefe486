# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""A simulated AMD-SP on disk: the directory that labs pass as ``simulated_amdsp`` / ``--simulated-root``.

The simulator itself (``snp/simulated_amdsp.py``) is pure; this writes its files (the
private keys 0600, the directory 0700) and reads them back.  ``ark.pem`` in that
directory is the root a verifier must be told to trust explicitly.
"""

from __future__ import annotations

import os

from ..common.fileio import atomic_write
from ..snp.errors import SnpError
from ..snp.simulated_amdsp import SimulatedAmdSp


def save_simulated_amdsp(sim: SimulatedAmdSp, directory: str) -> None:
    """Write the chain, the keys (0600) and the chip's facts so other processes can sign too."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for name, data in sim.to_files().items():
        atomic_write(os.path.join(directory, name), data, mode=0o600 if name in sim.SECRET_FILES else 0o644)


def load_simulated_amdsp(directory: str) -> SimulatedAmdSp:
    files: dict[str, bytes] = {}
    for name in SimulatedAmdSp.FILES:
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as handle:
                files[name] = handle.read()
        except OSError as exc:
            raise SnpError(f"cannot read file: {exc.strerror}", field="simulated_amdsp", path=path) from exc
    return SimulatedAmdSp.from_files(files)
