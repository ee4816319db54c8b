"""The XLSX extract (openpyxl write-only mode): label sheet, records, totals per device per day.

See :mod:`.exports` for the layout: every text cell is a string cell of format ``@`` (never a
formula), counts are integers, times ``yyyymmddHHMM`` text. The totals sheet
(:data:`TOTALS_SHEET`) holds plain counts per study date and device (:mod:`.totals`).
"""

from __future__ import annotations

import io
import json
import re
import tempfile
from collections.abc import Iterator
from typing import Any

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Alignment, Font
from openpyxl.utils import get_column_letter

from pacs.services.appraisal.exports import (
    CSV_FIELDS,
    EXTRACT_NOTE_EN,
    EXTRACT_NOTE_VI,
    FIELD_NOTE_EN,
    FIELD_NOTE_VI,
    FIELDS,
    FILTER_NAMES,
    HEADING_ROWS,
    LABEL_SHEET,
    RECORDS_SHEET,
    TOTALS_SHEET,
    TYPES_NOTE_EN,
    TYPES_NOTE_VI,
    XLSX_CHUNK,
    Audit,
    claim_row,
)
from pacs.services.appraisal.totals import TOTAL_FIELDS, DeviceTotals

_INT_FIELDS = frozenset(f[0] for f in FIELDS if f[3] == "int")
#: Characters a worksheet (XML 1.0) cannot hold.
_NOT_IN_XLSX = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_XLSX_MAX_TEXT = 32767


def xlsx_chunks(head: dict[str, str], records: Iterator[dict[str, Any]], audit: Audit) -> Iterator[bytes]:
    """The XLSX extract: sheet :data:`LABEL_SHEET` then :data:`RECORDS_SHEET` (see the module notes).

    Rows are written in openpyxl's write-only mode (each sheet streamed to a temporary file), the
    workbook is zipped into another temporary file, and that file is sent in chunks: memory stays
    bounded whatever the number of records. The first chunk comes once the workbook is written.
    """
    n, done = 0, False
    try:
        with tempfile.TemporaryFile() as out:
            wb = Workbook(write_only=True)
            wb.properties.creator = "PACS"
            wb.properties.title = f"{EXTRACT_NOTE_VI} / {EXTRACT_NOTE_EN}"
            label = wb.create_sheet(LABEL_SHEET)  # first; filled last, once the count is known
            sheet = wb.create_sheet(RECORDS_SHEET)
            totals_sheet = wb.create_sheet(TOTALS_SHEET)  # filled last, from the counts
            for i, (_, vi, en, kind) in enumerate(FIELDS, 1):
                width = 8 if kind == "int" else min(48, max(12, len(vi), len(en)) + 2)
                sheet.column_dimensions[get_column_letter(i)].width = width
            sheet.freeze_panes = f"A{HEADING_ROWS + 1}"
            bold, wrap = Font(bold=True), Alignment(wrap_text=True, vertical="top")
            for heading, font in ((1, bold), (2, Font(italic=True)), (0, Font(bold=True, color="555555"))):
                sheet.append([text_cell(sheet, f[heading], font=font, alignment=wrap) for f in FIELDS])
            cells = [
                number_cell(sheet) if code in _INT_FIELDS else text_cell(sheet, None) for code in CSV_FIELDS
            ]
            totals = DeviceTotals()
            for n, rec in enumerate(records, 1):
                totals.add(rec)
                row = claim_row(rec, n)
                sheet.append(
                    [put_value(cell, row[code]) for cell, code in zip(cells, CSV_FIELDS, strict=True)]
                )
            last = get_column_letter(len(FIELDS))
            sheet.auto_filter.ref = f"A{HEADING_ROWS}:{last}{HEADING_ROWS + max(n, 1)}"
            _totals_sheet(totals_sheet, totals.rows(), bold, wrap)
            _label_sheet(label, head, n, bold, wrap)
            wb.save(out)
            out.seek(0)
            while chunk := out.read(XLSX_CHUNK):
                yield chunk
        done = True
    finally:
        audit(n, done)


def _totals_sheet(ws: Any, rows: list[dict[str, Any]], bold: Font, wrap: Alignment) -> None:
    """The totals sheet: heading rows (Vietnamese, English, code), then one row per day and device."""
    for i, (_, vi, en, kind) in enumerate(TOTAL_FIELDS, 1):
        width = 10 if kind == "int" else min(40, max(12, len(vi), len(en)) + 2)
        ws.column_dimensions[get_column_letter(i)].width = width
    ws.freeze_panes = f"A{HEADING_ROWS + 1}"
    for heading, font in ((1, bold), (2, Font(italic=True)), (0, Font(bold=True, color="555555"))):
        ws.append([text_cell(ws, f[heading], font=font, alignment=wrap) for f in TOTAL_FIELDS])
    for row in rows:
        ws.append(
            [
                put_value(number_cell(ws), row[code]) if kind == "int" else text_cell(ws, row[code])
                for code, _, _, kind in TOTAL_FIELDS
            ]
        )


def _label_sheet(ws: Any, head: dict[str, str], count: int, bold: Font, wrap: Alignment) -> None:
    """The first sheet: the label (Vietnamese, then English), the extract's facts, the columns."""
    ws.column_dimensions["A"].width = 34
    ws.column_dimensions["B"].width = 100
    ws.column_dimensions["C"].width = 40
    ws.column_dimensions["D"].width = 12
    filters = json.loads(head["bo_loc"] or "{}")
    rows: list[tuple[str, Any]] = [
        ("Nhãn (tiếng Việt)", head["nhan_vi"]),
        ("Label (English)", head["nhan_en"]),
        ("Mã nhãn / Label code", head["ma_nhan"]),
        ("Loại / Type", head["loai"]),
        ("Ghi chú", EXTRACT_NOTE_VI),
        ("Notice", EXTRACT_NOTE_EN),
        ("Mã cơ sở KCB / Facility code (MA_CSKCB)", head["ma_cskcb"]),
        ("Thời điểm trích xuất / Generated at", head["thoi_diem_trich_xuat"]),
        ("Số bản ghi / Records", count),
    ]
    if filters:
        for key, value in filters.items():
            vi, en = FILTER_NAMES.get(key, (key, key))
            rows.append((f"Bộ lọc: {vi} / Filter: {en}", str(value)))
    else:
        rows.append(("Bộ lọc / Filters", "(không có / none)"))
    rows += [
        ("Trường dữ liệu", FIELD_NOTE_VI),
        ("Fields", FIELD_NOTE_EN),
        ("Kiểu dữ liệu", TYPES_NOTE_VI),
        ("Types", TYPES_NOTE_EN),
    ]
    for item, value in rows:
        value_cell = number_cell(ws) if isinstance(value, int) else text_cell(ws, None, alignment=wrap)
        ws.append([text_cell(ws, item, font=bold, alignment=wrap), put_value(value_cell, value)])
    ws.append([])
    ws.append(
        [
            text_cell(ws, text, font=bold)
            for text in ("Cột / Column", "Tên tiếng Việt", "English name", "Kiểu / Type")
        ]
    )
    for code, vi, en, kind in FIELDS:
        shown = "số nguyên / integer" if kind == "int" else "văn bản / text"
        ws.append([text_cell(ws, v) for v in (code, vi, en, shown)])


def text_cell(ws: Any, value: str | None, **style: Any) -> Any:
    """A cell of text (number format ``@``), never a formula, whatever ``value`` starts with."""
    cell = WriteOnlyCell(ws)
    cell.number_format = "@"
    for key, v in style.items():
        setattr(cell, key, v)
    return put_value(cell, value)


def number_cell(ws: Any) -> Any:
    cell = WriteOnlyCell(ws)
    cell.number_format = "0"
    return cell


def put_value(cell: Any, value: Any) -> Any:
    """``cell`` holding ``value``: text as a string cell (openpyxl would make ``=...`` a formula
    and ``#N/A`` an error), an empty text as an empty cell, a number as a number."""
    if isinstance(value, str):
        if not value:
            cell.value = None
            return cell
        cell.value = _NOT_IN_XLSX.sub("\ufffd", value)[:_XLSX_MAX_TEXT]
        cell.data_type = "s"
    else:
        cell.value = value
    return cell


def simple_workbook(
    label_rows: list[tuple[str, Any]],
    tables: list[tuple[str, tuple[tuple[str, str, str, str], ...], list[dict[str, Any]]]],
) -> bytes:
    """A workbook: sheet :data:`LABEL_SHEET` (item, value rows), then one sheet per table (name,
    fields as (code, Vietnamese, English, kind), rows by code) with three heading rows."""
    bold, wrap = Font(bold=True), Alignment(wrap_text=True, vertical="top")
    wb = Workbook(write_only=True)
    wb.properties.creator = "PACS"
    label = wb.create_sheet(LABEL_SHEET)
    label.column_dimensions["A"].width = 40
    label.column_dimensions["B"].width = 100
    for item, value in label_rows:
        cell = number_cell(label) if isinstance(value, int) else text_cell(label, None, alignment=wrap)
        label.append([text_cell(label, item, font=bold, alignment=wrap), put_value(cell, value)])
    for name, fields, rows in tables:
        ws = wb.create_sheet(name)
        for i, (_, vi, en, kind) in enumerate(fields, 1):
            width = 10 if kind == "int" else min(48, max(12, len(vi), len(en)) + 2)
            ws.column_dimensions[get_column_letter(i)].width = width
        ws.freeze_panes = f"A{HEADING_ROWS + 1}"
        for heading, font in ((1, bold), (2, Font(italic=True)), (0, Font(bold=True, color="555555"))):
            ws.append([text_cell(ws, f[heading], font=font, alignment=wrap) for f in fields])
        cells = [
            (code, number_cell(ws) if kind == "int" else text_cell(ws, None)) for code, _, _, kind in fields
        ]
        for row in rows:  # one cell object per column, refilled for each row (as xlsx_chunks does)
            ws.append([put_value(cell, _shown(row.get(code), cell)) for code, cell in cells])
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _shown(value: Any, cell: Any) -> Any:
    """A table value for its cell: text for a text cell (None as empty), as it is for a number."""
    if cell.number_format == "@":
        return "" if value is None else str(value)
    return value
