"""Modality Performed Procedure Steps (PS3.4 Annex F): the values an N-CREATE or N-SET may carry.

The checks of the standard (type 1 attributes, allowed statuses) and the columns of an ``mpps``
row made from an attribute list; the service stores them and keeps the service lines in step.
"""

from __future__ import annotations

import json
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs.dicom.text import is_valid_uid, normalise_date, normalise_time
from pacs.errors import InvalidInstance, MissingAttribute, StepNotInProgress
from pacs.services.appraisal.lines import ORDER_KEYS
from pacs.services.appraisal.people import names

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
MPPS_STATUSES = (IN_PROGRESS, COMPLETED, DISCONTINUED)


def created_step(sop_instance_uid: str | None, ds: Dataset) -> tuple[str, dict[str, Any]]:
    """The UID and row values of an N-CREATE (PS3.4 F.7.2.1), a UID generated when none is given.

    Raises :class:`MissingAttribute` or :class:`InvalidInstance` for a dataset the standard does
    not allow.
    """
    uid = (sop_instance_uid or "").strip() or generate_uid()
    if not is_valid_uid(uid):
        raise InvalidInstance(f"invalid Affected SOP Instance UID {uid[:80]!r}")
    status = str(ds.get("PerformedProcedureStepStatus", "") or "").strip()
    if not status:
        raise MissingAttribute("PerformedProcedureStepStatus is required")
    if status != IN_PROGRESS:
        raise InvalidInstance(f"N-CREATE status must be IN PROGRESS, got {status!r}")
    for kw in ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"):
        if not str(ds.get(kw, "") or "").strip():
            raise MissingAttribute(f"{kw} is required")
    values = step_values(ds)
    values.update(sop_instance_uid=uid, status=status)
    return uid, values


def requested_status(ds: Dataset) -> str:
    """The status an N-SET asks for ('' when it sets none); InvalidInstance for one not allowed."""
    status = str(ds.get("PerformedProcedureStepStatus", "") or "").strip()
    if status and status not in MPPS_STATUSES:
        raise InvalidInstance(f"invalid PerformedProcedureStepStatus {status!r}")
    return status


def updated_step(row: dict[str, Any], ds: Dataset, status: str) -> dict[str, Any]:
    """The row values of an N-SET of the step ``row`` (PS3.4 F.7.2.2), with the resulting status.

    Raises :class:`StepNotInProgress` once the step is COMPLETED or DISCONTINUED, and
    :class:`MissingAttribute` for a final status without the end date and time.
    """
    if row["status"] != IN_PROGRESS:
        raise StepNotInProgress(f"procedure step is {row['status']}: it may no longer be updated")
    values = step_values(ds, previous=json.loads(row["attributes"] or "{}"))
    new_status = status or row["status"]
    if new_status in (COMPLETED, DISCONTINUED):
        for col, kw in (
            ("end_date", "PerformedProcedureStepEndDate"),
            ("end_time", "PerformedProcedureStepEndTime"),
        ):
            if not (values.get(col) or row.get(col)):
                raise MissingAttribute(f"{kw} is required to set the step {new_status}")
    values["status"] = new_status
    return values


def step_values(ds: Dataset, *, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Columns of an MPPS row from an N-CREATE attribute list or an N-SET modification list."""

    def text(kw: str, source: Any = ds, length: int = 64) -> str | None:
        value = source.get(kw)
        if value is None or value == "":
            return None
        return str(value).strip()[:length] or None

    values: dict[str, Any] = {}
    attrs = dict(previous or {})
    simple = {
        "start_date": ("PerformedProcedureStepStartDate", normalise_date),
        "start_time": ("PerformedProcedureStepStartTime", normalise_time),
        "end_date": ("PerformedProcedureStepEndDate", normalise_date),
        "end_time": ("PerformedProcedureStepEndTime", normalise_time),
    }
    for col, (kw, norm) in simple.items():
        if kw in ds:
            v = text(kw)
            values[col] = norm(v)[:16] if v else None
    for col, kw, length in (
        ("performed_procedure_step_id", "PerformedProcedureStepID", 64),
        ("performed_station_ae_title", "PerformedStationAETitle", 16),
        ("performed_station_name", "PerformedStationName", 64),
        ("modality", "Modality", 16),
        ("description", "PerformedProcedureStepDescription", 256),
        ("patient_id", "PatientID", 64),
    ):
        if kw in ds:
            values[col] = text(kw, length=length)
    if "ScheduledStepAttributesSequence" in ds:
        items = list(ds.ScheduledStepAttributesSequence or [])
        attrs["scheduled_steps"] = [
            {
                "study_instance_uid": text("StudyInstanceUID", it),
                "accession_number": text("AccessionNumber", it),
                "requested_procedure_id": text("RequestedProcedureID", it),
                "scheduled_procedure_step_id": text("ScheduledProcedureStepID", it),
                "requested_procedure_description": text("RequestedProcedureDescription", it, 256),
            }
            for it in items
        ]
        if items:
            first = attrs["scheduled_steps"][0]
            values.update({key: first[key] for key in ("study_instance_uid", *ORDER_KEYS)})
    if "ProcedureCodeSequence" in ds and ds.ProcedureCodeSequence:
        item = ds.ProcedureCodeSequence[0]
        values["procedure_code"] = text("CodeValue", item)
        values["procedure_code_meaning"] = text("CodeMeaning", item, 256)
    if "PerformedSeriesSequence" in ds:
        series_items = list(ds.PerformedSeriesSequence or [])
        attrs["performed_series"] = [
            {
                "series_instance_uid": text("SeriesInstanceUID", it),
                "series_description": text("SeriesDescription", it),
                "protocol_name": text("ProtocolName", it),
                "referenced_images": len(it.get("ReferencedImageSequence", []) or []),
            }
            for it in series_items
        ]
        attrs["performing_physicians"] = names(
            *(text("PerformingPhysicianName", it, 324) for it in series_items)
        )
        attrs["operators"] = names(*(text("OperatorsName", it, 324) for it in series_items))
    values["attributes"] = json.dumps(attrs, ensure_ascii=False)
    return values
