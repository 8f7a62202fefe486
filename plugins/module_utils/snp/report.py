# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The SEV-SNP attestation report (0x4A0 bytes; versions 2, 3, 4 and 5), every field.

Parsing never trusts: it checks the size and version and decodes the rest; whether a
report is *acceptable* (signature, chain, policy, reserved bytes, TCB …) is decided by
``verify``.  The TCB fields are decoded only once the product is known, because their
layout depends on it.
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass, field

from .errors import FormatError
from .policy import GuestPolicy
from .tcb import Product, TcbVersion, product_from_cpuid

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SUPPORTED_VERSIONS = (2, 3, 4, 5)


class SigningKey(enum.Enum):
    VCEK = 0
    VLEK = 1
    NONE = 7


# Reserved byte ranges per version: (start, end) exclusive; must be zero.
def reserved_ranges(version: int) -> list[tuple[int, int]]:
    ranges = [(0x04C, 0x050), (0x1EB, 0x1EC), (0x1EF, 0x1F0), (0x330, 0x4A0)]
    ranges.append((0x188, 0x1A0) if version < 3 else (0x18B, 0x1A0))
    ranges.append((0x1F8, 0x2A0) if version < 5 else (0x208, 0x2A0))
    return sorted(ranges)


PLATFORM_INFO_BITS = {
    "smt_enabled": 0,
    "tsme_enabled": 1,
    "ecc_enabled": 2,
    "rapl_disabled": 3,
    "ciphertext_hiding_enabled": 4,
    "alias_check_complete": 5,
    "tio_enabled": 7,
}
PLATFORM_INFO_KNOWN = sum(1 << bit for bit in PLATFORM_INFO_BITS.values())


def decode_platform_info(value: int) -> dict[str, bool]:
    return {name: bool(value >> bit & 1) for name, bit in PLATFORM_INFO_BITS.items()}


@dataclass(frozen=True)
class FirmwareVersion:
    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"


@dataclass(frozen=True)
class AttestationReport:
    """A parsed report.  ``raw`` is kept: the signature covers ``raw[:0x2A0]``."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb_raw: int
    platform_info: int
    key_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb_raw: int
    cpuid_family: int | None
    cpuid_model: int | None
    cpuid_stepping: int | None
    chip_id: bytes
    committed_tcb_raw: int
    current_version: FirmwareVersion
    committed_version: FirmwareVersion
    launch_tcb_raw: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int
    reserved_nonzero: tuple[str, ...] = field(default=())

    @functools.cached_property
    def guest_policy(self) -> GuestPolicy:
        """POLICY decoded strictly; raises ``SnpError`` (field ``report.policy``) when invalid."""
        return GuestPolicy.from_int(self.policy, field="report.policy")

    # -- key info ------------------------------------------------------------
    @property
    def author_key_en(self) -> bool:
        return bool(self.key_info & 1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.key_info >> 1 & 1)

    @property
    def signing_key_raw(self) -> int:
        return self.key_info >> 2 & 0x7

    @property
    def signing_key(self) -> SigningKey | None:
        try:
            return SigningKey(self.signing_key_raw)
        except ValueError:
            return None

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signature(self) -> bytes:
        """The 512-byte SEV signature field (R and S little-endian, 72 bytes each)."""
        return self.raw[SIGNED_SIZE:SIGNED_SIZE + 0x200]

    # -- product and TCB -----------------------------------------------------
    @property
    def product_from_cpuid(self) -> Product | None:
        if self.cpuid_family is None or self.cpuid_model is None:
            return None
        return product_from_cpuid(self.cpuid_family, self.cpuid_model)

    @property
    def chip_id_masked(self) -> bool:
        return not any(self.chip_id)

    def tcb(self, name: str, product: Product) -> TcbVersion:
        """Decode one of current / reported / committed / launch for ``product``."""
        raw = {"current": self.current_tcb_raw, "reported": self.reported_tcb_raw,
               "committed": self.committed_tcb_raw, "launch": self.launch_tcb_raw}[name]
        return _decode_tcb(raw, product)

    def as_dict(self, product: Product | None = None) -> dict[str, object]:
        """Every field, hex for bytes; TCBs decoded when the product is known."""
        out: dict[str, object] = {
            "version": self.version,
            "guest_svn": self.guest_svn,
            "policy": f"0x{self.policy:x}",
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "vmpl": self.vmpl,
            "signature_algo": self.signature_algo,
            "platform_info": f"0x{self.platform_info:x}",
            "platform_info_flags": decode_platform_info(self.platform_info),
            "key_info": f"0x{self.key_info:x}",
            "author_key_en": self.author_key_en,
            "mask_chip_key": self.mask_chip_key,
            "signing_key": self.signing_key.name if self.signing_key else f"reserved({self.signing_key_raw})",
            "report_data": self.report_data.hex(),
            "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(),
            "chip_id": self.chip_id.hex(),
            "current_version": str(self.current_version),
            "committed_version": str(self.committed_version),
            "cpuid": None if self.cpuid_family is None else {
                "family": self.cpuid_family, "model": self.cpuid_model, "stepping": self.cpuid_stepping},
            "launch_mit_vector": None if self.launch_mit_vector is None else f"0x{self.launch_mit_vector:x}",
            "current_mit_vector": None if self.current_mit_vector is None else f"0x{self.current_mit_vector:x}",
            "signature_r": f"{self.signature_r:x}",
            "signature_s": f"{self.signature_s:x}",
            "reserved_nonzero": list(self.reserved_nonzero),
        }
        for name in ("current", "reported", "committed", "launch"):
            raw = getattr(self, f"{name}_tcb_raw")
            out[f"{name}_tcb"] = (self.tcb(name, product).as_dict() if product else {"raw": f"0x{raw:016x}"})
        if product is not None:
            out["product"] = product.value
        return out


_decode_tcb = functools.lru_cache(maxsize=1024)(TcbVersion.decode)

_HEAD = struct.Struct("<IIQ16s16sIIQQI4x64s48s32s48s48s32s32sQ")


def parse_report(data: bytes, *, field_name: str = "report") -> AttestationReport:
    """Parse 0x4A0 bytes; anything else raises ``FormatError`` naming ``field_name``."""
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        raise FormatError(f"an attestation report is {REPORT_SIZE} bytes, got {len(data)}", field=field_name)
    (version, guest_svn, policy, family_id, image_id, vmpl, signature_algo, current_tcb, platform_info, key_info,
     report_data, measurement, host_data, id_key_digest, author_key_digest, report_id, report_id_ma,
     reported_tcb) = _HEAD.unpack_from(data, 0)
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"report version {version} is not supported (known: 2, 3, 4, 5)",
                          field=f"{field_name}.version")
    cpuid = (data[0x188], data[0x189], data[0x18A]) if version >= 3 else (None, None, None)
    chip_id = data[0x1A0:0x1E0]
    committed_tcb = int.from_bytes(data[0x1E0:0x1E8], "little")
    current_version = FirmwareVersion(data[0x1EA], data[0x1E9], data[0x1E8])
    committed_version = FirmwareVersion(data[0x1EE], data[0x1ED], data[0x1EC])
    launch_tcb = int.from_bytes(data[0x1F0:0x1F8], "little")
    launch_mit = int.from_bytes(data[0x1F8:0x200], "little") if version >= 5 else None
    current_mit = int.from_bytes(data[0x200:0x208], "little") if version >= 5 else None
    reserved = tuple(f"0x{start:03x}-0x{end - 1:03x}" for start, end in reserved_ranges(version)
                     if any(data[start:end]))
    return AttestationReport(
        raw=data, version=version, guest_svn=guest_svn, policy=policy, family_id=family_id, image_id=image_id,
        vmpl=vmpl, signature_algo=signature_algo, current_tcb_raw=current_tcb, platform_info=platform_info,
        key_info=key_info, report_data=report_data, measurement=measurement, host_data=host_data,
        id_key_digest=id_key_digest, author_key_digest=author_key_digest, report_id=report_id,
        report_id_ma=report_id_ma, reported_tcb_raw=reported_tcb, cpuid_family=cpuid[0], cpuid_model=cpuid[1],
        cpuid_stepping=cpuid[2], chip_id=chip_id, committed_tcb_raw=committed_tcb, current_version=current_version,
        committed_version=committed_version, launch_tcb_raw=launch_tcb, launch_mit_vector=launch_mit,
        current_mit_vector=current_mit, signature_r=int.from_bytes(data[0x2A0:0x2E8], "little"),
        signature_s=int.from_bytes(data[0x2E8:0x330], "little"), reserved_nonzero=reserved,
    )
