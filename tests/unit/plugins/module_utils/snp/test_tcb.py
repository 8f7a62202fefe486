# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""TCB_VERSION per product (reference §3): layouts, round trips, ordering, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.tcb import (
    COMPONENTS,
    Product,
    TcbVersion,
    product_from_cpuid,
)

# byte index of each component, per layout (reference §3 table)
LAYOUT = {
    Product.MILAN: {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7},
    Product.GENOA: {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7},
    Product.TURIN: {"fmc": 0, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 7},
}
spl = st.integers(0, 255)


def _components(product: Product) -> st.SearchStrategy[dict[str, int]]:
    return st.fixed_dictionaries({name: spl for name in LAYOUT[product]})


@pytest.mark.parametrize("product", list(Product))
@given(data=st.data())
def test_round_trip_from_components(product: Product, data: st.DataObject) -> None:
    components = data.draw(_components(product))
    tcb = TcbVersion.from_components(product, **components)
    assert tcb.components() == components
    raw = tcb.raw.to_bytes(8, "little")
    assert {name: raw[index] for name, index in LAYOUT[product].items()} == components
    assert tcb.reserved_bytes_zero(product)
    assert TcbVersion.decode(tcb.raw, product) == tcb == TcbVersion.decode(raw, product)
    assert tcb.at_least(tcb) == []


@pytest.mark.parametrize("product", list(Product))
@given(raw=st.integers(0, (1 << 64) - 1))
def test_round_trip_from_raw(product: Product, raw: int) -> None:
    tcb = TcbVersion.decode(raw, product)
    assert tcb.raw == raw
    data = raw.to_bytes(8, "little")
    assert tcb.components() == {name: data[index] for name, index in LAYOUT[product].items()}
    assert (tcb.fmc is None) is (product is not Product.TURIN)
    reserved = [i for i in range(8) if i not in LAYOUT[product].values()]
    assert tcb.reserved_bytes_zero(product) is not any(data[i] for i in reserved)
    rebuilt = TcbVersion.from_components(product, **tcb.components())
    assert rebuilt.raw == raw & ~sum(0xFF << (8 * i) for i in reserved)
    assert str(tcb) == " ".join(f"{k}={v}" for k, v in tcb.components().items())
    assert tcb.as_dict()["raw"] == f"0x{raw:016x}"


@pytest.mark.parametrize("product", list(Product))
@given(data=st.data())
def test_at_least_is_componentwise(product: Product, data: st.DataObject) -> None:
    mine = data.draw(_components(product))
    minimum = data.draw(_components(product))
    low = TcbVersion.from_components(product, **mine).at_least(TcbVersion.from_components(product, **minimum))
    assert sorted(low) == sorted(f"{n} {mine[n]} < {minimum[n]}" for n in minimum if mine[n] < minimum[n])


def test_same_bytes_two_layouts() -> None:
    raw = bytes([1, 2, 3, 4, 0, 0, 5, 6])
    assert TcbVersion.decode(raw, Product.MILAN).components() == {"bootloader": 1, "tee": 2, "snp": 5,
                                                                  "microcode": 6}
    assert TcbVersion.decode(raw, Product.TURIN).components() == {"bootloader": 2, "tee": 3, "snp": 4,
                                                                  "microcode": 6, "fmc": 1}


@pytest.mark.parametrize("product", list(Product))
@pytest.mark.parametrize("name", ["bootloader", "tee", "snp", "microcode"])
@pytest.mark.parametrize("value", [-1, 256])
def test_out_of_range(product: Product, name: str, value: int) -> None:
    with pytest.raises(SnpError) as info:
        TcbVersion.from_components(product, **{name: value})
    assert info.value.field == f"tcb.{name}"


@pytest.mark.parametrize("product", [Product.MILAN, Product.GENOA])
def test_no_fmc_off_turin(product: Product) -> None:
    with pytest.raises(SnpError) as info:
        TcbVersion.from_components(product, fmc=1)
    assert info.value.field == "tcb.fmc"


@given(st.binary().filter(lambda b: len(b) != 8), st.sampled_from(list(Product)))
def test_decode_wrong_length(data: bytes, product: Product) -> None:
    with pytest.raises(SnpError):
        TcbVersion.decode(data, product)


def test_components_and_products() -> None:
    assert set(COMPONENTS) == {"fmc", "bootloader", "tee", "snp", "microcode"}
    assert [Product.TURIN.hwid_size, Product.MILAN.hwid_size, Product.GENOA.hwid_size] == [8, 64, 64]
    assert Product.parse("Genoa-B1") is Product.GENOA and Product.parse(" milan ") is Product.MILAN
    with pytest.raises(SnpError):
        Product.parse("Venice")


@given(st.integers(0, 255), st.integers(0, 255))
def test_product_from_cpuid_ranges(family: int, model: int) -> None:
    expected = None
    if family == 0x19 and model <= 0x0F:
        expected = Product.MILAN
    elif family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        expected = Product.GENOA
    elif family == 0x1A and model <= 0x11:
        expected = Product.TURIN
    assert product_from_cpuid(family, model) is expected
