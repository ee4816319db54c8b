"""DICOM audit codes (PS3.15 A.5.3, RFC 3881): coded entries, the event kinds they classify, outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
