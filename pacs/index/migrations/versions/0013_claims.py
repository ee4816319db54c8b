"""Reconciliations of HIS claims (XML3 / lists of MA_LK) against the archive

Revision ID: 0013
Revises: 0012

One ``claim_runs`` row per upload, one ``claim_results`` row per claim line or PACS study with
no claim line (its category and JSON result). Written out here (a migration must not import
code that changes later).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "claim_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_name", sa.String(length=128), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("source_kind", sa.String(length=16), nullable=False),
        sa.Column("upload_sha256", sa.String(length=64), nullable=False),
        sa.Column("upload_bytes", sa.BigInteger(), nullable=False),
        sa.Column("date_from", sa.String(length=8), nullable=False),
        sa.Column("date_to", sa.String(length=8), nullable=False),
        sa.Column("counts", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_claim_runs"),
    )
    op.create_table(
        "claim_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_fk", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("ma_lk", sa.String(length=100), nullable=True),
        sa.Column("stt", sa.String(length=16), nullable=True),
        sa.Column("ma_dich_vu", sa.String(length=64), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("line_key", sa.String(length=160), nullable=True),
        sa.Column("result", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["run_fk"], ["claim_runs.id"], name="fk_claim_results_run_fk"),
        sa.PrimaryKeyConstraint("id", name="pk_claim_results"),
    )
    op.create_index("ix_claim_results_run_fk", "claim_results", ["run_fk"])


def downgrade() -> None:
    op.drop_index("ix_claim_results_run_fk", table_name="claim_results")
    op.drop_table("claim_results")
    op.drop_table("claim_runs")
