"""Upload queue and remote state of blobs (``[storage] backend = "s3"``)

Revision ID: 0012
Revises: 0011

One row per blob queued for upload to S3, written in the store transaction of its instance:
``queued`` until uploaded and verified, then ``remote``; a lease (``locked_by`` /
``locked_until``) so that any node can upload and a dead node's uploads are taken over. Written
out here (a migration must not import code that changes later).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob_uploads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("blob_key", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("md5", sa.String(length=32), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("locked_by", sa.String(length=128), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blob_uploads")),
        sa.UniqueConstraint("blob_key", name=op.f("uq_blob_uploads_blob_key")),
    )
    op.create_index(
        "ix_blob_uploads_state_next_attempt_at", "blob_uploads", ["state", "next_attempt_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_blob_uploads_state_next_attempt_at", table_name="blob_uploads")
    op.drop_table("blob_uploads")
