"""Service lines: which line a study or procedure step belongs to, and the facts a line keeps.

A line is keyed by the AccessionNumber, else the RequestedProcedureID, else the
ScheduledProcedureStepID, else the study (or, for a step naming no order key, the step). Its
facts come from its members by one rule (:func:`study_facts`, :func:`step_facts`, then
:func:`merged`), whether a store or MPPS transaction adds a member (:class:`LineKeeper`) or
:mod:`pacs.services.appraisal.rebuild` gathers every line again.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from pacs.index import appraisal as sql
from pacs.index.federation import is_imported
from pacs.model import InstanceRecord, Origin, StoreOutcome
from pacs.services.appraisal.registers import fold

#: The Origin.protocol of instances imported from another facility (pacs.services.federation).
REUSE = "reuse"
#: Record ids: ``<kind>:<value>`` for URL-safe values, ``<kind>64:<base64url>`` otherwise.
LINE_KEY = re.compile(r"^(acc|rp|sps|study|mpps)(64)?:[A-Za-z0-9._\-]{1,128}$")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
#: The order keys of a line (PS3.4 Table 10.1: accession, requested procedure, scheduled step),
#: named alike in the study, the procedure step and the line rows.
ORDER_KEYS = ("accession_number", "requested_procedure_id", "scheduled_procedure_step_id")

KEY_SOURCES = {
    "acc": "AccessionNumber",
    "rp": "RequestedProcedureID",
    "sps": "ScheduledProcedureStepID",
    "study": "StudyInstanceUID",
    "mpps": "PerformedProcedureStep (no order key)",
}
#: Where a line's procedure code came from when a procedure step gave it.
MPPS_CODE_SOURCE = "ProcedureCodeSequence (MPPS)"
#: Series-level values copied to ``appraisal_series`` from the first instance of a series.
SERIES_COLUMNS = (
    "series_number",
    "modality",
    "series_date",
    "series_time",
    "manufacturer",
    "manufacturer_model_name",
    "device_serial_number",
    "station_name",
    "software_versions",
    "operators_name",
    "performing_physician_name",
)
#: Line facts a member fills when the line has none yet.
_FILLED = (
    "accession_number",
    "requested_procedure_id",
    "scheduled_procedure_step_id",
    "patient_id",
    "issuer_of_patient_id",
    "other_patient_ids",
    "description",
    "description_key",
)
#: The procedure code, taken whole from the first member that has one.
CODE_COLUMNS = (
    "procedure_code",
    "procedure_coding_scheme",
    "procedure_code_meaning",
    "procedure_code_source",
)


def line_key(kind: str, value: str) -> str:
    """The stable, URL-safe record id of a service line."""
    if _SAFE_VALUE.fullmatch(value):
        return f"{kind}:{value}"
    return f"{kind}64:" + base64.urlsafe_b64encode(value.encode("utf-8")).decode().rstrip("=")


def line_kind(
    accession: str | None, requested: str | None, scheduled: str | None, study: str | None
) -> tuple[str, str]:
    """The key of a service line: AccessionNumber, RequestedProcedureID, SPS ID, else the study."""
    for kind, value in (("acc", accession), ("rp", requested), ("sps", scheduled)):
        if value and value.strip():
            return kind, value.strip()
    return "study", (study or "").strip()


def add_member(members: str, value: str | None, limit: int) -> str:
    """Add ``value`` to a backslash-delimited set (``\\CT\\DX\\``), within ``limit`` characters."""
    if not value or "\\" in value:
        return members or ""
    members = members or ""
    if f"\\{value}\\" in members:
        return members
    grown = (members or "\\") + value + "\\"
    return grown if len(grown) <= limit else members


def study_facts(uid: str, v: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """The line key (kind, value) and the facts of a study's line.

    ``v`` is an instance's :attr:`InstanceRecord.values`, or a study row of the index with the
    request facts only image headers carry (``scheduled_procedure_step_id``,
    ``procedure_code_value``...: see :data:`pacs.dicom.extract.REQUEST_FACT_KEYS`).
    """
    kind, value = line_kind(
        v.get("accession_number"), v.get("requested_procedure_id"), v.get("scheduled_procedure_step_id"), uid
    )
    code = v.get("procedure_code_value")
    description = v.get("study_description")
    return (
        kind,
        value,
        {
            "key_source": KEY_SOURCES[kind],
            **{key: v.get(key) for key in ORDER_KEYS},
            "line_date": v.get("study_date"),
            "patient_id": v.get("patient_id"),
            "issuer_of_patient_id": v.get("issuer_of_patient_id"),
            "other_patient_ids": v.get("other_patient_ids"),
            "procedure_code": code,
            "procedure_coding_scheme": v.get("procedure_coding_scheme_designator") if code else None,
            "procedure_code_meaning": v.get("procedure_code_meaning") if code else None,
            "procedure_code_source": v.get("procedure_code_source") if code else None,
            "description": description,
            "description_key": fold(description or "")[:256] or None,
        },
    )


def step_kind(uid: str, values: Mapping[str, Any]) -> tuple[str, str]:
    """The line key (kind, value) of a procedure step: its order keys, its study, else the step."""
    kind, value = line_kind(
        values.get("accession_number"),
        values.get("requested_procedure_id"),
        values.get("scheduled_procedure_step_id"),
        values.get("study_instance_uid"),
    )
    return ("mpps", uid) if not value else (kind, value)


def step_facts(values: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The facts of a procedure step's line from its ``mpps`` row values."""
    code = values.get("procedure_code")
    return {
        "key_source": KEY_SOURCES[kind],
        **{key: values.get(key) for key in ORDER_KEYS},
        "line_date": values.get("start_date"),
        "patient_id": values.get("patient_id"),
        "procedure_code": code,
        "procedure_coding_scheme": values.get("procedure_coding_scheme") if code else None,
        "procedure_code_meaning": values.get("procedure_code_meaning") if code else None,
        "procedure_code_source": MPPS_CODE_SOURCE if code else None,
        "modalities": values.get("modality"),
    }


def new_line(key_source: str, now: datetime) -> dict[str, Any]:
    """The columns of a line before any member's facts are merged in."""
    return {"key_source": key_source, "modalities": "", "devices": "", "created_at": now, "updated_at": now}


def merged(line: Mapping[str, Any], facts: Mapping[str, Any]) -> dict[str, Any]:
    """The changes a member's facts make to a line (the one merge rule of every path).

    Empty facts are filled, the procedure code is taken whole when the line has none, the
    earliest date is kept and the member's modality joins the line's set.
    """
    changes = {col: facts[col] for col in _FILLED if facts.get(col) and not line.get(col)}
    if facts.get("procedure_code") and not line.get("procedure_code"):
        changes.update({col: facts.get(col) for col in CODE_COLUMNS})
    d = facts.get("line_date")
    if d and (not line.get("line_date") or d < line["line_date"]):
        changes["line_date"] = d
    if facts.get("modalities"):
        mods = add_member(line.get("modalities") or "", facts["modalities"], 128)
        if mods != line.get("modalities"):
            changes["modalities"] = mods
    return changes


def with_series(line: Mapping[str, Any], modality: str | None, *devices: str | None) -> dict[str, Any]:
    """The changes a new series makes to a line: its modality and device join the line's sets."""
    changes = {}
    mods = add_member(line["modalities"], modality, 128)
    if mods != line["modalities"]:
        changes["modalities"] = mods
    devs = line["devices"]
    for d in devices:
        devs = add_member(devs, d, 1024)
    if devs != line["devices"]:
        changes["devices"] = devs
    return changes


def _instance_facts(v: dict[str, Any], received_at: datetime, calling_ae: str | None) -> dict[str, Any]:
    """The per-instance values the series summary keeps min / max of."""

    def joined(d: str, t: str) -> str | None:
        return (v[d] + v[t])[:32] if v.get(d) and v.get(t) else None

    return {
        "adt": v.get("acquisition_date_time"),
        "ad_at": joined("acquisition_date", "acquisition_time"),
        "cd_ct": joined("content_date", "content_time"),
        "received": received_at,
        "tz": v.get("timezone_offset_from_utc"),
        "sync": v.get("acquisition_time_synchronized"),
        "time_source": v.get("time_source"),
        "ae": calling_ae,
    }


def add_instance(
    conn: Connection, record: InstanceRecord, blob: Any, origin: Origin, outcome: StoreOutcome
) -> None:
    """Add a stored instance to its service line, in the store transaction.

    Usually one UPDATE of the series row; the first instance of a series also finds or creates
    the line of its study and notes the series' modality and device on it.
    """
    if outcome not in (StoreOutcome.STORED, StoreOutcome.REPLACED, StoreOutcome.VERSIONED):
        return
    v = record.values
    facts = _instance_facts(v, blob.received_at, origin.calling_ae[:16] or None)
    count = 1 if outcome is StoreOutcome.STORED else 0
    if sql.series_add_instance(conn, record.series_instance_uid, facts, count=count):
        return
    if origin.protocol == REUSE or is_imported(conn, record.study_instance_uid):
        return  # imported from another facility: no local appraisal record (issue 18)
    line_id = _line_for_study(conn, record, blob.received_at)
    row: dict[str, Any] = {
        "series_instance_uid": record.series_instance_uid,
        "study_instance_uid": record.study_instance_uid,
        "line_fk": line_id,
        "instance_count": count,
        **{k: v.get(k) for k in SERIES_COLUMNS},
    }
    for col, key, _how in sql._MINMAX:
        row[col] = facts.get(key)
    if not sql.series_insert(conn, row):
        sql.series_add_instance(conn, record.series_instance_uid, facts, count=count)
        return
    changes = with_series(
        sql.line_get(conn, line_id), v.get("modality"), v.get("device_serial_number"), v.get("station_name")
    )
    if changes:
        sql.line_update(conn, line_id, {**changes, "updated_at": blob.received_at})


def _line_for_study(conn: Connection, record: InstanceRecord, now: datetime) -> int:
    uid = record.study_instance_uid
    found = sql.line_of(conn, "study", uid)
    if found is not None:
        return found
    kind, value, facts = study_facts(uid, record.values)
    line_id = None
    if kind == "study":  # no order keys on the images: join a step that names this study
        line_id = sql.lines_of_mpps_for_study(conn, uid)
    if line_id is None:
        line_id = sql.line_ensure(conn, line_key(kind, value), new_line(facts["key_source"], now))
    widen(conn, line_id, facts, now)
    sql.member_add(conn, line_id, "study", uid)
    return line_id


def add_step(conn: Connection, uid: str, values: dict[str, Any], now: datetime) -> None:
    """Put a new procedure step on the line of its study, else on the line of its own keys."""
    study = values.get("study_instance_uid")
    line_id = sql.line_of(conn, "study", study) if study else None
    kind, value = step_kind(uid, values)
    facts = step_facts(values, kind)
    if line_id is None:
        line_id = sql.line_ensure(conn, line_key(kind, value), new_line(facts["key_source"], now))
    widen(conn, line_id, facts, now)
    sql.member_add(conn, line_id, "mpps", uid)


def step_updated(conn: Connection, uid: str, values: dict[str, Any], now: datetime) -> None:
    """An N-SET that brings a procedure code may give the step's line its code."""
    line_id = sql.line_of(conn, "mpps", uid)
    if line_id is not None and values.get("procedure_code"):
        widen(conn, line_id, step_facts(values, "mpps"), now)


def widen(conn: Connection, line_id: int, facts: dict[str, Any], now: datetime) -> None:
    """Merge a member's facts into the stored line (:func:`merged`)."""
    changes = merged(sql.line_get(conn, line_id), facts)
    if changes:
        sql.line_update(conn, line_id, {**changes, "updated_at": now})
