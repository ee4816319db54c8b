"""Query parameters of the record list and the exports -> a :class:`~pacs.index.appraisal.LineFilter`.

``service_code`` (MA_DICH_VU) becomes the procedure codes and study descriptions the service
register maps to it; ``machine_code`` (MA_MAY) and ``department`` (MA_KHOA) become the serial
numbers and station names of the device register rows with that code or department (the SQL
narrows the lines by them), and each built record is then kept only when its own MA_MAY /
MA_KHOA (the register row in force on its study date) is the one asked for (:func:`keeps`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pacs.dicom.text import normalise_date
from pacs.errors import InvalidQuery
from pacs.index.appraisal import LineFilter
from pacs.services.appraisal.devices import DeviceEntry
from pacs.services.appraisal.registers import Registers, fold

#: Every filter the record list and the exports take.
FILTERS = (
    "from",
    "to",
    "facility",
    "modality",
    "device",
    "accession",
    "patient_id",
    "service_code",
    "machine_code",
    "department",
)


def _date(params: dict[str, str], name: str) -> str | None:
    value = (params.get(name) or "").strip()
    if not value:
        return None
    value = normalise_date(value)
    if not re.fullmatch(r"\d{8}", value):
        raise InvalidQuery(f"{name} must be a date YYYY-MM-DD or YYYYMMDD, got {params[name]!r}")
    return value


def _keys(entries: list[DeviceEntry]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(k for e in entries for k in (e.serial_number, e.station_name) if k))


def parse_filter(params: dict[str, str], registers: Registers, facility_code: str) -> tuple[LineFilter, bool]:
    """Query parameters -> filter; the flag is False when nothing can match (another facility,
    a machine code or department no register row has)."""
    description_keys: tuple[str, ...] | None = None
    procedure_codes: tuple[str, ...] | None = None
    code = (params.get("service_code") or "").strip()
    if code:
        description_keys = tuple(fold(d) for d in registers.descriptions_for(code))
        procedure_codes = tuple(registers.procedure_codes_for(code))
    facility = (params.get("facility") or "").strip()
    possible = not facility or facility == facility_code
    groups: list[tuple[str, ...]] = []
    machine = (params.get("machine_code") or "").strip() or None
    department = (params.get("department") or "").strip() or None
    if machine:
        groups.append(_keys(registers.device_register.with_code(machine, facility_code)))
    if department:
        groups.append(_keys(registers.device_register.of_department(department)))
    possible = possible and all(groups)
    flt = LineFilter(
        date_from=_date(params, "from"),
        date_to=_date(params, "to"),
        modality=(params.get("modality") or "").strip() or None,
        device=(params.get("device") or "").strip() or None,
        accession=(params.get("accession") or "").strip() or None,
        patient_id=(params.get("patient_id") or "").strip() or None,
        description_keys=description_keys,
        procedure_codes=procedure_codes,
        device_groups=tuple(groups),
        machine_code=machine,
        department=department,
    )
    return flt, possible


def keeps(flt: LineFilter) -> Callable[[dict[str, Any]], bool] | None:
    """The test a built record must pass for ``flt`` (its MA_MAY / MA_KHOA), or None."""
    if not flt.machine_code and not flt.department:
        return None

    def test(rec: dict[str, Any]) -> bool:
        c = rec["claim_fields"]
        if flt.machine_code and flt.machine_code not in (
            c["MA_MAY"].split(";") + c["PACS_MA_MAY_4750"].split(";")
        ):
            return False
        return not flt.department or flt.department in c["MA_KHOA"].split(";")

    return test
