"""The MPPS hook of the orders service: a performed procedure step moves the scheduled step(s)
it performs, and their order, in the MPPS write's own transaction (PS3.4 F.7.2; IHE RAD-6/7)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from pacs.index import orders as sql
from pacs.index import repo
from pacs.model import Origin
from pacs.services.orders.model import OPEN_STATES, StepStatus

#: MPPS status (PS3.3 C.4.14) -> scheduled step state.
MPPS_TO_STEP = {
    "IN PROGRESS": StepStatus.IN_PROGRESS,
    "COMPLETED": StepStatus.COMPLETED,
    "DISCONTINUED": StepStatus.DISCONTINUED,
}


def step_changed(
    conn: Connection, mpps_uid: str, values: dict[str, Any], origin: Origin, now: datetime
) -> None:
    """A performed procedure step was created or updated (same transaction): move the
    scheduled step(s) it performs to its state (PS3.4 F.7.2; IHE RAD-6/7)."""
    state = MPPS_TO_STEP.get(str(values.get("status") or ""))
    if state is None:
        return
    items = sql.items_for_step(
        conn,
        mpps_uid=mpps_uid,
        step_id=values.get("scheduled_procedure_step_id") or "",
        accession_number=values.get("accession_number") or "",
        requested_procedure_id=values.get("requested_procedure_id") or "",
        study_instance_uid=values.get("study_instance_uid") or "",
    )
    orders_touched: set[int] = set()
    for item in items:
        if item["mpps_sop_instance_uid"] not in (None, mpps_uid):
            continue  # performed by another step already
        if not item["open"] and item["mpps_sop_instance_uid"] is None:
            continue  # cancelled or discontinued by the HIS before the modality began
        sql.item_update(
            conn,
            item["id"],
            {
                "scheduled_procedure_step_status": state.value,
                "open": state in OPEN_STATES,
                "mpps_sop_instance_uid": mpps_uid,
                "updated_at": now,
            },
        )
        orders_touched.add(item["order_fk"])
    for order_id in orders_touched:
        states = {
            i["scheduled_procedure_step_status"]
            for i in sql.items_of_order(conn, order_id)
            if i["scheduled_procedure_step_status"] != StepStatus.CANCELED
        }
        open_states = {s.value for s in OPEN_STATES}
        if states <= {StepStatus.SCHEDULED.value}:
            status = StepStatus.SCHEDULED
        elif states & open_states:
            status = StepStatus.IN_PROGRESS  # some steps done or going, others still to do
        elif StepStatus.COMPLETED.value in states:
            status = StepStatus.COMPLETED
        else:
            status = StepStatus.DISCONTINUED
        sql.order_update(conn, order_id, {"status": status.value, "updated_at": now})
    if items:
        repo.add_event(
            conn,
            "worklist.step",
            now,
            origin,
            study_instance_uid=values.get("study_instance_uid"),
            sop_instance_uid=mpps_uid,
            details={"status": state.value, "steps": [i["step_key"] for i in items]},
        )
