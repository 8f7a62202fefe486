# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Is this genuine report *acceptable*?  Compare its fields with what the verifier expects.

Every option is optional and every one that is set is a check that can refuse.  Debug
is refused unless explicitly allowed, and provisional firmware (committed TCB behind
the current one) unless explicitly allowed: the safe choice is the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .checks import CheckList
from .errors import SnpError
from .options import parse_hex_list, parse_int
from .report import PLATFORM_INFO_BITS, AttestationReport, decode_platform_info
from .tcb import COMPONENTS, Product, TcbVersion

POLICY_CONSTRAINTS = ("smt", "migrate_ma", "single_socket", "cxl_allow", "mem_aes_256_xts", "rapl_dis",
                      "ciphertext_hiding", "page_swap_disable")


@dataclass(frozen=True)
class Expectations:
    """What a report must show.  Empty tuples and None mean "not checked"."""

    measurements: tuple[bytes, ...] = ()
    host_data: bytes | None = None
    report_data: bytes | None = None
    id_key_digests: tuple[bytes, ...] = ()
    author_key_digests: tuple[bytes, ...] = ()
    family_id: bytes | None = None
    image_id: bytes | None = None
    min_guest_svn: int | None = None
    vmpl: int | None = None
    allow_debug: bool = False
    policy: Mapping[str, bool] = field(default_factory=dict)  # e.g. {"smt": False, "single_socket": True}
    min_abi: tuple[int, int] | None = None
    platform_info: Mapping[str, bool] = field(default_factory=dict)
    min_tcb: Mapping[str, int] = field(default_factory=dict)
    allow_provisional_firmware: bool = False
    chip_ids: tuple[bytes, ...] = ()
    min_report_version: int | None = None
    launch_mit_vector: int | None = None  # bits that must be set (v5+)
    current_mit_vector: int | None = None
    signing_keys: tuple[str, ...] = ("VCEK", "VLEK")

    def __post_init__(self) -> None:
        for name in self.policy:
            if name not in POLICY_CONSTRAINTS:
                raise SnpError(f"unknown policy constraint {name!r}; known: {', '.join(POLICY_CONSTRAINTS)}",
                               field="expect.policy")
        for name in self.platform_info:
            if name not in PLATFORM_INFO_BITS:
                raise SnpError(f"unknown platform flag {name!r}; known: {', '.join(PLATFORM_INFO_BITS)}",
                               field="expect.platform_info")
        for name, value in self.min_tcb.items():
            if name not in COMPONENTS:
                raise SnpError(f"unknown TCB component {name!r}; known: {', '.join(COMPONENTS)}",
                               field="expect.min_tcb")
            if not isinstance(value, int) or not 0 <= value <= 255:
                raise SnpError(f"{name} must be 0..255", field="expect.min_tcb")
        for name, values, size in (("measurements", self.measurements, 48),
                                   ("id_key_digests", self.id_key_digests, 48),
                                   ("author_key_digests", self.author_key_digests, 48),
                                   ("chip_ids", self.chip_ids, 64)):
            for value in values:
                if len(value) != size:
                    raise SnpError(f"each entry must be {size} bytes", field=f"expect.{name}")
        for name, value, size in (("host_data", self.host_data, 32), ("report_data", self.report_data, 64),
                                  ("family_id", self.family_id, 16), ("image_id", self.image_id, 16)):
            if value is not None and len(value) != size:
                raise SnpError(f"must be {size} bytes", field=f"expect.{name}")


def _hexes(values: tuple[bytes, ...]) -> list[str]:
    return [value.hex() for value in values]


def validate_report(report: AttestationReport, product: Product | None, expect: Expectations,
                    checks: CheckList) -> None:
    """Append one check per expectation that is set (plus the always-on safety checks)."""
    if expect.measurements:
        checks.check("measurement", report.measurement in expect.measurements, "launch measurement is registered",
                     expected=_hexes(expect.measurements), actual=report.measurement)
    for name in ("host_data", "report_data", "family_id", "image_id"):
        wanted = getattr(expect, name)
        if wanted is not None:
            checks.check(name, getattr(report, name) == wanted, f"{name.upper()} matches",
                         expected=wanted, actual=getattr(report, name))
    if expect.id_key_digests:
        checks.check("id_key_digest", report.id_key_digest in expect.id_key_digests, "ID key is trusted",
                     expected=_hexes(expect.id_key_digests), actual=report.id_key_digest)
    if expect.author_key_digests:
        ok = report.author_key_en and report.author_key_digest in expect.author_key_digests
        checks.check("author_key_digest", ok, "author key is enabled and trusted",
                     expected=_hexes(expect.author_key_digests),
                     actual=report.author_key_digest if report.author_key_en else "AUTHOR_KEY_EN=0")
    if expect.min_guest_svn is not None:
        checks.check("guest_svn", report.guest_svn >= expect.min_guest_svn, "guest SVN is recent enough",
                     expected=f">= {expect.min_guest_svn}", actual=report.guest_svn)
    if expect.vmpl is not None:
        checks.check("vmpl", report.vmpl == expect.vmpl, "requested at the expected VMPL",
                     expected=expect.vmpl, actual=report.vmpl)
    if expect.min_report_version is not None:
        checks.check("report.version", report.version >= expect.min_report_version, "report version",
                     expected=f">= {expect.min_report_version}", actual=report.version)
    checks.check("signing_key", report.signing_key is not None and report.signing_key.name in expect.signing_keys,
                 "signing key type allowed", expected=list(expect.signing_keys),
                 actual=report.signing_key.name if report.signing_key else report.signing_key_raw)
    if expect.chip_ids:
        checks.check("chip_id", report.chip_id in expect.chip_ids, "chip is on the allow-list",
                     expected=_hexes(expect.chip_ids), actual=report.chip_id)
    _policy(report, expect, checks)
    _platform(report, expect, checks)
    if product is None:
        if expect.min_tcb or not expect.allow_provisional_firmware:
            checks.skipped("tcb", "product unknown, TCB cannot be decoded")
    else:
        _tcb(report, product, expect, checks)
    _mitigations(report, expect, checks)


def _policy(report: AttestationReport, expect: Expectations, checks: CheckList) -> None:
    try:
        policy = report.guest_policy
    except SnpError as exc:
        checks.failed("policy", exc.message, actual=f"0x{report.policy:x}")
        return
    checks.check("policy.debug", expect.allow_debug or not policy.debug,
                 "debugging disallowed" if not expect.allow_debug else "debugging allowed by configuration",
                 expected=False if not expect.allow_debug else "any", actual=policy.debug)
    for name, wanted in expect.policy.items():
        actual = getattr(policy, name)
        checks.check(f"policy.{name}", actual == wanted, f"policy {name}", expected=wanted, actual=actual)
    if expect.min_abi is not None:
        checks.check("policy.abi", (policy.abi_major, policy.abi_minor) >= expect.min_abi, "minimum ABI in policy",
                     expected=f">= {expect.min_abi[0]}.{expect.min_abi[1]}",
                     actual=f"{policy.abi_major}.{policy.abi_minor}")


def _platform(report: AttestationReport, expect: Expectations, checks: CheckList) -> None:
    flags = decode_platform_info(report.platform_info)
    for name, wanted in expect.platform_info.items():
        checks.check(f"platform_info.{name}", flags[name] == wanted, f"platform {name}", expected=wanted,
                     actual=flags[name])


def _tcb(report: AttestationReport, product: Product, expect: Expectations, checks: CheckList) -> None:
    tcbs = {name: report.tcb(name, product) for name in ("current", "reported", "committed", "launch")}
    if expect.min_tcb:
        fields = {k: v for k, v in expect.min_tcb.items() if k != "fmc" or product.turin_layout}
        minimum = TcbVersion.from_components(product, **fields)  # type: ignore[arg-type]
        for name, tcb in tcbs.items():
            low = tcb.at_least(minimum)
            checks.check(f"min_tcb.{name}", not low, f"{name.upper()}_TCB at least the minimum",
                         expected=minimum.components(), actual=tcb.components())
    current, committed, reported = tcbs["current"], tcbs["committed"], tcbs["reported"]
    consistent = not current.at_least(committed) and not current.at_least(reported)
    checks.check("tcb.consistency", consistent, "CURRENT_TCB >= COMMITTED_TCB and >= REPORTED_TCB",
                 expected=f">= {committed.components()} and >= {reported.components()}",
                 actual=current.components())
    if not expect.allow_provisional_firmware:
        same = (current.raw == committed.raw and report.current_version == report.committed_version)
        checks.check("firmware.committed", same, "firmware is committed (no provisional firmware)",
                     expected={"tcb": committed.components(), "version": str(report.committed_version)},
                     actual={"tcb": current.components(), "version": str(report.current_version)})


def _mitigations(report: AttestationReport, expect: Expectations, checks: CheckList) -> None:
    for name, wanted in (("launch_mit_vector", expect.launch_mit_vector),
                         ("current_mit_vector", expect.current_mit_vector)):
        if wanted is None:
            continue
        actual = getattr(report, name)
        if actual is None:
            checks.failed(name, "the report has no mitigation vector (needs version 5)",
                          expected=f"bits 0x{wanted:x}", actual=f"version {report.version}")
        else:
            checks.check(name, actual & wanted == wanted, "required mitigations applied",
                         expected=f"bits 0x{wanted:x} set", actual=f"0x{actual:x}")


def expectations_from_options(options: Mapping[str, Any]) -> Expectations:
    """Build expectations from option names shared by the module, the CLI and the server."""

    def hexes(name: str) -> tuple[bytes, ...]:
        return parse_hex_list(options.get(name), f"expect.{name}")

    def one(name: str) -> bytes | None:
        values = hexes(name)
        if len(values) > 1:
            raise SnpError("takes one value", field=f"expect.{name}")
        return values[0] if values else None

    min_abi = options.get("min_abi")
    abi = None
    if min_abi not in (None, ""):
        try:
            major, minor = str(min_abi).split(".")
            abi = (int(major), int(minor))
        except ValueError:
            raise SnpError(f"{min_abi!r} is not MAJOR.MINOR", field="expect.min_abi") from None

    def optional_int(name: str) -> int | None:
        return parse_int(options.get(name), f"expect.{name}")

    def flags(name: str) -> dict[str, bool]:
        value = options.get(name) or {}
        if not isinstance(value, Mapping):
            raise SnpError(f"must be a mapping of flag names to booleans, got {type(value).__name__}",
                           field=f"expect.{name}")
        for key, flag in value.items():
            if not isinstance(flag, bool):
                raise SnpError(f"{key} must be true or false, got {flag!r}", field=f"expect.{name}")
        return dict(value)

    def tcb() -> dict[str, int]:
        value = options.get("min_tcb") or {}
        if not isinstance(value, Mapping):
            raise SnpError(f"must be a mapping of components to integers, got {type(value).__name__}",
                           field="expect.min_tcb")
        out = {}
        for key, number in value.items():
            if isinstance(number, bool) or not isinstance(number, int | str):
                raise SnpError(f"{key} must be an integer, got {number!r}", field="expect.min_tcb")
            try:
                out[key] = int(number, 0) if isinstance(number, str) else number
            except ValueError:
                raise SnpError(f"{key} must be an integer, got {number!r}", field="expect.min_tcb") from None
        return out

    def signing_keys() -> tuple[str, ...]:
        value = options.get("signing_keys") or ("VCEK", "VLEK")
        names = (value,) if isinstance(value, str) else tuple(value)
        for name in names:
            if name not in ("VCEK", "VLEK"):
                raise SnpError(f"unknown signing key type {name!r}; known: VCEK, VLEK", field="expect.signing_keys")
        return names

    measurements = hexes("measurements") + hexes("measurement")
    return Expectations(
        measurements=measurements,
        host_data=one("host_data"),
        report_data=one("report_data"),
        id_key_digests=hexes("id_key_digests"),
        author_key_digests=hexes("author_key_digests"),
        family_id=one("family_id"),
        image_id=one("image_id"),
        min_guest_svn=optional_int("min_guest_svn"),
        vmpl=optional_int("vmpl"),
        allow_debug=bool(options.get("allow_debug", False)),
        policy=flags("policy"),
        min_abi=abi,
        platform_info=flags("platform_info"),
        min_tcb=tcb(),
        allow_provisional_firmware=bool(options.get("allow_provisional_firmware", False)),
        chip_ids=hexes("chip_ids"),
        min_report_version=optional_int("min_report_version"),
        launch_mit_vector=optional_int("launch_mit_vector"),
        current_mit_vector=optional_int("current_mit_vector"),
        signing_keys=signing_keys(),
    )
