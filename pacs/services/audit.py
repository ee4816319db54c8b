"""The audit trail: recording web accesses, reading the event log, and DICOM audit messages.

Every access to patient data lands in the append-only ``events`` table: stores, associations,
C-FIND/C-MOVE/C-GET (written by the archive and the DIMSE edge), appraisal calls (written by the
appraisal service), and here web requests and logins. Web rows go through a small writer thread
that appends them in batches, so a viewer fetching hundreds of frames does not wait on one
transaction per frame; :meth:`Audit.flush` waits for everything queued, and every read flushes
first.

Export follows the DICOM audit message schema (PS3.15 A.5, the IHE ATNA profile):
``EventIdentification``, ``ActiveParticipant``, ``AuditSourceIdentification`` and
``ParticipantObjectIdentification`` per event, as JSON or XML.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.etree import ElementTree as ET

from pacs.index import auth_repo
from pacs.index.auth_repo import EventFilter
from pacs.index.database import Database
from pacs.model import Origin

log = logging.getLogger("pacs.audit")

_STOP = object()


@dataclass(frozen=True)
class Code:
    """A coded entry (``csd-code``, ``codeSystemName``, ``originalText``) of PS3.15 A.5.1."""

    code: str
    scheme: str
    text: str

    def json(self) -> dict[str, str]:
        """As a JSON object with the schema's attribute names."""
        return {"csd-code": self.code, "codeSystemName": self.scheme, "originalText": self.text}


# EventID codes (PS3.15 A.5.3, CID 400 "Audit Event ID")
APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
AUDIT_LOG_USED = Code("110101", "DCM", "Audit Log Used")
INSTANCES_ACCESSED = Code("110103", "DCM", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
PATIENT_RECORD = Code("110110", "DCM", "Patient Record")
QUERY = Code("110112", "DCM", "Query")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
# EventTypeCode (CID 401, 402)
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of a restricted function")
# RoleIDCode (CID 402 "Audit Active Participant Role ID")
SOURCE = Code("110153", "DCM", "Source Role ID")
DESTINATION = Code("110152", "DCM", "Destination Role ID")
APPLICATION = Code("110150", "DCM", "Application")
# ParticipantObjectIDTypeCode
STUDY_UID = Code("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID = Code("110181", "DCM", "SOP Class UID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
URI = Code("12", "RFC-3881", "URI")
APPLICATION_SERVER = Code("4", "DCM", "Application Server")  # AuditSourceTypeCode

#: kind (or prefix ending with ".") -> (EventID, EventActionCode, EventTypeCode or None)
_EVENTS: list[tuple[str, Code, str, Code | None]] = [
    ("instance.", INSTANCES_TRANSFERRED, "C", None),
    ("http.store", INSTANCES_TRANSFERRED, "C", None),
    ("retrieve.", INSTANCES_TRANSFERRED, "R", None),
    ("query.", QUERY, "E", None),
    ("http.search", QUERY, "E", None),
    ("http.audit", AUDIT_LOG_USED, "R", None),
    ("http.appraisal", PATIENT_RECORD, "R", None),
    ("appraisal.", PATIENT_RECORD, "R", None),
    ("http.", INSTANCES_ACCESSED, "R", None),
    ("auth.login_failed", USER_AUTHENTICATION, "E", LOGIN),
    ("auth.login", USER_AUTHENTICATION, "E", LOGIN),
    ("association.open", USER_AUTHENTICATION, "E", LOGIN),
    ("association.close", USER_AUTHENTICATION, "E", LOGOUT),
    ("association.rejected", SECURITY_ALERT, "E", NODE_AUTHENTICATION),
    ("mpps.", PATIENT_RECORD, "U", None),
]


def _classify(kind: str) -> tuple[Code, str, Code | None]:
    for key, code, action, etype in _EVENTS:
        if kind == key or (key.endswith(".") and kind.startswith(key)):
            return code, action, etype
    return APPLICATION_ACTIVITY, "E", None


def outcome_of(row: dict[str, Any]) -> int:
    """EventOutcomeIndicator (PS3.15 A.5.1): 0 success, 4 minor, 8 serious, 12 major failure."""
    d = row.get("details") or {}
    status = d.get("status")
    if isinstance(status, int):
        return 0 if status < 400 else 4 if status < 500 else 8
    if isinstance(d.get("outcome"), int):
        return int(d["outcome"])
    kind = str(row.get("kind", ""))
    if kind.endswith(("failed", "rejected", "refused", "denied")):
        return 4
    return 0


class Audit:
    """Record web accesses, query the event log, render audit messages."""

    def __init__(
        self,
        db: Database,
        *,
        source_id: str = "PACS",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        batch: int = 500,
    ) -> None:
        self.db = db
        self.source_id = source_id
        self.clock = clock
        self.batch = batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ writing

    def record(
        self,
        kind: str,
        origin: Origin,
        *,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        **details: Any,
    ) -> None:
        """Queue one event row (appended by the writer thread within moments)."""
        self._start()
        self._queue.put(
            {
                "at": self.clock(),
                "kind": kind,
                "study_instance_uid": study_instance_uid or None,
                "series_instance_uid": series_instance_uid or None,
                "sop_instance_uid": sop_instance_uid or None,
                "calling_ae": origin.calling_ae or None,
                "peer_address": origin.address or None,
                "user_name": origin.user or None,
                "details": {"protocol": origin.protocol, **details},
            }
        )

    def flush(self) -> None:
        """Wait until every queued row is in the database."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Flush and stop the writer thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(30)

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            items = [first]
            while len(items) < self.batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [i for i in items if i is not _STOP]
            try:
                self._append(rows)
            finally:
                for _ in items:
                    self._queue.task_done()
            if len(rows) != len(items):
                return

    def _append(self, rows: list[dict[str, Any]]) -> None:
        for attempt in range(3):
            try:
                with self.db.write() as conn:
                    auth_repo.append_events(conn, rows)
                return
            except Exception as exc:  # the database may be briefly unavailable; never lose silently
                if attempt == 2:
                    for r in rows:
                        log.error("AUDIT ROW NOT WRITTEN (%s): %s", exc, json.dumps(r, default=str))
                    return
                threading.Event().wait(0.2 * (attempt + 1))

    # ------------------------------------------------------------------ reading

    def query(self, flt: EventFilter, limit: int = 1000) -> list[dict[str, Any]]:
        """Events matching ``flt`` (oldest first), each with its ``outcome`` and patient, if known."""
        self.flush()
        with self.db.read() as conn:
            rows = auth_repo.query_events(conn, flt, limit)
            patients = auth_repo.patients_of_studies(conn, (r["study_instance_uid"] for r in rows))
        for r in rows:
            r["outcome"] = outcome_of(r)
            pid = (r.get("details") or {}).get("patient_id")
            if r["study_instance_uid"] in patients:
                pid, pname = patients[r["study_instance_uid"]]
                r["patient_id"], r["patient_name"] = pid, pname
            else:
                r["patient_id"], r["patient_name"] = pid or None, None
        return rows

    # ------------------------------------------------------------------ PS3.15 A.5 audit messages

    def message(self, row: dict[str, Any]) -> dict[str, Any]:
        """One DICOM audit message (PS3.15 A.5.1) for an event row, as a JSON-ready dict."""
        code, action, etype = _classify(str(row["kind"]))
        d = row.get("details") or {}
        at = row["at"]
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        ident: dict[str, Any] = {
            "EventActionCode": action,
            "EventDateTime": at.isoformat(),
            "EventOutcomeIndicator": str(row.get("outcome", outcome_of(row))),
            "EventID": code.json(),
        }
        if etype is not None:
            ident["EventTypeCode"] = [etype.json()]
        reason = d.get("reason") or d.get("error")
        if reason:
            ident["EventOutcomeDescription"] = str(reason)
        requestor: dict[str, Any] = {
            "UserID": row.get("user_name") or row.get("calling_ae") or "anonymous",
            "UserIsRequestor": True,
            "RoleIDCode": [SOURCE.json()],
        }
        if row.get("calling_ae"):
            requestor["AlternativeUserID"] = f"AETITLES={row['calling_ae']}"
        if d.get("role"):
            requestor["UserName"] = f"{row.get('user_name') or ''} ({d['role']})"
        if row.get("peer_address"):
            requestor["NetworkAccessPointID"] = row["peer_address"]
            requestor["NetworkAccessPointTypeCode"] = "2"  # IP address
        archive = {
            "UserID": self.source_id,
            "UserIsRequestor": False,
            "RoleIDCode": [DESTINATION.json() if action == "C" else APPLICATION.json()],
        }
        objects: list[dict[str, Any]] = []
        if row.get("patient_id"):
            p: dict[str, Any] = {
                "ParticipantObjectID": row["patient_id"],
                "ParticipantObjectTypeCode": "1",  # person
                "ParticipantObjectTypeCodeRole": "1",  # patient
                "ParticipantObjectIDTypeCode": PATIENT_NUMBER.json(),
            }
            if row.get("patient_name"):
                p["ParticipantObjectName"] = row["patient_name"]
            objects.append(p)
        if row.get("study_instance_uid"):
            s: dict[str, Any] = {
                "ParticipantObjectID": row["study_instance_uid"],
                "ParticipantObjectTypeCode": "2",  # system object
                "ParticipantObjectTypeCodeRole": "3",  # report
                "ParticipantObjectIDTypeCode": STUDY_UID.json(),
            }
            if row.get("sop_instance_uid"):
                s["ParticipantObjectDescription"] = {
                    "SOPClass": {"NumberOfInstances": 1},
                    "Instances": [{"UID": row["sop_instance_uid"]}],
                }
            objects.append(s)
        if code is QUERY:
            q = d.get("query") or json.dumps(
                {k: v for k, v in d.items() if k not in ("protocol", "status")}, default=str
            )
            objects.append(
                {
                    "ParticipantObjectID": d.get("path") or d.get("level") or "C-FIND",
                    "ParticipantObjectTypeCode": "2",
                    "ParticipantObjectTypeCodeRole": "3",
                    "ParticipantObjectIDTypeCode": (URI if d.get("path") else SOP_CLASS_UID).json(),
                    "ParticipantObjectQuery": base64.b64encode(str(q).encode("utf-8")).decode("ascii"),
                }
            )
        elif d.get("path") and not row.get("study_instance_uid"):
            objects.append(
                {
                    "ParticipantObjectID": d["path"],
                    "ParticipantObjectTypeCode": "2",
                    "ParticipantObjectTypeCodeRole": "13" if code is AUDIT_LOG_USED else "3",
                    "ParticipantObjectIDTypeCode": URI.json(),
                }
            )
        return {
            "EventIdentification": ident,
            "ActiveParticipant": [requestor, archive],
            "AuditSourceIdentification": {
                "AuditSourceID": self.source_id,
                "AuditSourceTypeCode": [APPLICATION_SERVER.json()],
            },
            "ParticipantObjectIdentification": objects,
        }

    def to_json(self, rows: list[dict[str, Any]]) -> str:
        """A JSON document ``{"AuditMessages": [{"AuditMessage": ...}, ...]}``."""
        msgs = [{"AuditMessage": self.message(r)} for r in rows]
        return json.dumps({"AuditMessages": msgs}, ensure_ascii=False, default=str)

    def to_xml(self, rows: list[dict[str, Any]]) -> bytes:
        """An XML document ``<AuditMessages>`` of ``<AuditMessage>`` elements (PS3.15 A.5.1 schema)."""
        root = ET.Element("AuditMessages")
        for r in rows:
            _xml_message(root, self.message(r))
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _xml_message(parent: ET.Element, msg: dict[str, Any]) -> None:
    """Attributes are the scalar fields; coded entries and nested objects become child elements."""
    el = ET.SubElement(parent, "AuditMessage")
    for name in (
        "EventIdentification",
        "ActiveParticipant",
        "AuditSourceIdentification",
        "ParticipantObjectIdentification",
    ):
        value = msg[name]
        for item in value if isinstance(value, list) else [value]:
            _xml_node(el, name, item)


_ORDER = {
    "EventID": 0,
    "EventTypeCode": 1,
    "EventOutcomeDescription": 2,
    "RoleIDCode": 0,
    "ParticipantObjectIDTypeCode": 0,
    "ParticipantObjectName": 1,
    "ParticipantObjectQuery": 1,
    "ParticipantObjectDescription": 2,
}


def _xml_node(parent: ET.Element, name: str, value: dict[str, Any]) -> None:
    node = ET.SubElement(parent, name)
    children: list[tuple[str, Any]] = []
    for k, v in value.items():
        if isinstance(v, bool):
            node.set(k, "true" if v else "false")
        elif isinstance(v, str | int | float):
            if k in ("EventOutcomeDescription", "ParticipantObjectName", "ParticipantObjectQuery"):
                children.append((k, v))
            else:
                node.set(k, str(v))
        else:
            children.append((k, v))
    for k, v in sorted(children, key=lambda kv: _ORDER.get(kv[0], 5)):
        for item in v if isinstance(v, list) else [v]:
            if isinstance(item, dict) and "csd-code" in item:
                c = ET.SubElement(node, k)
                for ak, av in item.items():
                    c.set(ak, str(av))
            elif isinstance(item, dict):
                if k == "ParticipantObjectDescription":
                    _xml_description(node, item)
                else:
                    _xml_node(node, k, item)
            else:
                ET.SubElement(node, k).text = str(item)


def _xml_description(node: ET.Element, item: dict[str, Any]) -> None:
    """``<SOPClass NumberOfInstances=..><Instance UID=../></SOPClass>`` (PS3.15 A.5.1)."""
    sop = ET.SubElement(node, "SOPClass")
    sop.set("NumberOfInstances", str(item.get("SOPClass", {}).get("NumberOfInstances", 0)))
    for inst in item.get("Instances", []):
        ET.SubElement(sop, "Instance").set("UID", str(inst["UID"]))


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 date or date-time (UTC unless an offset is given), or a span back (``30m``, ``7d``)."""
    now = now or datetime.now(UTC)
    m = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now - timedelta(**{unit: int(m.group(1))})
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def event_filter(params: dict[str, str]) -> EventFilter:
    """An :class:`EventFilter` from query parameters (``since``, ``until``, ``user``, ``kind``,
    ``study``, ``address``, ``after``); raises ``ValueError`` with a reason."""
    return EventFilter(
        since=parse_time(params["since"]) if params.get("since") else None,
        until=parse_time(params["until"]) if params.get("until") else None,
        user=params.get("user") or None,
        kinds=tuple(k.strip() for k in params.get("kind", "").split(",") if k.strip()),
        study_instance_uid=params.get("study") or None,
        address=params.get("address") or None,
        after_id=int(params.get("after") or 0),
    )
