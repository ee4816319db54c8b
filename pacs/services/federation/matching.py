"""How an identifier is asked of a plain DICOMweb or DIMSE peer, and how its answers are checked.

A peer that is not a ``pacs`` does not know ``system|value`` identifiers: each of its
``[[peers.match]]`` entries says where it keeps the identifiers of one system (PatientID or
OtherPatientIDs) and which IssuerOfPatientID they carry. The look-up sends the value there (a BHYT
card as ``*`` + its 10-digit social-insurance number, the part that stays when a card is renewed);
every answer is then checked against the identifier, because peers match loosely: Orthanc keys
patients by the bare PatientID, so two people with one local number at two issuers are one
Orthanc patient and a query on either's identifiers answers the other's studies too. A study is
kept only when its own PatientID (and IssuerOfPatientID) or its own Other Patient IDs name the
identifier; any other is another person's and is dropped (counted, never shown).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pacs.config import PeerMatch
from pacs.services.identifiers import BHYT, CCCD

Key = tuple[str | None, str]
PATIENT_ID = "00100020"
ISSUER = "00100021"
OTHER_IDS = "00101000"
OTHER_IDS_SEQUENCE = "00101002"
STUDY_UID = "0020000D"
RETRIEVE_URL = "00081190"
#: Study attributes asked of a peer (QIDO includefield, C-FIND return keys).
STUDY_FIELDS = (
    "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "InstitutionName",
    "ReferringPhysicianName", "StudyInstanceUID",
)  # fmt: skip


def compact(value: str) -> str:
    """A value as identifiers compare it: no spaces, dots or dashes, upper case."""
    return re.sub(r"[\s.-]", "", value or "").upper()


def values_of(ds: dict[str, Any], tag: str) -> list[str]:
    """The string values of one attribute of a DICOM JSON object."""
    return [str(v) for v in (ds.get(tag) or {}).get("Value") or [] if isinstance(v, str | int | float)]


def first(ds: dict[str, Any], tag: str) -> str:
    """The first value of an attribute ("" if none)."""
    found = values_of(ds, tag)
    return found[0] if found else ""


def rules_for(matches: Iterable[PeerMatch], key: Key) -> list[PeerMatch]:
    """The match entries of a peer for the identifier's system."""
    return [m for m in matches if m.system == key[0]]


def query_value(key: Key) -> str:
    """What is sent: the value, a BHYT number as ``*`` + its social-insurance number."""
    return f"*{key[1]}" if key[0] == BHYT else key[1]


def same_value(found: str, key: Key) -> bool:
    """Whether a peer's value is the identifier's (a BHYT card on its last 10 digits)."""
    got = compact(found)
    if key[0] == BHYT:
        return len(got) >= 10 and got[-10:] == key[1]
    return got == compact(key[1]) if key[0] == CCCD else found.strip() == key[1]


def issuer_ok(found: str, rule: PeerMatch) -> bool:
    """The issuer a result carries against the rule's (``*`` any, ``""`` none)."""
    if rule.issuer == "*":
        return True
    return found.strip() == rule.issuer


def qido_params(rule: PeerMatch, key: Key) -> dict[str, str]:
    """The QIDO-RS / C-FIND keys of one rule (PS3.18 10.6.1.2)."""
    params = {rule.attribute: query_value(key)}
    if rule.attribute == "PatientID" and rule.issuer not in ("", "*"):
        params["IssuerOfPatientID"] = rule.issuer
    return params


@dataclass(frozen=True)
class Verdict:
    """Whether a peer's study is the identifier's person, and why not."""

    keep: bool
    needs_instance: bool = False  # decided by one instance's Other Patient IDs
    reason: str = ""


def check_study(ds: dict[str, Any], rule: PeerMatch, key: Key) -> Verdict:
    """Check a study-level answer against a PatientID rule; an OtherPatientIDs rule needs an
    instance (study-level answers carry the peer's merged patient, not the study's own IDs)."""
    if rule.attribute == "OtherPatientIDs":
        return Verdict(False, needs_instance=True)
    pid, issuer = first(ds, PATIENT_ID), first(ds, ISSUER)
    if not same_value(pid, key):
        return Verdict(False, reason=f"PatientID {pid[:20]!r} is not the identifier")
    if not issuer_ok(issuer, rule):
        return Verdict(False, reason=f"IssuerOfPatientID {issuer[:20]!r} is not {rule.issuer!r}")
    return Verdict(True)


def check_instance(ds: dict[str, Any], rule: PeerMatch, key: Key) -> Verdict:
    """Check one instance of a study against an OtherPatientIDs rule: (0010,1000) values (issuer
    unknown: only for ``issuer = "*"`` or ``""``), or (0010,1002) items with their issuers."""
    for item in (ds.get(OTHER_IDS_SEQUENCE) or {}).get("Value") or []:
        if (
            isinstance(item, dict)
            and same_value(first(item, PATIENT_ID), key)
            and issuer_ok(first(item, ISSUER), rule)
        ):
            return Verdict(True)
    if rule.issuer in ("*", "") and any(same_value(v, key) for v in values_of(ds, OTHER_IDS)):
        return Verdict(True)
    return Verdict(False, reason="no Other Patient ID of the study's images is the identifier")


def check_pacs_study(study: dict[str, Any], key: Key) -> Verdict:
    """A ``pacs`` peer's study (``/api/reuse/local``) is kept when one of its patient's
    identifiers is the one asked (same system, same matching value)."""
    for ident in study.get("identifiers") or []:
        if isinstance(ident, dict) and ident.get("system") == key[0] and ident.get("value") == key[1]:
            return Verdict(True)
    return Verdict(False, reason="the patient has not that identifier")
