# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Verify a report from option dictionaries: the backend of the module, the action, the CLI and the server.

Trust is explicit: AMD's pinned roots by default; a simulated root only when the
``simulated_root`` option names its certificate.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ..common.fileio import read_file
from ..snp.amd_certs import load_certificate
from ..snp.attest import Attestation, attest
from ..snp.cert_table import parse_cert_table
from ..snp.errors import SnpError
from ..snp.report import REPORT_SIZE, parse_report
from ..snp.tcb import Product
from ..snp.validate import expectations_from_options
from ..snp.verify import TrustSettings
from .collateral import CollateralSources, resolve_collateral
from .kds_cache import KdsClient

EXPECTATION_OPTIONS = (
    "measurements", "host_data", "report_data", "id_key_digests", "author_key_digests", "family_id", "image_id",
    "min_guest_svn", "vmpl", "allow_debug", "policy", "min_abi", "platform_info", "min_tcb",
    "allow_provisional_firmware", "chip_ids", "min_report_version", "launch_mit_vector", "current_mit_vector",
    "signing_keys",
)


def _optional_file(options: Mapping[str, Any], name: str, limit: int = 1 << 20) -> bytes | None:
    path = options.get(name)
    return read_file(path, name, limit) if path else None


def load_report_bytes(options: Mapping[str, Any]) -> bytes:
    """The report from ``report`` (a file) or ``report_b64``; either must be exactly 0x4A0 bytes."""
    if options.get("report_b64"):
        try:
            return base64.b64decode(options["report_b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SnpError("is not base64", field="report_b64") from exc
    if options.get("report"):
        return read_file(options["report"], "report", REPORT_SIZE * 2)
    raise SnpError("give report (a file) or report_b64", field="report")


def trust_from_options(options: Mapping[str, Any]) -> TrustSettings:
    roots = []
    if options.get("simulated_root"):
        path = options["simulated_root"]
        roots.append(load_certificate(read_file(path, "simulated_root"), field="simulated_root", path=path))
    now = options.get("verification_time")
    when = None
    if now:
        try:
            when = datetime.fromisoformat(str(now).replace("Z", "+00:00"))
        except ValueError as exc:
            raise SnpError(f"{now!r} is not an ISO 8601 time", field="verification_time") from exc
        if when.tzinfo is None:
            raise SnpError("needs a time zone (e.g. 2025-06-01T00:00:00Z)", field="verification_time")
    return TrustSettings(simulated_roots=tuple(roots), now=when, require_crl=bool(options.get("require_crl")))


def verify_from_options(options: Mapping[str, Any], *, fetch: Callable[[str], bytes] | None = None,
                        raise_on_failure: bool = True) -> Attestation:
    report = parse_report(load_report_bytes(options))
    product = Product.parse(options["product"]) if options.get("product") else None
    extended = None
    if options.get("certs_b64"):
        try:
            extended = parse_cert_table(base64.b64decode(options["certs_b64"], validate=True))
        except (binascii.Error, ValueError) as exc:
            raise SnpError("is not base64", field="certs_b64") from exc
    kds = None
    if options.get("cache_dir") or not options.get("offline"):
        kds = KdsClient(fetch=None if options.get("offline") else fetch, cache_dir=options.get("cache_dir"),
                        offline=bool(options.get("offline")))
    sources = CollateralSources(
        vek=_optional_file(options, "vek"), ask=_optional_file(options, "ask"), ark=_optional_file(options, "ark"),
        crl=_optional_file(options, "crl"), certs_dir=options.get("certs_dir"), extended=extended, kds=kds,
        product=product, fetch_crl=bool(options.get("fetch_crl")),
    )
    collateral = resolve_collateral(report, sources)
    expect = expectations_from_options({name: options.get(name) for name in EXPECTATION_OPTIONS})
    return attest(report, collateral, trust_from_options(options), expect, expected_product=product,
                  raise_on_failure=raise_on_failure)


# Argument specs matching doc_fragments/attestation.py (shared by the module and the attest action).
EXPECTATION_ARGSPEC: dict[str, dict[str, Any]] = {
    "measurements": {"type": "list", "elements": "str"},
    "host_data": {"type": "str"},
    "report_data": {"type": "str"},
    "id_key_digests": {"type": "list", "elements": "str", "no_log": False},
    "author_key_digests": {"type": "list", "elements": "str", "no_log": False},
    "family_id": {"type": "str"},
    "image_id": {"type": "str"},
    "min_guest_svn": {"type": "int"},
    "vmpl": {"type": "int"},
    "allow_debug": {"type": "bool", "default": False},
    "policy": {"type": "dict"},
    "min_abi": {"type": "str"},
    "platform_info": {"type": "dict"},
    "min_tcb": {"type": "dict"},
    "allow_provisional_firmware": {"type": "bool", "default": False},
    "chip_ids": {"type": "list", "elements": "str"},
    "min_report_version": {"type": "int"},
    "launch_mit_vector": {"type": "int"},
    "current_mit_vector": {"type": "int"},
    "signing_keys": {"type": "list", "elements": "str", "choices": ["VCEK", "VLEK"], "default": ["VCEK", "VLEK"]},
}
TRUST_ARGSPEC: dict[str, dict[str, Any]] = {
    "vek": {"type": "path"},
    "ask": {"type": "path"},
    "ark": {"type": "path"},
    "crl": {"type": "path"},
    "certs_dir": {"type": "path"},
    "cache_dir": {"type": "path"},
    "offline": {"type": "bool", "default": False},
    "fetch_crl": {"type": "bool", "default": False},
    "require_crl": {"type": "bool", "default": False},
    "product": {"type": "str", "choices": ["Milan", "Genoa", "Turin"]},
    "simulated_root": {"type": "path"},
    "verification_time": {"type": "str"},
}
