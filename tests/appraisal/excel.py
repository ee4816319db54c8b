"""Reading the appraisal extracts back as a spreadsheet would (issue 16).

``export.csv`` is read the way Excel reads a CSV: the UTF-8 BOM first says the encoding, then RFC
4180 records (quoted cells keep their commas and line breaks); a row whose one cell starts with
``#`` is a header line. ``export.xlsx`` is read back with openpyxl, cell types and formats included.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from openpyxl import load_workbook
from openpyxl.workbook import Workbook

from pacs.services.appraisal.exports import CSV_FIELDS, HEADING_ROWS, LABEL_SHEET, RECORDS_SHEET, TOTALS_SHEET

BOM = b"\xef\xbb\xbf"


def csv_export(content: bytes) -> tuple[list[str], list[dict[str, str]]]:
    """(the ``#`` header cells, the rows by field code) of an ``export.csv`` body."""
    assert content.startswith(BOM), content[:40]
    text = content[len(BOM) :].decode("utf-8")
    records = list(csv.reader(io.StringIO(text, newline="")))
    n = 0
    while n < len(records) and len(records[n]) == 1 and records[n][0].startswith("#"):
        n += 1
    header = [r[0] for r in records[:n]]
    fields = records[n]
    assert tuple(fields) == CSV_FIELDS, fields
    return header, [dict(zip(fields, r, strict=True)) for r in records[n + 1 :]]


def csv_header(header: list[str]) -> dict[str, str]:
    """The ``# key: value`` header cells of an export by key."""
    out = {}
    for cell in header:
        key, _, value = cell[2:].partition(": ")
        out[key] = value
    return out


@dataclass
class Xlsx:
    """An ``export.xlsx`` read back: the workbook, the label sheet's items, the records sheet."""

    workbook: Workbook
    label: dict[str, Any]  # column A -> column B of the label sheet, up to its first empty row
    headings: list[tuple[str, str, str]]  # (Vietnamese, English, field code) per column
    rows: list[dict[str, Any]]  # field code -> openpyxl cell

    def values(self) -> list[dict[str, Any]]:
        """The rows as values (an empty cell is ``""``, as in the CSV)."""
        return [{k: ("" if c.value is None else c.value) for k, c in row.items()} for row in self.rows]


def xlsx_export(content: bytes) -> Xlsx:
    """An ``export.xlsx`` body read back with openpyxl."""
    assert content.startswith(b"PK"), content[:40]  # a zip, as every XLSX
    wb = load_workbook(io.BytesIO(content))
    assert wb.sheetnames == [LABEL_SHEET, RECORDS_SHEET, TOTALS_SHEET], wb.sheetnames
    label: dict[str, Any] = {}
    for a, b, *_ in wb[LABEL_SHEET].iter_rows(values_only=True):
        if a is None:
            break
        label[a] = b
    sheet = wb[RECORDS_SHEET]
    heads = list(sheet.iter_rows(min_row=1, max_row=HEADING_ROWS, values_only=True))
    headings = list(zip(heads[0], heads[1], heads[2], strict=True))
    codes = [h[2] for h in headings]
    assert tuple(codes) == CSV_FIELDS, codes
    rows = [
        dict(zip(codes, row, strict=False))
        for row in sheet.iter_rows(min_row=HEADING_ROWS + 1, max_col=len(codes))
    ]
    return Xlsx(wb, label, headings, rows)


def xlsx_text(content: bytes) -> str:
    """Every cell of every sheet of an ``export.xlsx``, one per line, and the sheet names."""
    wb = load_workbook(io.BytesIO(content))
    out = list(wb.sheetnames)
    for ws in wb.worksheets:
        out += [str(v) for row in ws.iter_rows(values_only=True) for v in row if v is not None]
    return "\n".join(out)


def unneutralised(cell: str) -> str:
    """A CSV cell as the record has it (the leading ``'`` a formula-like text got, taken off)."""
    if cell.startswith("'") and cell[1:2] in ("=", "+", "-", "@", "\t", "\r"):
        return cell[1:]
    return cell
