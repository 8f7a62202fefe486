# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""What the AMD-SP checks at SNP_LAUNCH_FINISH when the VMM hands it an ID block.

With an ID block the launch completes only if (SEV-SNP ABI, SNP_LAUNCH_FINISH): the ID
auth block's signature over the ID block verifies with its ID key; with the author key
enabled, the author key's signature over the ID key verifies; the ID block's LD equals
the launch digest the AMD-SP computed; and its POLICY equals the guest's policy.  Then
the report carries the ID block's FAMILY_ID, IMAGE_ID and GUEST_SVN and the digests of
the ID and author keys.  Without one, those report fields are zero.  The simulated
launch refuses exactly where the AMD-SP would, naming the check.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SnpError
from .id_block import ID_AUTH_SIZE, ID_BLOCK_SIZE, IdAuth, IdBlock, decode_blob


@dataclass(frozen=True)
class LaunchIdentity:
    """The report fields an accepted ID block fixes."""

    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    guest_svn: int = 0
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    author_key_en: bool = False


def check_id_block(id_block: str | bytes | None, id_auth: str | bytes | None, *, measurement: bytes, policy: int,
                   author_key_enabled: bool | None = None) -> LaunchIdentity:
    """Accept an ID block (base64 or raw) for a launch with ``measurement`` and ``policy``, or refuse.

    ``author_key_enabled`` is the VMM's flag (QEMU's ``author-key-enabled``); ``None`` means
    "as the ID auth block says".  Refusals name ``id_block.*`` / ``id_auth.*`` checks.
    """
    if id_block is None and id_auth is None:
        return LaunchIdentity()
    if id_block is None or id_auth is None:
        raise SnpError("an ID block needs its ID auth block and the other way round", field="id_block")
    block = IdBlock.from_bytes(decode_blob(id_block, ID_BLOCK_SIZE, "id_block"))
    auth = IdAuth.from_bytes(decode_blob(id_auth, ID_AUTH_SIZE, "id_auth"))
    if author_key_enabled is not None and author_key_enabled != auth.author_key_enabled:
        raise SnpError(f"author-key-enabled is {'on' if author_key_enabled else 'off'} but the ID auth block "
                       f"{'has' if auth.author_key_enabled else 'has no'} author key", field="id_auth.author_key")
    try:
        auth.verify(block)
    except SnpError as exc:
        raise SnpError(exc.message, field=f"id_auth.{exc.field}") from exc
    if block.ld != measurement:
        raise SnpError(f"the ID block is for launch digest {block.ld.hex()}, this launch measures "
                       f"{measurement.hex()}", field="id_block.measurement")
    if block.policy.to_int() != policy:
        raise SnpError(f"the ID block carries policy 0x{block.policy.to_int():x}, the guest launches with "
                       f"0x{policy:x}", field="id_block.policy")
    return LaunchIdentity(family_id=block.family_id, image_id=block.image_id, guest_svn=block.guest_svn,
                          id_key_digest=auth.id_key_digest,
                          author_key_digest=auth.author_key_digest or bytes(48),
                          author_key_en=auth.author_key_enabled)
