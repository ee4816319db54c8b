"""The orders service: one place where HIS orders become worklist items and where procedure
steps, stored images and reports meet their order (IHE Radiology Scheduled Workflow).

Both doors (HL7 v2 over MLLP, ``/api/orders``) call :class:`Orders`; every call applies one
message in one transaction (with the message's id, so that a resend is not applied twice) and
returns only after the commit, so an acknowledgement always means "written". It is also an
index hook (images linked to their order by Accession Number, a name that lost its accents at the
modality shown as the HIS has it) and an MPPS hook (the step's state follows the modality's).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from pydicom.uid import generate_uid
from sqlalchemy import Connection

from pacs.dicom.text import is_valid_uid, name_key
from pacs.errors import InvalidOrder, NotFound
from pacs.index import federation as reuse_sql
from pacs.index import orders as sql
from pacs.index import repo
from pacs.index.database import UNAVAILABLE, Database, unavailable
from pacs.model import InstanceRecord, Origin, StoreOutcome
from pacs.query import Query
from pacs.services.identifiers import classify_all
from pacs.services.orders.model import (
    OPEN_STATES,
    Applied,
    Code,
    Control,
    MessageId,
    OrderMessage,
    PatientInfo,
    PatientMerge,
    PatientUpdate,
    Report,
    ScheduledStep,
    StepStatus,
)
from pacs.services.orders.patients import (
    merge,
    patient_columns,
    patient_identifiers,
    record_identifiers,
    update_patient,
)
from pacs.services.orders.reconcile import link_study
from pacs.services.orders.steps import step_changed

log = logging.getLogger("pacs.orders")

_DATE = re.compile(r"^\d{8}$")
_DT = re.compile(r"^\d{8}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?([+-]\d{4})?$")
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{0,16}$")  # PS3.5 AE: no backslash, no control characters

#: ORC-5 order status (HL7 table 0038) -> the state of the order's steps.
ORDER_STATUS = {
    "SC": StepStatus.SCHEDULED,
    "IP": StepStatus.IN_PROGRESS,
    "A": StepStatus.IN_PROGRESS,
    "CM": StepStatus.COMPLETED,
    "CA": StepStatus.CANCELED,
    "DC": StepStatus.DISCONTINUED,
}


def _dt(value: str, what: str) -> str:
    value = (value or "").strip()
    if value and not _DT.fullmatch(value):
        raise InvalidOrder(f"{what}: {value[:40]!r} is not a date-time (YYYYMMDDHHMMSS[+HHMM])")
    return value


def _text(value: str, what: str, limit: int) -> str:
    value = (value or "").strip()
    if len(value) > limit:
        raise InvalidOrder(f"{what}: longer than {limit} characters")
    if any(ord(c) < 0x20 for c in value):
        raise InvalidOrder(f"{what}: holds a control character")
    return value


def _code(code: Code | None) -> str | None:
    if code is None or not code.value:
        return None
    return json.dumps([code.value, code.scheme, code.meaning], ensure_ascii=False)


def order_key(placer: str, filler: str) -> str:
    """The key of an order: its placer order number, else the filler's (prefixed so the two
    numbering systems cannot collide)."""
    if placer:
        return f"P:{placer}"
    if filler:
        return f"F:{filler}"
    raise InvalidOrder("the order has neither a placer (ORC-2) nor a filler (ORC-3) order number")


class Orders:
    """Orders, worklist items and their links to procedure steps, images and reports."""

    def __init__(
        self,
        db: Database,
        *,
        facility_code: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.facility_code = facility_code
        self.clock = clock
        # Studies this process already reconciled with their order (the store hook looks an
        # order up once per study, not once per instance).
        self._reconciled: OrderedDict[str, None] = OrderedDict()
        #: Called in a new order's transaction with the order row and its patient's identifiers
        #: (``system|value`` tokens): the federation queues a prefetch of the priors there.
        self.order_hooks: list[Callable[[Connection, dict[str, Any], list[str]], None]] = []

    # ------------------------------------------------------------------ the doors

    def apply(self, msg: OrderMessage, origin: Origin, message_id: MessageId | None = None) -> Applied:
        """Apply a new order or a change, cancel, discontinue or status change of one."""
        key = order_key(_text(msg.placer_order_number, "placer order number", 64), msg.filler_order_number)
        return self._once(
            message_id, "order", origin, lambda conn, now: self._apply(conn, msg, key, origin, now)
        )

    def update_patient(
        self, upd: PatientUpdate, origin: Origin, message_id: MessageId | None = None
    ) -> Applied:
        """New demographics for a patient (ADT^A08): their open orders, worklist items and the
        index's patient record take them; the files keep their bytes; the change is recorded."""
        p = self._patient(upd.patient)
        return self._once(
            message_id, "patient", origin, lambda conn, now: self._update_patient(conn, p, origin, now)
        )

    def merge_patients(
        self, merge: PatientMerge, origin: Origin, message_id: MessageId | None = None
    ) -> Applied:
        """Merge the prior patient record into the surviving one (ADT^A40)."""
        p = self._patient(merge.surviving)
        prior_id = _text(merge.prior_patient_id, "prior patient ID (MRG-1)", 64)
        if not prior_id:
            raise InvalidOrder("the merge names no prior patient ID (MRG-1)")
        if (prior_id, merge.prior_issuer) == (p.patient_id, p.issuer_of_patient_id):
            raise InvalidOrder("the prior and surviving patient are the same")
        return self._once(
            message_id,
            "merge",
            origin,
            lambda conn, now: self._merge(conn, p, prior_id, merge.prior_issuer, origin, now),
        )

    def record_report(self, report: Report, origin: Origin, message_id: MessageId | None = None) -> Applied:
        """Record an order's result (ORU^R01): result time, reporting doctor, performed time."""
        reported_at = _dt(report.reported_at, "result time (OBR-22)")
        performed_at = _dt(report.performed_at, "observation time (OBR-7)")
        if not reported_at:
            raise InvalidOrder("the report has no result time (OBR-22)")
        return self._once(
            message_id,
            "report",
            origin,
            lambda conn, now: self._report(conn, report, reported_at, performed_at, origin, now),
        )

    def _once(
        self,
        message_id: MessageId | None,
        kind: str,
        origin: Origin,
        work: Callable[[Connection, datetime], Applied],
    ) -> Applied:
        now = self.clock()

        def job(conn: Connection) -> Applied:
            if message_id is not None and message_id.control_id:
                seen = sql.message_seen(conn, message_id.sender, message_id.control_id)
                if seen is not None:
                    log.info(
                        "%s message %s from %s applied before: acknowledged again",
                        kind,
                        message_id.control_id,
                        message_id.sender,
                    )
                    return Applied(
                        kind=seen.get("kind", kind),
                        order_keys=seen.get("order_keys", []),
                        steps=seen.get("steps", 0),
                        duplicate=True,
                        detail="applied before",
                    )
            applied = work(conn, now)
            if message_id is not None and message_id.control_id:
                sql.message_record(
                    conn,
                    message_id.sender,
                    message_id.control_id,
                    kind,
                    {"order_keys": applied.order_keys, "steps": applied.steps, "detail": applied.detail},
                    now,
                )
            return applied

        # Messages arriving together on several connections share one commit (and one fsync),
        # each in its own savepoint: one message's refusal rolls back only that message.
        try:
            return self.db.group_write(job)
        except UNAVAILABLE as exc:
            raise unavailable(exc) from exc

    # ------------------------------------------------------------------ orders

    def _patient(self, p: PatientInfo | None) -> PatientInfo:
        if p is None or not (p.patient_id or "").strip():
            raise InvalidOrder("the message names no patient ID (PID-3)")
        name = _text(p.name, "patient name", 324)
        if p.birth_date and not _DATE.fullmatch(p.birth_date):
            raise InvalidOrder(f"patient birth date {p.birth_date[:20]!r} is not YYYYMMDD")
        sex = (p.sex or "").strip().upper()
        if sex and sex not in ("M", "F", "O", "U", "A", "N"):
            raise InvalidOrder(f"patient sex {sex[:8]!r} is not M, F or O")
        return dataclasses.replace(
            p,
            patient_id=_text(p.patient_id, "patient ID", 64),
            issuer_of_patient_id=_text(p.issuer_of_patient_id, "issuer of patient ID", 64),
            name=name,
            sex="O" if sex in ("U", "A", "N") else sex,
        )

    def _apply(self, conn: Connection, msg: OrderMessage, key: str, origin: Origin, now: datetime) -> Applied:
        if msg.control is Control.NEW:
            if sql.order_exists(conn, key):
                raise InvalidOrder(f"order {key[2:]} exists already: a change is sent as XO")
            return self._new(conn, msg, key, origin, now)
        existing = sql.order_get(conn, key, for_update=True)
        if existing is None:
            raise NotFound(f"no order {key[2:]} to {msg.control.name.lower()}")
        if msg.control is Control.CHANGE:
            return self._change(conn, msg, existing, origin, now)
        if msg.control is Control.CANCEL:
            started = [
                i
                for i in sql.items_of_order(conn, existing["id"])
                if i["scheduled_procedure_step_status"] in (StepStatus.IN_PROGRESS, StepStatus.COMPLETED)
            ]
            if started:
                raise InvalidOrder(f"order {key[2:]} has started: it is discontinued (DC), not cancelled")
            return self._close(conn, existing, StepStatus.CANCELED, "order.cancelled", msg, origin, now)
        if msg.control is Control.DISCONTINUE:
            return self._close(
                conn, existing, StepStatus.DISCONTINUED, "order.discontinued", msg, origin, now
            )
        status = ORDER_STATUS.get((msg.order_status or "").strip().upper())
        if status is None:
            raise InvalidOrder(
                f"order status {msg.order_status[:8]!r} (ORC-5) is not one of {sorted(ORDER_STATUS)}"
            )
        if status in OPEN_STATES:
            sql.order_update(conn, existing["id"], {"status": status.value, "updated_at": now})
            for item in sql.items_of_order(conn, existing["id"]):
                if item["open"]:
                    sql.item_update(
                        conn, item["id"], {"scheduled_procedure_step_status": status.value, "updated_at": now}
                    )
            self._event(conn, "order.status", now, origin, existing, {"status": status.value})
            return Applied(kind="order", order_keys=[existing["order_key"]], detail=f"status {status.value}")
        return self._close(conn, existing, status, "order.status", msg, origin, now)

    def _order_values(self, msg: OrderMessage, patient: PatientInfo, now: datetime) -> dict[str, Any]:
        ordered_at = _dt(msg.ordered_at, "order time (ORC-9)")
        accession = _text(msg.accession_number, "accession number", 16)
        return {
            "placer_order_number": msg.placer_order_number or None,
            "filler_order_number": _text(msg.filler_order_number, "filler order number", 64) or None,
            "accession_number": accession or None,
            "requested_procedure_id": _text(msg.requested_procedure_id, "requested procedure ID", 16) or None,
            "patient_id": patient.patient_id,
            "issuer_of_patient_id": patient.issuer_of_patient_id or None,
            "patient_name": patient.name or None,
            "ordered_at": ordered_at or None,
            "ordered_at_source": (msg.ordered_at_source or "HIS order")[:64] if ordered_at else None,
            "facility_code": (msg.facility_code or self.facility_code or None),
            "updated_at": now,
        }

    def _attributes(
        self, msg: OrderMessage, patient: PatientInfo, extra: dict[str, Any] | None = None
    ) -> str:
        # orjson writes the nested dataclasses itself: dataclasses.asdict's deep copy cost more
        # than every INSERT of a new order.
        body: dict[str, Any] = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
        body["patient"] = patient
        body.update(extra or {})
        return orjson.dumps(body, default=str).decode()

    def _new(self, conn: Connection, msg: OrderMessage, key: str, origin: Origin, now: datetime) -> Applied:
        patient = self._patient(msg.patient)
        study_uid = (msg.study_instance_uid or "").strip()
        if study_uid and not is_valid_uid(study_uid):
            raise InvalidOrder(f"Study Instance UID {study_uid[:70]!r} is not a valid UID")
        steps = msg.steps or (ScheduledStep(),)
        values = self._order_values(msg, patient, now)
        values.update(
            order_key=key,
            study_instance_uid=study_uid or generate_uid(),
            status=StepStatus.SCHEDULED.value,
            attributes=self._attributes(msg, patient),
            source="hl7" if origin.protocol == "hl7" else "rest",
            created_at=now,
        )
        order_id = sql.order_insert(conn, values)
        order = {**values, "id": order_id}
        record_identifiers(conn, patient, values["facility_code"] or "", now)
        if self.order_hooks:
            found = classify_all(patient_identifiers(patient, values["facility_code"] or ""))
            for hook in self.order_hooks:
                hook(conn, order, [i.token for i in found])
        for n, step in enumerate(steps, 1):
            sql.item_insert(conn, self._item(order, msg, patient, step, n, now))
        self._event(conn, "order.created", now, origin, order, {"steps": len(steps)})
        log.info(
            "order %s created: %d step(s), accession %s", key[2:], len(steps), values["accession_number"]
        )
        return Applied(kind="order", order_keys=[key], steps=len(steps), detail="created")

    def _item(
        self,
        order: dict[str, Any],
        msg: OrderMessage,
        patient: PatientInfo,
        step: ScheduledStep,
        n: int,
        now: datetime,
    ) -> dict[str, Any]:
        start = _dt(step.start, "scheduled step start (TQ1-7 / OBR-27)")
        ae = (step.station_ae_title or "").strip()
        if not _AE.fullmatch(ae):
            raise InvalidOrder(f"scheduled station AE title {ae[:20]!r} is not an AE title (16 characters)")
        modality = _text(step.modality, "modality", 16).upper()
        if not modality:
            raise InvalidOrder(f"scheduled step {n} has no modality (IPC-5 / OBR-24)")
        step_uid = (step.study_instance_uid or "").strip() or order["study_instance_uid"]
        if not is_valid_uid(step_uid):
            raise InvalidOrder(f"Study Instance UID {step_uid[:70]!r} of step {n} is not a valid UID")
        step_id = _text(step.step_id, "scheduled procedure step ID", 16) or f"{n}"
        referring = _text(msg.referring_physician, "referring physician", 324)
        requesting = _text(msg.requesting_physician, "requesting physician", 324)
        performing = _text(step.performing_physician, "scheduled performing physician", 324)
        return {
            "order_fk": order["id"],
            "step_key": f"{order['order_key']}|{step_id}",
            "open": True,
            "scheduled_station_ae_title": ae or None,
            "scheduled_procedure_step_start_date": start[:8] or None,
            "scheduled_procedure_step_start_time": re.sub(r"[+-]\d{4}$", "", start)[8:] or None,
            "modality": modality,
            "scheduled_performing_physician_name": performing or None,
            "scheduled_performing_physician_name_key": name_key(performing) or None,
            "scheduled_procedure_step_description": _text(step.description, "step description", 64) or None,
            "scheduled_station_name": _text(step.station_name, "scheduled station name", 16) or None,
            "scheduled_procedure_step_location": _text(step.location, "step location", 16) or None,
            "scheduled_procedure_step_id": step_id,
            "scheduled_procedure_step_status": StepStatus.SCHEDULED.value,
            "requested_procedure_id": (
                _text(step.requested_procedure_id, "requested procedure ID", 16)
                or order["requested_procedure_id"]
            ),
            "requested_procedure_description": _text(
                msg.requested_procedure_description, "requested procedure description", 64
            )
            or None,
            "study_instance_uid": step_uid,
            "requested_procedure_priority": _text(msg.priority, "priority", 16).upper() or None,
            "reason_for_the_requested_procedure": _text(msg.reason, "reason for the procedure", 64) or None,
            "accession_number": (
                _text(step.accession_number, "accession number", 16) or order["accession_number"]
            ),
            "referring_physician_name": referring or None,
            "referring_physician_name_key": name_key(referring) or None,
            "requesting_physician": requesting or None,
            "requesting_physician_key": name_key(requesting) or None,
            "placer_order_number_imaging_service_request": order["placer_order_number"],
            "filler_order_number_imaging_service_request": order["filler_order_number"],
            "admission_id": _text(msg.admission_id, "admission ID", 64) or None,
            "current_patient_location": _text(msg.patient_location, "patient location", 64) or None,
            **patient_columns(patient),
            "requested_procedure_code": _code(msg.requested_procedure_code),
            "scheduled_protocol_code": _code(step.protocol_code),
            "updated_at": now,
        }

    def _change(
        self, conn: Connection, msg: OrderMessage, existing: dict[str, Any], origin: Origin, now: datetime
    ) -> Applied:
        patient = self._patient(msg.patient) if msg.patient is not None else self._stored_patient(existing)
        values = self._order_values(msg, patient, now)
        values["placer_order_number"] = existing["placer_order_number"]
        # What the change does not say stays as it was.
        values = {k: v for k, v in values.items() if v is not None or k == "updated_at"}
        values["attributes"] = self._attributes(msg, patient)
        sql.order_update(conn, existing["id"], values)
        order = {**existing, **values}
        if msg.patient is not None:
            record_identifiers(conn, patient, order["facility_code"] or "", now)
        items = {i["scheduled_procedure_step_id"]: i for i in sql.items_of_order(conn, existing["id"])}
        kept: set[str] = set()
        for n, step in enumerate(msg.steps, 1):
            row = self._item(order, msg, patient, step, n, now)
            old = items.get(row["scheduled_procedure_step_id"])
            kept.add(row["scheduled_procedure_step_id"])
            if old is None:
                sql.item_insert(conn, row)
                continue
            row.pop("step_key")
            row.pop("order_fk")
            row["open"] = old["open"]
            row["scheduled_procedure_step_status"] = old["scheduled_procedure_step_status"]
            sql.item_update(conn, old["id"], row)
        if msg.steps:
            for step_id, old in items.items():  # steps the changed order no longer has
                if step_id not in kept and old["scheduled_procedure_step_status"] == StepStatus.SCHEDULED:
                    sql.item_update(
                        conn,
                        old["id"],
                        {
                            "open": False,
                            "updated_at": now,
                            "scheduled_procedure_step_status": StepStatus.CANCELED.value,
                        },
                    )
        else:
            sql.items_update_for_order(conn, existing["id"], {**patient_columns(patient), "updated_at": now})
        self._event(conn, "order.changed", now, origin, order, {"steps": len(msg.steps)})
        return Applied(
            kind="order", order_keys=[existing["order_key"]], steps=len(msg.steps), detail="changed"
        )

    @staticmethod
    def _stored_patient(order: dict[str, Any]) -> PatientInfo:
        body = json.loads(order["attributes"] or "{}").get("patient") or {}
        return PatientInfo(
            patient_id=order["patient_id"] or "",
            issuer_of_patient_id=order["issuer_of_patient_id"] or "",
            name=order["patient_name"] or "",
            birth_date=body.get("birth_date", ""),
            sex=body.get("sex", ""),
        )

    def _close(
        self,
        conn: Connection,
        existing: dict[str, Any],
        status: StepStatus,
        kind: str,
        msg: OrderMessage,
        origin: Origin,
        now: datetime,
    ) -> Applied:
        sql.order_update(conn, existing["id"], {"status": status.value, "updated_at": now})
        closed = 0
        for item in sql.items_of_order(conn, existing["id"]):
            if item["open"] or item["scheduled_procedure_step_status"] == StepStatus.SCHEDULED:
                sql.item_update(
                    conn,
                    item["id"],
                    {"open": False, "scheduled_procedure_step_status": status.value, "updated_at": now},
                )
                closed += 1
        self._event(conn, kind, now, origin, existing, {"status": status.value, "reason": msg.reason or None})
        log.info("order %s %s: %d step(s) off the worklist", existing["order_key"][2:], status.value, closed)
        return Applied(
            kind="order", order_keys=[existing["order_key"]], steps=closed, detail=status.value.lower()
        )

    def _event(
        self,
        conn: Connection,
        kind: str,
        now: datetime,
        origin: Origin,
        order: dict[str, Any],
        details: dict[str, Any],
    ) -> None:
        repo.add_event(
            conn,
            kind,
            now,
            origin,
            study_instance_uid=order.get("study_instance_uid"),
            patient_id=order.get("patient_id"),
            details={
                "order": order.get("order_key"),
                "accession_number": order.get("accession_number"),
                **details,
            },
        )

    # ------------------------------------------------------------------ patients

    def _update_patient(self, conn: Connection, p: PatientInfo, origin: Origin, now: datetime) -> Applied:
        return update_patient(conn, p, origin, now, self.facility_code)

    def _merge(
        self,
        conn: Connection,
        p: PatientInfo,
        prior_id: str,
        prior_issuer: str,
        origin: Origin,
        now: datetime,
    ) -> Applied:
        return merge(conn, p, prior_id, prior_issuer, origin, now)

    # ------------------------------------------------------------------ reports

    def _report(
        self,
        conn: Connection,
        report: Report,
        reported_at: str,
        performed_at: str,
        origin: Origin,
        now: datetime,
    ) -> Applied:
        order = None
        if report.placer_order_number or report.filler_order_number:
            order = sql.order_get(
                conn, order_key(report.placer_order_number, report.filler_order_number), for_update=True
            )
        if order is None and report.accession_number:
            found = sql.orders_by_accession(conn, report.accession_number)
            order = found[0] if found else None
        if order is None:
            raise NotFound("no order for this report (OBR-2/OBR-3/accession number)")
        body = json.loads(order["attributes"] or "{}")
        body["report"] = {"text": report.text[:100_000], "status": report.status}
        values = {
            "reported_at": reported_at,
            "reported_at_source": (report.reported_at_source or "HIS report")[:64],
            "report_status": (report.status or "F")[:8],
            "reporting_doctor": _text(report.reporting_doctor, "reporting doctor", 324) or None,
            "attributes": json.dumps(body, ensure_ascii=False, default=str),
            "updated_at": now,
        }
        if performed_at:
            values.update(
                performed_at=performed_at,
                performed_at_source=(report.performed_at_source or "HIS report")[:64],
            )
        sql.order_update(conn, order["id"], values)
        self._event(conn, "order.reported", now, origin, order, {"status": values["report_status"]})
        return Applied(kind="report", order_keys=[order["order_key"]], detail="report recorded")

    # ------------------------------------------------------------------ reads

    def worklist(self, query: Query, limit: int) -> list[dict[str, Any]]:
        """Open worklist items matching a Modality Worklist query, at most ``limit``."""
        with self.db.read() as conn:
            return sql.worklist_search(conn, query, limit)

    def list_orders(self, *, limit: int = 100, offset: int = 0, **filters: Any) -> list[dict[str, Any]]:
        """Orders with their steps, most recently changed first."""
        with self.db.read() as conn:
            rows = sql.orders_list(conn, limit=limit, offset=offset, **filters)
            return [self._out(r, sql.items_of_order(conn, r["id"])) for r in rows]

    def get_order(self, key: str) -> dict[str, Any]:
        """One order with its steps, by order key (``P:`` placer / ``F:`` filler number)."""
        with self.db.read() as conn:
            row = sql.order_get(conn, key)
            if row is None:
                raise NotFound(f"no order {key[2:]}")
            return self._out(row, sql.items_of_order(conn, row["id"]))

    def times_for(
        self, accession_numbers: list[str], study_uids: list[str], conn: Connection
    ) -> list[dict[str, Any]]:
        """The HIS times of the orders behind an appraisal line (order, performed, result)."""
        return sql.orders_for_lines(conn, accession_numbers, study_uids)

    @staticmethod
    def _out(row: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
        body = json.loads(row["attributes"] or "{}")
        return {
            "order_key": row["order_key"],
            "placer_order_number": row["placer_order_number"],
            "filler_order_number": row["filler_order_number"],
            "accession_number": row["accession_number"],
            "requested_procedure_id": row["requested_procedure_id"],
            "study_instance_uid": row["study_instance_uid"],
            "linked_study_instance_uid": row["linked_study_instance_uid"],
            "status": row["status"],
            "patient": body.get("patient") or {"patient_id": row["patient_id"], "name": row["patient_name"]},
            "ordered_at": row["ordered_at"],
            "ordered_at_source": row["ordered_at_source"],
            "performed_at": row["performed_at"],
            "performed_at_source": row["performed_at_source"],
            "reported_at": row["reported_at"],
            "reported_at_source": row["reported_at_source"],
            "report_status": row["report_status"],
            "reporting_doctor": row["reporting_doctor"],
            "source": row["source"],
            "created_at": row["created_at"].isoformat() if row["created_at"] else None,
            "updated_at": row["updated_at"].isoformat() if row["updated_at"] else None,
            "steps": [
                {
                    "scheduled_procedure_step_id": i["scheduled_procedure_step_id"],
                    "status": i["scheduled_procedure_step_status"],
                    "on_worklist": bool(i["open"]),
                    "modality": i["modality"],
                    "scheduled_station_ae_title": i["scheduled_station_ae_title"],
                    "start_date": i["scheduled_procedure_step_start_date"],
                    "start_time": i["scheduled_procedure_step_start_time"],
                    "description": i["scheduled_procedure_step_description"],
                    "study_instance_uid": i["study_instance_uid"],
                    "accession_number": i["accession_number"],
                    "mpps_sop_instance_uid": i["mpps_sop_instance_uid"],
                }
                for i in items
            ],
        }

    # ------------------------------------------------------------------ MPPS hook

    def step_changed(
        self, conn: Connection, mpps_uid: str, values: dict[str, Any], origin: Origin, now: datetime
    ) -> None:
        """A performed procedure step was created or updated (MPPS hook, same transaction): see
        :func:`pacs.services.orders.steps.step_changed`."""
        step_changed(conn, mpps_uid, values, origin, now)

    # ------------------------------------------------------------------ index hook

    def instance_indexed(
        self, conn: Connection, record: InstanceRecord, blob: Any, origin: Origin, outcome: StoreOutcome
    ) -> None:
        """Link a study's first stored instance to its order and correct a patient name the
        modality stripped of its accents (index hook, in the store transaction)."""
        v = record.values
        study_uid = v.get("study_instance_uid") or ""
        if not study_uid or study_uid in self._reconciled:
            return
        self._reconciled[study_uid] = None
        if len(self._reconciled) > 4096:
            self._reconciled.popitem(last=False)
        if reuse_sql.is_imported(conn, study_uid):  # another facility's exam: never one of our orders
            return
        link_study(conn, v, study_uid, origin, self.clock(), self._event)

    def index_cleared(self, conn: Connection) -> None:
        """The index was cleared for a reindex: orders stay; studies are reconciled again."""
        self._reconciled.clear()
