"""Exports of records: CSV, XLSX and XML shaped after the claim tables' XML3, printable HTML, paging.

A PACS extract for reconciliation, never a claim file: every export carries the label and the
extract notice, Vietnamese first and English after (as do the notes, ``PACS_GHI_CHU``, and the
HTML headings). CSV and XML are written while the records are read, in chunks; the XLSX is
written row by row in openpyxl's write-only mode to a temporary file, then sent in chunks.

Row fields (:data:`FIELDS`): the XML3 fields the PACS can fill, in the standard's order (``MA_LK``,
``STT``, ``MA_DICH_VU``, ``TEN_DICH_VU``, ``MA_KHOA``, ``MA_BAC_SI``, ``NGUOI_THUC_HIEN``,
``NGAY_YL``, ``NGAY_TH_YL``, ``NGAY_KQ``, ``MA_MAY``), then the PACS extension fields
(``TG_THIET_BI_*``, ``PACS_*``) and the patient identifiers. ``MA_LK`` and ``MA_KHOA`` are the
HIS's and stay empty; the reading doctor is ``PACS_MA_BS_DOC_KQ`` (XML4's ``MA_BS_DOC_KQ``, which
is not an XML3 field) with its source in ``PACS_NGUON_BS_DOC_KQ``.

CSV (``export.csv``), decided for issue 16 ("opens correctly in Excel"):

- **UTF-8 with a BOM.** Excel reads a CSV without one in the Windows ANSI code page, which turns
  Vietnamese into mojibake; with the BOM it reads UTF-8. Other readers decode with ``utf-8-sig``.
- **Values verbatim; the XLSX is the typed form.** A plain CSV cannot say "this column is text":
  Excel opening it turns ``0791`` into 791, a 12-digit citizen ID ``079123456789`` into
  79123456789 and a ``yyyymmddHHMM`` time into a number shown as 2.02501E+11, quoted or not.
  Each known trick changes the data for every other reader: ``="0791"`` is itself a formula (the
  very thing the injection rule below keeps out, and the HIS or a script would read five extra
  characters); a leading ``'`` or tab stays in the cell as a character. So IDs, codes, licence
  codes, ``MA_MAY`` and times are written exactly as the PACS has them, for the HIS, scripts and
  Excel's text import (Data > From Text/CSV, columns as Text); someone who double-clicks uses
  ``export.xlsx``. A ``#`` line says so, in both languages.
- **Header lines are one cell each.** Each ``#`` line is written as ONE quoted cell
  (``"# nhan_vi: ..."``), so the label, which has commas, stays in column A instead of being split
  across columns; a line break inside becomes a space, so a header line is one line of the file.
  Readers skip the rows whose one cell starts with ``#``, then read the row of field codes, then
  one row per record. A cell starting with ``#`` cannot start a formula.
- **Formula-like text is neutralised**: a text cell starting with ``= + - @``, tab or CR that is
  not a plain number gets a leading ``'`` (OWASP "CSV Injection"); ``-12.5`` stays a number.
- **Times** are ``yyyymmddHHMM`` text in Vietnam time, as the standard's fields are.
- **Separator: comma** (RFC 4180). Excel splits on the list separator of the Windows regional
  settings; where that is ``;`` (common where the decimal symbol is a comma, as in Vietnamese
  settings) a double-click puts each line in one column: again, the XLSX or the text import.
  (``sep=,`` on the first line is reported to make Excel ignore the BOM, so it is not used.)

XLSX (``export.xlsx``): sheet "Nhãn - Label" first (the label in Vietnamese then English, the
notice, the filters, the generation time, the notes, the record count and a dictionary of the
columns; a sheet name cannot hold ``/``), then "Bản ghi - Records": three frozen heading rows
(Vietnamese, English, field code), then one row per record. Every text cell is a string cell
with number format ``@`` (Text), never a formula (openpyxl would make ``=...`` one: the type is
set back to text), so leading zeros stay and nothing runs; ``STT`` and the counts are integers;
times are ``yyyymmddHHMM`` text as in the standard. Characters XML 1.0 cannot hold become U+FFFD.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import itertools
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from pacs.config import AppraisalSettings
from pacs.errors import InvalidQuery
from pacs.services.appraisal.times import VIETNAM

#: Records per page read by an export, rows per chunk it writes, bytes per chunk of an XLSX.
EXPORT_PAGE = 1000
EXPORT_CHUNK = 500
XLSX_CHUNK = 64 * 1024
#: The fields of a row: (code, Vietnamese heading, English heading, kind: "text" or "int").
FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("MA_LK", "Mã liên kết (HIS)", "Episode key (HIS)", "text"),
    ("STT", "Số thứ tự", "Row number", "int"),
    ("MA_DICH_VU", "Mã dịch vụ", "Service code", "text"),
    ("TEN_DICH_VU", "Tên dịch vụ", "Service name", "text"),
    ("MA_KHOA", "Mã khoa (HIS)", "Department code (HIS)", "text"),
    ("MA_BAC_SI", "Mã bác sĩ chỉ định", "Ordering doctor's licence code", "text"),
    ("NGUOI_THUC_HIEN", "Mã người thực hiện", "Performer's licence code", "text"),
    ("NGAY_YL", "Thời điểm y lệnh (HIS)", "Order time (HIS)", "text"),
    ("NGAY_TH_YL", "Thời điểm thực hiện y lệnh (HIS)", "Time the order was carried out (HIS)", "text"),
    ("NGAY_KQ", "Thời điểm có kết quả (HIS)", "Result time (HIS)", "text"),
    ("MA_MAY", "Mã máy (dạng 3176)", "Machine code (3176 form)", "text"),
    ("PACS_MA_MAY_4750", "Mã máy (dạng 4750)", "Machine code (4750 form)", "text"),
    (
        "TG_THIET_BI_BAT_DAU",
        "Thời điểm thu nhận ảnh đầu tiên (thiết bị ghi)",
        "First image acquisition time (written by the device)",
        "text",
    ),
    (
        "TG_THIET_BI_KET_THUC",
        "Thời điểm thu nhận ảnh cuối cùng (thiết bị ghi)",
        "Last image acquisition time (written by the device)",
        "text",
    ),
    ("PACS_NGUON_TG_THIET_BI", "Nguồn thời gian thiết bị", "Sources of the device times", "text"),
    ("PACS_MA_BS_DOC_KQ", "Mã bác sĩ đọc kết quả", "Reading doctor's licence code", "text"),
    ("PACS_NGUON_BS_DOC_KQ", "Nguồn mã bác sĩ đọc kết quả", "Source of the reading doctor's code", "text"),
    ("PACS_SO_LOAT_ANH", "Số loạt ảnh", "Series", "int"),
    ("PACS_SO_ANH", "Số ảnh", "Images", "int"),
    ("PACS_SO_PHIEU_CHI_DINH", "Số phiếu chỉ định (Accession Number)", "Accession number", "text"),
    ("PACS_MA_BAN_GHI", "Mã bản ghi PACS", "PACS record id", "text"),
    ("PACS_STUDY_UID", "UID ca chụp", "Study Instance UID", "text"),
    ("MA_BN", "Mã người bệnh", "Patient ID", "text"),
    ("MA_THE_BHYT", "Mã thẻ BHYT", "Health-insurance card code", "text"),
    ("SO_CCCD", "Số căn cước công dân", "Citizen ID", "text"),
    ("PACS_MA_NHAN", "Mã nhãn", "Label code", "text"),
    ("PACS_GHI_CHU", "Ghi chú", "Notes", "text"),
)
CSV_FIELDS = tuple(f[0] for f in FIELDS)
_INT_FIELDS = frozenset(f[0] for f in FIELDS if f[3] == "int")
EXTRACT_NOTE_VI = "Trích xuất từ PACS để đối chiếu, không phải hồ sơ đề nghị thanh toán"
EXTRACT_NOTE_EN = "PACS extract for reconciliation, not a claim file"
FIELD_NOTE_VI = (
    "TG_THIET_BI_BAT_DAU/TG_THIET_BI_KET_THUC: thời điểm thu nhận ảnh đầu tiên/cuối cùng do thiết "
    "bị ghi (chỉ là thời gian vận hành máy), giờ Việt Nam (UTC+7), yyyymmddHHMM, nguồn của từng mốc ở "
    "PACS_NGUON_TG_THIET_BI; TG_THIET_BI_* và PACS_* là trường mở rộng của PACS, không thuộc chuẩn dữ "
    "liệu; NGAY_YL, NGAY_TH_YL, NGAY_KQ chỉ lấy từ y lệnh và kết quả HIS gửi (để trống khi HIS chưa "
    "gửi), không bao giờ điền bằng thời gian thiết bị; MA_LK, MA_KHOA do HIS cấp: để trống; "
    "PACS_MA_BS_DOC_KQ (MA_BS_DOC_KQ của bảng XML4): nguồn ở PACS_NGUON_BS_DOC_KQ"
)
FIELD_NOTE_EN = (
    "TG_THIET_BI_BAT_DAU/TG_THIET_BI_KET_THUC: first/last image acquisition time written by the "
    "device (machine operating time only), Vietnam time (UTC+7), yyyymmddHHMM, their sources in "
    "PACS_NGUON_TG_THIET_BI; TG_THIET_BI_* and PACS_* are PACS extension fields, not fields of the "
    "data standard; NGAY_YL, NGAY_TH_YL and NGAY_KQ come only from the HIS's orders and reports "
    "(empty when the HIS sent none), never filled with a device time; MA_LK and MA_KHOA are the "
    "HIS's: left empty; PACS_MA_BS_DOC_KQ (MA_BS_DOC_KQ of table XML4): its source in "
    "PACS_NGUON_BS_DOC_KQ"
)
#: The field note of an extract header, Vietnamese first.
FIELD_NOTE = f"{FIELD_NOTE_VI} / {FIELD_NOTE_EN}"
EXCEL_NOTE_VI = (
    "Mã, số định danh và thời gian được ghi nguyên văn; Excel mở trực tiếp tệp CSV có thể bỏ số 0 ở "
    "đầu và đổi thời gian yyyymmddHHMM thành số: dùng export.xlsx, hoặc Dữ liệu > Từ Văn bản/CSV và "
    "chọn kiểu Văn bản (Text) cho các cột"
)
EXCEL_NOTE_EN = (
    "IDs, codes and times are written verbatim; Excel opening this CSV directly may drop leading "
    "zeros and turn yyyymmddHHMM times into numbers: use export.xlsx, or Data > From Text/CSV with "
    "the columns set to Text"
)
TYPES_NOTE_VI = (
    "Cột mã, số định danh và thời gian là văn bản (định dạng @, giữ số 0 ở đầu); thời gian theo "
    "dạng yyyymmddHHMM, giờ Việt Nam; STT và số ảnh là số nguyên"
)
TYPES_NOTE_EN = (
    "ID, code and time columns are text (format @, leading zeros kept); times are yyyymmddHHMM, "
    "Vietnam time; STT and the counts are integers"
)
#: The filters of an export, named for the label sheet: (Vietnamese, English).
FILTER_NAMES = {
    "from": ("Từ ngày (ngày chụp)", "From (study date)"),
    "to": ("Đến ngày (ngày chụp)", "To (study date)"),
    "facility": ("Mã cơ sở KCB", "Facility code"),
    "modality": ("Loại máy (modality)", "Modality"),
    "device": ("Thiết bị (số serial / tên trạm)", "Device (serial number / station name)"),
    "accession": ("Số phiếu chỉ định", "Accession number"),
    "patient_id": ("Mã người bệnh", "Patient ID"),
    "service_code": ("Mã dịch vụ (MA_DICH_VU)", "Service code (MA_DICH_VU)"),
    "machine_code": ("Mã máy (MA_MAY)", "Machine code (MA_MAY)"),
    "department": (
        "Khoa (MA_KHOA, theo danh mục thiết bị)",
        "Department (MA_KHOA, from the device register)",
    ),
}
LABEL_SHEET = "Nhãn - Label"
RECORDS_SHEET = "Bản ghi - Records"
TOTALS_SHEET = "Tổng theo thiết bị - Totals"
#: Heading rows of the records sheet (Vietnamese, English, field code); data starts after them.
HEADING_ROWS = 3
XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_XML_DECLARATION = "<?xml version='1.0' encoding='utf-8'?>\n"
_XML_SLOT = "PACS_RECORDS_HERE"
_BOM = "\ufeff"
#: What makes a spreadsheet read a cell as a formula (OWASP "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

#: Called when an export stream ends: (rows sent, whether the client took them all).
Audit = Callable[[int, bool], None]


def header(settings: AppraisalSettings, params: dict[str, str], now: datetime) -> dict[str, str]:
    """The header of an extract: what it is, whose, the label, when, which filter, the fields."""
    return {
        "loai": "PACS_EXTRACT",
        "ghi_chu": f"{EXTRACT_NOTE_VI} / {EXTRACT_NOTE_EN}",
        "ma_cskcb": settings.facility_code,
        "ma_nhan": settings.label_code,
        "nhan_vi": settings.label_vi,
        "nhan_en": settings.label_en,
        "thoi_diem_trich_xuat": now.astimezone(VIETNAM).isoformat(),
        "bo_loc": json.dumps({k: v for k, v in params.items() if v}, ensure_ascii=False),
        "truong": FIELD_NOTE,
    }


def csv_header_lines(head: dict[str, str]) -> list[str]:
    """The ``#`` lines of a CSV extract: the header, the Excel note and the column headings."""
    columns = "; ".join(f"{code} = {vi} / {en}" for code, vi, en, _ in FIELDS)
    lines = [f"# {key}: {value}" for key, value in head.items()]
    lines.append(f"# excel: {EXCEL_NOTE_VI} / {EXCEL_NOTE_EN}")
    lines.append(f"# cot: {columns}")
    return lines


def paged(page: Callable[[int, int], tuple[list[dict[str, Any]], str | None]]) -> Iterator[dict[str, Any]]:
    """Every record, :data:`EXPORT_PAGE` at a time: ``page(after, limit)`` gives a page and its cursor."""
    after = 0
    while True:
        records, cursor = page(after, EXPORT_PAGE)
        yield from records
        if cursor is None:
            return
        after = decode_cursor(cursor)


def csv_chunks(head: dict[str, str], records: Iterator[dict[str, Any]], audit: Audit) -> Iterator[bytes]:
    """XML3-shaped CSV (one row per record) after a BOM and the ``#`` header cells, as UTF-8 chunks."""
    out = io.StringIO()
    out.write(_BOM)
    for line in csv_header_lines(head):
        out.write(csv_comment(line) + "\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    n, done = 0, False
    try:
        for n, rec in enumerate(records, 1):
            row = claim_row(rec, n)
            writer.writerow([csv_cell(row[k]) for k in CSV_FIELDS])
            if n % EXPORT_CHUNK == 0:
                yield out.getvalue().encode("utf-8")
                out.seek(0)
                out.truncate()
        yield out.getvalue().encode("utf-8")
        done = True
    finally:
        audit(n, done)


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell that a spreadsheet cannot run: text starting with ``= + - @``,
    tab or CR gets a leading ``'`` (OWASP CSV Injection). Plain numbers (``-12.5``) and every
    other value are written as they are.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_comment(line: str) -> str:
    """A ``#`` header line as ONE quoted CSV cell on one line of the file.

    Quoted, the commas of the label and the filter stay inside the cell (a spreadsheet does not
    split it across columns); line breaks become spaces; a cell starting with ``#`` cannot start
    a formula, whatever follows.
    """
    text = line.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    if not text.startswith("#"):
        text = "# " + text
    return '"' + text.replace('"', '""') + '"'


def xml_chunks(
    head: dict[str, str], settings: AppraisalSettings, records: Iterator[dict[str, Any]], audit: Audit
) -> Iterator[bytes]:
    """XML3-shaped fragment (``CHI_TIET_DVKT`` per record) under a root marked as a PACS extract."""
    root = ET.Element("PACS_TRICH_XUAT", {k: v for k, v in head.items() if k not in ("nhan_vi", "nhan_en")})
    label = ET.SubElement(root, "NHAN", {"MA": settings.label_code})
    ET.SubElement(label, "VI").text = settings.label_vi
    ET.SubElement(label, "EN").text = settings.label_en
    body = ET.SubElement(ET.SubElement(root, "CHITIEU_CHITIET_DVKT_VTYT"), "DSACH_CHI_TIET_DVKT")
    n, done = 0, False
    try:
        first = next(records, None)
        if first is None:
            yield ET.tostring(root, encoding="utf-8", xml_declaration=True)
            done = True
            return
        # the root, label and list elements as ElementTree writes them, records spliced in
        ET.SubElement(body, _XML_SLOT)
        head_xml, tail = ET.tostring(root, encoding="unicode").split(f"<{_XML_SLOT} />")
        parts = [_XML_DECLARATION, head_xml]
        for n, rec in enumerate(itertools.chain((first,), records), 1):
            parts.append(_xml_item(claim_row(rec, n)))
            if n % EXPORT_CHUNK == 0:
                yield "".join(parts).encode("utf-8", "xmlcharrefreplace")
                parts = []
        parts.append(tail)
        yield "".join(parts).encode("utf-8", "xmlcharrefreplace")
        done = True
    finally:
        audit(n, done)


def claim_row(rec: dict[str, Any], n: int) -> dict[str, Any]:
    """Row ``n`` of an extract: every field of :data:`FIELDS`, in that order (XML3's first)."""
    c = rec["claim_fields"]
    sources = rec.get("claim_field_sources") or {}
    series = rec.get("series") or []
    extra = {
        "STT": n,
        "PACS_NGUON_TG_THIET_BI": device_time_sources(rec["device_timestamps"]),
        "PACS_NGUON_BS_DOC_KQ": sources.get("PACS_MA_BS_DOC_KQ") or "",
        "PACS_SO_LOAT_ANH": len(series),
        "PACS_SO_ANH": sum(s.get("instance_count") or 0 for s in series),
        "PACS_SO_PHIEU_CHI_DINH": rec["service_line"]["accession_number"] or "",
        "PACS_MA_BAN_GHI": rec["id"],
        "PACS_STUDY_UID": ";".join(rec["service_line"]["study_instance_uids"]),
        "MA_BN": rec["patient"]["patient_id"] or "",
        "MA_THE_BHYT": rec["patient"]["insurance_card_code"] or "",
        "SO_CCCD": rec["patient"]["citizen_id"] or "",
        "PACS_MA_NHAN": rec["label"]["code"],
        "PACS_GHI_CHU": " | ".join(rec["notes"]),
    }
    return {k: extra[k] if k in extra else (c.get(k) or "") for k in CSV_FIELDS}


def device_time_sources(stamps: dict[str, Any]) -> str:
    """The source of each device time of a row: ``TG_THIET_BI_BAT_DAU: <attribute>, <offset source>;
    TG_THIET_BI_KET_THUC: ...`` (empty when the row has none)."""
    parts = []
    for field, key in (
        ("TG_THIET_BI_BAT_DAU", "first_acquisition"),
        ("TG_THIET_BI_KET_THUC", "last_acquisition"),
    ):
        st = stamps.get(key)
        if st:
            parts.append(f"{field}: {st['source']}, {st['timezone_source']}")
    return "; ".join(parts)


def _xml_item(row: dict[str, Any]) -> str:
    """One ``CHI_TIET_DVKT`` element, byte for byte as ElementTree serialises it."""
    out = ["<CHI_TIET_DVKT>"]
    for k, v in row.items():
        text = str(v)
        out.append(f"<{k}>{xml_escape(text)}</{k}>" if text else f"<{k} />")
    out.append("</CHI_TIET_DVKT>")
    return "".join(out)


def encode_cursor(last_id: int) -> str:
    """The opaque cursor of the page after line ``last_id``."""
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """The line id a cursor continues after (0 for none); InvalidQuery for one not issued here."""
    if not cursor:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        after = int(data["after"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidQuery("cursor is not one this server issued") from exc
    if after < 0:
        raise InvalidQuery("cursor is not one this server issued")
    return after
