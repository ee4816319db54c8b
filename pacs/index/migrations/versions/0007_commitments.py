"""Storage commitment requests (PS3.4 Annex J): durable pending reports, delivered once

Revision ID: 0007
Revises: 0006

One row per N-ACTION Request Storage Commitment (``transaction_uid`` unique): the requested
items, the result computed when the request was accepted (written in the same transaction, before
the N-ACTION response), and the delivery state of its N-EVENT-REPORT (``pending`` → ``delivered``
or ``failed``) with retry bookkeeping and a lease (``locked_by`` / ``locked_until``) so that any
node can deliver and a dead node's work is taken over when its lease runs out.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "commitments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("called_ae", sa.String(length=16), nullable=True),
        sa.Column("peer_address", sa.String(length=64), nullable=True),
        sa.Column("items", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("locked_by", sa.String(length=128), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commitments")),
        sa.UniqueConstraint("transaction_uid", name=op.f("uq_commitments_transaction_uid")),
    )
    op.create_index(
        "ix_commitments_status_next_attempt_at",
        "commitments",
        ["status", "next_attempt_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_commitments_status_next_attempt_at", table_name="commitments")
    op.drop_table("commitments")
