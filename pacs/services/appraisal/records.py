"""The record of one service line, built from its line, study, series and MPPS rows.

A record reports what the archive saw (PS3.4 Annex F steps, the device's acquisition times with
the attribute and offset each came from, receipt times, devices, people, clock facts) and orderings
between those times; it never turns a time into a judgement on the service (appraisal domain notes).

Device times never go into a field of the data standard. ``NGAY_YL`` (order time), ``NGAY_TH_YL``
(time the service was carried out) and ``NGAY_KQ`` (result time) come only from the HIS, which is
not connected yet: they are left empty and ``claim_field_sources`` says so (:data:`HIS_SOURCE`).
Device times are exported in the PACS extension fields ``TG_THIET_BI_BAT_DAU`` /
``TG_THIET_BI_KET_THUC`` (first / last image acquisition time written by the device), each with
its source; the MPPS start stays in ``device_timestamps.procedure_step_start``. A device
acquisition span that the times cannot measure (one image, SeriesDate/Time only, one acquisition
time for every image) is ``unknown`` with the reason, never 0.

Notes are written Vietnamese first, then English (``"<vi> / <en>"``), as every export shows them.
``MA_KHOA`` (department) is not known to the PACS: empty, with its source. The reading doctor
(``PACS_MA_BS_DOC_KQ``, the XML4 ``MA_BS_DOC_KQ`` as a PACS extension field of the XML3-shaped
row) is the HIS report's reporting doctor when the HIS sent one, else DICOM
NameOfPhysiciansReadingStudy, each mapped to a licence code through the staff register (never
guessed); ``claim_field_sources`` says which.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timezone
from typing import Any

from pacs.config import AppraisalSettings
from pacs.services.appraisal.clocks import (
    RECEIVE_DELAY_BASIS,
    clock_evidence,
    clock_facts,
    device_key,
    receive_delay,
)
from pacs.services.appraisal.lines import MPPS_CODE_SOURCE
from pacs.services.appraisal.people import names, patient_ids
from pacs.services.appraisal.registers import Registers
from pacs.services.appraisal.times import (
    VIETNAM,
    acquisition_span,
    as_utc,
    assumed_offset,
    claim_time,
    iso,
    ordering_check,
    parse_dicom_datetime,
    series_times,
    stamp,
    step_time,
    utc_iso,
)

_NO_SERVICE = (
    "không tìm thấy mã dịch vụ trong danh mục dịch vụ: để trống MA_DICH_VU / "
    "service code not found in the service register: MA_DICH_VU left empty"
)
_NO_IMAGES = (
    "hình ảnh: chưa có (PACS chưa nhận ảnh nào của dịch vụ này) / "
    "images: none yet (no image of this service line is in the archive)"
)
_NO_MA_LK = (
    "MA_LK (mã liên kết) do HIS cấp, PACS không có / "
    "MA_LK (episode key) comes from the HIS and is not known to the PACS"
)
_NO_STAFF = (
    "chưa có trong danh mục nhân sự (để trống mã chứng chỉ hành nghề) / "
    "not in the staff register (licence code left empty): "
)
#: Where MA_KHOA (department) would come from: the HIS, which does not send it to the PACS.
DEPARTMENT_SOURCE = (
    "chưa nhận mã khoa từ HIS: để trống / department code not received from the HIS: left empty"
)
#: Where the reading doctor came from: (Vietnamese, English).
_READER_HIS = ("bác sĩ đọc kết quả do HIS gửi", "reporting doctor sent by the HIS")
_READER_DICOM = (
    "DICOM NameOfPhysiciansReadingStudy (0008,1060)",
    "DICOM NameOfPhysiciansReadingStudy (0008,1060)",
)
_READER_CODED = ("mã qua danh mục nhân sự", "licence code through the staff register")
_READER_UNCODED = ("chưa có trong danh mục nhân sự: để trống", "not in the staff register: left empty")
_READER_NONE = (
    "HIS chưa gửi bác sĩ đọc kết quả, DICOM không có NameOfPhysiciansReadingStudy: để trống / "
    "no reporting doctor from the HIS and no NameOfPhysiciansReadingStudy in DICOM: left empty"
)
#: Register notes (pacs.services.appraisal.registers), each with its Vietnamese text.
_MACHINE_NOTES_VI = (
    (
        re.compile(r"device serial=(.*) station=(.*) is not in the device register: MA_MAY left empty"),
        "thiết bị serial={0} station={1} chưa có trong danh mục thiết bị: để trống MA_MAY",
    ),
    (
        re.compile(r"device has no serial number or asset code: MA_MAY left empty"),
        "thiết bị không có số serial hay mã tài sản: để trống MA_MAY",
    ),
    (
        re.compile(r"facility code \(MA_CSKCB\) not configured: 4750 form left empty"),
        "chưa cấu hình mã cơ sở KCB (MA_CSKCB): để trống dạng 4750",
    ),
)
_SPAN_BASIS = "first to last image acquisition time written by the device"
_RECEIPT_SOURCE = "archive receive log (instances received_at, events instance.stored)"
_STEP_START_SOURCE = "PerformedProcedureStepStartDate/Time (0040,0244/0245)"
_STEP_END_SOURCE = "PerformedProcedureStepEndDate/Time (0040,0250/0251)"
#: Where NGAY_YL, NGAY_TH_YL and NGAY_KQ come from: the HIS only (not connected: left empty).
HIS_SOURCE = "HIS (chưa kết nối / not connected): để trống / left empty"
#: ... and when the HIS sent no such time for this line (an order without a report, say).
HIS_NOT_SENT = "HIS: chưa gửi / not sent for this service line: để trống / left empty"
#: The order / result / performed time of each claim field, as the orders table keeps it.
_HIS_FIELDS = (
    ("NGAY_YL", "ordered_at", "order time"),
    ("NGAY_TH_YL", "performed_at", "time the service was carried out"),
    ("NGAY_KQ", "reported_at", "result time"),
)
HIS_TIMES = ("NGAY_YL", "NGAY_TH_YL", "NGAY_KQ")
_HIS_NOTE = (
    "NGAY_YL, NGAY_TH_YL, NGAY_KQ chỉ lấy từ HIS (chưa có y lệnh HIS cho dịch vụ này): để trống; thời "
    "gian thiết bị nằm ở TG_THIET_BI_* (trường mở rộng của PACS), không bao giờ ở trường của chuẩn dữ "
    "liệu / NGAY_YL, NGAY_TH_YL, NGAY_KQ come only from the HIS (no HIS order for this service line): left "
    "empty; device times are in TG_THIET_BI_* (PACS extension fields), never in a field of the data standard"
)
_DEVICE_TIME_FIELDS = (
    ("TG_THIET_BI_BAT_DAU", "first image acquisition time written by the device"),
    ("TG_THIET_BI_KET_THUC", "last image acquisition time written by the device"),
)


class RecordBuilder:
    """Builds the records of one request (a page, one record or an export).

    Register look-ups (service, machine code, staff licence, reference times) are made once per
    distinct key for the whole request; everything else is a straight pass over the rows.
    """

    def __init__(
        self, settings: AppraisalSettings, registers: Registers, device_tz: timezone, label: dict[str, str]
    ) -> None:
        self.regs = registers
        self.tol = settings.clock_tolerance_seconds
        self.device_tz = device_tz
        self.assumed = assumed_offset(settings)
        self.label = label
        self.facility = settings.facility_code or None
        self._services: dict[tuple[str | None, str | None], tuple[Any, bool]] = {}
        self._machines: dict[tuple[str | None, str | None], Any] = {}
        self._licences: dict[str, str | None] = {}
        self._refs: dict[str, list[Any]] = {}
        self._patients: dict[tuple[str | None, ...], dict[str, Any]] = {}
        self._codes: frozenset[str] | None = None

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

    def licence_of_his(self, value: str) -> str | None:
        """The licence code of a person the HIS named: the value itself when it is a code of the
        staff register, else the code the register gives that name; None when neither."""
        if self._codes is None:
            self._codes = frozenset(self.regs.staff.values())
        if value in self._codes:
            return value
        code = self.people([value])[0]["licence_code"]
        return str(code) if code else None

    def patient(self, patient_id: str | None, issuer: str | None, others: str | None) -> dict[str, Any]:
        key = (patient_id, issuer, others)
        got = self._patients.get(key)
        if got is None:
            got = self._patients[key] = patient_ids(patient_id, issuer, others)
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

    def step(self, row: dict[str, Any]) -> tuple[dict[str, Any], tuple[datetime, str] | None, dict[str, Any]]:
        """One procedure step: (its record entry, its start and offset source, its stored attributes)."""
        attrs = json.loads(row["attributes"] or "{}")
        start = step_time(row["start_date"], row["start_time"], self.device_tz, self.assumed)
        end = step_time(row["end_date"], row["end_time"], self.device_tz, self.assumed)
        entry = {
            "sop_instance_uid": row["sop_instance_uid"],
            "status": row["status"],
            "start": iso(start[0]) if start else None,
            "start_source": _STEP_START_SOURCE,
            "start_timezone_source": start[1] if start else None,
            "end": iso(end[0]) if end else None,
            "end_source": _STEP_END_SOURCE,
            "end_timezone_source": end[1] if end else None,
            "performed_station_ae_title": row["performed_station_ae_title"],
            "performed_station_name": row["performed_station_name"],
            "modality": row["modality"],
            "accession_number": row["accession_number"],
            "requested_procedure_id": row["requested_procedure_id"],
            "scheduled_procedure_step_id": row["scheduled_procedure_step_id"],
            "procedure_code": row["procedure_code"],
            "performed_series": attrs.get("performed_series", []),
            "sending_ae_title": row["calling_ae"],
            "received_at": utc_iso(row["created_at"]),
            "updated_at": utc_iso(row["updated_at"]),
        }
        return entry, start, attrs

    def device(
        self, s: dict[str, Any], sending: list[str], tz_source: str | None, notes: list[str]
    ) -> dict[str, Any]:
        code = self.machine_code(s["device_serial_number"], s["station_name"])
        notes.extend(n for n in map(machine_note, code.notes) if n not in notes)
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
                "receive_delay_min_seconds": None,
                "receive_delay_basis": RECEIVE_DELAY_BASIS,
                **clock_evidence(None, self.tol),
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
        orders: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The record of one service line from its line, study, series and MPPS rows, and the
        HIS orders behind it (their order, performed and result times)."""
        notes: list[str] = []
        tol = self.tol
        study = study_rows[0] if study_rows else None

        # --- service (procedure code from the images or the MPPS, else the study description)
        procedure_code = line["procedure_code"]
        code_source = line["procedure_code_source"]
        if not procedure_code:
            for st in steps:
                if st["procedure_code"]:
                    procedure_code, code_source = st["procedure_code"], MPPS_CODE_SOURCE
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
        timed_images = 0
        for s in series_rows:
            first, last, source, tz_first, tz_last = series_times(s, self.device_tz, self.assumed)
            r_first, r_last = s["first_received"], s["last_received"]
            if r_first is not None and (type(r_first) is not datetime or r_first.tzinfo is not UTC):
                r_first = as_utc(r_first)
            if r_last is not None and (type(r_last) is not datetime or r_last.tzinfo is not UTC):
                r_last = as_utc(r_last)
            for r in (r_first, r_last):
                if r:
                    if first_received is None or r < first_received:
                        first_received = r
                    if last_received is None or r > last_received:
                        last_received = r
            if first and last and source and tz_first and tz_last:
                timed_images += s["instance_count"] or 0
                if first_acq is None or first < first_acq[0]:
                    first_acq = (first, source, tz_first)
                if last_acq is None or last > last_acq[0]:
                    last_acq = (last, source, tz_last)
            delay = receive_delay(last, r_last)
            tz_source = tz_first if tz_first == tz_last else f"{tz_first} (first) / {tz_last} (last)"
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
                    "timezone_source": tz_source if source else None,
                    "received_first": iso(r_first),
                    "received_last": iso(r_last),
                    "receive_delay_seconds": delay,
                }
            )
            sending = names(s["ae_min"], s["ae_max"])
            key = (*device_key(s), tuple(sending))
            dev = devices.get(key)
            if dev is None:
                dev = devices[key] = self.device(s, sending, tz_source if source else None, notes)
            dev["series"].append(s["series_instance_uid"])
            clock_facts(dev["clock"], s, delay, tol)
        if not series_rows:
            notes.append(_NO_IMAGES)

        # --- procedure steps
        steps_out = []
        step_start: datetime | None = None
        step_start_tz: str | None = None
        performing = names(*(s["performing_physician_name"] for s in series_rows))
        operators = names(*(s["operators_name"] for s in series_rows))
        for row in steps:
            entry, start, attrs = self.step(row)
            steps_out.append(entry)
            if start and (step_start is None or start[0] < step_start):
                step_start, step_start_tz = start
            performing = names("\\".join(performing), *attrs.get("performing_physicians", []))
            operators = names("\\".join(operators), *attrs.get("operators", []))

        # --- people
        people = {
            "referring": self.people(
                names(
                    *(
                        n
                        for s in study_rows
                        for n in (s["referring_physician_name"], s["requesting_physician"])
                    )
                )
            ),
            "performing": self.people(performing),
            "operators": self.people(operators),
            "reading": self.people(names(*(s["name_of_physicians_reading_study"] for s in study_rows))),
        }
        unknown_staff = [p["dicom_name"] for group in people.values() for p in group if not p["licence_code"]]
        if unknown_staff:
            notes.append(_NO_STAFF + "; ".join(unknown_staff))

        # --- ordering checks (facts only; order and result times are not known to the PACS)
        fa = first_acq[0] if first_acq else None
        la = last_acq[0] if last_acq else None
        # each instant formatted once (then shown in the stamps, span, receipt and checks)
        fa_iso, la_iso, ss_iso = iso(fa), iso(la), iso(step_start)
        fr_iso, lr_iso = iso(first_received), iso(last_received)
        checks = [
            ordering_check(
                "order_time <= first_acquisition",
                ("order_time", None, None),
                ("first_acquisition", fa, fa_iso),
            ),
            ordering_check(
                "first_acquisition <= last_acquisition",
                ("first_acquisition", fa, fa_iso),
                ("last_acquisition", la, la_iso),
            ),
            ordering_check(
                "last_acquisition <= result_time",
                ("last_acquisition", la, la_iso),
                ("result_time", None, None),
            ),
            ordering_check(
                "first_acquisition <= first_received_at_archive",
                ("first_acquisition", fa, fa_iso),
                ("first_received_at_archive", first_received, fr_iso),
            ),
        ]
        if step_start is not None:
            checks.append(
                ordering_check(
                    "procedure_step_start <= first_acquisition",
                    ("procedure_step_start", step_start, ss_iso),
                    ("first_acquisition", fa, fa_iso),
                )
            )

        code = service.service_code if service else None
        machine_codes = [d["machine_code"] for d in devices.values()]
        span = acquisition_span(first_acq, last_acq, timed_images, (fa_iso, la_iso), _SPAN_BASIS)
        performer_codes = [
            p["licence_code"] for p in people["performing"] + people["operators"] if p["licence_code"]
        ]
        orderer_codes = [p["licence_code"] for p in people["referring"] if p["licence_code"]]
        src = study if study is not None else line
        pids = self.patient(src["patient_id"], src["issuer_of_patient_id"], src["other_patient_ids"])
        notes.append(_NO_MA_LK)
        his_times, his_sources, his_out = self.his_times(line, study_rows, orders or [])
        if not orders:
            notes.append(_HIS_NOTE)
        reader, reader_source = self.reader(his_out, people["reading"], notes)
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
                "first_acquisition": stamp(first_acq, fa_iso),
                "last_acquisition": stamp(last_acq, la_iso),
                "procedure_step_start": ss_iso,
                "procedure_step_start_source": _STEP_START_SOURCE if step_start else None,
                "procedure_step_start_timezone_source": step_start_tz,
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
                "MA_KHOA": "",
                "MA_BAC_SI": ";".join(orderer_codes),
                "NGUOI_THUC_HIEN": ";".join(performer_codes),
                **his_times,  # NGAY_YL, NGAY_TH_YL, NGAY_KQ: the HIS only, never device time
                "MA_MAY": ";".join(m["current"] for m in machine_codes if m["current"]),
                "PACS_MA_MAY_4750": ";".join(m["previous"] for m in machine_codes if m["previous"]),
                "TG_THIET_BI_BAT_DAU": claim_time(fa),
                "TG_THIET_BI_KET_THUC": claim_time(la),
                "PACS_MA_BS_DOC_KQ": reader,
            },
            "claim_field_sources": {
                "MA_KHOA": DEPARTMENT_SOURCE,
                **his_sources,
                **{
                    field: (
                        f"{what}: {st[1]}, {st[2]} (PACS extension field; machine operating time only)"
                        if st
                        else None
                    )
                    for (field, what), st in zip(_DEVICE_TIME_FIELDS, (first_acq, last_acq), strict=True)
                },
                "PACS_MA_BS_DOC_KQ": reader_source,
            },
            "his_orders": his_out,
            "notes": notes,
        }

    def his_times(
        self, line: dict[str, Any], study_rows: list[dict[str, Any]], orders: list[dict[str, Any]]
    ) -> tuple[dict[str, str], dict[str, str], list[dict[str, Any]]]:
        """NGAY_YL / NGAY_TH_YL / NGAY_KQ of a line from the HIS orders behind it (by Accession
        Number, else by study), each with its source; empty with the reason when the HIS did
        not send it. An HIS time without an offset is taken as Vietnam time, and says so."""
        uids = {s["study_instance_uid"] for s in study_rows}
        acc = line["accession_number"]
        mine = [
            o
            for o in orders
            if (acc and o["accession_number"] == acc)
            or o["study_instance_uid"] in uids
            or o["linked_study_instance_uid"] in uids
        ]
        if not mine:
            return dict.fromkeys(HIS_TIMES, ""), dict.fromkeys(HIS_TIMES, HIS_SOURCE), []
        times: dict[str, str] = {}
        sources: dict[str, str] = {}
        for field, column, what in _HIS_FIELDS:
            found = next((o for o in mine if o[column]), None)
            parsed = parse_dicom_datetime(found[column], VIETNAM) if found else None
            if found is None or parsed is None:
                times[field], sources[field] = "", HIS_NOT_SENT
                continue
            value, own_offset = parsed
            tz = (
                "offset sent by the HIS" if own_offset else "no offset sent: Vietnam time (UTC+07:00) assumed"
            )
            times[field] = claim_time(value)
            sources[field] = (
                f"HIS {what}: {found[column + '_source'] or 'HIS'}, order {found['order_key'][2:]} ({tz})"
            )
        out = [
            {
                "order": o["order_key"][2:],
                "accession_number": o["accession_number"],
                "status": o["status"],
                "ordered_at": o["ordered_at"],
                "performed_at": o["performed_at"],
                "reported_at": o["reported_at"],
                "report_status": o["report_status"],
                "reporting_doctor": o.get("reporting_doctor"),
                "source": o["source"],
            }
            for o in mine
        ]
        return times, sources, out

    def reader(
        self, his: list[dict[str, Any]], reading: list[dict[str, Any]], notes: list[str]
    ) -> tuple[str, str]:
        """The reading doctor's licence code(s) and where they came from: the HIS report's
        reporting doctor when the HIS sent one, else NameOfPhysiciansReadingStudy; a person the
        staff register does not know gets no code (never guessed) and is named in ``notes``."""
        sent = [str(o["reporting_doctor"]).strip() for o in his if (o.get("reporting_doctor") or "").strip()]
        if sent:
            codes, unknown = [], []
            for doctor in dict.fromkeys(sent):
                code = self.licence_of_his(doctor)
                if code:
                    codes.append(code)
                else:
                    unknown.append(doctor)
            if unknown:
                notes.append(_NO_STAFF + "; ".join(unknown))
            return ";".join(dict.fromkeys(codes)), _reader_source(_READER_HIS, bool(codes))
        if not reading:
            return "", _READER_NONE
        codes = [p["licence_code"] for p in reading if p["licence_code"]]
        return ";".join(dict.fromkeys(codes)), _reader_source(_READER_DICOM, bool(codes))


def _reader_source(origin: tuple[str, str], coded: bool) -> str:
    via = _READER_CODED if coded else _READER_UNCODED
    return f"{origin[0]}, {via[0]} / {origin[1]}, {via[1]}"


def machine_note(note: str) -> str:
    """A note of the device register, Vietnamese first (``"<vi> / <en>"``)."""
    for pattern, vi in _MACHINE_NOTES_VI:
        m = pattern.fullmatch(note)
        if m:
            return f"{vi.format(*m.groups())} / {note}"
    return note
