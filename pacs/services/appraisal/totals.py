"""Totals per device per day of a set of records: plain counts of studies, series and images.

A row per (study date, device, MA_MAY): the day is the study date (Vietnam calendar day the
device wrote), the device is what DICOM names (modality, manufacturer, model, serial number,
station name), MA_MAY the register row in force that day (empty when none, with a note). Counts
only: nothing here compares a count or a time with anything.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

from pacs.services.appraisal.exports import csv_cell, csv_comment

#: The columns of a totals row: (key, Vietnamese heading, English heading, kind).
TOTAL_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("NGAY", "Ngày chụp", "Study date", "text"),
    ("MA_MAY", "Mã máy (dạng 3176)", "Machine code (3176 form)", "text"),
    ("MA_KHOA", "Khoa khai báo của thiết bị", "Department the device is declared under", "text"),
    ("MODALITY", "Loại máy (modality)", "Modality", "text"),
    ("HANG_SX", "Hãng sản xuất", "Manufacturer", "text"),
    ("MODEL", "Model", "Model name", "text"),
    ("SO_SERIAL", "Số serial thiết bị", "Device serial number", "text"),
    ("TEN_TRAM", "Tên trạm (StationName)", "Station name", "text"),
    ("SO_CA_CHUP", "Số ca chụp", "Studies", "int"),
    ("SO_LOAT_ANH", "Số loạt ảnh", "Series", "int"),
    ("SO_ANH", "Số ảnh", "Images", "int"),
    ("GHI_CHU", "Ghi chú", "Notes", "text"),
)
TOTAL_CODES = tuple(f[0] for f in TOTAL_FIELDS)
NO_CODE = (
    "chưa có MA_MAY trong danh mục thiết bị cho ngày này (xem ghi chú của bản ghi) / "
    "no MA_MAY in the device register for this day (see the record notes)"
)


class DeviceTotals:
    """Accumulates the records of an export (:meth:`add`), then gives the rows (:meth:`rows`)."""

    def __init__(self) -> None:
        self._studies: dict[tuple[str, ...], set[str]] = {}
        self._series: dict[tuple[str, ...], int] = {}
        self._images: dict[tuple[str, ...], int] = {}

    def add(self, rec: dict[str, Any]) -> None:
        """Count the series of one record against their device and day."""
        by_uid = {s["series_instance_uid"]: s for s in rec.get("series") or []}
        for dev in rec.get("devices") or []:
            code = dev.get("machine_code") or {}
            row = code.get("register_row") or {}
            day = code.get("on_date") or ""
            key = (
                f"{day[:4]}-{day[4:6]}-{day[6:8]}" if len(day) >= 8 else day,
                code.get("current") or "",
                row.get("department") or "",
                dev.get("modality") or "",
                dev.get("manufacturer") or "",
                dev.get("manufacturer_model_name") or "",
                dev.get("device_serial_number") or "",
                dev.get("station_name") or "",
            )
            studies = self._studies.setdefault(key, set())
            for uid in dev.get("series") or []:
                s = by_uid.get(uid)
                if s is None:
                    continue
                studies.add(s["study_instance_uid"])
                self._series[key] = self._series.get(key, 0) + 1
                self._images[key] = self._images.get(key, 0) + (s.get("instance_count") or 0)

    def rows(self) -> list[dict[str, Any]]:
        """One row per day and device, by day, then MA_MAY, then device."""
        out = []
        for key in sorted(self._studies):
            day, code, dept, modality, manufacturer, model, serial, station = key
            out.append(
                {
                    "NGAY": day,
                    "MA_MAY": code,
                    "MA_KHOA": dept,
                    "MODALITY": modality,
                    "HANG_SX": manufacturer,
                    "MODEL": model,
                    "SO_SERIAL": serial,
                    "TEN_TRAM": station,
                    "SO_CA_CHUP": len(self._studies[key]),
                    "SO_LOAT_ANH": self._series.get(key, 0),
                    "SO_ANH": self._images.get(key, 0),
                    "GHI_CHU": "" if code else NO_CODE,
                }
            )
        return out


def totals_of(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The totals rows of ``records``."""
    totals = DeviceTotals()
    for rec in records:
        totals.add(rec)
    return totals.rows()


def totals_csv(head_lines: list[str], rows: list[dict[str, Any]]) -> Iterator[bytes]:
    """The totals as CSV: a BOM, ``#`` header cells, the codes, then one row per day and device."""
    out = io.StringIO()
    out.write("\ufeff")
    for line in head_lines:
        out.write(csv_comment(line) + "\n")
    out.write(csv_comment("# cot: " + "; ".join(f"{c} = {vi} / {en}" for c, vi, en, _ in TOTAL_FIELDS)))
    out.write("\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(TOTAL_CODES)
    for row in rows:
        writer.writerow([csv_cell(row[c]) for c in TOTAL_CODES])
    yield out.getvalue().encode("utf-8")
