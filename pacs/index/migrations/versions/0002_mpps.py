"""MPPS procedure steps (appraisal acquisition logs)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mpps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("start_date", sa.String(length=8), nullable=True),
        sa.Column("start_time", sa.String(length=16), nullable=True),
        sa.Column("end_date", sa.String(length=8), nullable=True),
        sa.Column("end_time", sa.String(length=16), nullable=True),
        sa.Column("performed_procedure_step_id", sa.String(length=64), nullable=True),
        sa.Column("performed_station_ae_title", sa.String(length=16), nullable=True),
        sa.Column("performed_station_name", sa.String(length=64), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("requested_procedure_id", sa.String(length=64), nullable=True),
        sa.Column("scheduled_procedure_step_id", sa.String(length=64), nullable=True),
        sa.Column("procedure_code", sa.String(length=64), nullable=True),
        sa.Column("procedure_code_meaning", sa.String(length=256), nullable=True),
        sa.Column("description", sa.String(length=256), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("peer_address", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mpps")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_mpps_sop_instance_uid")),
    )
    with op.batch_alter_table("mpps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mpps_study_instance_uid"), ["study_instance_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_mpps_accession_number"), ["accession_number"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("mpps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mpps_accession_number"))
        batch_op.drop_index(batch_op.f("ix_mpps_study_instance_uid"))
    op.drop_table("mpps")
