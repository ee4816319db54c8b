"""DICOM audit messages (PS3.15 A.5, RFC 3881, the IHE ATNA profile) built from event rows.

Per event: ``EventIdentification``, ``ActiveParticipant``, ``AuditSourceIdentification`` and
``ParticipantObjectIdentification``, as a JSON-ready dict, a JSON document or XML.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC
from typing import Any
from xml.etree import ElementTree as ET

from pacs.services.audit.codes import (
    APPLICATION,
    APPLICATION_SERVER,
    AUDIT_LOG_USED,
    DESTINATION,
    INSTANCES_TRANSFERRED,
    PATIENT_NUMBER,
    QUERY,
    SOP_CLASS_UID,
    SOURCE,
    STUDY_UID,
    URI,
    _classify,
    outcome_of,
)


def audit_message(row: dict[str, Any], source_id: str) -> dict[str, Any]:
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
    if code is INSTANCES_TRANSFERRED and action == "R":
        role = SOURCE  # the archive sends (C-MOVE, C-GET)
    else:
        role = DESTINATION if action == "C" else APPLICATION
    archive = {"UserID": source_id, "UserIsRequestor": False, "RoleIDCode": [role.json()]}
    participants = [requestor, archive]
    if d.get("destination"):  # the C-MOVE destination AE (Instances Transferred, PS3.15 A.5.3)
        participants.append(
            {
                "UserID": str(d["destination"]),
                "AlternativeUserID": f"AETITLES={d['destination']}",
                "UserIsRequestor": False,
                "RoleIDCode": [DESTINATION.json()],
            }
        )
    objects: list[dict[str, Any]] = []
    patients = [row.get("patient_id"), *(d.get("patients") or ())]
    for pid in dict.fromkeys(str(x) for x in patients if x):
        p: dict[str, Any] = {
            "ParticipantObjectID": pid,
            "ParticipantObjectTypeCode": "1",  # person
            "ParticipantObjectTypeCodeRole": "1",  # patient
            "ParticipantObjectIDTypeCode": PATIENT_NUMBER.json(),
        }
        if row.get("patient_name") and pid == row.get("patient_id"):
            p["ParticipantObjectName"] = row["patient_name"]
        objects.append(p)
    studies = [row.get("study_instance_uid"), *(d.get("studies") or ())]
    for uid in dict.fromkeys(str(x) for x in studies if x):
        s: dict[str, Any] = {
            "ParticipantObjectID": uid,
            "ParticipantObjectTypeCode": "2",  # system object
            "ParticipantObjectTypeCodeRole": "3",  # report
            "ParticipantObjectIDTypeCode": STUDY_UID.json(),
        }
        if row.get("sop_instance_uid") and uid == row.get("study_instance_uid"):
            s["ParticipantObjectDescription"] = {
                "SOPClass": {"NumberOfInstances": 1},
                "Instances": [{"UID": row["sop_instance_uid"]}],
            }
        objects.append(s)
    if code is QUERY:
        q = d.get("query") or json.dumps(
            {k: v for k, v in d.items() if k not in ("protocol", "status")}, default=str
        )
        if not isinstance(q, str):  # the identifier's keys (C-FIND)
            q = json.dumps(q, ensure_ascii=False, sort_keys=True, default=str)
        objects.append(
            {
                "ParticipantObjectID": d.get("path") or d.get("sop_class") or d.get("level") or "C-FIND",
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
        "ActiveParticipant": participants,
        "AuditSourceIdentification": {
            "AuditSourceID": source_id,
            "AuditSourceTypeCode": [APPLICATION_SERVER.json()],
        },
        "ParticipantObjectIdentification": objects,
    }


def messages_json(rows: list[dict[str, Any]], source_id: str) -> str:
    """A JSON document ``{"AuditMessages": [{"AuditMessage": ...}, ...]}``."""
    msgs = [{"AuditMessage": audit_message(r, source_id)} for r in rows]
    return json.dumps({"AuditMessages": msgs}, ensure_ascii=False, default=str)


def messages_xml(rows: list[dict[str, Any]], source_id: str) -> bytes:
    """An XML document ``<AuditMessages>`` of ``<AuditMessage>`` elements (PS3.15 A.5.1 schema)."""
    root = ET.Element("AuditMessages")
    for r in rows:
        _xml_message(root, audit_message(r, source_id))
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def message_xml(msg: dict[str, Any]) -> bytes:
    """One ``<AuditMessage>`` element, UTF-8 without an XML declaration (a syslog message body)."""
    el = ET.Element("AuditMessages")
    _xml_message(el, msg)
    return ET.tostring(el[0], encoding="utf-8")


def _parsed(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as read from the table (``details`` as text) made ready for :meth:`Audit.message`."""
    r = dict(row)
    d = r.get("details")
    if isinstance(d, str):
        try:
            r["details"] = json.loads(d) if d else {}
        except ValueError:
            r["details"] = {"raw": d}
    elif not isinstance(d, dict):
        r["details"] = {}
    r["outcome"] = outcome_of(r)
    r["patient_id"] = r.get("patient_id") or r["details"].get("patient_id")
    return r


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
