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
``MA_KHOA`` (department) is the one the device register declares for the line's device (the row
in force on the study date, as is its ``MA_MAY``), else empty; its source says which. The reading doctor
(``PACS_MA_BS_DOC_KQ``, the XML4 ``MA_BS_DOC_KQ`` as a PACS extension field of the XML3-shaped
row) is the HIS report's reporting doctor when the HIS sent one, else DICOM
NameOfPhysiciansReadingStudy, each mapped to a licence code through the staff register (never
guessed); ``claim_field_sources`` says which.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pacs.services.appraisal.clocks import (
    clock_facts,
    device_key,
    receive_delay,
)
from pacs.services.appraisal.his import HIS_NOTE, NO_STAFF
from pacs.services.appraisal.lines import MPPS_CODE_SOURCE
from pacs.services.appraisal.lookups import STEP_START_SOURCE, Lookups
from pacs.services.appraisal.people import names
from pacs.services.appraisal.times import (
    acquisition_span,
    as_utc,
    claim_time,
    iso,
    ordering_check,
    series_times,
    stamp,
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
#: Where MA_KHOA (department) would come from: the HIS, which does not send it to the PACS.
DEPARTMENT_SOURCE = (
    "chưa nhận mã khoa từ HIS: để trống / department code not received from the HIS: left empty"
)
#: ... and when the device register gives the department the line's device is declared under.
DEVICE_DEPARTMENT_SOURCE = (
    "khoa mà thiết bị được khai báo trong danh mục thiết bị (dòng áp dụng vào ngày chụp) / "
    "department the device is declared under in the device register (row in force on the study date)"
)
_SPAN_BASIS = "first to last image acquisition time written by the device"
_RECEIPT_SOURCE = "archive receive log (instances received_at, events instance.stored)"
_DEVICE_TIME_FIELDS = (
    ("TG_THIET_BI_BAT_DAU", "first image acquisition time written by the device"),
    ("TG_THIET_BI_KET_THUC", "last image acquisition time written by the device"),
)


class RecordBuilder(Lookups):
    """Builds the records of one request (a page, one record or an export).

    Register look-ups (service, machine code, staff licence, reference times) are made once per
    distinct key for the whole request (:class:`~.lookups.Lookups`); everything else is a straight
    pass over the rows.
    """

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
        dates = {st["study_instance_uid"]: st["study_date"] for st in study_rows}

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
            day = dates.get(s["study_instance_uid"]) or s["series_date"] or line.get("line_date")
            key = (*device_key(s), tuple(sending), day)
            dev = devices.get(key)
            if dev is None:
                dev = devices[key] = self.device(s, sending, tz_source if source else None, notes, day)
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
            notes.append(NO_STAFF + "; ".join(unknown_staff))

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
        departments = list(
            dict.fromkeys(
                m["register_row"]["department"]
                for m in machine_codes
                if m["register_row"] and m["register_row"]["department"]
            )
        )
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
            notes.append(HIS_NOTE)
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
                "procedure_step_start_source": STEP_START_SOURCE if step_start else None,
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
                "MA_KHOA": ";".join(departments),
                "MA_BAC_SI": ";".join(orderer_codes),
                "NGUOI_THUC_HIEN": ";".join(performer_codes),
                **his_times,  # NGAY_YL, NGAY_TH_YL, NGAY_KQ: the HIS only, never device time
                "MA_MAY": ";".join(dict.fromkeys(m["current"] for m in machine_codes if m["current"])),
                "PACS_MA_MAY_4750": ";".join(
                    dict.fromkeys(m["previous"] for m in machine_codes if m["previous"])
                ),
                "TG_THIET_BI_BAT_DAU": claim_time(fa),
                "TG_THIET_BI_KET_THUC": claim_time(la),
                "PACS_MA_BS_DOC_KQ": reader,
            },
            "claim_field_sources": {
                "MA_KHOA": DEVICE_DEPARTMENT_SOURCE if departments else DEPARTMENT_SOURCE,
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
