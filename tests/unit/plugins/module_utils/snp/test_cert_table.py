# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The GHCB certificate table of extended reports (reference §4.5): round trips and garbage."""

from __future__ import annotations

import contextlib
import struct
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.cert_table import (
    NAMES,
    build_cert_table,
    parse_cert_table,
)
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import FormatError

KNOWN = {"vcek": "63da758d-e664-4564-adc5-f4b93be8accd", "vlek": "a8074bc2-a25a-483e-aae6-39c045a0b8a1",
         "ask": "4ab7b379-bbac-4fe4-a02f-05aef327c782", "ark": "c0b406a4-a803-4952-9743-3fb6014cd0ae"}
unknown_names = st.uuids().map(str).filter(lambda name: name not in KNOWN.values())
tables = st.dictionaries(st.sampled_from(sorted(KNOWN)) | unknown_names, st.binary(min_size=1, max_size=300),
                         max_size=6)


def test_guids() -> None:
    assert {name: str(guid) for guid, name in NAMES.items()} == KNOWN


@given(tables)
def test_round_trip(certs: dict[str, bytes]) -> None:
    table = build_cert_table(certs)
    assert parse_cert_table(table) == certs
    # entries are 24 bytes, GUIDs in RFC 4122 (big-endian) order, then an all-zero terminator
    for index, (name, der) in enumerate(certs.items()):
        guid, offset, length = struct.unpack_from("<16sII", table, 24 * index)
        assert uuid.UUID(bytes=guid) == uuid.UUID(KNOWN.get(name, name))
        assert table[offset:offset + length] == der
    assert table[24 * len(certs):24 * (len(certs) + 1)] == bytes(24)


@given(st.binary(max_size=400))
def test_garbage_is_format_error(data: bytes) -> None:
    try:
        parsed = parse_cert_table(data, field="certs_b64")
    except FormatError as exc:
        assert exc.field == "certs_b64"
    else:
        assert all(isinstance(v, bytes) and v for v in parsed.values())


@given(tables, st.data())
def test_mutated_tables(certs: dict[str, bytes], data: st.DataObject) -> None:
    table = bytearray(build_cert_table(certs))
    position = data.draw(st.integers(0, len(table) - 1))
    table[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(table)))
    with contextlib.suppress(FormatError):
        parse_cert_table(bytes(table[:cut]))


@pytest.mark.parametrize(("table", "message"), [
    (b"", "no terminating entry"),
    (bytes(23), "no terminating entry"),
    (struct.pack("<16sII", uuid.UUID(KNOWN["vcek"]).bytes, 48, 10) + bytes(24), "outside"),  # past the end
    (struct.pack("<16sII", uuid.UUID(KNOWN["vcek"]).bytes, 0, 4) + bytes(24), "outside"),  # inside the entries
    (struct.pack("<16sII", uuid.UUID(KNOWN["vcek"]).bytes, 48, 0) + bytes(24), "outside"),  # empty
    (struct.pack("<16sII16sII", uuid.UUID(KNOWN["ask"]).bytes, 72, 1, uuid.UUID(KNOWN["ask"]).bytes, 72, 1)
     + bytes(24) + b"x", "twice"),
])
def test_refusals(table: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_cert_table(table)
