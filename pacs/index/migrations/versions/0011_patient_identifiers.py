"""Patient identifiers (issue 18): system|value -> the local patient

Revision ID: 0011
Revises: 0010

One row per identifier a local patient (``patients.identity``) is known by: national ID (CCCD),
health-insurance card (BHYT, matched on its social-insurance number), record numbers with their
issuer. Written out here (a migration must not import code that changes later). The rows of the
instances already stored are filled by the next ``pacs reindex``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patient_identifiers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("system", sa.String(length=256), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("full_value", sa.String(length=64), nullable=False),
        sa.Column("type_code", sa.String(length=16), server_default="", nullable=False),
        sa.Column("patient_identity", sa.String(length=512), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_identifiers")),
    )
    op.create_index(
        op.f("ix_patient_identifiers_patient_identity"),
        "patient_identifiers",
        ["patient_identity"],
        unique=False,
    )
    op.create_index("ix_patient_identifiers_system_value", "patient_identifiers", ["system", "value"])
    op.create_index(
        "uq_patient_identifiers_row",
        "patient_identifiers",
        ["system", "full_value", "patient_identity", "source"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_patient_identifiers_row", table_name="patient_identifiers")
    op.drop_index("ix_patient_identifiers_system_value", table_name="patient_identifiers")
    op.drop_index(op.f("ix_patient_identifiers_patient_identity"), table_name="patient_identifiers")
    op.drop_table("patient_identifiers")
