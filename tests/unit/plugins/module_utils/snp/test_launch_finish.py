# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""snp/launch_finish.py: the ID-block checks of SNP_LAUNCH_FINISH, each made to refuse."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from ansible_collections.snpguard.cvm.plugins.module_utils.snp import sev_keys
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.errors import SnpError
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.id_block import IdAuth, IdBlock
from ansible_collections.snpguard.cvm.plugins.module_utils.snp.launch_finish import LaunchIdentity, check_id_block

LD = bytes(range(48))
POLICY = 0x30000


def blocks(ld: bytes = LD, policy: int = POLICY, author: bool = False) -> tuple[str, str, object, object]:
    id_key, _pem = sev_keys.generate_private_key()
    author_key = sev_keys.generate_private_key()[0] if author else None
    block = IdBlock.build(ld.hex(), "11" * 16, "22" * 16, 7, policy)
    return block.to_b64(), IdAuth.build(block, id_key, author_key).to_b64(), id_key, author_key


def test_no_id_block_gives_zero_fields() -> None:
    assert check_id_block(None, None, measurement=LD, policy=POLICY) == LaunchIdentity()


@pytest.mark.parametrize("author", [False, True])
def test_an_accepted_block_fixes_the_report_fields(author: bool) -> None:
    block, auth, id_key, author_key = blocks(author=author)
    identity = check_id_block(block, auth, measurement=LD, policy=POLICY)
    assert identity.family_id == b"\x11" * 16 and identity.image_id == b"\x22" * 16 and identity.guest_svn == 7
    assert identity.id_key_digest == sev_keys.key_digest(id_key)
    assert identity.author_key_en is author
    assert identity.author_key_digest == (sev_keys.key_digest(author_key) if author else bytes(48))


def test_a_block_for_another_measurement_is_refused() -> None:
    block, auth, _k, _a = blocks(ld=bytes(48))
    with pytest.raises(SnpError) as info:
        check_id_block(block, auth, measurement=LD, policy=POLICY)
    assert info.value.field == "id_block.measurement"


def test_a_block_with_another_policy_is_refused() -> None:
    block, auth, _k, _a = blocks(policy=0x30000 | 1 << 18)
    with pytest.raises(SnpError) as info:
        check_id_block(block, auth, measurement=LD, policy=POLICY)
    assert info.value.field == "id_block.policy"


def test_a_bad_signature_is_refused() -> None:
    block, _auth, _k, _a = blocks()
    _b2, other_auth, _k2, _a2 = blocks()  # signed over another block (other keys, same fields but random sig)
    other = IdAuth.from_bytes(base64.b64decode(other_auth))
    forged = dataclasses.replace(other, id_block_sig=bytes(len(other.id_block_sig)))
    with pytest.raises(SnpError) as info:
        check_id_block(block, forged.to_b64(), measurement=LD, policy=POLICY)
    assert info.value.field.startswith("id_auth.")


def test_author_key_flag_must_match_the_block() -> None:
    block, auth, _k, _a = blocks(author=False)
    with pytest.raises(SnpError) as info:
        check_id_block(block, auth, measurement=LD, policy=POLICY, author_key_enabled=True)
    assert info.value.field == "id_auth.author_key"


def test_half_an_id_block_is_refused() -> None:
    block, _auth, _k, _a = blocks()
    with pytest.raises(SnpError) as info:
        check_id_block(block, None, measurement=LD, policy=POLICY)
    assert info.value.field == "id_block"
