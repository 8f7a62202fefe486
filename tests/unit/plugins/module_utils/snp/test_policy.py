# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Guest policy: bit layout (reference §2.1), both directions, and every refusal."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.policy import (
    DEFAULT_POLICY,
    GuestPolicy,
    describe_policy,
    parse_assignments,
    parse_policy,
)

# Bit positions as the SEV-SNP ABI (virtee/sev, go-sev-guest) defines them.
EXPECTED_BITS = {
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
BIT17 = 1 << 17
VALID_MASK = 0xFFFF | BIT17 | sum(1 << bit for bit in EXPECTED_BITS.values())


def test_default_is_0x30000() -> None:
    assert DEFAULT_POLICY == 0x30000
    assert GuestPolicy().to_int() == 0x30000
    policy = GuestPolicy.from_int(0x30000)
    assert policy == GuestPolicy()
    assert policy.smt is True
    assert policy.debug is False
    assert policy.abi_major == policy.abi_minor == 0


@pytest.mark.parametrize(("name", "bit"), sorted(EXPECTED_BITS.items()))
def test_each_flag_is_its_own_bit(name: str, bit: int) -> None:
    value = BIT17 | 1 << bit
    policy = GuestPolicy.from_int(value)
    assert policy.to_dict()[name] is True
    assert [key for key, flag in policy.to_dict().items() if flag is True] == [name]
    assert GuestPolicy.from_dict({"smt": False, name: True}).to_int() == value


def test_abi_bytes() -> None:
    policy = GuestPolicy.from_int(BIT17 | 0x1F << 8 | 0x07)
    assert (policy.abi_major, policy.abi_minor) == (0x1F, 0x07)
    assert GuestPolicy(abi_major=1, abi_minor=55, smt=False).to_int() == BIT17 | 1 << 8 | 55


def test_to_int_always_sets_bit17() -> None:
    assert GuestPolicy(smt=False).to_int() == BIT17


def test_real_report_policy_0xb0000() -> None:
    # POLICY of go-sev-guest's Milan test report (reference §1.4): SMT + bit17 + DEBUG.
    policy = GuestPolicy.from_int(0xB0000)
    assert policy.debug and policy.smt and not policy.migrate_ma


def test_bit17_clear_is_refused_naming_policy_and_bit() -> None:
    with pytest.raises(SnpError) as err:
        GuestPolicy.from_int(0x10000)
    assert err.value.field == "policy"
    assert "bit 17" in str(err.value)


@pytest.mark.parametrize("bit", [26, 27, 40, 63])
def test_reserved_bits_are_refused_naming_the_bit(bit: int) -> None:
    with pytest.raises(SnpError) as err:
        GuestPolicy.from_int(0x30000 | 1 << bit)
    assert err.value.field == "policy"
    assert str(bit) in err.value.message


def test_from_int_field_name_is_configurable() -> None:
    with pytest.raises(SnpError) as err:
        GuestPolicy.from_int(0, field="report.policy")
    assert err.value.field == "report.policy"


@pytest.mark.parametrize("value", [-1, 1 << 64, True, 1.5, "0x30000", None])
def test_from_int_refuses_non_u64(value: object) -> None:
    with pytest.raises(SnpError):
        GuestPolicy.from_int(value)  # type: ignore[arg-type]


def test_from_dict_unknown_key_is_named() -> None:
    with pytest.raises(SnpError) as err:
        GuestPolicy.from_dict({"degub": False})
    assert err.value.field == "policy.degub"
    assert "degub" in err.value.message


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"debug": "yes"}, "policy.debug"),
        ({"debug": 2}, "policy.debug"),
        ({"abi_major": 256}, "policy.abi_major"),
        ({"abi_minor": -1}, "policy.abi_minor"),
        ({"abi_minor": True}, "policy.abi_minor"),
        ({"abi_minor": "1"}, "policy.abi_minor"),
    ],
)
def test_from_dict_types_are_checked(data: dict, field: str) -> None:
    with pytest.raises(SnpError) as err:
        GuestPolicy.from_dict(data)
    assert err.value.field == field


def test_from_dict_accepts_0_1_and_keeps_defaults() -> None:
    assert GuestPolicy.from_dict({}).to_int() == 0x30000
    assert GuestPolicy.from_dict({"debug": 1}).to_int() == 0x30000 | 1 << 19
    assert GuestPolicy.from_dict({"smt": 0}).to_int() == BIT17


def test_direct_construction_is_validated() -> None:
    with pytest.raises(SnpError):
        GuestPolicy(abi_major=300)
    with pytest.raises(SnpError):
        GuestPolicy(debug=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0x30000, 0x30000),
        ("0x30000", 0x30000),
        ("0X30000", 0x30000),
        ("196608", 0x30000),
        (" 0x3_0000 ", 0x30000),
        ({"debug": True}, 0xB0000),
        ("smt=1,debug=on", 0xB0000),
        ("smt=0, abi_major=0x2", BIT17 | 2 << 8),
        (GuestPolicy(), 0x30000),
    ],
)
def test_parse_policy_spellings(value: object, expected: int) -> None:
    assert parse_policy(value).to_int() == expected


@pytest.mark.parametrize("value", ["", "0x", "12ab", "0x10000", True, 1.0, ["smt"], "smt", "smt=maybe", "x=1"])
def test_parse_policy_refusals(value: object) -> None:
    with pytest.raises(SnpError) as err:
        parse_policy(value)
    assert err.value.field is not None and err.value.field.startswith("policy")


def test_parse_assignments_duplicates_and_shape() -> None:
    assert parse_assignments("smt=1,,debug=false") == {"smt": True, "debug": False}
    with pytest.raises(SnpError):
        parse_assignments("smt=1,smt=0")
    with pytest.raises(SnpError):
        parse_assignments("=1")


def test_describe() -> None:
    lines = describe_policy(GuestPolicy.from_int(0xB0000))
    assert lines[0] == "policy 0xb0000"
    assert any("DEBUG allowed" in line for line in lines)
    assert GuestPolicy().describe()[2] == "SMT allowed on the host"
    assert len(lines) == 1 + 1 + len(EXPECTED_BITS)


valid_ints = st.integers(min_value=0, max_value=VALID_MASK).map(lambda v: (v & VALID_MASK) | BIT17)


@given(valid_ints)
def test_int_dict_round_trip(value: int) -> None:
    policy = GuestPolicy.from_int(value)
    assert policy.to_int() == value
    assert GuestPolicy.from_dict(policy.to_dict()) == policy
    assert parse_policy(hex(value)) == policy
    assert parse_policy(str(value)) == policy


@given(st.integers(min_value=-(1 << 70), max_value=1 << 70))
def test_any_int_is_accepted_iff_valid(value: int) -> None:
    valid = 0 <= value < 1 << 64 and value & BIT17 and not value & ~VALID_MASK
    try:
        policy = GuestPolicy.from_int(value)
    except SnpError:
        assert not valid
    else:
        assert valid and policy.to_int() == value


@given(st.one_of(st.text(max_size=40), st.dictionaries(st.text(max_size=20), st.integers() | st.booleans())))
def test_parse_policy_raises_only_snperror(value: object) -> None:
    with contextlib.suppress(SnpError):
        parse_policy(value)
