# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""snp/options.py: the one parser for integers, hex and enum names that every front end uses."""

from __future__ import annotations

import enum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import MeasurementError, SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.options import (
    parse_enum,
    parse_hex,
    parse_hex_list,
    parse_int,
)


class Colour(enum.Enum):
    RED = "red"
    DARK_BLUE = "dark-blue"


@pytest.mark.parametrize(("value", "expected"), [
    (5, 5), ("5", 5), (" 0x1F ", 31), ("0b101", 5), ("0o17", 15), ("1_000", 1000), ("010", 10), (None, None),
    ("", None), ("  ", None),
])
def test_parse_int_spellings(value, expected) -> None:
    assert parse_int(value, "f") == expected


@pytest.mark.parametrize("value", [True, 1.5, "1.5", "0x", "ten", "-", [1], "0xg"])
def test_parse_int_refuses_naming_the_field(value) -> None:
    with pytest.raises(SnpError) as info:
        parse_int(value, "guest_features")
    assert info.value.field == "guest_features"


def test_parse_int_bounds_and_error_type() -> None:
    assert parse_int("7", "n", minimum=1, maximum=7) == 7
    with pytest.raises(SnpError, match="must be >= 1, got 0"):
        parse_int(0, "n", minimum=1)
    with pytest.raises(MeasurementError, match="must be <= 7, got 8"):
        parse_int("8", "n", maximum=7, error=MeasurementError)


@given(st.integers(min_value=0, max_value=1 << 64))
def test_parse_int_round_trips_every_spelling(number: int) -> None:
    for text in (str(number), hex(number), bin(number), oct(number), f"{number:_}"):
        assert parse_int(text, "n") == number


@given(st.binary(min_size=1, max_size=64))
def test_parse_hex_round_trips(data: bytes) -> None:
    for text in (data.hex(), "0x" + data.hex().upper(), f" {data.hex()}\n"):
        assert parse_hex(text, "h", size=len(data)) == data
        assert parse_hex(text, "h") == data
    assert parse_hex(data, "h", size=len(data)) == data


@pytest.mark.parametrize(("value", "match"), [("abc", "got 3"), ("zz", "not hexadecimal"), (b"ab", "must be 1 bytes"),
                                              (12, "must be a hex string")])
def test_parse_hex_refuses(value, match) -> None:
    size = 1 if isinstance(value, bytes) else (2 if value == "abc" else None)
    with pytest.raises(SnpError, match=match) as info:
        parse_hex(value, "host_data", size=size)
    assert info.value.field == "host_data"


def test_parse_hex_list() -> None:
    assert parse_hex_list(None, "d") == () and parse_hex_list([], "d") == ()
    assert parse_hex_list("0xab", "d") == (b"\xab",)
    assert parse_hex_list(["ab", "cd"], "d", size=1) == (b"\xab", b"\xcd")
    with pytest.raises(SnpError, match="empty item"):
        parse_hex_list(["ab", ""], "d")


def test_parse_enum() -> None:
    assert parse_enum(Colour, "RED", "c") is Colour.RED
    assert parse_enum(Colour, " dark-blue ", "c") is Colour.DARK_BLUE
    assert parse_enum(Colour, Colour.RED, "c") is Colour.RED
    assert parse_enum(Colour, None, "c", default=Colour.RED) is Colour.RED
    with pytest.raises(SnpError, match="known: red, dark-blue") as info:
        parse_enum(Colour, "green", "colour")
    assert info.value.field == "colour"
