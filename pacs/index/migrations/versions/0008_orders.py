"""Scheduled workflow: HIS orders, Modality Worklist items, applied order messages

Revision ID: 0008
Revises: 0007

One row per order (imaging service request + requested procedure) and one per scheduled
procedure step; the worklist columns follow the worklist catalogue of
``pacs.dicom.attributes`` as it was at this revision (written out here: a migration must not
import code that changes later).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "order_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sender", sa.String(length=256), nullable=False),
        sa.Column("control_id", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_messages")),
    )
    op.create_index(op.f("ix_order_messages_received_at"), "order_messages", ["received_at"], unique=False)
    op.create_index(
        "uq_order_messages_sender_control_id", "order_messages", ["sender", "control_id"], unique=True
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_key", sa.String(length=160), nullable=False),
        sa.Column("placer_order_number", sa.String(length=64), nullable=True),
        sa.Column("filler_order_number", sa.String(length=64), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("requested_procedure_id", sa.String(length=64), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("ordered_at", sa.String(length=32), nullable=True),
        sa.Column("ordered_at_source", sa.String(length=64), nullable=True),
        sa.Column("reported_at", sa.String(length=32), nullable=True),
        sa.Column("reported_at_source", sa.String(length=64), nullable=True),
        sa.Column("report_status", sa.String(length=8), nullable=True),
        sa.Column("reporting_doctor", sa.String(length=324), nullable=True),
        sa.Column("performed_at", sa.String(length=32), nullable=True),
        sa.Column("performed_at_source", sa.String(length=64), nullable=True),
        sa.Column("facility_code", sa.String(length=64), nullable=True),
        sa.Column("linked_study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("order_key", name=op.f("uq_orders_order_key")),
    )
    op.create_index(op.f("ix_orders_accession_number"), "orders", ["accession_number"], unique=False)
    op.create_index(
        op.f("ix_orders_linked_study_instance_uid"), "orders", ["linked_study_instance_uid"], unique=False
    )
    op.create_index(op.f("ix_orders_patient_id"), "orders", ["patient_id"], unique=False)
    op.create_index(op.f("ix_orders_study_instance_uid"), "orders", ["study_instance_uid"], unique=False)
    op.create_index(op.f("ix_orders_updated_at"), "orders", ["updated_at"], unique=False)
    op.create_table(
        "worklist_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_fk", sa.Integer(), nullable=False),
        sa.Column("step_key", sa.String(length=160), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("scheduled_station_ae_title", sa.String(length=16), nullable=True),
        sa.Column("scheduled_procedure_step_start_date", sa.String(length=8), nullable=True),
        sa.Column("scheduled_procedure_step_start_time", sa.String(length=16), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("scheduled_performing_physician_name", sa.String(length=324), nullable=True),
        sa.Column("scheduled_performing_physician_name_key", sa.String(length=324), nullable=True),
        sa.Column("scheduled_procedure_step_description", sa.String(length=64), nullable=True),
        sa.Column("scheduled_station_name", sa.String(length=64), nullable=True),
        sa.Column("scheduled_procedure_step_location", sa.String(length=64), nullable=True),
        sa.Column("scheduled_procedure_step_id", sa.String(length=64), nullable=True),
        sa.Column("scheduled_procedure_step_status", sa.String(length=16), nullable=True),
        sa.Column("requested_procedure_id", sa.String(length=64), nullable=True),
        sa.Column("requested_procedure_description", sa.String(length=64), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("requested_procedure_priority", sa.String(length=16), nullable=True),
        sa.Column("reason_for_the_requested_procedure", sa.String(length=64), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("referring_physician_name", sa.String(length=324), nullable=True),
        sa.Column("referring_physician_name_key", sa.String(length=324), nullable=True),
        sa.Column("requesting_physician", sa.String(length=324), nullable=True),
        sa.Column("requesting_physician_key", sa.String(length=324), nullable=True),
        sa.Column("placer_order_number_imaging_service_request", sa.String(length=64), nullable=True),
        sa.Column("filler_order_number_imaging_service_request", sa.String(length=64), nullable=True),
        sa.Column("admission_id", sa.String(length=64), nullable=True),
        sa.Column("current_patient_location", sa.String(length=64), nullable=True),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("patient_name_key", sa.String(length=324), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_birth_date", sa.String(length=8), nullable=True),
        sa.Column("patient_sex", sa.String(length=16), nullable=True),
        sa.Column("other_patient_ids", sa.String(length=512), nullable=True),
        sa.Column("requested_procedure_code", sa.Text(), nullable=True),
        sa.Column("scheduled_protocol_code", sa.Text(), nullable=True),
        sa.Column("mpps_sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_fk"], ["orders.id"], name=op.f("fk_worklist_items_order_fk")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worklist_items")),
        sa.UniqueConstraint("step_key", name=op.f("uq_worklist_items_step_key")),
    )
    op.create_index(
        op.f("ix_worklist_items_accession_number"), "worklist_items", ["accession_number"], unique=False
    )
    op.create_index(
        op.f("ix_worklist_items_mpps_sop_instance_uid"),
        "worklist_items",
        ["mpps_sop_instance_uid"],
        unique=False,
    )
    op.create_index(
        "ix_worklist_items_open_date",
        "worklist_items",
        ["open", "scheduled_procedure_step_start_date"],
        unique=False,
    )
    op.create_index(op.f("ix_worklist_items_order_fk"), "worklist_items", ["order_fk"], unique=False)
    op.create_index(op.f("ix_worklist_items_patient_id"), "worklist_items", ["patient_id"], unique=False)
    op.create_index(
        op.f("ix_worklist_items_patient_name_key"), "worklist_items", ["patient_name_key"], unique=False
    )
    op.create_index(
        op.f("ix_worklist_items_scheduled_station_ae_title"),
        "worklist_items",
        ["scheduled_station_ae_title"],
        unique=False,
    )
    op.create_index(
        op.f("ix_worklist_items_study_instance_uid"), "worklist_items", ["study_instance_uid"], unique=False
    )


def downgrade() -> None:

    op.drop_index(op.f("ix_worklist_items_study_instance_uid"), table_name="worklist_items")
    op.drop_index(op.f("ix_worklist_items_scheduled_station_ae_title"), table_name="worklist_items")
    op.drop_index(op.f("ix_worklist_items_patient_name_key"), table_name="worklist_items")
    op.drop_index(op.f("ix_worklist_items_patient_id"), table_name="worklist_items")
    op.drop_index(op.f("ix_worklist_items_order_fk"), table_name="worklist_items")
    op.drop_index("ix_worklist_items_open_date", table_name="worklist_items")
    op.drop_index(op.f("ix_worklist_items_mpps_sop_instance_uid"), table_name="worklist_items")
    op.drop_index(op.f("ix_worklist_items_accession_number"), table_name="worklist_items")
    op.drop_table("worklist_items")
    op.drop_index(op.f("ix_orders_updated_at"), table_name="orders")
    op.drop_index(op.f("ix_orders_study_instance_uid"), table_name="orders")
    op.drop_index(op.f("ix_orders_patient_id"), table_name="orders")
    op.drop_index(op.f("ix_orders_linked_study_instance_uid"), table_name="orders")
    op.drop_index(op.f("ix_orders_accession_number"), table_name="orders")
    op.drop_table("orders")
    op.drop_index("uq_order_messages_sender_control_id", table_name="order_messages")
    op.drop_index(op.f("ix_order_messages_received_at"), table_name="order_messages")
    op.drop_table("order_messages")
