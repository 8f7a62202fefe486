# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The attestation entries of ../shared/vectors/MANIFEST.json, read in place.

Shared by the report tests (vectors, bit flips): which reports verify, their files
loaded as certificates, the fixed clock each is verified at, and the product line.
Nothing here is copied from the vectors: every value is read from the manifest.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from pathlib import Path
from typing import Any

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.amd_certs import load_certificate
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import Product
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.validate import Expectations
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.verify import Collateral, TrustSettings

REPO = Path(__file__).resolve().parents[2]
VECTORS_DIR = Path(os.environ.get("SNPGUARD_VECTORS", REPO.parent / "shared" / "vectors"))
PRODUCTS = {"Milan": Product.MILAN, "Genoa": Product.GENOA, "Turin": Product.TURIN}

# The reports whose COMMITTED firmware is behind CURRENT (Azure HCL and AWS VLEK samples):
# they are genuine, but attest() refuses provisional firmware unless it is allowed.
PROVISIONAL = {"milan_v2_trustee_1e4e3afc", "milan_v2_trustee_2e63568e", "milan_v3_trustee_decdab94"}


def _load() -> list[dict[str, Any]]:
    path = VECTORS_DIR / "MANIFEST.json"
    return json.loads(path.read_text()) if path.exists() else []


MANIFEST = _load()


def entries(kind: str) -> list[dict[str, Any]]:
    return [entry for entry in MANIFEST if entry["kind"] == kind]


def ids(kind: str, *, where: Any = None) -> list[str]:
    """Entry ids for ``parametrize``; one placeholder without the vectors, so the fixture skips/fails."""
    found = [entry["id"] for entry in entries(kind) if where is None or where(entry)]
    return found or ["vectors-missing"]


def entry(entry_id: str) -> dict[str, Any]:
    assert MANIFEST, f"{VECTORS_DIR}/MANIFEST.json missing"
    (found,) = [e for e in MANIFEST if e["id"] == entry_id]
    return found


def verifies(e: dict[str, Any]) -> bool:
    return e["kind"] == "attestation_report" and e["expected"].get("report_signature_verifies") is True


def read(relative: str) -> bytes:
    return (VECTORS_DIR / relative).read_bytes()


@functools.cache
def cert(relative: str) -> Any:
    return load_certificate(read(relative), field=relative)


def roots(product: str, *, vlek: bool = False) -> tuple[Any, Any]:
    """(ASK or ASVK, ARK) of a product line, from the roots directory."""
    lower = product.lower()
    intermediate = "asvk" if vlek else "ask"
    return cert(f"attestation/roots/{lower}_{intermediate}.pem"), cert(f"attestation/roots/{lower}_ark.pem")


def collateral(e: dict[str, Any], **replace: Any) -> Collateral:
    files = e["files"]
    fields = {"vek": cert(files["vek"]), "ask": cert(files.get("ask") or files["asvk"]), "ark": cert(files["ark"])}
    fields.update(replace)
    return Collateral(**fields)


def clock(e: dict[str, Any]) -> datetime.datetime:
    """A fixed verification time inside the VEK's validity: notBefore + 1 day."""
    return cert(e["files"]["vek"]).not_valid_before_utc + datetime.timedelta(days=1)


def trust(e: dict[str, Any], **settings: Any) -> TrustSettings:
    return TrustSettings(now=settings.pop("now", clock(e)), **settings)


def needs_provisional(e: dict[str, Any]) -> bool:
    """COMMITTED TCB or firmware version differs from CURRENT, per the collector's decode."""
    d = e["decoded"]
    return d["current_tcb_raw"] != d["committed_tcb_raw"] or any(
        d[f"current_{part}"] != d[f"committed_{part}"] for part in ("build", "minor", "major"))


def expectations(e: dict[str, Any], **options: Any) -> Expectations:
    # allow_provisional_firmware only for the reports that need it (see PROVISIONAL).
    return Expectations(allow_provisional_firmware=needs_provisional(e), **options)
