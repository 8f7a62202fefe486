# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Token lineage and scope: who minted each token, and what it may do.

Tokens that existed before this revision could do everything (mint and revoke any
token), so they become ``admin`` tokens without a parent; new tokens default to
``operator`` (images and audit, no token management).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("parent_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("scope", sa.String(16), nullable=False, server_default="admin"))
        batch.create_index("ix_tokens_parent_id", ["parent_id"])


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_index("ix_tokens_parent_id")
        batch.drop_column("scope")
        batch.drop_column("parent_id")
