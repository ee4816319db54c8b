"""Appraisal service lines: per-line summary, line members, per-series acquisition facts

Revision ID: 0004
Revises: 0003

Existing studies and MPPS steps are gathered into lines by ``Appraisal.rebuild_lines`` (run at
start-up when the line table is empty and the index is not).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "appraisal_lines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("line_key", sa.String(length=160), nullable=False),
        sa.Column("key_source", sa.String(length=32), nullable=False),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("requested_procedure_id", sa.String(length=64), nullable=True),
        sa.Column("scheduled_procedure_step_id", sa.String(length=64), nullable=True),
        sa.Column("line_date", sa.String(length=8), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("other_patient_ids", sa.String(length=512), nullable=True),
        sa.Column("procedure_code", sa.String(length=64), nullable=True),
        sa.Column("procedure_coding_scheme", sa.String(length=64), nullable=True),
        sa.Column("procedure_code_meaning", sa.String(length=256), nullable=True),
        sa.Column("procedure_code_source", sa.String(length=64), nullable=True),
        sa.Column("description", sa.String(length=256), nullable=True),
        sa.Column("description_key", sa.String(length=256), nullable=True),
        sa.Column("modalities", sa.String(length=128), server_default="", nullable=False),
        sa.Column("devices", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appraisal_lines")),
        sa.UniqueConstraint("line_key", name=op.f("uq_appraisal_lines_line_key")),
    )
    with op.batch_alter_table("appraisal_lines", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_appraisal_lines_accession_number"), ["accession_number"])
        batch_op.create_index(batch_op.f("ix_appraisal_lines_patient_id"), ["patient_id"])
        batch_op.create_index("ix_appraisal_lines_line_date_id", ["line_date", "id"])
    op.create_table(
        "appraisal_line_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("line_fk", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["line_fk"], ["appraisal_lines.id"], name=op.f("fk_appraisal_line_members_line_fk")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appraisal_line_members")),
    )
    with op.batch_alter_table("appraisal_line_members", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_appraisal_line_members_line_fk"), ["line_fk"])
        batch_op.create_index("uq_appraisal_line_members_kind_uid", ["kind", "uid"], unique=True)
    op.create_table(
        "appraisal_series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("line_fk", sa.Integer(), nullable=False),
        sa.Column("series_number", sa.BigInteger(), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("series_date", sa.String(length=8), nullable=True),
        sa.Column("series_time", sa.String(length=16), nullable=True),
        sa.Column("manufacturer", sa.String(length=64), nullable=True),
        sa.Column("manufacturer_model_name", sa.String(length=64), nullable=True),
        sa.Column("device_serial_number", sa.String(length=64), nullable=True),
        sa.Column("station_name", sa.String(length=64), nullable=True),
        sa.Column("software_versions", sa.String(length=256), nullable=True),
        sa.Column("operators_name", sa.String(length=324), nullable=True),
        sa.Column("performing_physician_name", sa.String(length=324), nullable=True),
        sa.Column("instance_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("min_adt", sa.String(length=32), nullable=True),
        sa.Column("max_adt", sa.String(length=32), nullable=True),
        sa.Column("min_ad_at", sa.String(length=32), nullable=True),
        sa.Column("max_ad_at", sa.String(length=32), nullable=True),
        sa.Column("min_cd_ct", sa.String(length=32), nullable=True),
        sa.Column("max_cd_ct", sa.String(length=32), nullable=True),
        sa.Column("first_received", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_received", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tz_min", sa.String(length=16), nullable=True),
        sa.Column("tz_max", sa.String(length=16), nullable=True),
        sa.Column("sync_min", sa.String(length=16), nullable=True),
        sa.Column("sync_max", sa.String(length=16), nullable=True),
        sa.Column("time_source", sa.String(length=64), nullable=True),
        sa.Column("ae_min", sa.String(length=16), nullable=True),
        sa.Column("ae_max", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["line_fk"], ["appraisal_lines.id"], name=op.f("fk_appraisal_series_line_fk")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appraisal_series")),
        sa.UniqueConstraint("series_instance_uid", name=op.f("uq_appraisal_series_series_instance_uid")),
    )
    with op.batch_alter_table("appraisal_series", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_appraisal_series_line_fk"), ["line_fk"])
        batch_op.create_index(batch_op.f("ix_appraisal_series_last_received"), ["last_received"])


def downgrade() -> None:
    op.drop_table("appraisal_series")
    op.drop_table("appraisal_line_members")
    op.drop_table("appraisal_lines")
