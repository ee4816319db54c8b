"""Audit completeness: the patient of an event, a hash chain over the event log, no TRUNCATE

Revision ID: 0006
Revises: 0005

``events`` gains ``patient_id`` (the one patient an access touched, when there is one) and the
hash chain (``seq``, ``prev_hash``, ``row_hash``; see :mod:`pacs.index.audit_chain`): rows are
appended without them, by any writer, and sealed shortly after, in order, by the audit writer.
The append-only triggers now allow exactly that one UPDATE (chain columns from NULL to a value,
every other column unchanged) and refuse any other UPDATE or DELETE as before; on PostgreSQL a
statement-level trigger also refuses ``TRUNCATE`` (row triggers never see it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: Every column but the chain's: a sealing UPDATE must leave all of them as they were.
_CONTENT = (
    "id",
    "at",
    "kind",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "calling_ae",
    "peer_address",
    "user_name",
    "details",
    "patient_id",
)
_CHAIN = ("seq", "prev_hash", "row_hash")
_MESSAGE = "the events table is append-only (audit trail)"

_PG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION pacs_events_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND {" AND ".join(f"OLD.{c} IS NULL" for c in _CHAIN)}
       AND {" AND ".join(f"NEW.{c} IS NOT NULL" for c in _CHAIN)}
       AND ROW({", ".join(f"NEW.{c}" for c in _CONTENT)})
           IS NOT DISTINCT FROM ROW({", ".join(f"OLD.{c}" for c in _CONTENT)}) THEN
        RETURN NEW;  -- sealing a row into the hash chain
    END IF;
    RAISE EXCEPTION '{_MESSAGE}';
END;
$$ LANGUAGE plpgsql
"""

_PG_TRUNCATE = f"""
CREATE OR REPLACE FUNCTION pacs_events_no_truncate() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '{_MESSAGE}';
END;
$$ LANGUAGE plpgsql
"""

_PG_OLD_FUNCTION = f"""
CREATE OR REPLACE FUNCTION pacs_events_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '{_MESSAGE}';
END;
$$ LANGUAGE plpgsql
"""

_SQLITE_SEAL_ONLY = (
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events WHEN NOT ("
    + " AND ".join(
        [f"OLD.{c} IS NULL" for c in _CHAIN]
        + [f"NEW.{c} IS NOT NULL" for c in _CHAIN]
        + [f"NEW.{c} IS OLD.{c}" for c in _CONTENT]
    )
    + f") BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END"
)


def upgrade() -> None:
    # Plain ADD COLUMN / CREATE INDEX (no batch copy of the table on SQLite: it would drop the triggers).
    op.add_column("events", sa.Column("patient_id", sa.String(length=64), nullable=True))
    op.add_column("events", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.add_column("events", sa.Column("prev_hash", sa.String(length=64), nullable=True))
    op.add_column("events", sa.Column("row_hash", sa.String(length=64), nullable=True))
    op.create_index("ix_events_patient_id", "events", ["patient_id"], unique=False)
    op.create_index("ix_events_seq", "events", ["seq"], unique=True)
    # The rows still to seal: a small partial index, so finding them never scans the log.
    op.create_index(
        "ix_events_unsealed",
        "events",
        ["id"],
        unique=False,
        sqlite_where=sa.text("row_hash IS NULL"),
        postgresql_where=sa.text("row_hash IS NULL"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRUNCATE)
        op.execute(
            "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events "
            "FOR EACH STATEMENT EXECUTE FUNCTION pacs_events_no_truncate()"
        )
    else:
        op.execute("DROP TRIGGER IF EXISTS events_no_update")
        op.execute(_SQLITE_SEAL_ONLY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_no_truncate ON events")
        op.execute("DROP FUNCTION IF EXISTS pacs_events_no_truncate()")
        op.execute(_PG_OLD_FUNCTION)
    else:
        op.execute("DROP TRIGGER IF EXISTS events_no_update")
        op.execute(
            "CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
            f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END"
        )
    op.drop_index("ix_events_unsealed", table_name="events")
    op.drop_index("ix_events_seq", table_name="events")
    op.drop_index("ix_events_patient_id", table_name="events")
    # DROP COLUMN needs SQLite 3.35+; the triggers are re-created above, before the columns go.
    for column in ("row_hash", "prev_hash", "seq", "patient_id"):
        op.drop_column("events", column)
