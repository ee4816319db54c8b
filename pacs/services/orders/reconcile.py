"""The store hook of the orders service: a study's first stored instance is linked to its order
by Accession Number (or the order's Study Instance UID), and a patient name the modality stripped
of its accents is shown in the index as the HIS has it; the file keeps its bytes; every link,
correction and mismatch is an event in the store transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from pacs.dicom.text import fold, name_key
from pacs.index import orders as sql
from pacs.index import repo
from pacs.model import Origin

Event = Callable[[Connection, str, datetime, Origin, dict[str, Any], dict[str, Any]], None]


def link_study(
    conn: Connection, v: dict[str, Any], study_uid: str, origin: Origin, now: datetime, event: Event
) -> None:
    """Link the study of the instance values ``v`` to its order and correct the patient name."""
    accession = v.get("accession_number") or ""
    found = sql.orders_by_accession(conn, accession) if accession else []
    found = found or sql.orders_for_study(conn, study_uid)
    if not found:
        return
    order = found[0]
    if order["study_instance_uid"] != study_uid and order["linked_study_instance_uid"] != study_uid:
        sql.order_update(conn, order["id"], {"linked_study_instance_uid": study_uid})
        event(
            conn,
            "order.linked",
            now,
            origin,
            {**order, "study_instance_uid": study_uid},
            {"by": "accession number", "assigned_study_instance_uid": order["study_instance_uid"]},
        )
    received = v.get("patient_name") or ""
    wanted = order["patient_name"] or ""
    pid = v.get("patient_id") or ""
    if not wanted or received == wanted:
        return
    if pid != order["patient_id"] or name_key(received) != name_key(wanted):
        event(
            conn,
            "order.mismatch",
            now,
            origin,
            {**order, "study_instance_uid": study_uid},
            {
                "what": "patient ID" if pid != order["patient_id"] else "patient name",
                "as_received_folded": fold(received) if pid == order["patient_id"] else None,
            },
        )
        return
    patient = sql.patient_of_study(conn, study_uid)
    if patient is None or patient["patient_name"] == wanted:
        return
    sql.patient_update(conn, patient["id"], {"patient_name": wanted, "patient_name_key": name_key(wanted)})
    repo.add_event(
        conn,
        "patient.name_corrected",
        now,
        origin,
        study_instance_uid=study_uid,
        patient_id=pid,
        details={
            "as_received": received,
            "corrected_to": wanted,
            "source": f"HIS order {order['order_key'][2:]}",
            "file": "unchanged (kept as received)",
        },
    )
