"""Patient updates (ADT^A08) and merges (ADT^A40) of the orders service: the HIS's demographics
reach its open orders, their worklist items and the index's patient record; the files keep
their bytes; each change is an event in the same transaction."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from pacs.dicom.text import name_key
from pacs.index import orders as sql
from pacs.index import repo
from pacs.model import Origin, PatientIdentifier
from pacs.services import identifiers
from pacs.services.orders.model import Applied, PatientInfo

log = logging.getLogger("pacs.orders")


def patient_columns(p: PatientInfo) -> dict[str, Any]:
    return {
        "patient_name": p.name or None,
        "patient_name_key": name_key(p.name) or None,
        "patient_id": p.patient_id,
        "issuer_of_patient_id": p.issuer_of_patient_id or None,
        "patient_birth_date": p.birth_date or None,
        "patient_sex": p.sex or None,
        "other_patient_ids": "\\".join(o.value for o in p.other_ids if o.value)[:512] or None,
    }


#: Identifier types of a record number: one without an assigning authority is the facility's.
_LOCAL_TYPES = frozenset({"", "MR", "PI", "PT", "PN"})


def patient_identifiers(p: PatientInfo, facility: str = "") -> list[PatientIdentifier]:
    """The PID-3 identifiers of a patient (Patient ID first) for :mod:`pacs.services.identifiers`.

    A record number (type MR, PI or none) without an assigning authority was issued by the
    facility the order is for (``facility``, MA_CSKCB), when known; other types keep theirs."""
    out = [
        PatientIdentifier(
            p.patient_id,
            p.issuer_of_patient_id or facility,
            p.id_type,
            p.issuer_universal_id,
            p.issuer_universal_id_type,
        )
    ]
    for o in p.other_ids:
        issuer = o.issuer or (facility if o.type_code.upper() in _LOCAL_TYPES else "")
        out.append(PatientIdentifier(o.value, issuer, o.type_code, o.universal_id, o.universal_id_type))
    return out


def record_identifiers(conn: Connection, p: PatientInfo, facility: str, now: datetime) -> None:
    """Keep the HIS's identifiers of a patient (orders, updates) in the identifier table."""
    identifiers.record_patient(
        conn, p.patient_id, p.issuer_of_patient_id, patient_identifiers(p, facility), now
    )


def update_patient(
    conn: Connection, p: PatientInfo, origin: Origin, now: datetime, facility: str = ""
) -> Applied:
    issuer = p.issuer_of_patient_id
    record_identifiers(conn, p, facility, now)
    keys = []
    for order in sql.orders_of_patient(conn, p.patient_id, issuer):
        sql.order_update(
            conn, order["id"], {"patient_name": p.name or order["patient_name"], "updated_at": now}
        )
        keys.append(order["order_key"])
        for item in sql.items_of_order(conn, order["id"]):
            if item["open"]:
                sql.item_update(conn, item["id"], {**patient_columns(p), "updated_at": now})
    changed = 0
    for row in sql.patient_rows(conn, p.patient_id, issuer):
        values: dict[str, Any] = {}
        if p.name and p.name != row["patient_name"]:
            values.update(patient_name=p.name, patient_name_key=name_key(p.name))
        if p.birth_date and p.birth_date != row["patient_birth_date"]:
            values["patient_birth_date"] = p.birth_date
        if p.sex and p.sex != row["patient_sex"]:
            values["patient_sex"] = p.sex
        if values:
            sql.patient_update(conn, row["id"], values)
            changed += 1
            repo.add_event(
                conn,
                "patient.updated",
                now,
                origin,
                patient_id=p.patient_id,
                details={
                    "source": "HIS patient update (ADT^A08)",
                    "before": {k: row[k] for k in values if not k.endswith("_key")},
                    "after": {k: v for k, v in values.items() if not k.endswith("_key")},
                },
            )
    return Applied(kind="patient", order_keys=keys, detail=f"{len(keys)} order(s), {changed} index record(s)")


def merge(
    conn: Connection,
    p: PatientInfo,
    prior_id: str,
    prior_issuer: str,
    origin: Origin,
    now: datetime,
) -> Applied:
    keys = []
    for order in sql.orders_of_patient(conn, prior_id, prior_issuer):
        sql.order_update(
            conn,
            order["id"],
            {
                "patient_id": p.patient_id,
                "issuer_of_patient_id": p.issuer_of_patient_id or None,
                "patient_name": p.name or order["patient_name"],
                "updated_at": now,
            },
        )
        keys.append(order["order_key"])
    for item in sql.items_of_patient(conn, prior_id, prior_issuer):
        cols = patient_columns(p)
        if not p.name:
            cols = {k: v for k, v in cols.items() if not k.startswith("patient_name")}
        sql.item_update(conn, item["id"], {**cols, "updated_at": now})
    identifiers.merge_patients(conn, (prior_id, prior_issuer), (p.patient_id, p.issuer_of_patient_id))
    surviving = sql.patient_rows(conn, p.patient_id, p.issuer_of_patient_id)
    moved = 0
    for prior in sql.patient_rows(conn, prior_id, prior_issuer):
        if surviving:
            moved += sql.patient_merge(conn, prior["id"], surviving[0]["id"])
        else:  # the surviving ID is new to the archive: the prior record takes it
            values = {
                "patient_id": p.patient_id,
                "issuer_of_patient_id": p.issuer_of_patient_id or None,
                "identity": repo.patient_identity(
                    {"patient_id": p.patient_id, "issuer_of_patient_id": p.issuer_of_patient_id}
                ),
            }
            if p.name:
                values.update(patient_name=p.name, patient_name_key=name_key(p.name))
            sql.patient_update(conn, prior["id"], values)
            surviving = [{**prior, **values}]
    repo.add_event(
        conn,
        "patient.merged",
        now,
        origin,
        patient_id=p.patient_id,
        details={
            "source": "HIS patient merge (ADT^A40)",
            "prior": {"patient_id": prior_id, "issuer": prior_issuer or None},
            "surviving": {"patient_id": p.patient_id, "issuer": p.issuer_of_patient_id or None},
            "orders": len(keys),
            "studies_moved": moved,
        },
    )
    log.info("patient merge: %d order(s), %d study(ies) moved to the surviving record", len(keys), moved)
    return Applied(kind="merge", order_keys=keys, detail=f"{len(keys)} order(s), {moved} study(ies) moved")
