"""Registers the administrator keeps for appraisal exports: devices, services, staff, reference times.

Each register is a UTF-8 CSV file (a header row, then one entry per row; ``#`` lines are comments)
named in ``[appraisal]`` of ``config.toml``; ``registers/`` holds commented examples. Nothing is
ever guessed: a device, service or person missing from its register gets an empty code and a note
saying so. Codes follow the claim data standard (Decision 130/QĐ-BYT as amended by 4750/QĐ-BYT and
3176/QĐ-BYT); every format here is data, not code, because it changes every year or two.

A register whose rows would make a look-up ambiguous (two staff rows with the same DICOM name and
different codes, two devices with one serial number, ...) is refused whole at import, with the
file, the line numbers and the key; rows repeating the same answer are kept once. A reference
time needs its citation (document number, date, article or appendix) and is reference only.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pacs.services.appraisal.devices import (
    FUNDING_SOURCES,
    MACHINE_GROUPS,
    DeviceEntry,
    DeviceRegister,
    MachineCode,
    RegisterError,
    build_register,
)

__all__ = [
    "FUNDING_SOURCES",
    "MACHINE_GROUPS",
    "DeviceEntry",
    "MachineCode",
    "RegisterError",
    "Registers",
    "load_registers",
]

SERVICE_CODE = re.compile(r"^\d{2}\.\d{4}\.\d{4}$")
#: Said with every reference time, in both languages: it is an average, never a payment criterion.
REFERENCE_ONLY = "chỉ để tham khảo / reference only"


@lru_cache(maxsize=16384)
def fold(text: str) -> str:
    """Case- and accent-insensitive key of a name or description (``Nguyễn^Văn`` -> ``nguyen van``)."""
    text = text.replace("^", " ").replace("Đ", "D").replace("đ", "d")
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class ServiceEntry:
    """A ministry service code for a procedure code or a study description."""

    service_code: str
    service_name: str


@dataclass(frozen=True)
class ReferenceTime:
    """A published reference time (e.g. Decisions 2775/2776/QĐ-BYT): informative only."""

    service_code: str
    reference_minutes: float
    source: str  # the citation: document number, date, article or appendix
    note: str = ""  # starts with REFERENCE_ONLY when loaded from a register


@dataclass(frozen=True)
class Registers:
    """All registers, loaded once at start-up."""

    facility_code: str = ""
    devices_by_serial: dict[str, DeviceEntry] = field(default_factory=dict)  # first row of each
    devices_by_station: dict[str, DeviceEntry] = field(default_factory=dict)
    device_register: DeviceRegister = field(default_factory=DeviceRegister)
    services_by_code: dict[str, ServiceEntry] = field(default_factory=dict)
    services_by_description: dict[str, ServiceEntry] = field(default_factory=dict)
    service_rows: list[tuple[str, str, str]] = field(default_factory=list)  # (match_kind, match, code)
    staff: dict[str, str] = field(default_factory=dict)
    reference_times: dict[str, list[ReferenceTime]] = field(default_factory=dict)

    # ------------------------------------------------------------------ look-ups

    def device(
        self, serial_number: str | None, station_name: str | None, date: str | None = None
    ) -> DeviceEntry | None:
        """The register row of a device (by serial number first, then station name) in force on
        ``date`` (YYYYMMDD; None: a row without a period)."""
        return self.device_register.at(serial_number, station_name, date)

    def machine_code(
        self, serial_number: str | None, station_name: str | None, date: str | None = None
    ) -> MachineCode:
        """``MA_MAY`` of a device on ``date``: from the register row in force then, never guessed."""
        return self.device_register.machine_code(serial_number, station_name, date, self.facility_code)

    def service(self, procedure_code: str | None, description: str | None) -> ServiceEntry | None:
        """The ministry service of a procedure code, else of a study description."""
        if procedure_code and procedure_code.strip() in self.services_by_code:
            return self.services_by_code[procedure_code.strip()]
        if description and fold(description) in self.services_by_description:
            return self.services_by_description[fold(description)]
        return None

    def descriptions_for(self, service_code: str) -> list[str]:
        """Study descriptions mapped to a service code, as written in the register."""
        return [
            m for kind, m, code in self.service_rows if kind == "study_description" and code == service_code
        ]

    def procedure_codes_for(self, service_code: str) -> list[str]:
        """Procedure codes mapped to a service code."""
        return [m for kind, m, code in self.service_rows if kind == "procedure_code" and code == service_code]

    def licence(self, dicom_name: str | None) -> str | None:
        """The practising-licence code (or citizen ID) of a person named in DICOM, or None."""
        if not dicom_name:
            return None
        return self.staff.get(fold(dicom_name))


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise RegisterError(f"cannot read register {path}: {exc.strerror}") from exc
    lines = [
        (n, line)
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        return
    reader = csv.DictReader([line for _n, line in lines])
    for (n, _line), row in zip(lines[1:], reader, strict=False):
        yield n, {(k or "").strip(): (v or "").strip() for k, v in row.items()}


def _need(path: Path, n: int, row: dict[str, str], key: str, what: str = "") -> str:
    value = row.get(key, "")
    if not value:
        raise RegisterError(f"{path}:{n}: column {key!r} is empty or missing{what}")
    return value


class _Keys:
    """The rows of one register by look-up key: a key given two different answers is ambiguous."""

    def __init__(self, path: Path, key_name: str, answer_name: str) -> None:
        self.path, self.key_name, self.answer_name = path, key_name, answer_name
        self.seen: dict[str, tuple[int, str, object]] = {}
        self.clashes: dict[str, list[tuple[int, str]]] = {}

    def add(self, key: str, n: int, shown: str, answer: object) -> bool:
        """Record row ``n`` (``shown`` = the key as written); False if the key was seen already."""
        first = self.seen.get(key)
        if first is None:
            self.seen[key] = (n, shown, answer)
            return True
        if first[2] != answer:
            self.clashes.setdefault(key, [first[:2]]).append((n, shown))
        return False

    def check(self) -> None:
        """Raise :class:`RegisterError` naming every ambiguous key with its lines."""
        if not self.clashes:
            return
        parts = [
            f"lines {', '.join(str(n) for n, _ in rows)} give different {self.answer_name} for "
            f"{self.key_name} " + " / ".join(dict.fromkeys(repr(shown) for _, shown in rows))
            for rows in self.clashes.values()
        ]
        raise RegisterError(
            f"{self.path}: ambiguous rows, nothing loaded: {'; '.join(parts)}. A look-up by "
            f"{self.key_name} could not tell these rows apart: keep one row per {self.key_name} "
            "(or remove them all, and the code is left empty)"
        )


def load_registers(
    facility_code: str = "",
    devices: Path | None = None,
    services: Path | None = None,
    staff: Path | None = None,
    reference_times: Path | None = None,
) -> Registers:
    """Load the registers named in the settings (``None`` or ``Path()`` = no register)."""
    regs = Registers(facility_code=facility_code)

    def given(p: Path | None) -> bool:
        return p is not None and str(p) not in ("", ".")

    if given(devices):
        assert devices is not None
        reg = build_register(devices, _rows(devices), facility_code)
        regs.device_register.entries[:] = reg.entries
        regs.device_register.by_serial.update(reg.by_serial)
        regs.device_register.by_station.update(reg.by_station)
        regs.devices_by_serial.update({k: v[0] for k, v in reg.by_serial.items()})
        regs.devices_by_station.update({k: v[0] for k, v in reg.by_station.items()})
    if given(services):
        assert services is not None
        by_code = _Keys(services, "procedure_code", "service codes")
        by_description = _Keys(services, "study_description", "service codes")
        for n, row in _rows(services):
            code = _need(services, n, row, "service_code")
            if not SERVICE_CODE.match(code):
                raise RegisterError(f"{services}:{n}: service_code {code!r} is not XX.YYYY.ZZZZ")
            entry_s = ServiceEntry(code, row.get("service_name", ""))
            kind = row.get("match_kind", "procedure_code")
            match = _need(services, n, row, "match")
            if kind == "procedure_code":
                if by_code.add(match, n, match, entry_s):
                    regs.services_by_code[match] = entry_s
                    regs.service_rows.append((kind, match, code))
            elif kind == "study_description":
                if by_description.add(fold(match), n, match, entry_s):
                    regs.services_by_description[fold(match)] = entry_s
                    regs.service_rows.append((kind, match, code))
            else:
                raise RegisterError(f"{services}:{n}: match_kind must be procedure_code or study_description")
        by_code.check()
        by_description.check()
    if given(staff):
        assert staff is not None
        by_name = _Keys(staff, "dicom_name", "licence codes (namesakes?)")
        for n, row in _rows(staff):
            name = _need(staff, n, row, "dicom_name")
            licence = _need(staff, n, row, "licence_code")
            if by_name.add(fold(name), n, name, licence):
                regs.staff[fold(name)] = licence
        by_name.check()
    if given(reference_times):
        assert reference_times is not None
        by_citation = _Keys(reference_times, "service_code and citation", "reference times")
        for n, row in _rows(reference_times):
            code = _need(reference_times, n, row, "service_code")
            try:
                minutes = float(_need(reference_times, n, row, "reference_minutes"))
            except ValueError as exc:
                raise RegisterError(f"{reference_times}:{n}: reference_minutes is not a number") from exc
            citation = _need(
                reference_times,
                n,
                row,
                "citation",
                ": every reference time needs its citation (document number, date, article or appendix)",
            )
            note = row.get("note", "")
            ref = ReferenceTime(
                code, minutes, citation, f"{REFERENCE_ONLY}: {note}" if note else REFERENCE_ONLY
            )
            if by_citation.add(f"{code}\n{fold(citation)}", n, f"{code} {citation}", ref):
                regs.reference_times.setdefault(code, []).append(ref)
        by_citation.check()
    return regs
