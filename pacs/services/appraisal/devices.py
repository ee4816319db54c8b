"""The device register: the imaging devices the hospital declared to the insurer, with their periods.

One CSV row per declared device and period (``registers/devices.csv``): ``serial_number``
(DeviceSerialNumber) and / or ``station_name`` (StationName) say which DICOM device it is;
``ma_may`` is the machine code exactly as declared (3176 form ``XX.n.Z`` or 4750 form
``XX.n.YYYYY.Z``), else it is built from ``machine_group``, ``funding_source`` and the serial
number or ``asset_code``; ``ma_khoa`` is the department the device is declared under;
``valid_from`` / ``valid_to`` (``YYYY-MM-DD``, inclusive, empty = open) bound the period the row
is in force. The MA_MAY of a study is that of the row in force on the study's date; no row in
force gives an empty code and a note, never a guess.

Refused at import, whole, with the file and line numbers: a key (serial number, station name)
with two different rows in force on overlapping dates, one MA_MAY declared for two different
devices on overlapping dates, a period ending before it starts. Rows repeating the same answer
are kept once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Machine groups of ``MA_MAY`` (X-ray, CT, MRI, ultrasound, DSA, endoscopy, nuclear medicine, PET, ECG).
MACHINE_GROUPS = frozenset(
    {"XQ", "CL", "MRI", "SA", "DSA", "NS", "SP", "XH", "PET", "ĐT", "DT", "MMO", "KHAC"}
)
#: Funding source of a machine: 1 state budget, 2 sponsorship / socialised, 3 other.
FUNDING_SOURCES = frozenset({"1", "2", "3"})
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_FACILITY = re.compile(r"^\d{5}$")
#: Register notes: (pattern of the English note, its Vietnamese text).
_NOTES_VI = (
    (
        re.compile(r"device serial=(.*) station=(.*) is not in the device register: MA_MAY left empty"),
        "thiết bị serial={0} station={1} chưa có trong danh mục thiết bị: để trống MA_MAY",
    ),
    (
        re.compile(
            r"device serial=(.*) station=(.*) has no device register row in force on (.*): MA_MAY left empty"
        ),
        "thiết bị serial={0} station={1} không có dòng danh mục thiết bị áp dụng vào ngày {2}: "
        "để trống MA_MAY",
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


class RegisterError(ValueError):
    """A register file that cannot be used (with the file and line)."""


@dataclass(frozen=True)
class DeviceEntry:
    """One declared imaging device, in force from ``in_force_from`` to ``in_force_to`` (YYYYMMDD)."""

    machine_group: str
    funding_source: str
    serial_number: str = ""
    station_name: str = ""
    asset_code: str = ""
    note: str = ""
    declared_code: str = ""  # MA_MAY as declared (3176 form), "" = built
    declared_code_4750: str = ""
    department: str = ""  # MA_KHOA
    in_force_from: str = ""
    in_force_to: str = ""
    line: int = field(default=0, compare=False)

    def in_force(self, date: str | None) -> bool:
        """Whether the row applies on ``date`` (YYYYMMDD); an unknown date only to an open row."""
        if not date:
            return not self.in_force_from and not self.in_force_to
        return (not self.in_force_from or self.in_force_from <= date[:8]) and (
            not self.in_force_to or date[:8] <= self.in_force_to
        )

    def overlaps(self, other: DeviceEntry) -> bool:
        """Whether the two periods share a day."""
        a0, a1 = self.in_force_from or "0", self.in_force_to or "99999999"
        b0, b1 = other.in_force_from or "0", other.in_force_to or "99999999"
        return a0 <= b1 and b0 <= a1

    def period(self) -> str:
        """``YYYY-MM-DD..YYYY-MM-DD`` (``..`` alone when open at both ends)."""
        return f"{_show(self.in_force_from)}..{_show(self.in_force_to)}"

    def summary(self) -> dict[str, Any]:
        """The row as shown to people (no register column names)."""
        return {
            "ma_may": self.declared_code or None,
            "machine_group": self.machine_group,
            "funding_source": self.funding_source,
            "serial_number": self.serial_number or None,
            "station_name": self.station_name or None,
            "department": self.department or None,
            "in_force_from": _show(self.in_force_from) or None,
            "in_force_to": _show(self.in_force_to) or None,
            "register_line": self.line,
            "note": self.note or None,
        }


def _show(d: str) -> str:
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if d else ""


@dataclass(frozen=True)
class MachineCode:
    """``MA_MAY`` in both formats, or empty with the reason, and the register row it came from."""

    current: str  # Decision 3176/QĐ-BYT: XX.n.Z
    previous: str  # Decision 4750/QĐ-BYT: XX.n.YYYYY.Z
    registered: bool
    notes: tuple[str, ...] = ()
    entry: DeviceEntry | None = None


def code_of(entry: DeviceEntry, serial_number: str | None, facility_code: str) -> MachineCode:
    """The MA_MAY of a register row: the declared code, else group.funding.(asset code or serial)."""
    if entry.declared_code:
        previous = entry.declared_code_4750 or (
            _with_facility(entry.declared_code, facility_code) if facility_code else ""
        )
        notes = () if previous else ("facility code (MA_CSKCB) not configured: 4750 form left empty",)
        return MachineCode(entry.declared_code, previous, True, notes, entry)
    z = entry.asset_code or (serial_number or "").strip() or entry.serial_number
    if not z:
        return MachineCode(
            "", "", True, ("device has no serial number or asset code: MA_MAY left empty",), entry
        )
    current = f"{entry.machine_group}.{entry.funding_source}.{z}"
    if not facility_code:
        return MachineCode(
            current, "", True, ("facility code (MA_CSKCB) not configured: 4750 form left empty",), entry
        )
    return MachineCode(current, _with_facility(current, facility_code), True, (), entry)


def _with_facility(code: str, facility: str) -> str:
    group, funding, z = code.split(".", 2)
    return f"{group}.{funding}.{facility}.{z}"


@dataclass
class DeviceRegister:
    """The rows of the device register by serial number and by station name (upper-cased)."""

    entries: list[DeviceEntry] = field(default_factory=list)
    by_serial: dict[str, list[DeviceEntry]] = field(default_factory=dict)
    by_station: dict[str, list[DeviceEntry]] = field(default_factory=dict)

    def rows_of(self, serial_number: str | None, station_name: str | None) -> list[DeviceEntry]:
        """The rows of a device: by serial number when it is registered, else by station name."""
        serial = (serial_number or "").strip().upper()
        if serial and serial in self.by_serial:
            return self.by_serial[serial]
        station = (station_name or "").strip().upper()
        return self.by_station.get(station, []) if station else []

    def at(self, serial_number: str | None, station_name: str | None, date: str | None) -> DeviceEntry | None:
        """The row of a device in force on ``date`` (YYYYMMDD), or None."""
        return next((e for e in self.rows_of(serial_number, station_name) if e.in_force(date)), None)

    def machine_code(
        self, serial_number: str | None, station_name: str | None, date: str | None, facility_code: str
    ) -> MachineCode:
        """``MA_MAY`` of a device on ``date``: from the row in force then, never guessed."""
        rows = self.rows_of(serial_number, station_name)
        who = f"device serial={serial_number or '-'} station={station_name or '-'}"
        if not rows:
            return MachineCode("", "", False, (f"{who} is not in the device register: MA_MAY left empty",))
        entry = next((e for e in rows if e.in_force(date)), None)
        if entry is None:
            day = _show(date[:8]) if date else "(no study date)"
            return MachineCode(
                "", "", True, (f"{who} has no device register row in force on {day}: MA_MAY left empty",)
            )
        return code_of(entry, serial_number, facility_code)

    def with_code(self, ma_may: str, facility_code: str) -> list[DeviceEntry]:
        """The rows whose MA_MAY (either form) is ``ma_may``."""
        out = []
        for e in self.entries:
            code = code_of(e, e.serial_number, facility_code)
            if ma_may in (code.current, code.previous):
                out.append(e)
        return out

    def of_department(self, department: str) -> list[DeviceEntry]:
        """The rows declared under department ``department`` (MA_KHOA)."""
        return [e for e in self.entries if e.department == department]


def machine_note(note: str) -> str:
    """A note of the device register, Vietnamese first (``"<vi> / <en>"``)."""
    for pattern, vi in _NOTES_VI:
        m = pattern.fullmatch(note)
        if m:
            return f"{vi.format(*m.groups())} / {note}"
    return note


def _date(path: Path, n: int, row: dict[str, str], key: str) -> str:
    value = row.get(key, "").strip()
    if not value:
        return ""
    m = _DATE.match(value)
    if not m:
        raise RegisterError(f"{path}:{n}: {key} {value!r} is not a date YYYY-MM-DD")
    return "".join(m.groups())


def _declared(path: Path, n: int, code: str) -> tuple[str, str, str, str]:
    """(group, funding, 3176 form, 4750 form or "") of a declared MA_MAY."""
    parts = code.split(".")
    if len(parts) < 3 or not all(parts):
        raise RegisterError(f"{path}:{n}: ma_may {code!r} is not XX.n.Z (3176) or XX.n.YYYYY.Z (4750)")
    group, funding = parts[0].upper(), parts[1]
    if len(parts) >= 4 and _FACILITY.match(parts[2]):
        return group, funding, ".".join([group, funding, *parts[3:]]), ".".join([group, *parts[1:]])
    return group, funding, ".".join([group, *parts[1:]]), ""


def entry_of(path: Path, n: int, row: dict[str, str]) -> DeviceEntry:
    """One register row checked (RegisterError with the line when it cannot be used)."""
    declared = row.get("ma_may", "").strip()
    group = row.get("machine_group", "").strip().upper()
    funding = row.get("funding_source", "").strip()
    code = code_4750 = ""
    if declared:
        d_group, d_funding, code, code_4750 = _declared(path, n, declared)
        if (group and group != d_group) or (funding and funding != d_funding):
            raise RegisterError(
                f"{path}:{n}: ma_may {declared!r} does not agree with machine_group {group!r} / "
                f"funding_source {funding!r}"
            )
        group, funding = d_group, d_funding
    if not group or not funding:
        raise RegisterError(f"{path}:{n}: give ma_may, or machine_group and funding_source")
    if group not in MACHINE_GROUPS:
        raise RegisterError(f"{path}:{n}: unknown machine_group {group!r}")
    if funding not in FUNDING_SOURCES:
        raise RegisterError(f"{path}:{n}: funding_source must be 1, 2 or 3, got {funding!r}")
    entry = DeviceEntry(
        machine_group=group,
        funding_source=funding,
        serial_number=row.get("serial_number", "").strip(),
        station_name=row.get("station_name", "").strip(),
        asset_code=row.get("asset_code", "").strip(),
        note=row.get("note", "").strip(),
        declared_code=code,
        declared_code_4750=code_4750,
        department=row.get("ma_khoa", "").strip(),
        in_force_from=_date(path, n, row, "valid_from"),
        in_force_to=_date(path, n, row, "valid_to"),
        line=n,
    )
    if not entry.serial_number and not entry.station_name:
        raise RegisterError(f"{path}:{n}: give serial_number or station_name")
    if entry.in_force_from and entry.in_force_to and entry.in_force_to < entry.in_force_from:
        raise RegisterError(
            f"{path}:{n}: valid_to {_show(entry.in_force_to)} is before "
            f"valid_from {_show(entry.in_force_from)}"
        )
    return entry


def build_register(
    path: Path, rows: Iterable[tuple[int, dict[str, str]]], facility_code: str
) -> DeviceRegister:
    """The register of ``rows`` ((line, row) pairs), or RegisterError naming every clash."""
    reg = DeviceRegister()
    clashes: list[str] = []
    for n, row in rows:
        entry = entry_of(path, n, row)
        if entry in reg.entries:
            continue  # the same row again: kept once
        for key_name, key, index in (
            ("serial_number", entry.serial_number, reg.by_serial),
            ("station_name", entry.station_name, reg.by_station),
        ):
            if not key:
                continue
            for other in index.get(key.upper(), []):
                if other.overlaps(entry):
                    first = other.serial_number if key_name == "serial_number" else other.station_name
                    clashes.append(
                        f"lines {other.line}, {n} give different devices for {key_name} "
                        f"{first!r} / {key!r} on overlapping dates ({other.period()} and {entry.period()})"
                    )
            index.setdefault(key.upper(), []).append(entry)
        code = code_of(entry, entry.serial_number, facility_code).current
        for other in reg.entries:
            same_device = (other.serial_number or other.station_name).upper() == (
                entry.serial_number or entry.station_name
            ).upper()
            if (
                code
                and not same_device
                and other.overlaps(entry)
                and code_of(other, other.serial_number, facility_code).current == code
            ):
                clashes.append(
                    f"lines {other.line}, {n} declare MA_MAY {code!r} for two devices on overlapping "
                    f"dates ({other.period()} and {entry.period()})"
                )
        reg.entries.append(entry)
    if clashes:
        raise RegisterError(
            f"{path}: ambiguous rows, nothing loaded: {'; '.join(clashes)}. A look-up could not tell "
            "these rows apart: keep one row per device and period (or end one period before the next starts)"
        )
    for index in (reg.by_serial, reg.by_station):
        for rows_of in index.values():
            rows_of.sort(key=lambda e: e.in_force_from)
    return reg


_DEVICE_KEYS = ("modality", "manufacturer", "manufacturer_model_name", "device_serial_number", "station_name")


def _day(d: str | None) -> str | None:
    return _show(d) if d else None


def seen_report(seen: list[dict[str, Any]], register: DeviceRegister, facility_code: str) -> dict[str, Any]:
    """Devices seen in DICOM (rows per device and day) that the register does not know
    (``unregistered``), and registered devices seen on days no register row is in force
    (``outside_register_periods``, with those days)."""
    devices: dict[tuple[Any, ...], dict[str, Any]] = {}
    for d in seen:
        key = tuple(d[k] for k in _DEVICE_KEYS)
        item = devices.setdefault(
            key, {**{k: d[k] for k in _DEVICE_KEYS}, "series": 0, "images": 0, "days": []}
        )
        item["series"] += int(d["series"] or 0)
        item["images"] += int(d["images"] or 0)
        if d["day"]:
            item["days"].append(d["day"])
    unregistered, outside = [], []
    for item in devices.values():
        days = sorted(item.pop("days"))
        item["first_study_date"] = _day(days[0]) if days else None
        item["last_study_date"] = _day(days[-1]) if days else None
        rows = register.rows_of(item["device_serial_number"], item["station_name"])
        if not rows:
            unregistered.append(item)
            continue
        missing = [_show(x) for x in days if not any(e.in_force(x) for e in rows)]
        if missing:
            outside.append(
                {**item, "days_without_register_row": missing, "register_rows": [e.summary() for e in rows]}
            )
    return {
        "facility_code": facility_code or None,
        "note": (
            "thiết bị có trong tệp DICOM nhưng chưa có trong danh mục thiết bị (MA_MAY để trống cho các ca "
            "chụp này) / devices named in DICOM files but not in the device register (MA_MAY left empty "
            "for their studies)"
        ),
        "count": len(unregistered),
        "unregistered": unregistered,
        "outside_register_periods": outside,
    }
