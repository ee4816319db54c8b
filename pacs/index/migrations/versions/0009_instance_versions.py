"""Superseded versions of instances (duplicate_policy "keep-versions")

Revision ID: 0009
Revises: 0008

One row per stored file that was an instance's current object until a different object arrived
under its SOP Instance UID; the instance row keeps pointing at the newest. Written out here (a
migration must not import code that changes later).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("blob_key", sa.String(length=128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("dataset_sha256", sa.String(length=64), nullable=True),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("called_ae", sa.String(length=16), nullable=True),
        sa.Column("peer_address", sa.String(length=64), nullable=True),
        sa.Column("origin_protocol", sa.String(length=16), nullable=True),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_versions")),
        sa.UniqueConstraint("blob_key", name=op.f("uq_instance_versions_blob_key")),
    )
    op.create_index(
        op.f("ix_instance_versions_sop_instance_uid"), "instance_versions", ["sop_instance_uid"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_instance_versions_sop_instance_uid"), table_name="instance_versions")
    op.drop_table("instance_versions")
