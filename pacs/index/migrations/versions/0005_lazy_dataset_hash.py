"""instances.dataset_sha256 may be NULL: computed only when a second object arrives under a UID

Revision ID: 0005
Revises: 0004

Hashing every received data set a second time (besides the whole file's SHA-256, which
``pacs verify`` checks) cost about a seventh of the CPU of a C-STORE; the data set hash is
only needed to tell an identical resend from a different object, so it is now computed then,
from the two files, and kept.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("dataset_sha256", existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("dataset_sha256", existing_type=sa.String(length=64), nullable=False)
