"""The candidate PACS service lines of a reconciliation, by the keys the matching uses, and the
evidence summary of each (ids, day, service code, series, images, devices with their MA_MAY)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pacs.services.appraisal.registers import Registers


class PacsLines:
    """The candidate PACS lines of a run, by the keys the matching uses."""

    def __init__(self, registers: Registers, lines: Iterable[dict[str, Any]]) -> None:
        self.regs = registers
        self.by_id: dict[int, dict[str, Any]] = {}
        self.by_acc: dict[str, list[int]] = {}
        self.by_study: dict[str, int] = {}
        self.by_patient: dict[str, list[int]] = {}
        self._services: dict[tuple[str | None, str | None], str] = {}
        self.add(lines)

    def add(self, lines: Iterable[dict[str, Any]]) -> None:
        for ln in lines:
            if ln["id"] in self.by_id:
                continue
            self.by_id[ln["id"]] = ln
            ln["service_code"] = self.service(ln["procedure_code"], ln["description"])
            ln["day"] = (
                next((s["study_date"] for s in ln["studies"] if s["study_date"]), ln["line_date"]) or ""
            )
            if ln["accession_number"]:
                self.by_acc.setdefault(ln["accession_number"], []).append(ln["id"])
            for st in ln["studies"]:
                self.by_study[st["study_instance_uid"]] = ln["id"]
            ids = [ln["patient_id"], *(ln["other_patient_ids"] or "").split("\\")]
            for pid in dict.fromkeys(i for i in ids if i):
                self.by_patient.setdefault(pid, []).append(ln["id"])

    def service(self, procedure_code: str | None, description: str | None) -> str:
        key = (procedure_code, description)
        got = self._services.get(key)
        if got is None:
            entry = self.regs.service(procedure_code, description)
            got = self._services[key] = entry.service_code if entry else ""
        return got

    def summary(self, line_id: int) -> dict[str, Any]:
        """What the archive holds for a line: ids, day, service, series and images, devices."""
        ln = self.by_id[line_id]
        devices: dict[tuple[Any, ...], dict[str, Any]] = {}
        dates = {s["study_instance_uid"]: s["study_date"] for s in ln["studies"]}
        for s in ln["series"]:
            day = dates.get(s["study_instance_uid"]) or s["series_date"] or ln["day"]
            key = (s["device_serial_number"], s["station_name"], s["modality"], day)
            dev = devices.get(key)
            if dev is None:
                code = self.regs.machine_code(s["device_serial_number"], s["station_name"], day)
                dev = devices[key] = {
                    "MA_MAY": code.current or None,
                    "modality": s["modality"],
                    "manufacturer": s["manufacturer"],
                    "manufacturer_model_name": s["manufacturer_model_name"],
                    "device_serial_number": s["device_serial_number"],
                    "station_name": s["station_name"],
                    "series": 0,
                    "images": 0,
                }
            dev["series"] += 1
            dev["images"] += s["instance_count"] or 0
        return {
            "record_id": ln["line_key"],
            "accession_number": ln["accession_number"],
            "study_instance_uids": list(dates),
            "study_date": ln["day"] or None,
            "modalities": [m for m in (ln["modalities"] or "").split("\\") if m],
            "service_code": ln["service_code"] or None,
            "series": len(ln["series"]),
            "images": sum(s["instance_count"] or 0 for s in ln["series"]),
            "devices": list(devices.values()),
        }
