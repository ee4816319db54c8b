"""Repository functions of the scheduled workflow: orders, worklist items, applied messages, and
the few index changes an order makes (a corrected patient name, a patient merge).

Every function takes an open :class:`~sqlalchemy.Connection`; the caller owns the transaction.
Worklist matching goes through the one query translator (:func:`pacs.index.sql.condition_sql`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, delete, func, or_, select, update

from pacs.index.prepared import Prepared
from pacs.index.schema import events, order_messages, orders, patients, studies, worklist_items
from pacs.index.sql import condition_sql
from pacs.query import Query

# The statements every new order runs, compiled once (see pacs.index.prepared): through
# Connection.execute, SQLAlchemy's per-statement work was over half of a message's index time.
_SEEN = Prepared(
    select(order_messages.c.kind, order_messages.c.result).where(
        order_messages.c.sender == bindparam("sender"), order_messages.c.control_id == bindparam("control_id")
    )
)
_RECORD = Prepared(order_messages.insert())
_ORDER_ID = Prepared(select(orders.c.id).where(orders.c.order_key == bindparam("order_key")))
_INSERT_ORDER = Prepared(orders.insert().returning(orders.c.id))
_INSERT_ITEM = Prepared(worklist_items.insert())

# ---------------------------------------------------------------- applied messages


def message_seen(conn: Connection, sender: str, control_id: str) -> dict[str, Any] | None:
    """The recorded result of a message applied before, or None."""
    row = _SEEN.first(conn, {"sender": sender[:256], "control_id": control_id[:200]})
    if row is None:
        return None
    kind, result = row
    return {"kind": kind, **json.loads(result or "{}")}


def message_record(
    conn: Connection, sender: str, control_id: str, kind: str, result: dict[str, Any], at: datetime
) -> None:
    """Record that a message was applied (same transaction as what it did)."""
    _RECORD.run(
        conn,
        {
            "sender": sender[:256],
            "control_id": control_id[:200],
            "kind": kind,
            "result": json.dumps(result, ensure_ascii=False),
            "received_at": at,
        },
    )


# ---------------------------------------------------------------- orders


def order_get(conn: Connection, order_key: str, *, for_update: bool = False) -> dict[str, Any] | None:
    """One order row by its key, or None."""
    stmt = select(orders).where(orders.c.order_key == order_key)
    if for_update:
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).mappings().first()
    return dict(row) if row else None


def order_exists(conn: Connection, order_key: str) -> bool:
    """True if an order has this key."""
    return _ORDER_ID.first(conn, {"order_key": order_key}) is not None


def order_insert(conn: Connection, values: dict[str, Any]) -> int:
    """Insert an order; returns its row id."""
    row = _INSERT_ORDER.first(conn, values)
    assert row is not None
    return int(row[0])


def order_update(conn: Connection, order_id: int, values: dict[str, Any]) -> None:
    """Update columns of one order."""
    conn.execute(update(orders).where(orders.c.id == order_id).values(**values))


def orders_by_accession(conn: Connection, accession_number: str) -> list[dict[str, Any]]:
    """Orders carrying an Accession Number, newest first."""
    rows = conn.execute(
        select(orders).where(orders.c.accession_number == accession_number).order_by(orders.c.id.desc())
    ).mappings()
    return [dict(r) for r in rows]


def orders_for_study(conn: Connection, study_instance_uid: str) -> list[dict[str, Any]]:
    """Orders whose assigned or linked study is ``study_instance_uid``."""
    rows = conn.execute(
        select(orders)
        .where(
            (orders.c.study_instance_uid == study_instance_uid)
            | (orders.c.linked_study_instance_uid == study_instance_uid)
        )
        .order_by(orders.c.id.desc())
    ).mappings()
    return [dict(r) for r in rows]


def orders_for_lines(
    conn: Connection, accession_numbers: Sequence[str], study_uids: Sequence[str]
) -> list[dict[str, Any]]:
    """Orders matching any of the Accession Numbers or study UIDs (for appraisal records)."""
    acc = [a for a in accession_numbers if a]
    uids = [u for u in study_uids if u]
    if not acc and not uids:
        return []
    conds: list[ColumnElement[bool]] = []
    if acc:
        conds.append(orders.c.accession_number.in_(acc))
    if uids:
        conds += [orders.c.study_instance_uid.in_(uids), orders.c.linked_study_instance_uid.in_(uids)]
    rows = conn.execute(select(orders).where(or_(*conds)).order_by(orders.c.id)).mappings()
    return [dict(r) for r in rows]


def orders_list(
    conn: Connection,
    *,
    status: str | None = None,
    accession_number: str | None = None,
    patient_id: str | None = None,
    updated_since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Orders, most recently changed first, with optional filters."""
    stmt = select(orders)
    if status:
        stmt = stmt.where(orders.c.status == status)
    if accession_number:
        stmt = stmt.where(orders.c.accession_number == accession_number)
    if patient_id:
        stmt = stmt.where(orders.c.patient_id == patient_id)
    if updated_since is not None:
        stmt = stmt.where(orders.c.updated_at >= updated_since)
    stmt = stmt.order_by(orders.c.updated_at.desc(), orders.c.id.desc()).limit(limit).offset(offset)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def orders_of_patient(conn: Connection, patient_id: str, issuer: str) -> list[dict[str, Any]]:
    """Orders of one patient (an empty issuer matches orders that have none)."""
    stmt = select(orders).where(orders.c.patient_id == patient_id)
    stmt = stmt.where(func.coalesce(orders.c.issuer_of_patient_id, "") == issuer)
    return [dict(r) for r in conn.execute(stmt).mappings()]


# ---------------------------------------------------------------- worklist items


def items_of_order(conn: Connection, order_id: int) -> list[dict[str, Any]]:
    """The worklist items (scheduled procedure steps) of one order, in step order."""
    rows = conn.execute(
        select(worklist_items).where(worklist_items.c.order_fk == order_id).order_by(worklist_items.c.id)
    ).mappings()
    return [dict(r) for r in rows]


def item_insert(conn: Connection, values: dict[str, Any]) -> None:
    """Insert one worklist item."""
    _INSERT_ITEM.run(conn, values)


def item_update(conn: Connection, item_id: int, values: dict[str, Any]) -> None:
    """Update columns of one worklist item."""
    conn.execute(update(worklist_items).where(worklist_items.c.id == item_id).values(**values))


def items_update_for_order(conn: Connection, order_id: int, values: dict[str, Any]) -> None:
    """Update columns of every item of an order (patient or order-level fields)."""
    conn.execute(update(worklist_items).where(worklist_items.c.order_fk == order_id).values(**values))


def items_for_step(
    conn: Connection,
    *,
    mpps_uid: str = "",
    step_id: str = "",
    accession_number: str = "",
    requested_procedure_id: str = "",
    study_instance_uid: str = "",
) -> list[dict[str, Any]]:
    """Worklist items a performed procedure step refers to, most specific reference first:
    the MPPS already linked, else SPS ID (+ accession), else accession (+ requested procedure
    ID), else the Study Instance UID."""
    w = worklist_items.c
    tries: list[Any] = []
    if mpps_uid:
        tries.append(w.mpps_sop_instance_uid == mpps_uid)
    if step_id:
        tries.append(
            (w.scheduled_procedure_step_id == step_id) & (w.accession_number == accession_number)
            if accession_number
            else (w.scheduled_procedure_step_id == step_id)
        )
    if accession_number:
        tries.append(
            (w.accession_number == accession_number) & (w.requested_procedure_id == requested_procedure_id)
            if requested_procedure_id
            else (w.accession_number == accession_number)
        )
    if study_instance_uid:
        tries.append(w.study_instance_uid == study_instance_uid)
    for cond in tries:
        rows = [dict(r) for r in conn.execute(select(worklist_items).where(cond)).mappings()]
        if rows:
            return rows
    return []


def worklist_search(conn: Connection, query: Query, limit: int) -> list[dict[str, Any]]:
    """Open worklist items matching ``query`` (the shared translator), at most ``limit``."""
    w = worklist_items.c
    stmt = select(worklist_items).where(w.open.is_(True))
    for cond in query.conditions:
        stmt = stmt.where(condition_sql(cond))
    stmt = stmt.order_by(w.scheduled_procedure_step_start_date, w.scheduled_procedure_step_start_time, w.id)
    return [dict(r) for r in conn.execute(stmt.limit(limit)).mappings()]


def items_of_patient(conn: Connection, patient_id: str, issuer: str) -> list[dict[str, Any]]:
    """Worklist items of one patient."""
    w = worklist_items.c
    stmt = select(worklist_items).where(w.patient_id == patient_id)
    stmt = stmt.where(func.coalesce(w.issuer_of_patient_id, "") == issuer)
    return [dict(r) for r in conn.execute(stmt).mappings()]


# ---------------------------------------------------------------- the index side


def patient_rows(conn: Connection, patient_id: str, issuer: str) -> list[dict[str, Any]]:
    """Index patient rows with this PatientID: with this issuer, or with none recorded."""
    p = patients.c
    stmt = select(patients).where(p.patient_id == patient_id)
    if issuer:
        stmt = stmt.where(func.coalesce(p.issuer_of_patient_id, "").in_([issuer, ""]))
    else:
        stmt = stmt.where(func.coalesce(p.issuer_of_patient_id, "") == "")
    return [dict(r) for r in conn.execute(stmt).mappings()]


def patient_of_study(conn: Connection, study_instance_uid: str) -> dict[str, Any] | None:
    """The index patient row of a study, or None."""
    row = (
        conn.execute(
            select(patients)
            .select_from(studies.join(patients, studies.c.patient_fk == patients.c.id))
            .where(studies.c.study_instance_uid == study_instance_uid)
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def patient_update(conn: Connection, patient_pk: int, values: dict[str, Any]) -> None:
    """Update demographic columns of one index patient row."""
    conn.execute(update(patients).where(patients.c.id == patient_pk).values(**values))


def patient_merge(conn: Connection, prior_pk: int, surviving_pk: int) -> int:
    """Move every study of patient row ``prior_pk`` to ``surviving_pk``, add its counts, and
    delete the prior row; returns the number of studies moved."""
    p = patients.c
    prior = conn.execute(select(patients).where(p.id == prior_pk)).mappings().one()
    moved = conn.execute(
        update(studies).where(studies.c.patient_fk == prior_pk).values(patient_fk=surviving_pk)
    )
    counts = {
        c: getattr(p, c) + int(prior[c] or 0)
        for c in (
            "number_of_patient_related_studies",
            "number_of_patient_related_series",
            "number_of_patient_related_instances",
        )
    }
    conn.execute(update(patients).where(p.id == surviving_pk).values(**counts))
    conn.execute(delete(patients).where(p.id == prior_pk))
    return int(moved.rowcount or 0)


def events_of(conn: Connection, kinds: Sequence[str], *, study_instance_uid: str | None = None) -> list[Any]:
    """Events of the given kinds (for tests and the API), oldest first."""
    stmt = select(events).where(events.c.kind.in_(list(kinds)))
    if study_instance_uid:
        stmt = stmt.where(events.c.study_instance_uid == study_instance_uid)
    return list(conn.execute(stmt.order_by(events.c.id)).mappings())
