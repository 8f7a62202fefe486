# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The ID block and the ID authentication information structure (ID auth).

At SNP_LAUNCH_FINISH the host may hand the AMD-SP a 96-byte **ID block** and its
4096-byte **ID auth**.  The firmware then refuses to launch unless the ID block's
LD equals the launch digest it computed, its POLICY equals the launch policy, and
the ID auth signatures verify: ID_BLOCK_SIG by the ID key over the ID block, and
(when the author key is enabled) ID_KEY_SIG by the author key over the ID key's
0x404-byte structure.  Every attestation report of that guest then carries
FAMILY_ID, IMAGE_ID and GUEST_SVN from the ID block, and the SHA-384 digests of
the ID and author public keys (ID_KEY_DIGEST, AUTHOR_KEY_DIGEST).  A verifier can
therefore accept "any image signed by this key" instead of one measurement.

ID block (0x60 bytes; reference §6.1)::

    0x00  48  LD          expected launch digest (MEASUREMENT)
    0x30  16  FAMILY_ID   -> report 0x10
    0x40  16  IMAGE_ID    -> report 0x20
    0x50   4  VERSION     u32, 1
    0x54   4  GUEST_SVN   u32 -> report 0x04
    0x58   8  POLICY      u64 guest policy

ID auth (0x1000 bytes; reference §6.2)::

    0x000    4  ID_KEY_ALGO      u32, 1 = ECDSA P-384 with SHA-384
    0x004    4  AUTHOR_KEY_ALGO  u32, 1 (0 here when there is no author key)
    0x008 0x38  reserved
    0x040 0x200 ID_BLOCK_SIG     by the ID key over the 96-byte ID block
    0x240 0x404 ID_KEY           public-key structure
    0x644 0x3C  reserved
    0x680 0x200 ID_KEY_SIG       by the author key over the 0x404-byte ID_KEY
    0x880 0x404 AUTHOR_KEY       public-key structure
    0xC84 0x37C reserved

Without an author key the ID_KEY_SIG and AUTHOR_KEY fields are zero and QEMU is
told ``author-key-enabled=off``; the firmware then ignores them.  Parsing is
strict: reserved bytes must be zero, because they are inside what we re-sign and
compare, and a block carrying data we do not understand is not one we wrote.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import struct
from typing import Any

from . import options, sev_keys
from .errors import FormatError, SnpError
from .policy import DEFAULT_POLICY, GuestPolicy, parse_policy

ID_BLOCK_SIZE = 0x60
ID_BLOCK_VERSION = 1
ID_AUTH_SIZE = 0x1000
LD_SIZE = 48
ID_SIZE = 16  # FAMILY_ID, IMAGE_ID
U32_MAX = 0xFFFFFFFF

_ID_BLOCK = struct.Struct("<48s16s16sIIQ")

# ID auth offsets (reference §6.2).
ID_KEY_ALGO_OFFSET = 0x000
AUTHOR_KEY_ALGO_OFFSET = 0x004
ID_BLOCK_SIG_OFFSET = 0x040
ID_KEY_OFFSET = 0x240
ID_KEY_SIG_OFFSET = 0x680
AUTHOR_KEY_OFFSET = 0x880
#: Reserved ranges of the ID auth as (start, end-exclusive).
ID_AUTH_RESERVED = (
    (0x008, ID_BLOCK_SIG_OFFSET),
    (ID_KEY_OFFSET + sev_keys.PUBKEY_SIZE, ID_KEY_SIG_OFFSET),  # 0x644..0x680
    (AUTHOR_KEY_OFFSET + sev_keys.PUBKEY_SIZE, ID_AUTH_SIZE),  # 0xC84..0x1000
)

_ZERO_KEY = bytes(sev_keys.PUBKEY_SIZE)
_ZERO_SIG = bytes(sev_keys.SIGNATURE_SIZE)


# -- input helpers ------------------------------------------------------------------


def parse_hex(value: Any, size: int, field: str) -> bytes:
    """``size`` bytes from a hex string (``0x`` prefix and surrounding space allowed) or bytes."""
    data = options.parse_hex(value, field, size=size)
    if data is None:
        raise SnpError(f"must be {2 * size} hex characters ({size} bytes), got nothing", field=field)
    return data


def decode_blob(data: Any, size: int, field: str, *, path: str | None = None) -> bytes:
    """A ``size``-byte structure given raw (exactly ``size`` bytes) or as base64 text.

    Files written by this collection hold base64 (as QEMU takes it); raw binary
    files from other tools are accepted too.
    """
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnpError(f"expected bytes or base64 text, got {type(data).__name__}", field=field, path=path)
    data = bytes(data)
    if len(data) == size:
        return data
    try:
        raw = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(
            f"is neither {size} raw bytes nor base64 ({len(data)} bytes given)", field=field, path=path
        ) from exc
    if len(raw) != size:
        raise FormatError(f"must decode to {size} bytes, got {len(raw)}", field=field, path=path)
    return raw


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_u32(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SnpError(f"must be an integer, got {type(value).__name__}", field=field)
    if not 0 <= value <= U32_MAX:
        raise SnpError(f"must be 0..{U32_MAX}, got {value}", field=field)
    return value


# -- ID block ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IdBlock:
    """The 96-byte ID block; VERSION is always 1 (the only version there is)."""

    ld: bytes
    family_id: bytes = bytes(ID_SIZE)
    image_id: bytes = bytes(ID_SIZE)
    guest_svn: int = 0
    policy: GuestPolicy = dataclasses.field(default_factory=lambda: GuestPolicy.from_int(DEFAULT_POLICY))

    def __post_init__(self) -> None:
        for name, size in (("ld", LD_SIZE), ("family_id", ID_SIZE), ("image_id", ID_SIZE)):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != size:
                raise SnpError(f"must be {size} bytes", field=name)
        _check_u32(self.guest_svn, "guest_svn")
        if not isinstance(self.policy, GuestPolicy):
            raise SnpError("must be a GuestPolicy", field="policy")

    @classmethod
    def build(
        cls,
        measurement: Any,
        family_id: Any = None,
        image_id: Any = None,
        guest_svn: Any = 0,
        policy: Any = DEFAULT_POLICY,
    ) -> IdBlock:
        """Validate user input (hex strings, int/str/dict policy) and build the block.

        Errors name the option: ``measurement``, ``family_id``, ``image_id``,
        ``guest_svn``, ``policy``.
        """
        return cls(
            ld=parse_hex(measurement, LD_SIZE, "measurement"),
            family_id=bytes(ID_SIZE) if family_id is None else parse_hex(family_id, ID_SIZE, "family_id"),
            image_id=bytes(ID_SIZE) if image_id is None else parse_hex(image_id, ID_SIZE, "image_id"),
            guest_svn=_check_u32(0 if guest_svn is None else guest_svn, "guest_svn"),
            policy=parse_policy(DEFAULT_POLICY if policy is None else policy),
        )

    def to_bytes(self) -> bytes:
        return _ID_BLOCK.pack(
            self.ld, self.family_id, self.image_id, ID_BLOCK_VERSION, self.guest_svn, self.policy.to_int()
        )

    @classmethod
    def from_bytes(cls, data: Any, *, field: str = "id_block") -> IdBlock:
        """Parse 96 bytes; refuses another length, VERSION != 1 and an invalid POLICY."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise FormatError(f"expected bytes, got {type(data).__name__}", field=field)
        data = bytes(data)
        if len(data) != ID_BLOCK_SIZE:
            raise FormatError(f"an ID block is {ID_BLOCK_SIZE} bytes, got {len(data)}", field=field)
        ld, family_id, image_id, version, guest_svn, policy = _ID_BLOCK.unpack(data)
        if version != ID_BLOCK_VERSION:
            raise FormatError(f"VERSION is {version}, only {ID_BLOCK_VERSION} is defined", field=f"{field}.version")
        return cls(
            ld=ld,
            family_id=family_id,
            image_id=image_id,
            guest_svn=guest_svn,
            policy=GuestPolicy.from_int(policy, field=f"{field}.policy"),
        )

    def to_b64(self) -> str:
        return b64(self.to_bytes())

    def to_dict(self) -> dict[str, Any]:
        """Public facts, hex-encoded (the shape the vectors' ``id_block_decoded`` uses)."""
        return {
            "ld": self.ld.hex(),
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "version": ID_BLOCK_VERSION,
            "guest_svn": self.guest_svn,
            "policy": f"{self.policy.to_int():#x}",
        }


# -- ID auth -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IdAuth:
    """The 4096-byte ID authentication information structure.

    Keys are kept as their 0x404-byte SEV structures and signatures as 512-byte
    SEV signatures, exactly as on the wire, so ``from_bytes(x).to_bytes() == x``.
    """

    id_block_sig: bytes
    id_key: bytes
    id_key_sig: bytes = _ZERO_SIG
    author_key: bytes = _ZERO_KEY
    id_key_algo: int = sev_keys.ALGO_ECDSA_P384_SHA384
    author_key_algo: int = 0

    def __post_init__(self) -> None:
        for name, size in (
            ("id_block_sig", sev_keys.SIGNATURE_SIZE),
            ("id_key", sev_keys.PUBKEY_SIZE),
            ("id_key_sig", sev_keys.SIGNATURE_SIZE),
            ("author_key", sev_keys.PUBKEY_SIZE),
        ):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != size:
                raise SnpError(f"must be {size:#x} bytes", field=f"id_auth.{name}")
        _check_u32(self.id_key_algo, "id_auth.id_key_algo")
        _check_u32(self.author_key_algo, "id_auth.author_key_algo")

    @property
    def author_key_enabled(self) -> bool:
        """True when AUTHOR_KEY is present (QEMU ``author-key-enabled=on``)."""
        return self.author_key != _ZERO_KEY

    @property
    def id_key_digest(self) -> bytes:
        """The report's ID_KEY_DIGEST for this block."""
        return sev_keys.struct_digest(self.id_key)

    @property
    def author_key_digest(self) -> bytes | None:
        """The report's AUTHOR_KEY_DIGEST, or None without an author key."""
        return sev_keys.struct_digest(self.author_key) if self.author_key_enabled else None

    @classmethod
    def build(cls, id_block: IdBlock, id_private_key: Any, author_private_key: Any = None) -> IdAuth:
        """Sign ``id_block`` with the ID key and, with an author key, the ID key with it.

        ECDSA is randomised: two builds of the same block differ in their
        signatures but verify alike, so compare with ``verify``, never bytes.
        """
        id_key = sev_keys.public_key_to_struct(id_private_key, field="id_key")
        id_block_sig = sev_keys.sign(id_private_key, id_block.to_bytes(), field="id_key")
        if author_private_key is None:
            return cls(id_block_sig=id_block_sig, id_key=id_key)
        return cls(
            id_block_sig=id_block_sig,
            id_key=id_key,
            id_key_sig=sev_keys.sign(author_private_key, id_key, field="author_key"),
            author_key=sev_keys.public_key_to_struct(author_private_key, field="author_key"),
            author_key_algo=sev_keys.ALGO_ECDSA_P384_SHA384,
        )

    def to_bytes(self) -> bytes:
        out = bytearray(ID_AUTH_SIZE)
        struct.pack_into("<II", out, ID_KEY_ALGO_OFFSET, self.id_key_algo, self.author_key_algo)
        out[ID_BLOCK_SIG_OFFSET : ID_BLOCK_SIG_OFFSET + sev_keys.SIGNATURE_SIZE] = self.id_block_sig
        out[ID_KEY_OFFSET : ID_KEY_OFFSET + sev_keys.PUBKEY_SIZE] = self.id_key
        out[ID_KEY_SIG_OFFSET : ID_KEY_SIG_OFFSET + sev_keys.SIGNATURE_SIZE] = self.id_key_sig
        out[AUTHOR_KEY_OFFSET : AUTHOR_KEY_OFFSET + sev_keys.PUBKEY_SIZE] = self.author_key
        return bytes(out)

    def to_b64(self) -> str:
        return b64(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: Any, *, field: str = "id_auth") -> IdAuth:
        """Parse and structurally check 4096 bytes (signatures are checked by ``verify``).

        Refuses another length, an algorithm other than ECDSA P-384/SHA-384,
        non-zero reserved bytes, malformed key or signature structures, and an
        author half that is partly filled in.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise FormatError(f"expected bytes, got {type(data).__name__}", field=field)
        data = bytes(data)
        if len(data) != ID_AUTH_SIZE:
            raise FormatError(f"an ID auth block is {ID_AUTH_SIZE} bytes, got {len(data)}", field=field)
        id_key_algo, author_key_algo = struct.unpack_from("<II", data, ID_KEY_ALGO_OFFSET)
        for start, end in ID_AUTH_RESERVED:
            if any(data[start:end]):
                raise FormatError(f"reserved bytes {start:#x}..{end - 1:#x} must be zero", field=f"{field}.reserved")
        if id_key_algo != sev_keys.ALGO_ECDSA_P384_SHA384:
            raise FormatError(
                f"ID_KEY_ALGO is {id_key_algo}, only {sev_keys.ALGO_ECDSA_P384_SHA384} (ECDSA P-384/SHA-384) exists",
                field=f"{field}.id_key_algo",
            )
        id_block_sig = data[ID_BLOCK_SIG_OFFSET : ID_BLOCK_SIG_OFFSET + sev_keys.SIGNATURE_SIZE]
        id_key = data[ID_KEY_OFFSET : ID_KEY_OFFSET + sev_keys.PUBKEY_SIZE]
        id_key_sig = data[ID_KEY_SIG_OFFSET : ID_KEY_SIG_OFFSET + sev_keys.SIGNATURE_SIZE]
        author_key = data[AUTHOR_KEY_OFFSET : AUTHOR_KEY_OFFSET + sev_keys.PUBKEY_SIZE]
        _structural(sev_keys.decode_signature, id_block_sig, f"{field}.id_block_sig")
        _structural(sev_keys.parse_public_key_struct, id_key, f"{field}.id_key")
        if author_key == _ZERO_KEY:
            # No author key.  Other writers put 1 in AUTHOR_KEY_ALGO regardless; accept 0 or 1.
            if id_key_sig != _ZERO_SIG:
                raise FormatError("ID_KEY_SIG is set but AUTHOR_KEY is empty", field=f"{field}.id_key_sig")
            if author_key_algo not in (0, sev_keys.ALGO_ECDSA_P384_SHA384):
                raise FormatError(f"AUTHOR_KEY_ALGO is {author_key_algo}", field=f"{field}.author_key_algo")
        else:
            if author_key_algo != sev_keys.ALGO_ECDSA_P384_SHA384:
                raise FormatError(
                    f"AUTHOR_KEY_ALGO is {author_key_algo}, only {sev_keys.ALGO_ECDSA_P384_SHA384} exists",
                    field=f"{field}.author_key_algo",
                )
            _structural(sev_keys.parse_public_key_struct, author_key, f"{field}.author_key")
            _structural(sev_keys.decode_signature, id_key_sig, f"{field}.id_key_sig")
        return cls(
            id_block_sig=id_block_sig,
            id_key=id_key,
            id_key_sig=id_key_sig,
            author_key=author_key,
            id_key_algo=id_key_algo,
            author_key_algo=author_key_algo,
        )

    def verify(
        self,
        id_block: IdBlock,
        *,
        id_public_key: Any = None,
        author_public_key: Any = None,
    ) -> None:
        """Check every signature; raise ``SnpError`` naming the one that failed.

        * ``id_block_sig``: ID_BLOCK_SIG by the embedded ID key over ``id_block``;
        * ``id_key_sig``: ID_KEY_SIG by the embedded author key over ID_KEY (when
          the author key is enabled).

        With ``id_public_key`` / ``author_public_key`` the embedded keys must also
        be those keys (field ``id_key`` / ``author_key``); an expected author key
        on a block without one fails.
        """
        if id_public_key is not None and sev_keys.public_key_to_struct(id_public_key, field="id_key") != self.id_key:
            raise SnpError("the ID auth block carries a different ID key", field="id_key")
        if author_public_key is not None:
            if not self.author_key_enabled:
                raise SnpError("the ID auth block carries no author key", field="author_key")
            if sev_keys.public_key_to_struct(author_public_key, field="author_key") != self.author_key:
                raise SnpError("the ID auth block carries a different author key", field="author_key")
        id_key = sev_keys.public_key_from_struct(self.id_key, field="id_auth.id_key")
        try:
            sev_keys.verify(id_key, id_block.to_bytes(), self.id_block_sig, field="id_block_sig")
        except SnpError as exc:
            raise SnpError(
                f"ID_BLOCK_SIG does not verify over this ID block with the embedded ID key ({exc.message})",
                field="id_block_sig",
            ) from exc
        if self.author_key_enabled:
            author_key = sev_keys.public_key_from_struct(self.author_key, field="id_auth.author_key")
            try:
                sev_keys.verify(author_key, self.id_key, self.id_key_sig, field="id_key_sig")
            except SnpError as exc:
                raise SnpError(
                    f"ID_KEY_SIG does not verify over the ID key with the embedded author key ({exc.message})",
                    field="id_key_sig",
                ) from exc

    def to_dict(self) -> dict[str, Any]:
        """Public facts: algorithms, key digests, whether the author key is enabled."""
        author_digest = self.author_key_digest
        return {
            "id_key_algo": self.id_key_algo,
            "author_key_algo": self.author_key_algo,
            "author_key_enabled": self.author_key_enabled,
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": author_digest.hex() if author_digest is not None else None,
        }


def _structural(check: Any, data: bytes, field: str) -> None:
    """Run a sev_keys structure check, reporting it as a FormatError of the ID auth."""
    try:
        check(data, field=field)
    except FormatError:
        raise
    except SnpError as exc:
        raise FormatError(exc.message, field=field) from exc


# -- QEMU -------------------------------------------------------------------------------------


def qemu_properties(id_block: IdBlock, id_auth: IdAuth) -> dict[str, str]:
    """The ``sev-snp-guest`` object properties that carry the ID block to the firmware."""
    return {
        "id-block": id_block.to_b64(),
        "id-auth": id_auth.to_b64(),
        "author-key-enabled": "on" if id_auth.author_key_enabled else "off",
    }


def qemu_option(properties: dict[str, str]) -> str:
    """``id-block=…,id-auth=…,author-key-enabled=…`` for ``-object sev-snp-guest,…``.

    Base64 never contains a comma, so no QEMU option escaping is needed.
    """
    return ",".join(f"{key}={value}" for key, value in properties.items())
