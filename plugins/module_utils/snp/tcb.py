# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""AMD products and their TCB_VERSION layouts.

A TCB_VERSION is 8 bytes whose meaning depends on the CPU generation, not on the
report version: Milan and Genoa put SNP in byte 6, Turin adds FMC in byte 0 and moves
SNP to byte 3.  Decoding a TCB before the product is known is the classic bug, so
``TcbVersion.decode`` always takes the product.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import SnpError


class Product(enum.Enum):
    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @classmethod
    def parse(cls, value: str, field: str = "product") -> Product:
        text = value.strip().split("-")[0].lower()
        for member in cls:
            if member.value.lower() == text:
                return member
        raise SnpError(f"unknown product {value!r}; known: Milan, Genoa, Turin", field=field)

    @property
    def turin_layout(self) -> bool:
        return self is Product.TURIN

    @property
    def hwid_size(self) -> int:
        """Bytes of CHIP_ID that KDS and the VCEK hwID use (Turin: only the first 8)."""
        return 8 if self is Product.TURIN else 64


def product_from_cpuid(family: int, model: int) -> Product | None:
    """The product of a v3+ report, by the family/model ranges virtee/sev and snpguest use."""
    if family == 0x19 and model <= 0x0F:
        return Product.MILAN
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return Product.GENOA
    if family == 0x1A and model <= 0x11:
        return Product.TURIN
    return None


COMPONENTS = ("fmc", "bootloader", "tee", "snp", "microcode")
#: The SPLs as people list them (and registrations, reports and KDS name them): FMC last, Turin only.
SPL_NAMES = ("bootloader", "tee", "snp", "microcode", "fmc")


@dataclass(frozen=True, order=False)
class TcbVersion:
    """One decoded TCB_VERSION; ``fmc`` is None on Milan and Genoa."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None
    raw: int = 0

    @classmethod
    def decode(cls, raw: int | bytes, product: Product) -> TcbVersion:
        data = raw.to_bytes(8, "little") if isinstance(raw, int) else bytes(raw)
        if len(data) != 8:
            raise SnpError("a TCB_VERSION is 8 bytes", field="tcb")
        value = int.from_bytes(data, "little")
        if product.turin_layout:
            return cls(bootloader=data[1], tee=data[2], snp=data[3], microcode=data[7], fmc=data[0], raw=value)
        return cls(bootloader=data[0], tee=data[1], snp=data[6], microcode=data[7], raw=value)

    @classmethod
    def from_components(cls, product: Product, *, bootloader: int = 0, tee: int = 0, snp: int = 0,
                        microcode: int = 0, fmc: int | None = None) -> TcbVersion:
        """Encode from SPL values (used for minimum-TCB options and by the simulator)."""
        values = {"bootloader": bootloader, "tee": tee, "snp": snp, "microcode": microcode, "fmc": fmc or 0}
        for name, value in values.items():
            if not 0 <= value <= 0xFF:
                raise SnpError(f"{value} is out of range 0..255", field=f"tcb.{name}")
        if fmc is not None and not product.turin_layout:
            raise SnpError(f"{product.value} TCBs have no FMC component", field="tcb.fmc")
        data = bytearray(8)
        if product.turin_layout:
            data[0], data[1], data[2], data[3], data[7] = values["fmc"], bootloader, tee, snp, microcode
        else:
            data[0], data[1], data[6], data[7] = bootloader, tee, snp, microcode
        return cls.decode(bytes(data), product)

    def reserved_bytes_zero(self, product: Product) -> bool:
        data = self.raw.to_bytes(8, "little")
        reserved = data[4:7] if product.turin_layout else data[2:6]
        return not any(reserved)

    def components(self) -> dict[str, int]:
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out

    def at_least(self, minimum: TcbVersion) -> list[str]:
        """Components below ``minimum`` (empty when every component is >= it)."""
        mine, theirs = self.components(), minimum.components()
        return [f"{name} {mine.get(name, 0)} < {value}" for name, value in theirs.items() if mine.get(name, 0) < value]

    def as_dict(self) -> dict[str, object]:
        return {**self.components(), "raw": f"0x{self.raw:016x}"}

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.components().items()]
        return " ".join(parts)
