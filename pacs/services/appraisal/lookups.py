"""Register look-ups of a request, cached per key, and the record parts built from one row."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from pacs.config import AppraisalSettings
from pacs.services.appraisal.clocks import RECEIVE_DELAY_BASIS, clock_evidence
from pacs.services.appraisal.devices import machine_note
from pacs.services.appraisal.his import HisFacts
from pacs.services.appraisal.people import patient_ids
from pacs.services.appraisal.registers import Registers
from pacs.services.appraisal.times import assumed_offset, iso, step_time, utc_iso

STEP_START_SOURCE = "PerformedProcedureStepStartDate/Time (0040,0244/0245)"
STEP_END_SOURCE = "PerformedProcedureStepEndDate/Time (0040,0250/0251)"


class Lookups(HisFacts):
    """The register look-ups of one request, each made once per distinct key, and the parts of a
    record built from one row (a procedure step, a device)."""

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
        self._machines: dict[tuple[str | None, str | None, str | None], Any] = {}
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

    def machine_code(self, serial: str | None, station: str | None, date: str | None) -> Any:
        """``MA_MAY`` of a device on ``date`` (the register row in force then)."""
        key = (serial, station, date)
        code = self._machines.get(key)
        if code is None:
            code = self._machines[key] = self.regs.machine_code(serial, station, date)
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
            "start_source": STEP_START_SOURCE,
            "start_timezone_source": start[1] if start else None,
            "end": iso(end[0]) if end else None,
            "end_source": STEP_END_SOURCE,
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
        self, s: dict[str, Any], sending: list[str], tz_source: str | None, notes: list[str], date: str | None
    ) -> dict[str, Any]:
        """One device of a record, its MA_MAY from the register row in force on ``date``."""
        code = self.machine_code(s["device_serial_number"], s["station_name"], date)
        entry = code.entry
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
                "register_row": entry.summary() if entry is not None else None,
                "on_date": date,
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
