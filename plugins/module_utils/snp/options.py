# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""One parser for the values people type: integers, hex strings, enum names.

Every front end (modules, CLI, server) reads options through these, with the same
argument order — ``(value, field, **constraints)`` — and the same error: an ``SnpError``
(or the caller's subclass) naming ``field`` and what was wrong.  ``None`` and ``""``
mean "not given" and return ``None`` unless a default is passed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from typing import Any, TypeVar

from .errors import SnpError

E = TypeVar("E", bound=enum.Enum)
_PREFIXED = re.compile(r"0([xX][0-9a-fA-F]+|[bB][01]+|[oO][0-7]+)")
_DECIMAL = re.compile(r"[0-9]+")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_int(value: Any, field: str, *, minimum: int | None = None, maximum: int | None = None,
              error: type[SnpError] = SnpError) -> int | None:
    """5, "5", "0x5", "0b101", "0o5", "1_000"; never a bool, a float or anything else."""
    if _missing(value):
        return None
    if isinstance(value, bool):
        raise error(f"expected an integer, got {value!r}", field=field)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip().replace("_", "")
        if _PREFIXED.fullmatch(text):
            number = int(text, 0)
        elif _DECIMAL.fullmatch(text):
            number = int(text, 10)
        else:
            raise error(f"expected an integer (decimal or 0x-hex), got {value!r}", field=field)
    else:
        raise error(f"expected an integer, got {type(value).__name__}", field=field)
    if minimum is not None and number < minimum:
        raise error(f"must be >= {minimum}, got {number}", field=field)
    if maximum is not None and number > maximum:
        raise error(f"must be <= {maximum}, got {number}", field=field)
    return number


def parse_hex(value: Any, field: str, *, size: int | None = None, error: type[SnpError] = SnpError) -> bytes | None:
    """Bytes from hex text (``0x`` and surrounding space allowed) or from bytes; exactly ``size`` when given."""
    if _missing(value):
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if text[:2] in ("0x", "0X"):
            text = text[2:]
        if size is not None and len(text) != 2 * size:
            raise error(f"must be {2 * size} hex digits ({size} bytes), got {len(text)}", field=field)
        try:
            data = bytes.fromhex(text)
        except ValueError:
            raise error(f"is not hexadecimal: {value!r}", field=field) from None
    else:
        raise error(f"must be a hex string, got {type(value).__name__}", field=field)
    if size is not None and len(data) != size:
        raise error(f"must be {size} bytes, got {len(data)}", field=field)
    return data


def parse_hex_list(value: Any, field: str, *, size: int | None = None,
                   error: type[SnpError] = SnpError) -> tuple[bytes, ...]:
    """One hex value or a list of them (each ``size`` bytes when given); nothing given is ``()``."""
    if _missing(value) or value == []:
        return ()
    items: Iterable[Any] = value if isinstance(value, list | tuple) else [value]
    out = []
    for item in items:
        parsed = parse_hex(item, field, size=size, error=error)
        if parsed is None:
            raise error("has an empty item", field=field)
        out.append(parsed)
    return tuple(out)


def parse_enum(kind: type[E], value: Any, field: str, *, default: E | None = None,
               error: type[SnpError] = SnpError) -> E | None:
    """An enum member by its value, case-insensitively; the error lists the known values."""
    if _missing(value):
        return default
    if isinstance(value, kind):
        return value
    for member in kind:
        if str(value).strip().lower() == str(member.value).lower():
            return member
    raise error(f"unknown value {value!r}; known: {', '.join(str(m.value) for m in kind)}", field=field)
