# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The ID-block codecs are meant for reuse by the attestation-report code: prove it on
real reports from ../shared/vectors (read in place).

* ``sev_keys.verify`` over ``report[:0x2A0]`` with the 512-byte signature at 0x2A0
  must agree with the collector's ``report_signature_verifies`` for every report;
* every report's POLICY (0x08) must decode with the strict ``GuestPolicy.from_int``
  and encode back to the same u64.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ansible_collections.snpguard.cvm.plugins.module_utils.snp import sev_keys
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.policy import GuestPolicy


@pytest.fixture(scope="module")
def report_entries(vectors: Path) -> list[dict[str, Any]]:
    manifest = json.loads((vectors / "MANIFEST.json").read_text())
    entries = [e for e in manifest if e.get("kind") == "attestation_report"]
    assert entries, "no attestation reports in the manifest"
    return entries


def test_report_signatures_with_the_sev_signature_codec(vectors: Path, report_entries: list[dict[str, Any]]) -> None:
    checked = 0
    for entry in report_entries:
        expected = entry.get("expected", {}).get("report_signature_verifies")
        vek = entry["files"].get("vek")
        if expected is None or vek is None:
            continue
        report = (vectors / entry["files"]["report"]).read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pitfall P10: some VCEKs have serial number 0
            public = x509.load_der_x509_certificate((vectors / vek).read_bytes()).public_key()
        try:
            sev_keys.verify(public, report[:0x2A0], report[0x2A0:0x4A0], field="report.signature")
            verifies = True
        except SnpError as exc:
            assert exc.field == "report.signature"
            verifies = False
        assert verifies is expected, entry["files"]["report"]
        checked += 1
    assert checked >= 30


def test_report_policies_decode_strictly(vectors: Path, report_entries: list[dict[str, Any]]) -> None:
    for entry in report_entries:
        report = (vectors / entry["files"]["report"]).read_bytes()
        if len(report) != 0x4A0:
            continue  # the malformed-size samples
        raw = int.from_bytes(report[0x08:0x10], "little")
        policy = GuestPolicy.from_int(raw, field="report.policy")
        assert policy.to_int() == raw, entry["files"]["report"]
