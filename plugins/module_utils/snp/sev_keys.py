# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""SEV-SNP's own encodings of ECDSA P-384 keys and signatures.

The AMD-SP does not speak DER.  Keys and signatures travel in fixed-size,
little-endian structures (SEV-SNP ABI; reference §6.3, pitfall P2):

* public key, 0x404 bytes: ``u32 CURVE`` (2 = P-384) @0x00, ``QX`` @0x04 and
  ``QY`` @0x4C as 72-byte little-endian integers (48 significant bytes, zero
  padded), zeros from 0x94 to the end;
* signature, 0x200 bytes: ``R`` @0x00 and ``S`` @0x48 as 72-byte little-endian
  integers, zeros from 0x90 to the end.  The attestation report carries the same
  structure at 0x2A0, so ``verify`` is reused for reports as is.

The report's ID_KEY_DIGEST and AUTHOR_KEY_DIGEST are SHA-384 of the whole 0x404
public-key structure, reserved zeros included (``key_digest``).

Structure checks (lengths, curve, padding) are pure Python; turning coordinates
into a usable key, signing and verifying go through ``crypto_guard``, and every
failure becomes an ``SnpError`` naming the field.
"""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING, Any

from .crypto_guard import HAS_CRYPTOGRAPHY, asym_utils, crypto_exceptions, ec, hashes, serialization
from .errors import SnpError

if TYPE_CHECKING:  # pragma: no cover
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey

#: ``ID_KEY_ALGO`` / ``AUTHOR_KEY_ALGO`` / report ``SIGNATURE_ALGO``: ECDSA P-384 with SHA-384.
ALGO_ECDSA_P384_SHA384 = 1
#: ``CURVE`` of the public-key structure: P-384.
CURVE_P384 = 2

PUBKEY_SIZE = 0x404
SIGNATURE_SIZE = 0x200
COMPONENT_SIZE = 72  # one coordinate or one of R, S
SCALAR_SIZE = 48  # significant bytes of a P-384 value
DIGEST_SIZE = 48

_QX_OFFSET = 0x04
_QY_OFFSET = _QX_OFFSET + COMPONENT_SIZE  # 0x4C
_PUBKEY_RESERVED_OFFSET = _QY_OFFSET + COMPONENT_SIZE  # 0x94
_R_OFFSET = 0x00
_S_OFFSET = COMPONENT_SIZE  # 0x48
_SIG_RESERVED_OFFSET = 2 * COMPONENT_SIZE  # 0x90
_U32 = struct.Struct("<I")


def _need_crypto() -> None:
    if not HAS_CRYPTOGRAPHY:
        raise SnpError("the Python 'cryptography' library is required for SEV-SNP keys and signatures")


def _is_p384(key: Any) -> bool:
    return isinstance(getattr(key, "curve", None), ec.SECP384R1)


def _as_public_p384(key: Any, field: str) -> EllipticCurvePublicKey:
    """The P-384 public key of ``key`` (public or private), or an error naming ``field``."""
    _need_crypto()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SnpError(f"SEV-SNP needs an ECDSA P-384 key, got {type(key).__name__}", field=field)
    if not _is_p384(key):
        raise SnpError(f"SEV-SNP needs an ECDSA P-384 key, got curve {key.curve.name}", field=field)
    return key


# -- little-endian fixed-width integers ---------------------------------------


def _le_component(value: int) -> bytes:
    return value.to_bytes(COMPONENT_SIZE, "little")


def _read_component(data: bytes, offset: int, what: str, field: str) -> int:
    raw = data[offset : offset + COMPONENT_SIZE]
    if any(raw[SCALAR_SIZE:]):
        raise SnpError(
            f"{what} has non-zero bytes beyond the {SCALAR_SIZE} significant bytes of a P-384 value",
            field=field,
        )
    return int.from_bytes(raw, "little")


# -- public-key structure -------------------------------------------------------


def public_key_to_struct(key: Any, *, field: str = "key") -> bytes:
    """The 0x404-byte SEV ECDSA public-key structure of a P-384 key (public or private)."""
    numbers = _as_public_p384(key, field).public_numbers()
    out = bytearray(PUBKEY_SIZE)
    _U32.pack_into(out, 0, CURVE_P384)
    out[_QX_OFFSET:_QY_OFFSET] = _le_component(numbers.x)
    out[_QY_OFFSET:_PUBKEY_RESERVED_OFFSET] = _le_component(numbers.y)
    return bytes(out)


def _fixed_size(data: object, size: int, what: str, field: str) -> bytes:
    """``data`` as bytes of exactly ``size``; anything else is refused naming ``field``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnpError(f"expected bytes, got {type(data).__name__}", field=field)
    data = bytes(data)
    if len(data) != size:
        raise SnpError(f"{what} must be {size:#x} bytes, got {len(data):#x}", field=field)
    return data


def _component_pair(data: bytes, first: tuple[int, str], second: tuple[int, str], reserved_from: int,
                    field: str) -> tuple[int, int]:
    """Two 72-byte little-endian values (QX/QY or R/S), then reserved bytes that must be zero."""
    values = (_read_component(data, first[0], first[1], field), _read_component(data, second[0], second[1], field))
    if any(data[reserved_from:]):
        raise SnpError(f"reserved bytes {reserved_from:#x}..{len(data) - 1:#x} must be zero", field=field)
    return values


def parse_public_key_struct(data: bytes, *, field: str = "key") -> tuple[int, int]:
    """Check a 0x404-byte public-key structure and return ``(qx, qy)`` (pure Python).

    Refuses a wrong length, a curve other than P-384, and non-zero padding or
    reserved bytes: the digest covers every byte, so a structure that differs
    only in padding would name a different key.
    """
    data = _fixed_size(data, PUBKEY_SIZE, "public-key structure", field)
    (curve,) = _U32.unpack_from(data, 0)
    if curve != CURVE_P384:
        raise SnpError(f"curve {curve} is not supported (only {CURVE_P384} = P-384)", field=field)
    return _component_pair(data, (_QX_OFFSET, "QX"), (_QY_OFFSET, "QY"), _PUBKEY_RESERVED_OFFSET, field)


def public_key_from_struct(data: bytes, *, field: str = "key") -> EllipticCurvePublicKey:
    """A ``cryptography`` P-384 public key from its 0x404-byte structure."""
    qx, qy = parse_public_key_struct(data, field=field)
    _need_crypto()
    try:
        return ec.EllipticCurvePublicNumbers(qx, qy, ec.SECP384R1()).public_key()
    except ValueError as exc:
        raise SnpError("QX/QY is not a point on the P-384 curve", field=field) from exc


def struct_digest(data: bytes) -> bytes:
    """SHA-384 of a public-key structure, as the report's ID/AUTHOR_KEY_DIGEST."""
    return hashlib.sha384(bytes(data)).digest()


def key_digest(key: Any, *, field: str = "key") -> bytes:
    """ID_KEY_DIGEST / AUTHOR_KEY_DIGEST of a P-384 key: SHA-384 of its 0x404 structure."""
    return struct_digest(public_key_to_struct(key, field=field))


def same_public_key(a: Any, b: Any) -> bool:
    """True when two P-384 keys (public or private) have the same public point."""
    return public_key_to_struct(a) == public_key_to_struct(b)


# -- signature structure -----------------------------------------------------------


def encode_signature(r: int, s: int) -> bytes:
    """The 512-byte SEV signature structure for ``(r, s)`` (pure Python)."""
    for name, value in (("R", r), ("S", s)):
        if value < 0 or value >= 1 << (8 * SCALAR_SIZE):
            raise SnpError(f"{name} does not fit in {SCALAR_SIZE} bytes", field="signature")
    out = bytearray(SIGNATURE_SIZE)
    out[_R_OFFSET:_S_OFFSET] = _le_component(r)
    out[_S_OFFSET:_SIG_RESERVED_OFFSET] = _le_component(s)
    return bytes(out)


def decode_signature(sig: bytes, *, field: str = "signature") -> tuple[int, int]:
    """``(r, s)`` of a 512-byte SEV signature; refuses wrong length or non-zero padding."""
    sig = _fixed_size(sig, SIGNATURE_SIZE, "signature", field)
    return _component_pair(sig, (_R_OFFSET, "R"), (_S_OFFSET, "S"), _SIG_RESERVED_OFFSET, field)


def signature_to_der(sig: bytes, *, field: str = "signature") -> bytes:
    """DER ``ECDSA-Sig-Value`` of a 512-byte SEV signature, for standard ECDSA APIs."""
    r, s = decode_signature(sig, field=field)
    _need_crypto()
    return asym_utils.encode_dss_signature(r, s)


def signature_from_der(der: bytes, *, field: str = "signature") -> bytes:
    """The 512-byte SEV signature of a DER ``ECDSA-Sig-Value``."""
    _need_crypto()
    try:
        r, s = asym_utils.decode_dss_signature(bytes(der))
    except ValueError as exc:
        raise SnpError("not a DER ECDSA signature", field=field) from exc
    return encode_signature(r, s)


def sign(private_key: EllipticCurvePrivateKey, message: bytes, *, field: str = "key") -> bytes:
    """ECDSA P-384/SHA-384 signature of ``message`` in the 512-byte SEV format.

    ``message`` is the raw structure (it is hashed here, once: pitfall P3).
    """
    _need_crypto()
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise SnpError(f"SEV-SNP needs an ECDSA P-384 private key, got {type(private_key).__name__}", field=field)
    if not _is_p384(private_key):
        raise SnpError(f"SEV-SNP needs an ECDSA P-384 key, got curve {private_key.curve.name}", field=field)
    der = private_key.sign(bytes(message), ec.ECDSA(hashes.SHA384()))
    return signature_from_der(der, field=field)


def verify(public_key: Any, message: bytes, sig: bytes, *, field: str = "signature") -> None:
    """Check a 512-byte SEV signature over ``message``; raise ``SnpError(field=field)`` if bad.

    Works for the ID block (ID_BLOCK_SIG), the ID key (ID_KEY_SIG) and the
    attestation report (``report[0x2A0:0x4A0]`` over ``report[:0x2A0]``).
    """
    key = _as_public_p384(public_key, field)
    der = signature_to_der(sig, field=field)
    try:
        key.verify(der, bytes(message), ec.ECDSA(hashes.SHA384()))
    except crypto_exceptions.InvalidSignature as exc:
        raise SnpError("signature does not verify", field=field) from exc


# -- PEM files --------------------------------------------------------------------------


def _password_bytes(password: str | bytes | None) -> bytes | None:
    if password is None or password in ("", b""):
        return None
    return password.encode("utf-8") if isinstance(password, str) else bytes(password)


def load_private_key(
    data: bytes,
    *,
    field: str = "key",
    path: str | None = None,
    password: str | bytes | None = None,
) -> EllipticCurvePrivateKey:
    """Load a PEM P-384 private key: PKCS#8 ``PRIVATE KEY``, SEC1 ``EC PRIVATE KEY``,
    or ``ENCRYPTED PRIVATE KEY`` with ``password``.  Errors name the field and file."""
    _need_crypto()
    if b"-----BEGIN" not in data:
        raise SnpError("not a PEM private key (no '-----BEGIN' line)", field=field, path=path)
    try:
        key = serialization.load_pem_private_key(data, password=_password_bytes(password))
    except TypeError as exc:
        text = str(exc).lower()
        if "not encrypted" in text:
            message = "a passphrase was given but the key is not encrypted"
        elif "encrypted" in text:
            message = "the key is encrypted: give its passphrase"
        else:
            message = f"cannot load the private key: {exc}"
        raise SnpError(message, field=field, path=path) from exc
    except (ValueError, crypto_exceptions.UnsupportedAlgorithm) as exc:
        hint = " or wrong passphrase" if password else ""
        raise SnpError(f"not a valid PEM private key{hint}", field=field, path=path) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SnpError(
            f"SEV-SNP needs an ECDSA P-384 key, got {type(key).__name__.lstrip('_')}",
            field=field,
            path=path,
        )
    if not _is_p384(key):
        raise SnpError(f"SEV-SNP needs an ECDSA P-384 key, got curve {key.curve.name}", field=field, path=path)
    return key


def load_public_key(data: bytes, *, field: str = "key", path: str | None = None) -> EllipticCurvePublicKey:
    """A P-384 public key from a PEM ``PUBLIC KEY`` or (unencrypted) private key."""
    _need_crypto()
    if b"PRIVATE KEY-----" in data:
        return load_private_key(data, field=field, path=path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, crypto_exceptions.UnsupportedAlgorithm) as exc:
        raise SnpError("not a valid PEM public key", field=field, path=path) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not _is_p384(key):
        raise SnpError("SEV-SNP needs an ECDSA P-384 key", field=field, path=path)
    return key


def generate_private_key(password: str | bytes | None = None) -> tuple[EllipticCurvePrivateKey, bytes]:
    """A new P-384 key and its PKCS#8 PEM (encrypted with ``password`` if given)."""
    _need_crypto()
    key = ec.generate_private_key(ec.SECP384R1())
    secret = _password_bytes(password)
    encryption = serialization.BestAvailableEncryption(secret) if secret is not None else serialization.NoEncryption()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    return key, pem


def public_key_pem(key: Any, *, field: str = "key") -> bytes:
    """SubjectPublicKeyInfo PEM of a P-384 key (for handing the public half out)."""
    public = _as_public_p384(key, field)
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
