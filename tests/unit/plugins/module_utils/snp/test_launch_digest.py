# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The PAGE_INFO chain (reference §5.1, §5.2), checked against PAGE_INFO packed independently."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.launch_digest import (
    PAGE_INFO_SIZE,
    VMSA_GPA,
    LaunchDigest,
    PageType,
)
from ansible_collections.snpguard.cvm.tests.unit.plugins.module_utils.snp.ovmf_synth import PAGE, RefDigest, page_info


def test_page_types_per_reference() -> None:
    assert {t.name: t.value for t in PageType} == {
        "NORMAL": 1, "VMSA": 2, "ZERO": 3, "UNMEASURED": 4, "SECRETS": 5, "CPUID": 6,
    }
    assert PAGE_INFO_SIZE == 0x70
    assert VMSA_GPA == 0xFFFFFFFFF000


def test_page_info_helper_layout() -> None:
    info = page_info(b"\x11" * 48, b"\x22" * 48, 6, 0x0102030405060708)
    assert len(info) == 0x70
    assert info[0x60:0x68].hex() == "7000060000000000"
    assert info[0x68:].hex() == "0807060504030201"


def test_initial_value_is_48_zero_bytes() -> None:
    assert LaunchDigest().value == bytes(48)


def test_one_normal_page_by_hand() -> None:
    page = bytes(range(256)) * 16
    ld = LaunchDigest()
    ld.normal_pages("p", 0xFFFFF000, page)
    info = bytes(48) + hashlib.sha384(page).digest() + bytes.fromhex("7000010000000000") + bytes.fromhex(
        "00f0ffff00000000")
    assert ld.value == hashlib.sha384(info).digest()


def test_vmsa_page_by_hand() -> None:
    page = b"\x01" + bytes(PAGE - 1)
    seed = bytes(range(48))
    ld = LaunchDigest(seed)
    ld.vmsa_page("v", page)
    info = seed + hashlib.sha384(page).digest() + bytes.fromhex("7000020000000000") + bytes.fromhex(
        "00f0ffffffff0000")
    assert ld.value == hashlib.sha384(info).digest()
    assert ld.steps[-1].detail["vmsa_sha384"] == hashlib.sha384(page).hexdigest()
    assert ld.steps[-1].gpa == 0xFFFFFFFFF000


@pytest.mark.parametrize("page_type", [PageType.ZERO, PageType.UNMEASURED, PageType.SECRETS, PageType.CPUID])
def test_empty_pages_have_zero_contents(page_type: PageType) -> None:
    ld = LaunchDigest()
    ld.empty_pages("e", page_type, 0x9000, 3 * PAGE)
    ref = RefDigest()
    for index in range(3):
        ref.update(page_type.value, 0x9000 + index * PAGE, bytes(48))
    assert ld.value == ref.ld
    # Not SHA-384 of a zero page:
    wrong = RefDigest()
    for index in range(3):
        wrong.update(page_type.value, 0x9000 + index * PAGE, hashlib.sha384(bytes(PAGE)).digest())
    assert ld.value != wrong.ld


def test_gce_primitive_shapes() -> None:
    """The shapes of the two gce-tcb-verifier primitive vectors, against the independent model."""
    data = b"LGTM" * 4 + bytes(3 * PAGE - 32) + b"LGTM" * 4
    ld = LaunchDigest()
    ld.normal_pages("n", 0, data)
    ref = RefDigest()
    ref.normal(0, data)
    assert ld.value == ref.ld
    assert ld.steps[-1].pages == 3


@settings(max_examples=60, deadline=None)
@given(
    seed=st.binary(min_size=48, max_size=48),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("normal"), st.integers(0, (1 << 52) - 1).map(lambda g: g & ~0xFFF),
                      st.integers(0, 3), st.integers(0, 255)),
            st.tuples(st.sampled_from([3, 4, 5, 6]), st.integers(0, (1 << 52) - 1).map(lambda g: g & ~0xFFF),
                      st.integers(0, 4), st.just(0)),
            st.tuples(st.just("vmsa"), st.just(0), st.just(1), st.integers(0, 255)),
        ),
        max_size=6,
    ),
)
def test_chain_matches_independent_model(seed: bytes, ops: list[tuple]) -> None:
    ld = LaunchDigest(seed)
    ref = RefDigest(seed)
    for kind, gpa, pages, byte in ops:
        if kind == "normal":
            data = bytes([byte]) * (pages * PAGE)
            ld.normal_pages("n", gpa, data)
            ref.normal(gpa, data)
        elif kind == "vmsa":
            page = bytes([byte]) * PAGE
            ld.vmsa_page("v", page)
            ref.vmsa(page)
        else:
            ld.empty_pages("e", PageType(kind), gpa, pages * PAGE)
            ref.empty(kind, gpa, pages * PAGE)
    assert ld.value == ref.ld
    assert len(ld.steps) == len(ops)
    if ops:
        assert ld.steps[-1].digest_after == ld.value


def test_each_field_of_page_info_matters() -> None:
    base = LaunchDigest()
    base.empty_pages("e", PageType.ZERO, 0x1000, PAGE)
    other_gpa = LaunchDigest()
    other_gpa.empty_pages("e", PageType.ZERO, 0x2000, PAGE)
    other_type = LaunchDigest()
    other_type.empty_pages("e", PageType.UNMEASURED, 0x1000, PAGE)
    other_seed = LaunchDigest(b"\x01" + bytes(47))
    other_seed.empty_pages("e", PageType.ZERO, 0x1000, PAGE)
    assert len({base.value, other_gpa.value, other_type.value, other_seed.value}) == 4


def test_steps_record_regions() -> None:
    ld = LaunchDigest()
    ld.normal_pages("firmware", 0xFFFFE000, bytes(2 * PAGE), source="x")
    ld.empty_pages("metadata SNP_SECRETS", PageType.SECRETS, 0x80D000, PAGE)
    ld.add_seeded("seed", {"ovmf_hash": "00"})
    first = ld.steps[0].as_dict()
    assert first == {"what": "firmware", "page_type": "NORMAL", "gpa": "0xffffe000", "pages": 2,
                     "digest_after": first["digest_after"], "source": "x"}
    assert ld.steps[1].page_type is PageType.SECRETS and ld.steps[1].pages == 1
    assert ld.steps[2].pages == 0 and ld.steps[2].detail == {"ovmf_hash": "00"}


def test_refusals() -> None:
    with pytest.raises(ValueError, match="48 bytes"):
        LaunchDigest(bytes(47))
    with pytest.raises(ValueError, match="not a multiple of 4096"):
        LaunchDigest().normal_pages("n", 0, bytes(100))
    with pytest.raises(ValueError, match="not a multiple of 4096"):
        LaunchDigest().empty_pages("z", PageType.ZERO, 0, 100)
    with pytest.raises(ValueError, match="4096 bytes"):
        LaunchDigest().vmsa_page("v", bytes(100))


def test_memoryview_input_is_the_same_as_bytes() -> None:
    data = bytes(range(256)) * 32
    a, b = LaunchDigest(), LaunchDigest()
    a.normal_pages("n", 0, data)
    b.normal_pages("n", 0, memoryview(data))
    assert a.value == b.value
