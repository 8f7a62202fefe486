# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The SEV-SNP guest policy: a u64 that the guest owner fixes at launch.

The same 64 bits appear in three places that must agree: the ``policy`` property
QEMU passes to SNP_LAUNCH_START, the POLICY field of the ID block (the firmware
refuses a launch whose ID block was signed for another policy), and the POLICY
field (0x08) of every attestation report.  This module is the one decoder and
encoder for all three, so a verifier reads a report's policy exactly the way the
ID block writer wrote it.

Layout (SEV-SNP ABI, as both virtee/sev and go-sev-guest implement it)::

    bits  7:0   ABI_MINOR           minimum firmware ABI minor version
    bits 15:8   ABI_MAJOR           minimum firmware ABI major version
    bit  16     SMT                 host SMT allowed
    bit  17     reserved            must be 1
    bit  18     MIGRATE_MA          migration agent allowed
    bit  19     DEBUG               debugging allowed (host can read guest memory)
    bit  20     SINGLE_SOCKET       guest may only run on one socket
    bit  21     CXL_ALLOW           CXL may be populated
    bit  22     MEM_AES_256_XTS     AES-256-XTS memory encryption required
    bit  23     RAPL_DIS            RAPL must be disabled
    bit  24     CIPHERTEXT_HIDING   ciphertext hiding (DRAM) must be enabled
    bit  25     PAGE_SWAP_DISABLE   SNP_PAGE_MOVE / SWAP_OUT / SWAP_IN disabled
    bits 63:26  reserved            must be zero

Parsing is strict on purpose, like go-sev-guest: a policy with bit 17 clear or an
unknown bit set is refused rather than silently dropped.  A bit we do not know may
be a restriction the guest owner relies on, and a verifier that ignored it would
approve a policy it cannot explain.  New firmware bits are added here, deliberately.

Pure Python: no ``cryptography``, no I/O.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from .errors import SnpError
from .options import parse_int

U64_MAX = (1 << 64) - 1

#: bit 17 is reserved and must be one.
RESERVED_ONE_BIT = 17
#: bits 63:26 are reserved and must be zero.
FIRST_RESERVED_ZERO_BIT = 26
RESERVED_ZERO_MASK = U64_MAX & ~((1 << FIRST_RESERVED_ZERO_BIT) - 1)

#: SMT allowed plus the must-be-one bit: QEMU's, sev-snp-measure's and virtee/sev's default.
DEFAULT_POLICY = 0x30000

#: Single-bit flags: field name -> bit number.
FLAG_BITS: dict[str, int] = {
    "smt": 16,
    "migrate_ma": 18,
    "debug": 19,
    "single_socket": 20,
    "cxl_allow": 21,
    "mem_aes_256_xts": 22,
    "rapl_dis": 23,
    "ciphertext_hiding": 24,
    "page_swap_disable": 25,
}

#: Byte-wide fields: field name -> shift.
ABI_SHIFTS: dict[str, int] = {"abi_minor": 0, "abi_major": 8}

_BOOL_WORDS = {
    "1": True, "true": True, "yes": True, "on": True, "y": True,
    "0": False, "false": False, "no": False, "off": False, "n": False,
}  # fmt: skip
_DECIMAL = re.compile(r"[0-9]+")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")


@dataclasses.dataclass(frozen=True)
class GuestPolicy:
    """A decoded guest policy; every representable value is a valid policy.

    Defaults give ``0x30000``: ABI 0.0, SMT allowed, everything else off.
    """

    abi_minor: int = 0
    abi_major: int = 0
    smt: bool = True
    migrate_ma: bool = False
    debug: bool = False
    single_socket: bool = False
    cxl_allow: bool = False
    mem_aes_256_xts: bool = False
    rapl_dis: bool = False
    ciphertext_hiding: bool = False
    page_swap_disable: bool = False

    FIELDS: ClassVar[tuple[str, ...]] = (
        "abi_minor",
        "abi_major",
        "smt",
        "migrate_ma",
        "debug",
        "single_socket",
        "cxl_allow",
        "mem_aes_256_xts",
        "rapl_dis",
        "ciphertext_hiding",
        "page_swap_disable",
    )

    def __post_init__(self) -> None:
        # Direct construction gets the same checks as from_dict, so an invalid
        # GuestPolicy cannot exist and to_int() can never produce a refused value.
        for name in ABI_SHIFTS:
            _check_abi(getattr(self, name), f"policy.{name}")
        for name in FLAG_BITS:
            if not isinstance(getattr(self, name), bool):
                raise SnpError(f"must be a boolean, got {type(getattr(self, name)).__name__}", field=f"policy.{name}")

    # -- integer form -------------------------------------------------------

    @classmethod
    def from_int(cls, value: int, *, field: str = "policy") -> GuestPolicy:
        """Decode a u64 policy, refusing bit 17 clear and any reserved bit 63:26 set.

        ``field`` names the input in errors (``policy`` for a launch option,
        ``report.policy`` for an attestation report, and so on).
        """
        if isinstance(value, bool) or not isinstance(value, int):
            raise SnpError(f"must be an integer, got {type(value).__name__}", field=field)
        if value < 0 or value > U64_MAX:
            raise SnpError(f"{value:#x} is not a 64-bit unsigned value", field=field)
        if not value >> RESERVED_ONE_BIT & 1:
            raise SnpError(
                f"{value:#x}: bit {RESERVED_ONE_BIT} is reserved and must be 1 "
                f"(the firmware refuses a policy without it; did you mean {value | 1 << RESERVED_ONE_BIT:#x}?)",
                field=field,
            )
        reserved = value & RESERVED_ZERO_MASK
        if reserved:
            bits = ", ".join(str(bit) for bit in range(FIRST_RESERVED_ZERO_BIT, 64) if reserved >> bit & 1)
            raise SnpError(
                f"{value:#x}: reserved bit(s) {bits} are set (bits 63:{FIRST_RESERVED_ZERO_BIT} must be zero)",
                field=field,
            )
        kwargs: dict[str, Any] = {name: value >> shift & 0xFF for name, shift in ABI_SHIFTS.items()}
        kwargs.update({name: bool(value >> bit & 1) for name, bit in FLAG_BITS.items()})
        return cls(**kwargs)

    def to_int(self) -> int:
        """Encode as the u64 the firmware takes; bit 17 is always set."""
        value = 1 << RESERVED_ONE_BIT
        for name, shift in ABI_SHIFTS.items():
            value |= getattr(self, name) << shift
        for name, bit in FLAG_BITS.items():
            if getattr(self, name):
                value |= 1 << bit
        return value

    # -- mapping form ------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, field: str = "policy") -> GuestPolicy:
        """Build from named fields; absent fields keep the defaults of ``0x30000``.

        Unknown keys are refused (a typo such as ``degub: false`` must not
        silently leave a default in place).  Flags take booleans (or 0/1);
        ``abi_minor``/``abi_major`` take integers 0..255.
        """
        if not isinstance(data, Mapping):
            raise SnpError(f"must be a mapping, got {type(data).__name__}", field=field)
        kwargs: dict[str, Any] = {}
        for key, raw in data.items():
            if not isinstance(key, str) or key not in cls.FIELDS:
                known = ", ".join(cls.FIELDS)
                raise SnpError(f"unknown policy field {key!r} (known: {known})", field=f"{field}.{key}")
            if key in ABI_SHIFTS:
                _check_abi(raw, f"{field}.{key}")
                kwargs[key] = raw
            else:
                kwargs[key] = _as_flag(raw, f"{field}.{key}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Every field by name; ``from_dict(to_dict())`` is the identity."""
        return {name: getattr(self, name) for name in self.FIELDS}

    def describe(self) -> list[str]:
        """Human-readable lines for ``explain``/``show`` output."""
        return describe_policy(self)


def _check_abi(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SnpError(f"must be an integer 0..255, got {type(value).__name__}", field=field)
    if not 0 <= value <= 0xFF:
        raise SnpError(f"must be 0..255, got {value}", field=field)


def _as_flag(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise SnpError(f"must be a boolean (true/false or 1/0), got {value!r}", field=field)


def parse_assignments(text: str, *, field: str = "policy") -> dict[str, Any]:
    """Parse ``"smt=1,debug=0,abi_major=1"`` into a dict for ``GuestPolicy.from_dict``.

    Flags accept 1/0, true/false, yes/no, on/off; ABI fields accept decimal or
    ``0x`` hex.  This is the command-line spelling of the dict form.
    """
    out: dict[str, Any] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise SnpError(f"expected name=value, got {item!r}", field=field)
        if key in out:
            raise SnpError(f"policy field {key!r} is given twice", field=f"{field}.{key}")
        if key in ABI_SHIFTS:
            out[key] = _parse_int_text(raw, f"{field}.{key}")
        elif key in FLAG_BITS:
            word = raw.lower()
            if word not in _BOOL_WORDS:
                raise SnpError(f"must be 1/0, true/false, yes/no or on/off, got {raw!r}", field=f"{field}.{key}")
            out[key] = _BOOL_WORDS[word]
        else:
            known = ", ".join(GuestPolicy.FIELDS)
            raise SnpError(f"unknown policy field {key!r} (known: {known})", field=f"{field}.{key}")
    return out


def _parse_int_text(text: str, field: str) -> int:
    number = parse_int(text, field)
    if number is None:
        raise SnpError("expected a decimal or 0x-hex integer, got nothing", field=field)
    return number


def parse_policy(value: Any, *, field: str = "policy") -> GuestPolicy:
    """Accept every spelling a user may give and return a validated policy.

    * ``int`` — the raw u64 (``196608``);
    * ``str`` — decimal (``"196608"``), hex (``"0x30000"``), or assignments
      (``"smt=1,debug=0"``, see ``parse_assignments``);
    * mapping — named fields (see ``GuestPolicy.from_dict``);
    * a ``GuestPolicy`` — returned unchanged.
    """
    if isinstance(value, GuestPolicy):
        return value
    if isinstance(value, Mapping):
        return GuestPolicy.from_dict(value, field=field)
    if isinstance(value, bool):
        raise SnpError("must be an integer, a string or a mapping, not a boolean", field=field)
    if isinstance(value, int):
        return GuestPolicy.from_int(value, field=field)
    if isinstance(value, str):
        text = value.strip()
        if "=" in text:
            return GuestPolicy.from_dict(parse_assignments(text, field=field), field=field)
        return GuestPolicy.from_int(_parse_int_text(text, field), field=field)
    raise SnpError(
        f"must be an integer, a string or a mapping, got {type(value).__name__}",
        field=field,
    )


def describe_policy(policy: GuestPolicy) -> list[str]:
    """One line per field, phrased as what the firmware enforces."""

    def say(flag: bool, yes: str, no: str) -> str:
        return yes if flag else no

    return [
        f"policy {policy.to_int():#x}",
        f"minimum firmware ABI {policy.abi_major}.{policy.abi_minor}",
        say(policy.smt, "SMT allowed on the host", "SMT must be disabled on the host"),
        say(policy.migrate_ma, "migration agent allowed", "migration agent not allowed"),
        say(policy.debug, "DEBUG allowed: the host can read and write guest memory", "debugging disabled"),
        say(policy.single_socket, "restricted to a single socket", "may run on several sockets"),
        say(policy.cxl_allow, "CXL may be populated", "CXL must not be populated"),
        say(policy.mem_aes_256_xts, "AES-256-XTS memory encryption required", "AES-256-XTS not required"),
        say(policy.rapl_dis, "RAPL must be disabled", "RAPL may be enabled"),
        say(policy.ciphertext_hiding, "ciphertext hiding required", "ciphertext hiding not required"),
        say(policy.page_swap_disable, "guest page swap/move disabled", "guest page swap/move allowed"),
    ]
