# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Backend of the ``cvm_image`` module and ``snpguard image convert``: options in, conversion result out."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from ..common.process import Runner
from ..measurement.snp_measure import vcpu_counts
from ..snp.errors import SnpError
from ..snp.options import parse_int
from ..snp.policy import parse_policy
from .convert import ConvertOptions, Progress, convert

DEFAULT_FIRMWARE = "/usr/share/ovmf/OVMF.amdsev.fd"


def _ingestion_key(value: Any) -> str | None:
    if value is None:
        return None
    try:
        raw = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise SnpError("must be base64 (the server's /v1/info ingestion_public_key)",
                       field="ingestion_public_key") from None
    if len(raw) != 32:
        raise SnpError("must be a 32-byte X25519 public key, base64", field="ingestion_public_key")
    return str(value)


def options_from(params: Mapping[str, Any]) -> ConvertOptions:
    """The module's/CLI's parameters as ConvertOptions (every value checked, errors name the option)."""
    policy = parse_policy(params.get("policy") if params.get("policy") is not None else 0x30000).to_int()
    features = parse_int(params.get("guest_features"), "guest_features")
    options = ConvertOptions(
        source=params["source"], output=params["output"], staging_dir=params["staging_dir"],
        name=params["name"], firmware=params.get("firmware") or DEFAULT_FIRMWARE,
        agent_url=params.get("server_url") or "", agent_ca_file=params.get("server_ca_file") or "",
        mode=params.get("mode") or "luks", kernel=params.get("kernel") or None,
        vcpus=list(vcpu_counts(params.get("vcpus"))), vcpu_type=params.get("vcpu_type") or "EPYC-v4",
        policy=policy, guest_features=0x1 if features is None else features,
        extra_cmdline=params.get("extra_cmdline") or "", report_source=params.get("report_source") or "auto",
        ingestion_public_key=_ingestion_key(params.get("ingestion_public_key")),
        volume_key_file=params.get("volume_key_file") or None, crypto_source=params.get("crypto_source") or None,
        pbkdf_memory_kib=parse_int(params.get("pbkdf_memory_kib"), "pbkdf_memory_kib") or 65536,
        pbkdf_iterations=parse_int(params.get("pbkdf_iterations"), "pbkdf_iterations") or 4,
        integrity=bool(params.get("integrity")), package_mirror=params.get("package_mirror") or None,
        package_cache=params.get("package_cache") or None, force_tcg=bool(params.get("force_tcg")))
    return options.validate()


def stamped(started: float, text: str) -> str:
    """A progress line after the seconds since ``started`` (time.monotonic()): where a conversion's time went."""
    return f"[{time.monotonic() - started:6.1f} s] {text}"


def apply(params: Mapping[str, Any], run: Runner, *, check_mode: bool = False,
          progress: Progress | None = None) -> dict[str, Any]:
    steps: list[str] = []
    started = time.monotonic()

    def note(text: str) -> None:
        steps.append(stamped(started, text))
        if progress:
            progress(text)

    result = convert(options_from(params), run, check_mode=check_mode, progress=note)
    out = asdict(result)
    out["steps"] = steps
    return out
