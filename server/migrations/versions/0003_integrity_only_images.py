# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Integrity-only images: an image may have no volume key.

A ``mode: verity`` image is registered for its measurements, its launch bundle and what a
runtime attestation expects; it has no key to release (its agent never asks, and a report of
it is refused by name).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.alter_column("volume_key_enc", existing_type=sa.LargeBinary(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM images WHERE volume_key_enc IS NULL")
    with op.batch_alter_table("images") as batch:
        batch.alter_column("volume_key_enc", existing_type=sa.LargeBinary(), nullable=False)
