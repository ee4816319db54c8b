"""FHIR R4 ``ImagingStudy`` over the index: search by patient identifier or Study Instance UID,
read by id, and the CapabilityStatement (HL7 FHIR R4 4.0.1; the IHE MHD/ITI-style "imaging study
manifest" view of a study).

Each study becomes one ``ImagingStudy`` whose id is its Study Instance UID, with the patient as a
contained ``Patient`` carrying every identifier the archive knows for it
(:mod:`pacs.services.identifiers`), its series and instances, and two contained ``Endpoint``
resources: our DICOMweb root (connectionType ``dicom-wado-rs``) and our viewer (``ihe-iid``,
the IHE Invoke Image Display link). Plain dicts out; the web edge serialises them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pacs
from pacs.dicom.text import is_valid_uid
from pacs.errors import InvalidQuery, NotAcceptable, NotFound
from pacs.model import Origin
from pacs.services.identifiers import Identifier, Identifiers

FHIR_VERSION = "4.0.1"
FHIR_JSON = "application/fhir+json"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
DICOM_UID = "urn:dicom:uid"
#: HL7 table 0203 codes shown as ``Identifier.type`` (others a source gave are left out).
_TYPE_CODES = frozenset({"MR", "PI", "PT", "NI", "NNVNM", "CZ", "HC", "PPN", "SS", "JHN", "AN"})
_GENDER = {"M": "male", "F": "female", "O": "other"}
_OFFSET = re.compile(r"[+-]\d{4}")
#: Search parameters understood (besides the result parameters).
_SEARCH = ("patient.identifier", "subject.identifier", "identifier")
_RESULT = ("_count", "_offset", "_format")
_FORMATS = {"json", FHIR_JSON, "application/json"}
_PATIENT_IDENTIFIER_DOC = (
    "system|value: urn:vn:cccd (12 digits), urn:vn:bhyt (the card or its 10-digit social-insurance"
    " number), urn:vn:issuer:<issuer>, urn:oid:<OID>; |value for an ID without issuer"
)


@dataclass(frozen=True)
class Links:
    """Where the client reaches us: the FHIR base, the DICOMweb root and the viewer (absolute URLs)."""

    fhir: str
    dicomweb: str
    viewer: str


class Fhir:
    """FHIR ImagingStudy search and read (see the module docstring)."""

    def __init__(
        self,
        identifiers: Identifiers,
        *,
        utc_offset: str = "+0700",
        default_count: int = 50,
        max_count: int = 200,
    ) -> None:
        self.identifiers = identifiers
        self.utc_offset = utc_offset if _OFFSET.fullmatch(utc_offset) else "+0000"
        self.default_count = default_count
        self.max_count = max_count

    # ------------------------------------------------------------------ interactions

    def search_imaging_studies(
        self, params: Sequence[tuple[str, str]], origin: Origin, links: Links, *, lenient: bool = False
    ) -> dict[str, Any]:
        """``GET [base]/ImagingStudy?...``: a ``searchset`` Bundle with ``total``.

        ``patient.identifier`` (alias ``subject.identifier``): tokens ``system|value``, comma
        separated alternatives; ``identifier``: ``urn:dicom:uid|urn:oid:<Study Instance UID>``,
        or the value alone; ``_count``, ``_offset``. One of the two search parameters is required.
        Unknown parameters are refused unless ``lenient`` (``Prefer: handling=lenient``).
        Raises :class:`InvalidQuery` with the reason.
        """
        given: dict[str, str] = {}
        for name, value in params:
            if name in given:
                raise InvalidQuery(f"{name}: give it once (comma separated values are alternatives)")
            if name in _SEARCH or name in _RESULT:
                given[name] = value
            elif name == "patient":
                raise InvalidQuery(
                    "patient=<reference> is not supported: search by patient.identifier=system|value"
                )
            elif not lenient:
                raise InvalidQuery(
                    f"unknown search parameter {name[:40]!r}; supported: {', '.join(_SEARCH + _RESULT)}"
                )
        if given.get("_format", "json") not in _FORMATS:
            raise NotAcceptable(f"_format={given['_format'][:40]!r}: only JSON ({FHIR_JSON}) is served")
        patient = given.get("patient.identifier") or given.get("subject.identifier")
        if "patient.identifier" in given and "subject.identifier" in given:
            raise InvalidQuery("give patient.identifier or subject.identifier, not both")
        if patient is None and "identifier" not in given:
            raise InvalidQuery(
                "a search needs patient.identifier=system|value or identifier=urn:dicom:uid|urn:oid:<uid>"
            )
        tokens = _split(patient, "patient.identifier") if patient is not None else None
        uids = (
            [_study_uid(t) for t in _split(given["identifier"], "identifier")]
            if "identifier" in given
            else None
        )
        count = _number(given.get("_count"), "_count", self.default_count, self.max_count)
        offset = _number(given.get("_offset"), "_offset", 0, 10**9)
        total, rows = self.identifiers.find_studies(
            origin, tokens=tokens, study_uids=uids, limit=count, offset=offset
        )
        resources = self._resources(rows, links)
        query = "&".join(f"{quote(k)}={quote(v, safe='|:,')}" for k, v in params)
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": [{"relation": "self", "url": f"{links.fhir}/ImagingStudy?{query}"}],
            "entry": [
                {
                    "fullUrl": f"{links.fhir}/ImagingStudy/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in resources
            ],
        }
        if offset + len(rows) < total and count:
            nxt = [(k, v) for k, v in params if k != "_offset"] + [("_offset", str(offset + count))]
            bundle["link"].append(
                {
                    "relation": "next",
                    "url": f"{links.fhir}/ImagingStudy?"
                    + "&".join(f"{quote(k)}={quote(v, safe='|:,')}" for k, v in nxt),
                }
            )
        if not bundle["entry"]:
            del bundle["entry"]
        return bundle

    def read_imaging_study(self, resource_id: str, origin: Origin, links: Links) -> dict[str, Any]:
        """``GET [base]/ImagingStudy/{id}`` (the id is the Study Instance UID); NotFound otherwise."""
        if not is_valid_uid(resource_id):
            raise NotFound(f"no ImagingStudy {resource_id[:80]!r}")
        _total, rows = self.identifiers.find_studies(origin, study_uids=[resource_id], limit=1)
        if not rows:
            raise NotFound(f"no ImagingStudy {resource_id}")
        return self._resources(rows, links)[0]

    def capability(self, links: Links, now: datetime | None = None) -> dict[str, Any]:
        """The CapabilityStatement of ``[base]/metadata``."""
        token = "token"
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": (now or datetime.now(UTC)).strftime("%Y-%m-%d"),
            "kind": "instance",
            "software": {"name": "pacs", "version": pacs.__version__},
            "implementation": {"description": "pacs imaging archive: FHIR ImagingStudy", "url": links.fhir},
            "fhirVersion": FHIR_VERSION,
            "format": [FHIR_JSON, "json"],
            "rest": [
                {
                    "mode": "server",
                    "security": {
                        "description": "Authorization: Bearer <token> from POST /api/auth/login (RFC 6750), "
                        "the same roles as DICOMweb search"
                    },
                    "resource": [
                        {
                            "type": "ImagingStudy",
                            "interaction": [{"code": "read"}, {"code": "search-type"}],
                            "searchParam": [
                                {
                                    "name": "identifier",
                                    "type": token,
                                    "documentation": "urn:dicom:uid|urn:oid:<Study Instance UID>",
                                },
                                {
                                    "name": "patient.identifier",
                                    "type": token,
                                    "documentation": _PATIENT_IDENTIFIER_DOC,
                                },
                                {"name": "_count", "type": "number"},
                            ],
                        }
                    ],
                }
            ],
        }

    # ------------------------------------------------------------------ mapping

    def _resources(self, rows: list[dict[str, Any]], links: Links) -> list[dict[str, Any]]:
        series, instances = self.identifiers.series_and_instances([r["id"] for r in rows])
        by_series: dict[int, list[dict[str, Any]]] = {}
        for i in instances:
            by_series.setdefault(i["series_fk"], []).append(i)
        by_study: dict[int, list[dict[str, Any]]] = {}
        for s in series:
            by_study.setdefault(s["study_fk"], []).append(s)
        return [self._imaging_study(r, by_study.get(r["id"], []), by_series, links) for r in rows]

    def _imaging_study(
        self,
        row: dict[str, Any],
        series: list[dict[str, Any]],
        by_series: dict[int, list[dict[str, Any]]],
        links: Links,
    ) -> dict[str, Any]:
        uid = row["study_instance_uid"]
        tz = next((i["timezone_offset_from_utc"] for s in series for i in by_series.get(s["id"], [])), None)
        offset = tz if tz and _OFFSET.fullmatch(tz) else self.utc_offset
        identifiers: list[dict[str, Any]] = [
            {"use": "official", "system": DICOM_UID, "value": f"urn:oid:{uid}"}
        ]
        if row["accession_number"]:
            identifiers.append({"type": _type("ACSN"), "value": row["accession_number"]})
        modalities = list(dict.fromkeys(s["modality"] for s in series if s["modality"]))
        study: dict[str, Any] = {
            "resourceType": "ImagingStudy",
            "id": uid,
            "contained": [
                _patient(row),
                _endpoint("dicomweb", "dicom-wado-rs", links.dicomweb, "application/dicom"),
                _endpoint("viewer", "ihe-iid", f"{links.viewer}?studyUID={uid}", "text/html"),
            ],
            "identifier": identifiers,
            "status": "available",
            "modality": [{"system": DCM, "code": m} for m in modalities],
            "subject": {"reference": "#patient"},
            "endpoint": [
                {"reference": "#dicomweb", "display": "DICOMweb"},
                {"reference": "#viewer", "display": "viewer"},
            ],
            "numberOfSeries": int(row["number_of_study_related_series"] or 0),
            "numberOfInstances": int(row["number_of_study_related_instances"] or 0),
        }
        started = _date_time(row["study_date"], row["study_time"], offset)
        if started:
            study["started"] = started
        if row["referring_physician_name"]:
            study["referrer"] = {"display": _name_text(row["referring_physician_name"])}
        if row["study_description"]:
            study["description"] = row["study_description"]
        study["series"] = [self._series(s, by_series.get(s["id"], []), offset) for s in series]
        if not study["series"]:
            del study["series"]
        if not study["modality"]:
            del study["modality"]
        return study

    @staticmethod
    def _series(s: dict[str, Any], instances: list[dict[str, Any]], offset: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "uid": s["series_instance_uid"],
            "modality": {"system": DCM, "code": s["modality"] or "OT"},
            "numberOfInstances": int(s["number_of_series_related_instances"] or 0),
        }
        if s["series_number"] is not None and s["series_number"] >= 0:
            out["number"] = int(s["series_number"])
        if s["series_description"]:
            out["description"] = s["series_description"]
        started = _date_time(s["series_date"], s["series_time"], offset)
        if started:
            out["started"] = started
        out["instance"] = [
            {
                "uid": i["sop_instance_uid"],
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{i['sop_class_uid']}"},
                **({"number": int(i["instance_number"])} if (i["instance_number"] or -1) >= 0 else {}),
            }
            for i in instances
        ]
        return out


def _type(code: str) -> dict[str, Any]:
    return {"coding": [{"system": V2_0203, "code": code}]}


def fhir_identifier(i: Identifier) -> dict[str, Any]:
    """An identifier as a FHIR ``Identifier`` (no system for a record number without issuer)."""
    out: dict[str, Any] = {}
    if i.type_code in _TYPE_CODES:
        out["type"] = _type(i.type_code)
    if i.system:
        out["system"] = i.system
    out["value"] = i.full_value
    return out


def _patient(row: dict[str, Any]) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient", "id": "patient"}
    ids = [fhir_identifier(i) for i in row.get("identifiers") or []]
    if ids:
        patient["identifier"] = ids
    name = row["patient_name"] or ""
    if name.strip("^ "):
        parts = name.split("=")[0].split("^")
        human: dict[str, Any] = {"text": _name_text(name)}
        if parts[0].strip():
            human["family"] = parts[0].strip()
        given = [p.strip() for p in parts[1:3] if p.strip()]
        if given:
            human["given"] = given
        patient["name"] = [human]
    if row["patient_sex"]:
        patient["gender"] = _GENDER.get(row["patient_sex"].upper(), "unknown")
    birth = row["patient_birth_date"] or ""
    if re.fullmatch(r"\d{8}", birth):
        patient["birthDate"] = f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"
    return patient


def _endpoint(eid: str, connection: str, address: str, mime: str) -> dict[str, Any]:
    return {
        "resourceType": "Endpoint",
        "id": eid,
        "status": "active",
        "connectionType": {"system": CONNECTION_TYPE, "code": connection},
        "payloadType": [{"text": "DICOM" if connection.startswith("dicom") else "image viewer"}],
        "payloadMimeType": [mime],
        "address": address,
    }


def _name_text(pn: str) -> str:
    """A DICOM PN as Vietnamese order text: family, middle, given (``Nguyễn Văn An``)."""
    parts = [p.strip() for p in pn.split("=")[0].split("^")]
    family, given, middle = [*parts, "", "", ""][:3]
    return " ".join(p for p in (family, middle, given) if p)


def _date_time(da: str | None, tm: str | None, offset: str) -> str:
    """DICOM DA + TM as a FHIR dateTime (with the offset when there is a time); "" if no date."""
    if not da or not re.fullmatch(r"\d{8}", da):
        return ""
    date = f"{da[:4]}-{da[4:6]}-{da[6:]}"
    t = (tm or "").split(".")[0]
    if not re.fullmatch(r"\d{6}", t) or int(t[:2]) > 23 or int(t[2:4]) > 59 or int(t[4:]) > 59:
        return date
    return f"{date}T{t[:2]}:{t[2:4]}:{t[4:]}{offset[:3]}:{offset[3:]}"


def _split(value: str, name: str) -> list[str]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise InvalidQuery(f"{name}: empty")
    if len(parts) > 20:
        raise InvalidQuery(f"{name}: at most 20 alternatives")
    return parts


def _study_uid(token: str) -> str:
    system, _, value = token.rpartition("|") if "|" in token else ("", "", token)
    if "|" in token and system not in ("", DICOM_UID):
        raise InvalidQuery(
            f"identifier: only {DICOM_UID}|urn:oid:<Study Instance UID> is searchable, not {system[:60]!r}"
        )
    uid = value.strip().removeprefix("urn:oid:")
    if not is_valid_uid(uid):
        raise InvalidQuery(f"identifier: {value[:80]!r} is not urn:oid:<Study Instance UID>")
    return uid


def _number(value: str | None, name: str, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise InvalidQuery(f"{name}: {value[:20]!r} is not a whole number")
    return min(int(value), maximum)
