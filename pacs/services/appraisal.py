"""Acquisition logs for health-insurance appraisal: MPPS procedure steps, records, exports.

A record describes one imaging service line (the accession number, else the requested procedure,
else the study) from what the archive saw: MPPS steps (PS3.4 Annex F), the device's acquisition
times with the attribute each came from, when the archive received the images, the device and the
people, and observed clock facts. It reports facts and orderings only; it never turns a time into
a judgement on the service. Every record carries the configured label explaining that device
times cover machine operation only (appraisal domain notes, consequences 1-3), and every access is
recorded as an event (who, from where, which filter, how many records).
"""

from __future__ import annotations

import base64
import binascii
import csv
import gc
import io
import itertools
import json
import logging
import re
import statistics
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from html import escape
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from pacs.appraisal_registers import Registers, fold
from pacs.config import AppraisalSettings
from pacs.dicom.text import is_valid_uid, normalise_date, normalise_time
from pacs.errors import (
    DuplicateInstance,
    InvalidInstance,
    InvalidQuery,
    NotFound,
    PacsError,
)
from pacs.index import appraisal as sql
from pacs.index import repo
from pacs.index.database import Database
from pacs.index.schema import appraisal_lines
from pacs.model import InstanceRecord, Origin, StoreOutcome

log = logging.getLogger("pacs.appraisal")

VIETNAM = timezone(timedelta(hours=7))
IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
MPPS_STATUSES = (IN_PROGRESS, COMPLETED, DISCONTINUED)
#: Records per page read by an export, and rows per chunk it writes.
EXPORT_PAGE = 1000
EXPORT_CHUNK = 500
CSV_FIELDS = (
    "STT",
    "MA_LK",
    "MA_DICH_VU",
    "TEN_DICH_VU",
    "MA_BAC_SI",
    "NGUOI_THUC_HIEN",
    "NGAY_YL",
    "NGAY_TH_YL",
    "NGAY_KQ",
    "MA_MAY",
    "PACS_MA_MAY_4750",
    "TG_THIET_BI_BAT_DAU",
    "TG_THIET_BI_KET_THUC",
    "PACS_NGUON_TG_THIET_BI",
    "PACS_SO_PHIEU_CHI_DINH",
    "PACS_MA_BAN_GHI",
    "PACS_STUDY_UID",
    "MA_BN",
    "MA_THE_BHYT",
    "SO_CCCD",
    "PACS_MA_NHAN",
    "PACS_GHI_CHU",
)
EXTRACT_NOTE_VI = "Trích xuất từ PACS để đối chiếu, không phải hồ sơ đề nghị thanh toán"
EXTRACT_NOTE_EN = "PACS extract for reconciliation, not a claim file"
FIELD_NOTE = (
    "NGAY_TH_YL/TG_THIET_BI_*: device times (MPPS start, else first image acquisition; last image "
    "acquisition), Vietnam time (UTC+7), yyyymmddHHMM; TG_THIET_BI_* and PACS_* are PACS extension "
    "fields, not fields of the data standard; NGAY_YL and NGAY_KQ are not known to the PACS"
)


OFFSET_BASIS = (
    "last image acquisition time on the device minus the time the archive received it; includes "
    "transfer delay (negative = device behind or images sent later)"
)
#: Record ids: ``<kind>:<value>`` for URL-safe values, ``<kind>64:<base64url>`` otherwise.
_LINE_KEY = re.compile(r"^(acc|rp|sps|study|mpps)(64)?:[A-Za-z0-9._\-]{1,128}$")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_KEY_SOURCES = {
    "acc": "AccessionNumber",
    "rp": "RequestedProcedureID",
    "sps": "ScheduledProcedureStepID",
    "study": "StudyInstanceUID",
    "mpps": "PerformedProcedureStep (no order key)",
}
#: Series-level values copied to ``appraisal_series`` from the first instance of a series.
_SERIES_COLUMNS = (
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


_LINE_COLUMNS = tuple(c.name for c in appraisal_lines.c)


def line_key(kind: str, value: str) -> str:
    """The stable, URL-safe record id of a service line."""
    if _SAFE_VALUE.fullmatch(value):
        return f"{kind}:{value}"
    return f"{kind}64:" + base64.urlsafe_b64encode(value.encode("utf-8")).decode().rstrip("=")


def _line_kind(
    accession: str | None, requested: str | None, scheduled: str | None, study: str | None
) -> tuple[str, str]:
    """The key of a service line: AccessionNumber, RequestedProcedureID, SPS ID, else the study."""
    for kind, value in (("acc", accession), ("rp", requested), ("sps", scheduled)):
        if value and value.strip():
            return kind, value.strip()
    return "study", (study or "").strip()


def _add_member(members: str, value: str | None, limit: int) -> str:
    """Add ``value`` to a backslash-delimited set (``\\CT\\DX\\``), within ``limit`` characters."""
    if not value or "\\" in value:
        return members or ""
    members = members or ""
    if f"\\{value}\\" in members:
        return members
    grown = (members or "\\") + value + "\\"
    return grown if len(grown) <= limit else members


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


def _clock_facts(
    clock: dict[str, Any], s: dict[str, Any], last: datetime | None, r_last: datetime | None, tol: int
) -> None:
    """Fold one series' clock values into a device's ``clock`` facts."""
    if s["tz_min"]:
        clock["timezone_offset_from_utc"] = (
            s["tz_min"] if s["tz_min"] == s["tz_max"] else f"{s['tz_min']}..{s['tz_max']}"
        )
    sync = {v for v in (s["sync_min"], s["sync_max"]) if v}
    if sync:
        clock["acquisition_time_synchronized"] = "/".join(sorted(sync))
        if sync == {"Y"}:
            clock["time_synchronised"] = clock["time_synchronised"] is not False
        elif "N" in sync:
            clock["time_synchronised"] = False
    if last and r_last:
        offset = round((last - r_last).total_seconds(), 1)
        prev = clock["clock_offset_seconds"]
        clock["clock_offset_seconds"] = offset if prev is None else max(prev, offset)
        clock["clock_offset_beyond_tolerance"] = abs(clock["clock_offset_seconds"]) > tol
        clock["device_clock_ahead_of_archive"] = clock["clock_offset_seconds"] > tol


class StepNotInProgress(PacsError):
    """An N-SET on a procedure step that is already COMPLETED or DISCONTINUED (PS3.4 F.7.2.2)."""


class MissingAttribute(InvalidInstance):
    """A required MPPS attribute is absent or empty (PS3.4 F.7.2.1, type 1 attributes)."""


# ---------------------------------------------------------------------- time helpers


_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")


def parse_offset(text: str | None) -> timezone | None:
    """``+0700`` -> a fixed offset; None for an empty or malformed value."""
    m = re.fullmatch(r"([+-])(\d{2})(\d{2})", (text or "").strip())
    if not m:
        return None
    delta = timedelta(hours=int(m[2]), minutes=int(m[3]))
    return timezone(-delta if m[1] == "-" else delta)


@lru_cache(maxsize=65536)
def parse_dicom_datetime(text: str | None, default_tz: timezone) -> tuple[datetime, bool] | None:
    """A DICOM DT (or DA+TM concatenation) -> (aware datetime, whether it carried its own offset)."""
    if text and len(text) == 14 and text.isascii() and text.isdigit():  # YYYYMMDDHHMMSS: most values
        try:
            value = datetime(
                int(text[:4]),
                int(text[4:6]),
                int(text[6:8]),
                int(text[8:10]),
                int(text[10:12]),
                int(text[12:]),
                tzinfo=default_tz,
            )
        except ValueError:
            return None
        return value, False
    text = (text or "").strip().replace(":", "").replace("-", "", 2) if text else ""
    if not text:
        return None
    m = _DT.match(text)
    if not m:
        return None
    year, month, day, hour, minute, sec, frac, off = m.groups()
    try:
        value = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(sec or 0),
            int((frac or ".0")[1:].ljust(6, "0")),
        )
    except ValueError:
        return None
    tz = parse_offset(off)
    return value.replace(tzinfo=tz or default_tz), tz is not None


def _as_utc(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_iso(value: datetime | str | None) -> str | None:
    """ISO-8601 in UTC of an archive time (naive values are UTC, as the index stores them)."""
    if type(value) is datetime and value.tzinfo is None:
        return value.isoformat() + "+00:00"
    return iso(_as_utc(value))


def iso(value: datetime | None) -> str | None:
    """ISO-8601 with offset (device times in their own offset, archive times in UTC).

    Not memoised: aware datetimes of the same instant in different offsets are equal and hash
    alike, so a cache would print a device time with the offset of an archive time.
    """
    return value.isoformat() if value else None


def claim_time(value: datetime | None) -> str:
    """``yyyymmddHHMM`` in Vietnam time (UTC+7), truncated to the minute, as the claim tables use."""
    if not value:
        return ""
    v = value.astimezone(VIETNAM)
    if v.year < 1000:
        return v.strftime("%Y%m%d%H%M")
    return f"{v.year}{v.month:02d}{v.day:02d}{v.hour:02d}{v.minute:02d}"


def _names(*values: str | None) -> list[str]:
    """Distinct, stripped names of backslash-separated person-name values, in order of appearance."""
    out: list[str] = []
    for v in values:
        if not v:
            continue
        for name in v.split("\\") if "\\" in v else (v,):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return out


_CITIZEN_ID = re.compile(r"\d{12}")
_CARD_CODE = re.compile(r"[A-Z]{2}\d{13}")


def _patient_ids(patient_id: str | None, issuer: str | None, others: str | None) -> dict[str, Any]:
    candidates = [p for p in [patient_id or "", *(others or "").split("\\")] if p.strip()]
    citizen = next((p.strip() for p in candidates if _CITIZEN_ID.fullmatch(p.strip())), None)
    card = next((p.strip() for p in candidates if _CARD_CODE.fullmatch(p.strip())), None)
    return {
        "patient_id": patient_id,
        "issuer_of_patient_id": issuer,
        "citizen_id": citizen,
        "insurance_card_code": card,
    }


# ---------------------------------------------------------------------- the service


@dataclass(frozen=True)
class RecordPage:
    """One page of records and the cursor of the next page (None at the end)."""

    records: list[dict[str, Any]]
    next_cursor: str | None


class Appraisal:
    """MPPS procedure steps and acquisition-log records over the index."""

    def __init__(
        self,
        db: Database,
        settings: AppraisalSettings,
        registers: Registers,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.settings = settings
        self.registers = registers
        self.clock = clock
        self.device_tz = parse_offset(settings.device_utc_offset) or VIETNAM

    @property
    def label(self) -> dict[str, str]:
        """The label every record and export carries."""
        return {"code": self.settings.label_code, "vi": self.settings.label_vi, "en": self.settings.label_en}

    # ------------------------------------------------------------------ MPPS (PS3.4 Annex F)

    def create_step(self, sop_instance_uid: str | None, ds: Dataset, origin: Origin) -> str:
        """N-CREATE of a Modality Performed Procedure Step (PS3.4 F.7.2.1); returns its UID.

        Raises :class:`DuplicateInstance` for an existing UID, :class:`MissingAttribute` or
        :class:`InvalidInstance` for a dataset the standard does not allow.
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
        values = _step_values(ds, create=True)
        now = self.clock()
        values.update(
            sop_instance_uid=uid,
            status=status,
            created_at=now,
            updated_at=now,
            calling_ae=origin.calling_ae[:16] or None,
            peer_address=origin.address[:64] or None,
        )
        try:
            with self.db.write() as conn:
                if sql.mpps_get(conn, uid) is not None:
                    raise DuplicateInstance(f"procedure step {uid} already exists")
                sql.mpps_insert(conn, values)
                self._line_for_step(conn, uid, values, now)
                repo.add_event(
                    conn,
                    "mpps.created",
                    now,
                    origin,
                    study_instance_uid=values.get("study_instance_uid"),
                    sop_instance_uid=uid,
                    details={"status": status, "accession_number": values.get("accession_number")},
                )
        except IntegrityError as exc:
            raise DuplicateInstance(f"procedure step {uid} already exists") from exc
        log.info(
            "MPPS created sop=%s status=%s study=%s accession=%s from %s@%s",
            uid,
            status,
            values.get("study_instance_uid"),
            values.get("accession_number"),
            origin.calling_ae,
            origin.address,
        )
        return uid

    def update_step(self, sop_instance_uid: str, ds: Dataset, origin: Origin) -> str:
        """N-SET of a procedure step (PS3.4 F.7.2.2); returns the resulting status.

        Raises :class:`NotFound` for an unknown UID, :class:`StepNotInProgress` once the step is
        COMPLETED or DISCONTINUED, :class:`InvalidInstance` for a status the standard does not allow.
        """
        uid = (sop_instance_uid or "").strip()
        status = str(ds.get("PerformedProcedureStepStatus", "") or "").strip()
        if status and status not in MPPS_STATUSES:
            raise InvalidInstance(f"invalid PerformedProcedureStepStatus {status!r}")
        now = self.clock()
        with self.db.write() as conn:
            row = sql.mpps_get(conn, uid, for_update=True)
            if row is None:
                raise NotFound(f"no procedure step {uid}")
            if row["status"] != IN_PROGRESS:
                raise StepNotInProgress(f"procedure step is {row['status']}: it may no longer be updated")
            values = _step_values(ds, create=False, previous=json.loads(row["attributes"] or "{}"))
            new_status = status or row["status"]
            if new_status in (COMPLETED, DISCONTINUED):
                for col, kw in (
                    ("end_date", "PerformedProcedureStepEndDate"),
                    ("end_time", "PerformedProcedureStepEndTime"),
                ):
                    if not (values.get(col) or row.get(col)):
                        raise MissingAttribute(f"{kw} is required to set the step {new_status}")
            values.update(status=new_status, updated_at=now)
            sql.mpps_update(conn, uid, values)
            line_id = sql.line_of(conn, "mpps", uid)
            if line_id is not None and values.get("procedure_code"):
                self._widen(conn, line_id, self._step_facts(values, "mpps"), now)
            repo.add_event(
                conn,
                "mpps.updated",
                now,
                origin,
                study_instance_uid=values.get("study_instance_uid") or row["study_instance_uid"],
                sop_instance_uid=uid,
                details={"status": new_status, "previous_status": row["status"]},
            )
        log.info(
            "MPPS updated sop=%s status=%s from %s@%s", uid, new_status, origin.calling_ae, origin.address
        )
        return new_status

    # ------------------------------------------------------------------ service lines (write side)

    def instance_indexed(
        self, conn: Connection, record: InstanceRecord, blob: Any, origin: Origin, outcome: StoreOutcome
    ) -> None:
        """Add a stored instance to its service line, in the store transaction (index hook).

        Usually one UPDATE of the series row; the first instance of a series also finds or
        creates the line of its study and notes the series' modality and device on it.
        """
        if outcome not in (StoreOutcome.STORED, StoreOutcome.REPLACED):
            return
        v = record.values
        facts = _instance_facts(v, blob.received_at, origin.calling_ae[:16] or None)
        count = 1 if outcome is StoreOutcome.STORED else 0
        if sql.series_add_instance(conn, record.series_instance_uid, facts, count=count):
            return
        line_id = self._line_for_study(conn, record, blob.received_at)
        row: dict[str, Any] = {
            "series_instance_uid": record.series_instance_uid,
            "study_instance_uid": record.study_instance_uid,
            "line_fk": line_id,
            "instance_count": count,
            **{k: v.get(k) for k in _SERIES_COLUMNS},
        }
        for col, key, _how in sql._MINMAX:
            row[col] = facts.get(key)
        if not sql.series_insert(conn, row):
            sql.series_add_instance(conn, record.series_instance_uid, facts, count=count)
            return
        line = sql.line_get(conn, line_id)
        modalities = _add_member(line["modalities"], v.get("modality"), 128)
        devices = line["devices"]
        for d in (v.get("device_serial_number"), v.get("station_name")):
            devices = _add_member(devices, d, 1024)
        if modalities != line["modalities"] or devices != line["devices"]:
            sql.line_update(
                conn, line_id, {"modalities": modalities, "devices": devices, "updated_at": blob.received_at}
            )

    def index_cleared(self, conn: Connection) -> None:
        """The index was cleared for a reindex: drop the line summaries too (index hook)."""
        sql.lines_clear(conn)

    def _line_for_study(self, conn: Connection, record: InstanceRecord, now: datetime) -> int:
        uid = record.study_instance_uid
        found = sql.line_of(conn, "study", uid)
        if found is not None:
            return found
        v = record.values
        kind, value = _line_kind(
            v.get("accession_number"),
            v.get("requested_procedure_id"),
            v.get("scheduled_procedure_step_id"),
            uid,
        )
        line_id = None
        if kind == "study":  # no order keys on the images: join a step that names this study
            line_id = sql.lines_of_mpps_for_study(conn, uid)
        code = v.get("procedure_code_value")
        facts = {
            "key_source": _KEY_SOURCES[kind],
            "accession_number": v.get("accession_number"),
            "requested_procedure_id": v.get("requested_procedure_id"),
            "scheduled_procedure_step_id": v.get("scheduled_procedure_step_id"),
            "line_date": v.get("study_date"),
            "patient_id": v.get("patient_id"),
            "issuer_of_patient_id": v.get("issuer_of_patient_id"),
            "other_patient_ids": v.get("other_patient_ids"),
            "procedure_code": code,
            "procedure_coding_scheme": v.get("procedure_coding_scheme_designator") if code else None,
            "procedure_code_meaning": v.get("procedure_code_meaning") if code else None,
            "procedure_code_source": v.get("procedure_code_source") if code else None,
            "description": v.get("study_description"),
            "description_key": fold(v.get("study_description") or "")[:256] or None,
        }
        if line_id is None:
            line_id = sql.line_ensure(
                conn,
                line_key(kind, value),
                {**facts, "modalities": "", "devices": "", "created_at": now, "updated_at": now},
            )
        self._widen(conn, line_id, facts, now)
        sql.member_add(conn, line_id, "study", uid)
        return line_id

    def _line_for_step(self, conn: Connection, uid: str, values: dict[str, Any], now: datetime) -> None:
        line_id = None
        study = values.get("study_instance_uid")
        if study:
            line_id = sql.line_of(conn, "study", study)
        kind, value = _line_kind(
            values.get("accession_number"),
            values.get("requested_procedure_id"),
            values.get("scheduled_procedure_step_id"),
            study,
        )
        if not value:
            kind, value = "mpps", uid
        facts = self._step_facts(values, kind)
        if line_id is None:
            line_id = sql.line_ensure(
                conn,
                line_key(kind, value),
                {**facts, "modalities": "", "devices": "", "created_at": now, "updated_at": now},
            )
        self._widen(conn, line_id, facts, now)
        sql.member_add(conn, line_id, "mpps", uid)

    @staticmethod
    def _step_facts(values: dict[str, Any], kind: str) -> dict[str, Any]:
        code = values.get("procedure_code")
        return {
            "key_source": _KEY_SOURCES[kind],
            "accession_number": values.get("accession_number"),
            "requested_procedure_id": values.get("requested_procedure_id"),
            "scheduled_procedure_step_id": values.get("scheduled_procedure_step_id"),
            "line_date": values.get("start_date"),
            "patient_id": values.get("patient_id"),
            "procedure_code": code,
            "procedure_coding_scheme": values.get("procedure_coding_scheme") if code else None,
            "procedure_code_meaning": values.get("procedure_code_meaning") if code else None,
            "procedure_code_source": "ProcedureCodeSequence (MPPS)" if code else None,
            "modalities": values.get("modality"),
        }

    def _widen(self, conn: Connection, line_id: int, facts: dict[str, Any], now: datetime) -> None:
        """Fill a line's empty facts from a new member; keep the earliest date."""
        line = sql.line_get(conn, line_id)
        changes: dict[str, Any] = {}
        for col in (
            "accession_number",
            "requested_procedure_id",
            "scheduled_procedure_step_id",
            "patient_id",
            "issuer_of_patient_id",
            "other_patient_ids",
            "description",
            "description_key",
        ):
            if facts.get(col) and not line[col]:
                changes[col] = facts[col]
        if facts.get("procedure_code") and not line["procedure_code"]:
            for col in ("procedure_code", "procedure_coding_scheme", "procedure_code_meaning"):
                changes[col] = facts.get(col)
            changes["procedure_code_source"] = facts.get("procedure_code_source")
        d = facts.get("line_date")
        if d and (not line["line_date"] or d < line["line_date"]):
            changes["line_date"] = d
        if facts.get("modalities"):
            mods = _add_member(line["modalities"], facts["modalities"], 128)
            if mods != line["modalities"]:
                changes["modalities"] = mods
        if changes:
            changes["updated_at"] = now
            sql.line_update(conn, line_id, changes)

    def rebuild_lines(self) -> int:
        """Rebuild every service line from the index and the MPPS table; returns the line count.

        For an index filled before the line tables existed (or by a bulk load). Set-based reads,
        then the same line rules as the store and MPPS transactions.
        """
        now = self.clock()
        with self.db.write() as conn:
            sql.lines_clear(conn)
            study_rows, series_rows, steps = sql.rebuild_sources(conn)
            by_key: dict[str, int] = {}
            line_rows: list[dict[str, Any]] = []
            study_line: dict[int, int] = {}
            study_uid: dict[int, str] = {}
            members: list[dict[str, Any]] = []
            study_by_uid: dict[str, int] = {}

            def line_for(key: str, facts: dict[str, Any]) -> int:
                lid = by_key.get(key)
                if lid is None:
                    lid = by_key[key] = len(line_rows) + 1
                    row = dict.fromkeys(_LINE_COLUMNS)
                    row.update(id=lid, line_key=key, **facts, created_at=now, updated_at=now)
                    row["modalities"] = _add_member("", facts.get("modalities"), 128)
                    row["devices"] = ""
                    line_rows.append(row)
                else:
                    row = line_rows[lid - 1]
                    for k, val in facts.items():
                        if k == "line_date":
                            if val and (not row[k] or val < row[k]):
                                row[k] = val
                        elif k == "modalities":
                            row[k] = _add_member(row[k], val, 128)
                        elif val and not row.get(k):
                            row[k] = val
                return lid

            step_study: dict[str, int] = {}
            for st in steps:
                kind, value = _line_kind(
                    st["accession_number"],
                    st["requested_procedure_id"],
                    st["scheduled_procedure_step_id"],
                    st["study_instance_uid"],
                )
                if not value:
                    kind, value = "mpps", st["sop_instance_uid"]
                lid = line_for(line_key(kind, value), self._step_facts(st, kind))
                members.append({"line_fk": lid, "kind": "mpps", "uid": st["sop_instance_uid"]})
                if st["study_instance_uid"]:
                    step_study.setdefault(st["study_instance_uid"], lid)
            for s in study_rows:
                kind, value = _line_kind(s["accession_number"], s["requested_procedure_id"], None, "")
                facts = {
                    "key_source": _KEY_SOURCES[kind or "study"],
                    "accession_number": s["accession_number"],
                    "requested_procedure_id": s["requested_procedure_id"],
                    "line_date": s["study_date"],
                    "patient_id": s["patient_id"],
                    "issuer_of_patient_id": s["issuer_of_patient_id"],
                    "other_patient_ids": s["other_patient_ids"],
                    "description": s["study_description"],
                    "description_key": fold(s["study_description"] or "")[:256] or None,
                }
                if value:
                    lid = line_for(line_key(kind, value), facts)
                elif s["study_instance_uid"] in step_study:
                    lid = step_study[s["study_instance_uid"]]
                    line_for(line_rows[lid - 1]["line_key"], facts)
                else:
                    lid = line_for(line_key("study", s["study_instance_uid"]), facts)
                study_line[s["id"]] = lid
                study_uid[s["id"]] = s["study_instance_uid"]
                study_by_uid[s["study_instance_uid"]] = lid
                members.append({"line_fk": lid, "kind": "study", "uid": s["study_instance_uid"]})
            series_out = []
            for n, se in enumerate(series_rows, 1):
                lid = study_line[se["study_fk"]]
                row = line_rows[lid - 1]
                row["modalities"] = _add_member(row["modalities"], se["modality"], 128)
                for d in (se["device_serial_number"], se["station_name"]):
                    row["devices"] = _add_member(row["devices"], d, 1024)
                out = {k: se[k] for k in se if k != "study_fk"}
                out.update(id=n, line_fk=lid, study_instance_uid=study_uid[se["study_fk"]])
                series_out.append(out)
            sql.bulk_insert_lines(conn, line_rows, members, series_out)
        log.info("appraisal lines rebuilt: %d lines, %d series", len(line_rows), len(series_out))
        return len(line_rows)

    def rebuild_lines_if_needed(self) -> bool:
        """Rebuild the lines when the line table is empty and the index is not (after upgrade)."""
        with self.db.read() as conn:
            needed = sql.lines_missing(conn)
        if needed:
            self.rebuild_lines()
        return needed

    # ------------------------------------------------------------------ records

    def parse_filter(self, params: dict[str, str]) -> tuple[sql.LineFilter, bool]:
        """Query parameters -> filter; the flag is False when nothing can match (another facility)."""

        def date(name: str) -> str | None:
            value = (params.get(name) or "").strip()
            if not value:
                return None
            value = normalise_date(value)
            if not re.fullmatch(r"\d{8}", value):
                raise InvalidQuery(f"{name} must be a date YYYY-MM-DD or YYYYMMDD, got {params[name]!r}")
            return value

        description_keys: tuple[str, ...] | None = None
        procedure_codes: tuple[str, ...] | None = None
        code = (params.get("service_code") or "").strip()
        if code:
            description_keys = tuple(fold(d) for d in self.registers.descriptions_for(code))
            procedure_codes = tuple(self.registers.procedure_codes_for(code))
        facility = (params.get("facility") or "").strip()
        flt = sql.LineFilter(
            date_from=date("from"),
            date_to=date("to"),
            modality=(params.get("modality") or "").strip() or None,
            device=(params.get("device") or "").strip() or None,
            accession=(params.get("accession") or "").strip() or None,
            patient_id=(params.get("patient_id") or "").strip() or None,
            description_keys=description_keys,
            procedure_codes=procedure_codes,
        )
        return flt, not facility or facility == self.settings.facility_code

    def list_records(
        self, params: dict[str, str], origin: Origin, *, cursor: str | None = None, limit: int | None = None
    ) -> RecordPage:
        """One page of records matching the query parameters (keyset paging by an opaque cursor)."""
        flt, possible = self.parse_filter(params)
        limit = self._limit(limit)
        after = _decode_cursor(cursor)
        page = self._page(flt, after, limit) if possible else ([], None)
        self._audit(origin, "records.list", params, len(page[0]))
        return RecordPage(records=page[0], next_cursor=page[1])

    def get_record(self, record_id: str, origin: Origin, *, what: str = "records.get") -> dict[str, Any]:
        """One record by its id (``acc:...``, ``rp:...``, ``sps:...``, ``study:...``, ``mpps:...``).

        A bare Study Instance UID is accepted too and gives the record of the line holding that
        study. Raises NotFound.
        """
        key = record_id.strip()
        if is_valid_uid(key):
            with self.db.read() as conn:
                key = sql.line_id_of_study(conn, key) or ""
        records: list[dict[str, Any]] = []
        if key and _LINE_KEY.fullmatch(key):
            records, _ = self._page(sql.LineFilter(line_keys=(key,)), 0, 1)
        self._audit(origin, what, {"id": record_id}, len(records))
        if not records:
            raise NotFound(f"no appraisal record {record_id[:80]!r}")
        return records[0]

    def iter_records(self, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Every record matching the parameters (for exports), page by page.

        The parameters are checked at once (InvalidQuery); records are built as they are read.
        """
        flt, possible = self.parse_filter(params)
        return self._records(flt, possible)

    def _records(self, flt: sql.LineFilter, possible: bool) -> Iterator[dict[str, Any]]:
        if not possible:
            return
        builder = _Builder(self)
        after = 0
        while True:
            records, cursor = self._page(flt, after, EXPORT_PAGE, builder)
            yield from records
            if cursor is None:
                return
            after = _decode_cursor(cursor)

    def _limit(self, limit: int | None) -> int:
        if limit is None:
            return self.settings.default_limit
        if limit < 1:
            raise InvalidQuery("limit must be a positive integer")
        return min(limit, self.settings.max_limit)

    def _audit(
        self, origin: Origin, what: str, params: dict[str, Any], count: int, *, complete: bool = True
    ) -> None:
        """Record an access event; ``complete=False`` marks an export the client did not take in full."""
        filters = {k: v for k, v in params.items() if v not in (None, "")}
        details: dict[str, Any] = {"request": what, "filters": filters, "count": count}
        if not complete:
            details["complete"] = False
        with self.db.write() as conn:
            repo.add_event(conn, "appraisal.access", self.clock(), origin, details=details)
        log.info(
            "appraisal %s by %s@%s filters=%s count=%d%s",
            what,
            origin.user or "-",
            origin.address,
            json.dumps(filters, ensure_ascii=False),
            count,
            "" if complete else " (incomplete)",
        )

    def _page(
        self, flt: sql.LineFilter, after: int, limit: int, builder: _Builder | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        with _gc_paused(), self.db.read() as conn:
            lines = sql.list_lines(conn, flt, after, limit + 1)
            more = len(lines) > limit
            lines = lines[:limit]
            rows = sql.page_rows(conn, flt, lines[0]["id"] - 1, lines[-1]["id"]) if lines else None
        if rows is None:
            return [], None
        build = (builder or _Builder(self)).record
        empty: list[dict[str, Any]] = []
        studies_of, series_of, steps_of = rows.studies, rows.series, rows.steps
        with _gc_paused():
            records = [
                build(
                    ln,
                    studies_of.get(ln["id"], empty),
                    series_of.get(ln["id"], empty),
                    steps_of.get(ln["id"], empty),
                )
                for ln in lines
            ]
        return records, (_encode_cursor(lines[-1]["id"]) if more else None)

    # ------------------------------------------------------------------ device clocks

    def device_clocks(self, params: dict[str, str], origin: Origin) -> dict[str, Any]:
        """Observed clock offsets per device over a window of receipt dates (facts, no verdict).

        Each series gives one sample: its last image acquisition time on the device minus the
        time the archive received that image. Per device: the median and the latest sample, the
        time-synchronised flags the device wrote (AcquisitionTimeSynchronized, PS3.3 C.7.4.1.1.1)
        and whether the offsets are beyond the configured tolerance.
        """
        flt, _ = self.parse_filter({k: v for k, v in params.items() if k in ("from", "to")})
        now = self.clock()
        start_day = flt.date_from or (now.astimezone(VIETNAM) - timedelta(days=30)).strftime("%Y%m%d")
        lo = datetime.strptime(start_day, "%Y%m%d").replace(tzinfo=VIETNAM)
        hi = (
            datetime.strptime(flt.date_to, "%Y%m%d").replace(tzinfo=VIETNAM) + timedelta(days=1)
            if flt.date_to
            else None
        )
        with _gc_paused(), self.db.read() as conn:
            rows = sql.device_series(conn, lo.astimezone(UTC), hi.astimezone(UTC) if hi else None)
        tol = self.settings.clock_tolerance_seconds
        assumed = _assumed(self.settings)
        device_filter = (params.get("device") or "").strip()
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        for s in rows:
            if device_filter and device_filter not in (s["device_serial_number"], s["station_name"]):
                continue
            key = (
                s["modality"],
                s["manufacturer"],
                s["manufacturer_model_name"],
                s["device_serial_number"],
                s["station_name"],
            )
            d = out.get(key)
            if d is None:
                d = out[key] = {
                    "modality": s["modality"],
                    "manufacturer": s["manufacturer"],
                    "manufacturer_model_name": s["manufacturer_model_name"],
                    "device_serial_number": s["device_serial_number"],
                    "station_name": s["station_name"],
                    "sending_ae_titles": [],
                    "_offsets": [],
                    "_sync": set(),
                    "_tz": set(),
                    "time_source": None,
                    "series_count": 0,
                }
            d["series_count"] += 1
            d["sending_ae_titles"] = _names(*d["sending_ae_titles"], s["ae_min"], s["ae_max"])
            d["_sync"].update(v for v in (s["sync_min"], s["sync_max"]) if v)
            d["_tz"].update(v for v in (s["tz_min"], s["tz_max"]) if v)
            d["time_source"] = d["time_source"] or s["time_source"]
            _first, last, _src, _tzs = series_times(s, self.device_tz, assumed)
            r_last = _as_utc(s["last_received"])
            if last and r_last:
                d["_offsets"].append((r_last, round((last - r_last).total_seconds(), 1)))
        devices = []
        for d in out.values():
            offsets = d.pop("_offsets")
            sync = d.pop("_sync")
            tz = sorted(d.pop("_tz"))
            values = [o for _t, o in offsets]
            median = statistics.median(values) if values else None
            latest = offsets[-1] if offsets else None
            devices.append(
                {
                    **d,
                    "machine_code": self.registers.machine_code(
                        d["device_serial_number"], d["station_name"]
                    ).current
                    or None,
                    "clock": {
                        "samples": len(values),
                        "clock_offset_median_seconds": median,
                        "clock_offset_latest_seconds": latest[1] if latest else None,
                        "latest_received_at": iso(latest[0]) if latest else None,
                        "clock_offset_min_seconds": min(values) if values else None,
                        "clock_offset_max_seconds": max(values) if values else None,
                        "clock_offset_basis": OFFSET_BASIS,
                        "tolerance_seconds": tol,
                        "clock_offset_beyond_tolerance": abs(median) > tol if median is not None else None,
                        "latest_clock_offset_beyond_tolerance": abs(latest[1]) > tol if latest else None,
                        "acquisition_time_synchronized": "/".join(sorted(sync)) or None,
                        "time_synchronised": (True if sync == {"Y"} else False if "N" in sync else None),
                        "timezone_offsets_from_utc": tz,
                    },
                }
            )
        self._audit(origin, "devices.list", params, len(devices))
        return {
            "label": self.label,
            "window": {"received_from": iso(lo), "received_before": iso(hi) if hi else None},
            "count": len(devices),
            "devices": devices,
        }

    # ------------------------------------------------------------------ exports

    def _header(self, params: dict[str, str], now: datetime) -> dict[str, str]:
        return {
            "loai": "PACS_EXTRACT",
            "ghi_chu": f"{EXTRACT_NOTE_VI} / {EXTRACT_NOTE_EN}",
            "ma_cskcb": self.settings.facility_code,
            "ma_nhan": self.settings.label_code,
            "nhan_vi": self.settings.label_vi,
            "nhan_en": self.settings.label_en,
            "thoi_diem_trich_xuat": now.astimezone(VIETNAM).isoformat(),
            "bo_loc": json.dumps({k: v for k, v in params.items() if v}, ensure_ascii=False),
            "truong": FIELD_NOTE,
        }

    def export_csv(self, params: dict[str, str], origin: Origin) -> str:
        """XML3-shaped CSV (one row per record), the label and extract notice in ``#`` header lines."""
        return b"".join(self.stream_csv(params, origin)).decode("utf-8")

    def export_xml(self, params: dict[str, str], origin: Origin) -> bytes:
        """XML3-shaped fragment (``CHI_TIET_DVKT`` per record) under a root marked as a PACS extract."""
        return b"".join(self.stream_xml(params, origin))

    def stream_csv(self, params: dict[str, str], origin: Origin) -> Iterator[bytes]:
        """:meth:`export_csv` as UTF-8 chunks written while the records are read.

        The parameters are checked now (InvalidQuery); the first chunk comes after the first page
        of records, so an index failure surfaces before anything is sent. The access is audited
        when the stream ends, with the number of rows sent (and ``complete: false`` if cut short).
        """
        flt, possible = self.parse_filter(params)
        header = self._header(params, self.clock())
        return self._csv_chunks(params, origin, header, self._records(flt, possible))

    def stream_xml(self, params: dict[str, str], origin: Origin) -> Iterator[bytes]:
        """:meth:`export_xml` as UTF-8 chunks written while the records are read (as :meth:`stream_csv`)."""
        flt, possible = self.parse_filter(params)
        header = self._header(params, self.clock())
        return self._xml_chunks(params, origin, header, self._records(flt, possible))

    def _csv_chunks(
        self,
        params: dict[str, str],
        origin: Origin,
        header: dict[str, str],
        records: Iterator[dict[str, Any]],
    ) -> Iterator[bytes]:
        out = io.StringIO()
        for key, value in header.items():
            out.write(f"# {key}: {value}\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_FIELDS)
        n, done = 0, False
        try:
            for n, rec in enumerate(records, 1):
                row = _claim_row(rec, n)
                writer.writerow([row[k] for k in CSV_FIELDS])
                if n % EXPORT_CHUNK == 0:
                    yield out.getvalue().encode("utf-8")
                    out.seek(0)
                    out.truncate()
            yield out.getvalue().encode("utf-8")
            done = True
        finally:
            self._audit(origin, "export.csv", params, n, complete=done)

    def _xml_chunks(
        self,
        params: dict[str, str],
        origin: Origin,
        header: dict[str, str],
        records: Iterator[dict[str, Any]],
    ) -> Iterator[bytes]:
        root = ET.Element(
            "PACS_TRICH_XUAT", {k: v for k, v in header.items() if k not in ("nhan_vi", "nhan_en")}
        )
        label = ET.SubElement(root, "NHAN", {"MA": self.settings.label_code})
        ET.SubElement(label, "VI").text = self.settings.label_vi
        ET.SubElement(label, "EN").text = self.settings.label_en
        body = ET.SubElement(ET.SubElement(root, "CHITIEU_CHITIET_DVKT_VTYT"), "DSACH_CHI_TIET_DVKT")
        n, done = 0, False
        try:
            first = next(records, None)
            if first is None:
                yield ET.tostring(root, encoding="utf-8", xml_declaration=True)
                done = True
                return
            # the root, label and list elements as ElementTree writes them, records spliced in
            ET.SubElement(body, _XML_SLOT)
            head, tail = ET.tostring(root, encoding="unicode").split(f"<{_XML_SLOT} />")
            parts = [_XML_DECLARATION, head]
            for n, rec in enumerate(itertools.chain((first,), records), 1):
                parts.append(_xml_item(_claim_row(rec, n)))
                if n % EXPORT_CHUNK == 0:
                    yield "".join(parts).encode("utf-8", "xmlcharrefreplace")
                    parts = []
            parts.append(tail)
            yield "".join(parts).encode("utf-8", "xmlcharrefreplace")
            done = True
        finally:
            self._audit(origin, "export.xml", params, n, complete=done)

    def record_html(self, record_id: str, origin: Origin) -> str:
        """A printable HTML view of one record (no images, no full header)."""
        rec = self.get_record(record_id, origin, what="records.html")
        return render_html(rec)


# ---------------------------------------------------------------------- records


_NO_SERVICE = "service code not found in the service register: MA_DICH_VU left empty"
_NO_IMAGES = "images: none yet (no image of this service line is in the archive)"
_NO_MA_LK = "MA_LK (episode key) comes from the HIS and is not known to the PACS"
_MPPS_CODE = "ProcedureCodeSequence (MPPS)"
_SPAN_BASIS = "first to last image acquisition time written by the device"
_RECEIPT_SOURCE = "archive receive log (instances received_at, events instance.stored)"
_STEP_START_SOURCE = "PerformedProcedureStepStartDate/Time (0040,0244/0245)"
_STEP_END_SOURCE = "PerformedProcedureStepEndDate/Time (0040,0250/0251)"


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_resume = False
_gc_since = 0.0
#: Longest stretch without a collection while overlapping requests keep the collector paused.
GC_PAUSE_LIMIT = 5.0
_monotonic = time.monotonic
_collect = gc.collect


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a page of records is fetched and built.

    A page allocates tens of thousands of small dicts and lists without reference cycles; each
    700 allocations would otherwise start a collection, and the older generations scan the whole
    heap (half the build time of a page of 1,000). Reference counting still frees everything;
    collection resumes when the last concurrent page is done, and if overlapping requests keep
    it paused longer than :data:`GC_PAUSE_LIMIT` seconds, the one finishing then collects.
    """
    global _gc_pauses, _gc_resume, _gc_since
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_resume = gc.isenabled()
            _gc_since = _monotonic()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        collect = False
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0:
                if _gc_resume:
                    gc.enable()
            elif _gc_resume and _monotonic() - _gc_since > GC_PAUSE_LIMIT:
                _gc_since = _monotonic()
                collect = True
        if collect:
            _collect()


def _assumed(settings: AppraisalSettings) -> str:
    return f"assumed {settings.device_utc_offset} ([appraisal] device_utc_offset)"


def series_times(
    s: dict[str, Any], device_tz: timezone, assumed: str
) -> tuple[datetime | None, datetime | None, str | None, str | None]:
    """First/last acquisition of a series from the best source present (domain notes table).

    Returns (first, last, attribute used, where the offset came from); ``assumed`` names the
    configured device offset used when the images carry none.
    """
    tz = parse_offset(s["tz_min"]) if s["tz_min"] and s["tz_min"] == s["tz_max"] else None
    default = tz or device_tz
    series_dt = (s["series_date"] or "") + (s["series_time"] or "") if s["series_date"] else None
    for name, lo, hi in (
        ("AcquisitionDateTime", s["min_adt"], s["max_adt"]),
        ("AcquisitionDate+AcquisitionTime", s["min_ad_at"], s["max_ad_at"]),
        ("ContentDate+ContentTime", s["min_cd_ct"], s["max_cd_ct"]),
        ("SeriesDate+SeriesTime", series_dt, series_dt),
    ):
        if not lo or not hi:
            continue
        first = parse_dicom_datetime(lo, default)
        last = parse_dicom_datetime(hi, default)
        if first and last:
            if first[1]:
                tz_source = "offset in AcquisitionDateTime"
            elif tz:
                tz_source = "TimezoneOffsetFromUTC"
            else:
                tz_source = assumed
            return first[0], last[0], name, tz_source
    return None, None, None, None


class _Builder:
    """Builds the records of one request (a page, one record or an export).

    Register look-ups (service, machine code, staff licence, reference times) are made once per
    distinct key for the whole request; everything else is a straight pass over the rows.
    """

    def __init__(self, svc: Appraisal) -> None:
        self.regs = svc.registers
        self.settings = svc.settings
        self.tol = svc.settings.clock_tolerance_seconds
        self.device_tz = svc.device_tz
        self.assumed = _assumed(svc.settings)
        self.label = svc.label
        self.facility = svc.settings.facility_code or None
        self._services: dict[tuple[str | None, str | None], tuple[Any, bool]] = {}
        self._machines: dict[tuple[str | None, str | None], Any] = {}
        self._licences: dict[str, str | None] = {}
        self._refs: dict[str, list[Any]] = {}
        self._patients: dict[tuple[str | None, ...], dict[str, Any]] = {}

    # ------------------------------------------------------------------ cached look-ups

    def service(self, procedure_code: str | None, description: str | None) -> tuple[Any, bool]:
        """(service entry or None, whether it was found by procedure code)."""
        key = (procedure_code, description)
        got = self._services.get(key)
        if got is None:
            entry = self.regs.service(procedure_code, None)
            got = (entry, True) if entry is not None else (self.regs.service(None, description), False)
            self._services[key] = got
        return got

    def machine_code(self, serial: str | None, station: str | None) -> Any:
        key = (serial, station)
        code = self._machines.get(key)
        if code is None:
            code = self._machines[key] = self.regs.machine_code(serial, station)
        return code

    def people(self, names: list[str]) -> list[dict[str, Any]]:
        out = []
        for n in names:
            if n in self._licences:
                code = self._licences[n]
            else:
                code = self._licences[n] = self.regs.licence(n)
            out.append({"dicom_name": n, "licence_code": code})
        return out

    def patient(self, patient_id: str | None, issuer: str | None, others: str | None) -> dict[str, Any]:
        key = (patient_id, issuer, others)
        got = self._patients.get(key)
        if got is None:
            got = self._patients[key] = _patient_ids(patient_id, issuer, others)
        return dict(got)

    def references(self, code: str | None) -> list[dict[str, Any]]:
        if not code:
            return []
        refs = self._refs.get(code)
        if refs is None:
            refs = self._refs[code] = self.regs.reference_times.get(code, [])
        return [
            {
                "service_code": ref.service_code,
                "reference_minutes": ref.reference_minutes,
                "source": ref.source,
                "note": ref.note,
                "reference_only": True,
            }
            for ref in refs
        ]

    # ------------------------------------------------------------------ parts

    def step(self, row: dict[str, Any]) -> tuple[dict[str, Any], datetime | None, dict[str, Any]]:
        """One procedure step: (its record entry, its start, its stored attributes)."""
        attrs = json.loads(row["attributes"] or "{}")
        start = parse_dicom_datetime((row["start_date"] or "") + (row["start_time"] or ""), self.device_tz)
        end = (
            parse_dicom_datetime((row["end_date"] or "") + (row["end_time"] or ""), self.device_tz)
            if row["end_date"]
            else None
        )
        entry = {
            "sop_instance_uid": row["sop_instance_uid"],
            "status": row["status"],
            "start": iso(start[0]) if start else None,
            "start_source": _STEP_START_SOURCE,
            "end": iso(end[0]) if end else None,
            "end_source": _STEP_END_SOURCE,
            "performed_station_ae_title": row["performed_station_ae_title"],
            "performed_station_name": row["performed_station_name"],
            "modality": row["modality"],
            "accession_number": row["accession_number"],
            "requested_procedure_id": row["requested_procedure_id"],
            "scheduled_procedure_step_id": row["scheduled_procedure_step_id"],
            "procedure_code": row["procedure_code"],
            "performed_series": attrs.get("performed_series", []),
            "sending_ae_title": row["calling_ae"],
            "received_at": _utc_iso(row["created_at"]),
            "updated_at": _utc_iso(row["updated_at"]),
        }
        return entry, (start[0] if start else None), attrs

    def device(
        self, s: dict[str, Any], sending: list[str], tz_source: str | None, notes: list[str]
    ) -> dict[str, Any]:
        code = self.machine_code(s["device_serial_number"], s["station_name"])
        notes.extend(n for n in code.notes if n not in notes)
        return {
            "modality": s["modality"],
            "manufacturer": s["manufacturer"],
            "manufacturer_model_name": s["manufacturer_model_name"],
            "device_serial_number": s["device_serial_number"],
            "station_name": s["station_name"],
            "software_versions": s.get("software_versions"),
            "sending_ae_titles": sending,
            "machine_code": {
                "current": code.current or None,
                "current_format": "3176/QĐ-BYT XX.n.Z",
                "previous": code.previous or None,
                "previous_format": "4750/QĐ-BYT XX.n.YYYYY.Z",
                "in_device_register": code.registered,
            },
            "clock": {
                "timezone_offset_from_utc": None,
                "timezone_source": tz_source,
                "acquisition_time_synchronized": None,
                "time_synchronised": None,
                "time_source": s["time_source"],
                "clock_offset_seconds": None,
                "clock_offset_basis": OFFSET_BASIS,
                "tolerance_seconds": self.tol,
                "clock_offset_beyond_tolerance": None,
                "device_clock_ahead_of_archive": None,
            },
            "series": [],
        }

    # ------------------------------------------------------------------ one record

    def record(
        self,
        line: dict[str, Any],
        study_rows: list[dict[str, Any]],
        series_rows: list[dict[str, Any]],
        steps: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """The record of one service line from its line, study, series and MPPS rows."""
        notes: list[str] = []
        tol = self.tol
        study = study_rows[0] if study_rows else None

        # --- service (procedure code from the images or the MPPS, else the study description)
        procedure_code = line["procedure_code"]
        code_source = line["procedure_code_source"]
        if not procedure_code:
            for st in steps:
                if st["procedure_code"]:
                    procedure_code, code_source = st["procedure_code"], _MPPS_CODE
                    break
        description = (
            next((s["study_description"] for s in study_rows if s["study_description"]), None)
            or line["description"]
        )
        service, by_code = self.service(procedure_code, description)
        service_source = code_source if by_code else ("StudyDescription" if service else None)
        if service is None:
            notes.append(_NO_SERVICE)

        # --- acquisition times per series
        series_out: list[dict[str, Any]] = []
        devices: dict[tuple[Any, ...], dict[str, Any]] = {}
        first_acq: tuple[datetime, str, str] | None = None
        last_acq: tuple[datetime, str, str] | None = None
        first_received: datetime | None = None
        last_received: datetime | None = None
        for s in series_rows:
            first, last, source, tz_source = series_times(s, self.device_tz, self.assumed)
            r_first, r_last = s["first_received"], s["last_received"]
            if r_first is not None and (type(r_first) is not datetime or r_first.tzinfo is not UTC):
                r_first = _as_utc(r_first)
            if r_last is not None and (type(r_last) is not datetime or r_last.tzinfo is not UTC):
                r_last = _as_utc(r_last)
            for r in (r_first, r_last):
                if r:
                    if first_received is None or r < first_received:
                        first_received = r
                    if last_received is None or r > last_received:
                        last_received = r
            if first and last:
                if first_acq is None or first < first_acq[0]:
                    first_acq = (first, source, tz_source)  # type: ignore[assignment]
                if last_acq is None or last > last_acq[0]:
                    last_acq = (last, source, tz_source)  # type: ignore[assignment]
            series_out.append(
                {
                    "series_instance_uid": s["series_instance_uid"],
                    "study_instance_uid": s["study_instance_uid"],
                    "modality": s["modality"],
                    "series_date": s["series_date"],
                    "series_time": s["series_time"],
                    "instance_count": s["instance_count"],
                    "first_acquisition": iso(first),
                    "last_acquisition": iso(last),
                    "acquisition_time_source": source,
                    "received_first": iso(r_first),
                    "received_last": iso(r_last),
                }
            )
            sending = _names(s["ae_min"], s["ae_max"])
            key = (
                s["modality"],
                s["manufacturer"],
                s["manufacturer_model_name"],
                s["device_serial_number"],
                s["station_name"],
                tuple(sending),
            )
            dev = devices.get(key)
            if dev is None:
                dev = devices[key] = self.device(s, sending, tz_source, notes)
            dev["series"].append(s["series_instance_uid"])
            _clock_facts(dev["clock"], s, last, r_last, tol)
        if not series_rows:
            notes.append(_NO_IMAGES)

        # --- procedure steps
        steps_out = []
        step_start: datetime | None = None
        performing = _names(*(s["performing_physician_name"] for s in series_rows))
        operators = _names(*(s["operators_name"] for s in series_rows))
        for row in steps:
            entry, start, attrs = self.step(row)
            steps_out.append(entry)
            if start and (step_start is None or start < step_start):
                step_start = start
            performing = _names("\\".join(performing), *attrs.get("performing_physicians", []))
            operators = _names("\\".join(operators), *attrs.get("operators", []))

        # --- people
        people = {
            "referring": self.people(
                _names(
                    *(
                        n
                        for s in study_rows
                        for n in (s["referring_physician_name"], s["requesting_physician"])
                    )
                )
            ),
            "performing": self.people(performing),
            "operators": self.people(operators),
            "reading": self.people(_names(*(s["name_of_physicians_reading_study"] for s in study_rows))),
        }
        unknown_staff = [p["dicom_name"] for group in people.values() for p in group if not p["licence_code"]]
        if unknown_staff:
            notes.append("not in the staff register (licence code left empty): " + "; ".join(unknown_staff))

        # --- ordering checks (facts only; order and result times are not known to the PACS)
        fa = first_acq[0] if first_acq else None
        la = last_acq[0] if last_acq else None
        # each instant formatted once (then shown in the stamps, span, receipt and checks)
        fa_iso, la_iso, ss_iso = iso(fa), iso(la), iso(step_start)
        fr_iso, lr_iso = iso(first_received), iso(last_received)
        checks = [
            _check(
                "order_time <= first_acquisition",
                ("order_time", None, None),
                ("first_acquisition", fa, fa_iso),
            ),
            _check(
                "first_acquisition <= last_acquisition",
                ("first_acquisition", fa, fa_iso),
                ("last_acquisition", la, la_iso),
            ),
            _check(
                "last_acquisition <= result_time",
                ("last_acquisition", la, la_iso),
                ("result_time", None, None),
            ),
            _check(
                "first_acquisition <= first_received_at_archive",
                ("first_acquisition", fa, fa_iso),
                ("first_received_at_archive", first_received, fr_iso),
            ),
        ]
        if step_start is not None:
            checks.append(
                _check(
                    "procedure_step_start <= first_acquisition",
                    ("procedure_step_start", step_start, ss_iso),
                    ("first_acquisition", fa, fa_iso),
                )
            )

        code = service.service_code if service else None
        machine_codes = [d["machine_code"] for d in devices.values()]
        span = None
        if fa and la:
            span = {
                "from": fa_iso,
                "to": la_iso,
                "seconds": round((la - fa).total_seconds(), 1),
                "basis": _SPAN_BASIS,
            }
        device_start = step_start or fa
        performer_codes = [
            p["licence_code"] for p in people["performing"] + people["operators"] if p["licence_code"]
        ]
        orderer_codes = [p["licence_code"] for p in people["referring"] if p["licence_code"]]
        src = study if study is not None else line
        pids = self.patient(src["patient_id"], src["issuer_of_patient_id"], src["other_patient_ids"])
        notes.append(_NO_MA_LK)
        has_code = bool(line["procedure_code"])
        return {
            "id": line["line_key"],
            "label": dict(self.label),
            "facility_code": self.facility,
            "service_line": {
                "key_source": line["key_source"],
                "accession_number": line["accession_number"],
                "requested_procedure_id": line["requested_procedure_id"],
                "scheduled_procedure_step_id": line["scheduled_procedure_step_id"],
                "study_instance_uids": [s["study_instance_uid"] for s in study_rows],
                "images": "received" if series_rows else "none yet",
            },
            "service": {
                "service_code": code,
                "service_name": service.service_name if service else None,
                "source": service_source,
                "procedure_code": procedure_code,
                "procedure_coding_scheme": line["procedure_coding_scheme"] if has_code else None,
                "procedure_code_meaning": line["procedure_code_meaning"] if has_code else None,
                "procedure_code_source": code_source,
                "study_description": description,
            },
            "patient": pids,
            "studies": [
                {
                    "study_instance_uid": s["study_instance_uid"],
                    "study_id": s["study_id"],
                    "study_date": s["study_date"],
                    "study_time": s["study_time"],
                    "study_description": s["study_description"],
                    "accession_number": s["accession_number"],
                    "number_of_series": s["number_of_study_related_series"],
                    "number_of_instances": s["number_of_study_related_instances"],
                }
                for s in study_rows
            ],
            "series": series_out,
            "procedure_steps": steps_out,
            "device_timestamps": {
                "first_acquisition": _stamp(first_acq, fa_iso),
                "last_acquisition": _stamp(last_acq, la_iso),
                "procedure_step_start": ss_iso,
            },
            "device_acquisition_span": span,
            "archive_receipt": {
                "first_received": fr_iso,
                "last_received": lr_iso,
                "source": _RECEIPT_SOURCE,
            },
            "devices": list(devices.values()),
            "people": people,
            "ordering_checks": checks,
            "reference_times": self.references(code),
            "claim_fields": {
                "MA_LK": "",
                "MA_DICH_VU": code or "",
                "TEN_DICH_VU": service.service_name if service else "",
                "MA_BAC_SI": ";".join(orderer_codes),
                "NGUOI_THUC_HIEN": ";".join(performer_codes),
                "NGAY_YL": "",
                "NGAY_TH_YL": claim_time(device_start),
                "NGAY_KQ": "",
                "MA_MAY": ";".join(m["current"] for m in machine_codes if m["current"]),
                "PACS_MA_MAY_4750": ";".join(m["previous"] for m in machine_codes if m["previous"]),
                "TG_THIET_BI_BAT_DAU": claim_time(fa),
                "TG_THIET_BI_KET_THUC": claim_time(la),
            },
            "notes": notes,
        }


# ---------------------------------------------------------------------- helpers


def _step_values(ds: Dataset, *, create: bool, previous: dict[str, Any] | None = None) -> dict[str, Any]:
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
            values["study_instance_uid"] = first["study_instance_uid"]
            values["accession_number"] = first["accession_number"]
            values["requested_procedure_id"] = first["requested_procedure_id"]
            values["scheduled_procedure_step_id"] = first["scheduled_procedure_step_id"]
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
        attrs["performing_physicians"] = _names(
            *(text("PerformingPhysicianName", it, 324) for it in series_items)
        )
        attrs["operators"] = _names(*(text("OperatorsName", it, 324) for it in series_items))
    values["attributes"] = json.dumps(attrs, ensure_ascii=False)
    return values


def _stamp(value: tuple[datetime, str, str] | None, text: str | None) -> dict[str, Any] | None:
    """A device timestamp (``text`` is its ISO form) with the attribute and offset it came from."""
    if value is None:
        return None
    return {"value": text, "source": value[1], "timezone_source": value[2]}


def _check(
    name: str,
    left: tuple[str, datetime | None, str | None],
    right: tuple[str, datetime | None, str | None],
) -> dict[str, Any]:
    """An ordering check: consistent / inconsistent / unknown, with the timestamps compared.

    Each side is (name, instant, its ISO form).
    """
    a, b = left[1], right[1]
    result = "unknown" if a is None or b is None else ("consistent" if a <= b else "inconsistent")
    return {"check": name, "result": result, "timestamps": {left[0]: left[2], right[0]: right[2]}}


def _claim_row(rec: dict[str, Any], n: int) -> dict[str, Any]:
    c = rec["claim_fields"]
    first = rec["device_timestamps"]["first_acquisition"]
    return {
        "STT": n,
        **{k: c[k] for k in CSV_FIELDS if k in c},
        "PACS_NGUON_TG_THIET_BI": first["source"] if first else "",
        "PACS_SO_PHIEU_CHI_DINH": rec["service_line"]["accession_number"] or "",
        "PACS_MA_BAN_GHI": rec["id"],
        "PACS_STUDY_UID": ";".join(rec["service_line"]["study_instance_uids"]),
        "MA_BN": rec["patient"]["patient_id"] or "",
        "MA_THE_BHYT": rec["patient"]["insurance_card_code"] or "",
        "SO_CCCD": rec["patient"]["citizen_id"] or "",
        "PACS_MA_NHAN": rec["label"]["code"],
        "PACS_GHI_CHU": " | ".join(rec["notes"]),
    }


_XML_DECLARATION = "<?xml version='1.0' encoding='utf-8'?>\n"
_XML_SLOT = "PACS_RECORDS_HERE"


def _xml_item(row: dict[str, Any]) -> str:
    """One ``CHI_TIET_DVKT`` element, byte for byte as ElementTree serialises it."""
    out = ["<CHI_TIET_DVKT>"]
    for k, v in row.items():
        text = str(v)
        out.append(f"<{k}>{xml_escape(text)}</{k}>" if text else f"<{k} />")
    out.append("</CHI_TIET_DVKT>")
    return "".join(out)


def _encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        after = int(data["after"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidQuery("cursor is not one this server issued") from exc
    if after < 0:
        raise InvalidQuery("cursor is not one this server issued")
    return after


def render_html(rec: dict[str, Any]) -> str:
    """Printable HTML of one record: the label first, then facts in tables."""

    def row(k: str, v: Any) -> str:
        return f"<tr><th>{escape(k)}</th><td>{escape('' if v is None else str(v))}</td></tr>"

    def table(title: str, items: dict[str, Any]) -> str:
        return f"<h2>{escape(title)}</h2><table>{''.join(row(k, v) for k, v in items.items())}</table>"

    label = rec["label"]
    parts = [
        "<!doctype html><html lang='vi'><head><meta charset='utf-8'>",
        f"<title>PACS — {escape(rec['id'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
        "th,td{border:1px solid #999;padding:2px 6px;text-align:left;vertical-align:top}"
        ".label{border:2px solid #333;padding:.5em;margin-bottom:1em}@media print{body{margin:0}}</style>",
        "</head><body>",
        f"<p><strong>{escape(EXTRACT_NOTE_VI)} / {escape(EXTRACT_NOTE_EN)}</strong></p>",
        f"<div class='label'><p><strong>{escape(label['code'])}</strong></p>"
        f"<p lang='vi'>{escape(label['vi'])}</p><p lang='en'>{escape(label['en'])}</p></div>",
        table("Dịch vụ / Service", {**rec["service_line"], **rec["service"]}),
        table("Người bệnh / Patient", rec["patient"]),
        table("Mã hồ sơ (XML3-like) / Claim-shaped fields", rec["claim_fields"]),
    ]
    stamps = rec["device_timestamps"]
    times = {
        "first_acquisition": (stamps["first_acquisition"] or {}).get("value"),
        "first_acquisition source": (stamps["first_acquisition"] or {}).get("source"),
        "last_acquisition": (stamps["last_acquisition"] or {}).get("value"),
        "last_acquisition source": (stamps["last_acquisition"] or {}).get("source"),
        "procedure_step_start": stamps["procedure_step_start"],
        "first_received (archive)": rec["archive_receipt"]["first_received"],
        "last_received (archive)": rec["archive_receipt"]["last_received"],
    }
    if rec["device_acquisition_span"]:
        times["device_acquisition_span (s)"] = rec["device_acquisition_span"]["seconds"]
    parts.append(table("Mốc thời gian thiết bị / Device timestamps", times))
    for i, step in enumerate(rec["procedure_steps"], 1):
        parts.append(table(f"MPPS {i}", {k: v for k, v in step.items() if k != "performed_series"}))
    for i, dev in enumerate(rec["devices"], 1):
        flat = {k: v for k, v in dev.items() if k not in ("machine_code", "clock", "series")}
        flat.update({f"MA_MAY {k}": v for k, v in dev["machine_code"].items()})
        flat.update({f"clock {k}": v for k, v in dev["clock"].items()})
        parts.append(table(f"Thiết bị / Device {i}", flat))
    parts.append(
        table(
            "Nhân sự / People",
            {
                f"{role}: {p['dicom_name']}": p["licence_code"] or "(not in staff register)"
                for role, group in rec["people"].items()
                for p in group
            },
        )
    )
    parts.append(
        table(
            "Thứ tự thời gian / Ordering checks",
            {c["check"]: f"{c['result']} {c['timestamps']}" for c in rec["ordering_checks"]},
        )
    )
    for ref in rec["reference_times"]:
        parts.append(table("Thời gian tham chiếu / Reference time (reference_only)", ref))
    parts.append(
        "<h2>Ghi chú / Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in rec["notes"]) + "</ul>"
    )
    parts.append("</body></html>")
    return "".join(parts)
