# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Every single-bit flip of every verifying vector report is refused.

For each of the 36 reports that verify (../shared/vectors, read in place):

* flips of the signed area 0x000-0x29F must fail ``sev_keys.verify`` with the report's
  VCEK/VLEK — the exact call ``verify_report`` makes for the ``report.signature`` check:
  all 5376 for the first report of each VERSION and each signing key (VCEK, VLEK), one per
  byte (bit = offset mod 8) for the others, so every byte of every report is flipped;
* flips of R and S (0x2A0-0x32F) the same way (all 1152, or one per byte);
* for 200 flips per report, drawn with a fixed seed from both areas, the full ``attest``
  (with the report's own chain, at its fixed clock) must raise ``VerificationError``.

(Every bit of all 36 was about 234 000 ECDSA verifications, 280 CPU-seconds in CI, for what is
ECDSA's own property once the signed range and the key are right; about 50 000 remain.)
"""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path
from typing import Any

import pytest
from attestation_vectors import collateral, entries, entry, expectations, read, trust, verifies

from ansible_collections.snpguard.cvm.plugins.module_utils.snp import sev_keys
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.attest import attest
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.checks import VerificationError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import FormatError, SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.report import SIGNED_SIZE, SUPPORTED_VERSIONS

pytestmark = pytest.mark.slow

WORKERS = 2
SIGNATURE_END = 0x330  # R @0x2A0 and S @0x2E8, 72 bytes each
SAMPLE = 200
SIGNED_FLIPS = SIGNED_SIZE * 8  # 5376
SIGNATURE_FLIPS = (SIGNATURE_END - SIGNED_SIZE) * 8  # 1152

# -- worker side (forked: inherits the imported collection and the loaded vectors) --------------

_STATE: dict[str, tuple[bytes, Any]] = {}


def _load_state() -> None:
    for e in entries("attestation_report"):
        if verifies(e):
            _STATE[e["id"]] = (read(e["files"]["report"]), collateral(e).vek.public_key())


def _sweep(task: tuple[str, int, int, bool]) -> tuple[str, int, int, list[tuple[int, int, str]]]:
    """Flip each bit (``every``) or one bit per byte of ``report[start:stop]``; return (id, start, flips tried,
    flips not refused)."""
    entry_id, start, stop, every = task
    data, key = _STATE[entry_id]
    sev_keys.verify(key, data[:SIGNED_SIZE], data[SIGNED_SIZE:0x4A0], field="report.signature")  # baseline
    buf = bytearray(data)
    tried, accepted = 0, []
    for offset in range(start, stop):
        for bit in range(8) if every else (offset % 8,):
            buf[offset] ^= 1 << bit
            try:
                sev_keys.verify(key, buf[:SIGNED_SIZE], buf[SIGNED_SIZE:0x4A0], field="report.signature")
            except SnpError as exc:
                if exc.field != "report.signature":
                    accepted.append((offset, bit, f"refused as {exc.field}"))
            else:
                accepted.append((offset, bit, "verified"))
            buf[offset] ^= 1 << bit
            tried += 1
    return entry_id, start, tried, accepted


VERIFYING = [e["id"] for e in entries("attestation_report") if verifies(e)]


def _exhaustive() -> set[str]:
    """The first verifying report of each VERSION and signing key (SIGNING_KEY, bits 2-4 at 0x48)."""
    first: dict[tuple[int, int], str] = {}
    for entry_id in VERIFYING:
        data = read(entry(entry_id)["files"]["report"])
        first.setdefault((int.from_bytes(data[:4], "little"), (data[0x48] >> 2) & 7), entry_id)
    return set(first.values())


EXHAUSTIVE = _exhaustive()


@pytest.fixture(scope="module")
def sweep(vectors: Path) -> dict[tuple[str, int], tuple[int, list[tuple[int, int, str]]]]:
    assert len(VERIFYING) == 36
    _load_state()
    tasks = [(i, start, stop, i in EXHAUSTIVE) for i in VERIFYING
             for start, stop in ((0, SIGNED_SIZE), (SIGNED_SIZE, SIGNATURE_END))]
    # fork: the workers inherit sys.path, the collection and _STATE (Linux, like CI).
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        results = pool.map(_sweep, tasks, chunksize=1)
    return {(i, start): (tried, accepted) for i, start, tried, accepted in results}


def test_every_signed_bit_flip_refused_by_the_signature(sweep: dict) -> None:
    assert 2 <= len(EXHAUSTIVE) < len(VERIFYING), EXHAUSTIVE  # VCEK and VLEK reports among the vectors
    for entry_id in VERIFYING:
        tried, accepted = sweep[(entry_id, 0)]
        assert tried == (SIGNED_FLIPS if entry_id in EXHAUSTIVE else SIGNED_SIZE), entry_id
        assert accepted == [], f"{entry_id}: flips (offset, bit) not refused: {accepted[:10]}"
    assert len(VERIFYING) == 36


def test_every_signature_bit_flip_refused(sweep: dict) -> None:
    for entry_id in VERIFYING:
        tried, accepted = sweep[(entry_id, SIGNED_SIZE)]
        assert tried == (SIGNATURE_FLIPS if entry_id in EXHAUSTIVE else SIGNATURE_END - SIGNED_SIZE), entry_id
        assert accepted == [], f"{entry_id}: flips (offset, bit) not refused: {accepted[:10]}"


def _flip(data: bytes, position: int) -> bytes:
    buf = bytearray(data)
    buf[position // 8] ^= 1 << (position % 8)
    return bytes(buf)


@pytest.mark.parametrize("entry_id", VERIFYING or ["vectors-missing"])
def test_sampled_flips_refused_by_attest(vectors: Path, entry_id: str) -> None:
    e = entry(entry_id)
    data = read(e["files"]["report"])
    coll, when, expect = collateral(e), trust(e), expectations(e)
    attest(data, coll, when, expect)  # the unflipped report is accepted with exactly these settings
    rng = random.Random(f"bitflips/{entry_id}")
    positions = rng.sample(range(SIGNATURE_END * 8), SAMPLE)
    for position in positions:
        flipped = _flip(data, position)
        if position < 32 and int.from_bytes(flipped[:4], "little") not in SUPPORTED_VERSIONS:
            with pytest.raises(FormatError):  # VERSION flipped to one the parser does not know
                attest(flipped, coll, when, expect)
            continue
        with pytest.raises(VerificationError) as info:
            attest(flipped, coll, when, expect)
        results = {r.name: r.status for r in info.value.results}
        # the signature is refused, or could not even be checked because the product became unknown
        assert results.get("report.signature") == "fail" or (
            results.get("product") == "fail" and results.get("report.signature") == "skip"), (position, results)
