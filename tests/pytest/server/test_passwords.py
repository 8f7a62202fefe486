# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""server/passwords.py: PBKDF2-SHA256 with hashlib, reading the hashes passlib wrote before it was dropped."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.server.passwords import hash_password, verify_password

# Written by passlib 1.7.4's pbkdf2_sha256.using(rounds=1000).hash("s3cret") (what servers stored until now).
PASSLIB_HASH = "$pbkdf2-sha256$1000$lLK29v7//39vbe3d.7/3vg$M7KZyZrnLCgzVFPI/4f/HkBM45eRN85.x4Gi7k/A4Yo"


def test_hashes_written_by_passlib_still_verify() -> None:
    assert verify_password("s3cret", PASSLIB_HASH)
    assert not verify_password("s3cret ", PASSLIB_HASH)
    assert not verify_password("", PASSLIB_HASH)


def test_new_hashes_have_the_same_format() -> None:
    stored = hash_password("s3cret", 1000)
    prefix, name, rounds, salt, checksum = stored.split("$")
    assert (prefix, name, rounds) == ("", "pbkdf2-sha256", "1000")
    assert len(salt) == 22 and len(checksum) == 43 and "+" not in salt + checksum and "=" not in salt + checksum
    assert stored != hash_password("s3cret", 1000)  # a fresh salt every time


@pytest.mark.parametrize("stored", [
    "", "plain", "$pbkdf2-sha256$", "$pbkdf2-sha256$x$abc$def", "$pbkdf2-sha256$0$abc$def",
    "$pbkdf2-sha256$99999999999$abc$def", "$pbkdf2-sha256$1000$!!$def", "$pbkdf2-sha256$1000$abc$",
    "$pbkdf2-sha512$1000$lLK29v7//39vbe3d.7/3vg$M7KZyZrnLCgzVFPI/4f/HkBM45eRN85.x4Gi7k/A4Yo",
    PASSLIB_HASH + "$extra",
])
def test_malformed_hashes_never_match_and_never_raise(stored: str) -> None:
    assert verify_password("s3cret", stored) is False


@given(st.text(max_size=64), st.text(max_size=64))
@settings(max_examples=60, deadline=None)
def test_only_the_same_secret_verifies(secret: str, other: str) -> None:
    stored = hash_password(secret, 10)
    assert verify_password(secret, stored)
    assert verify_password(other, stored) == (other == secret)
