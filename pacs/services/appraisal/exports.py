"""Exports of records: CSV and XML shaped after the claim tables' XML3, printable HTML, paging.

A PACS extract for reconciliation, never a claim file: every export carries the label and the
extract notice. CSV and XML are written while the records are read, in chunks.
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
from html import escape
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from pacs.config import AppraisalSettings
from pacs.errors import InvalidQuery
from pacs.services.appraisal.times import VIETNAM

#: Records per page read by an export, and rows per chunk it writes.
EXPORT_PAGE = 1000
EXPORT_CHUNK = 500
CSV_FIELDS = (
    "STT",
    "MA_LK",
    "MA_DICH_VU",
    "TEN_DICH_VU",
    "MA_BAC_SI",
    "NGUOI_THUC_HIEN",
    "NGAY_YL",
    "NGAY_TH_YL",
    "NGAY_KQ",
    "MA_MAY",
    "PACS_MA_MAY_4750",
    "TG_THIET_BI_BAT_DAU",
    "TG_THIET_BI_KET_THUC",
    "PACS_NGUON_TG_THIET_BI",
    "PACS_SO_PHIEU_CHI_DINH",
    "PACS_MA_BAN_GHI",
    "PACS_STUDY_UID",
    "MA_BN",
    "MA_THE_BHYT",
    "SO_CCCD",
    "PACS_MA_NHAN",
    "PACS_GHI_CHU",
)
EXTRACT_NOTE_VI = "Trích xuất từ PACS để đối chiếu, không phải hồ sơ đề nghị thanh toán"
EXTRACT_NOTE_EN = "PACS extract for reconciliation, not a claim file"
FIELD_NOTE = (
    "TG_THIET_BI_BAT_DAU/TG_THIET_BI_KET_THUC: first/last image acquisition time written by the "
    "device (machine operating time only), Vietnam time (UTC+7), yyyymmddHHMM, their sources in "
    "PACS_NGUON_TG_THIET_BI; TG_THIET_BI_* and PACS_* are PACS extension fields, not fields of the "
    "data standard; NGAY_YL, NGAY_TH_YL and NGAY_KQ come only from the HIS (not connected): left "
    "empty, never filled with a device time"
)
_XML_DECLARATION = "<?xml version='1.0' encoding='utf-8'?>\n"
_XML_SLOT = "PACS_RECORDS_HERE"
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
    """XML3-shaped CSV (one row per record), the header in ``#`` lines, as UTF-8 chunks."""
    out = io.StringIO()
    for key, value in head.items():
        out.write(csv_comment(f"# {key}: {value}") + "\n")
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
    """A ``#`` header line kept on one line, none of whose pieces can start a formula.

    The line is not quoted (readers skip lines starting with ``#``), so a spreadsheet splits it
    at commas: each piece, after any opening double quotes, is neutralised like a cell.
    """
    pieces = line.replace("\r", " ").replace("\n", " ").split(",")
    out = []
    for piece in pieces:
        body = piece.lstrip('"')
        out.append(piece[: len(piece) - len(body)] + csv_cell(body))
    return ",".join(out)


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
    """Row ``n`` of an extract: the claim-shaped fields of a record and the PACS extension fields."""
    c = rec["claim_fields"]
    return {
        "STT": n,
        **{k: c[k] for k in CSV_FIELDS if k in c},
        "PACS_NGUON_TG_THIET_BI": device_time_sources(rec["device_timestamps"]),
        "PACS_SO_PHIEU_CHI_DINH": rec["service_line"]["accession_number"] or "",
        "PACS_MA_BAN_GHI": rec["id"],
        "PACS_STUDY_UID": ";".join(rec["service_line"]["study_instance_uids"]),
        "MA_BN": rec["patient"]["patient_id"] or "",
        "MA_THE_BHYT": rec["patient"]["insurance_card_code"] or "",
        "SO_CCCD": rec["patient"]["citizen_id"] or "",
        "PACS_MA_NHAN": rec["label"]["code"],
        "PACS_GHI_CHU": " | ".join(rec["notes"]),
    }


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


def render_html(rec: dict[str, Any]) -> str:
    """Printable HTML of one record: the label first, then facts in tables."""

    def row(k: str, v: Any) -> str:
        return f"<tr><th>{escape(k)}</th><td>{escape('' if v is None else str(v))}</td></tr>"

    def table(title: str, items: dict[str, Any]) -> str:
        return f"<h2>{escape(title)}</h2><table>{''.join(row(k, v) for k, v in items.items())}</table>"

    label = rec["label"]
    parts = [
        "<!doctype html><html lang='vi'><head><meta charset='utf-8'>",
        f"<title>PACS — {escape(rec['id'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
        "th,td{border:1px solid #999;padding:2px 6px;text-align:left;vertical-align:top}"
        ".label{border:2px solid #333;padding:.5em;margin-bottom:1em}@media print{body{margin:0}}</style>",
        "</head><body>",
        f"<p><strong>{escape(EXTRACT_NOTE_VI)} / {escape(EXTRACT_NOTE_EN)}</strong></p>",
        f"<div class='label'><p><strong>{escape(label['code'])}</strong></p>"
        f"<p lang='vi'>{escape(label['vi'])}</p><p lang='en'>{escape(label['en'])}</p></div>",
        table("Dịch vụ / Service", {**rec["service_line"], **rec["service"]}),
        table("Người bệnh / Patient", rec["patient"]),
        table("Mã hồ sơ (XML3-like) / Claim-shaped fields", rec["claim_fields"]),
        table("Nguồn / Sources of the claim-shaped time fields", rec.get("claim_field_sources") or {}),
    ]
    stamps = rec["device_timestamps"]
    first, last = stamps["first_acquisition"] or {}, stamps["last_acquisition"] or {}
    times = {
        "first_acquisition": first.get("value"),
        "first_acquisition source": first.get("source"),
        "first_acquisition timezone source": first.get("timezone_source"),
        "last_acquisition": last.get("value"),
        "last_acquisition source": last.get("source"),
        "last_acquisition timezone source": last.get("timezone_source"),
        "procedure_step_start": stamps["procedure_step_start"],
        "procedure_step_start source": stamps.get("procedure_step_start_source"),
        "procedure_step_start timezone source": stamps.get("procedure_step_start_timezone_source"),
        "first_received (archive)": rec["archive_receipt"]["first_received"],
        "last_received (archive)": rec["archive_receipt"]["last_received"],
        "received source": rec["archive_receipt"]["source"],
    }
    span = rec["device_acquisition_span"]
    if span:
        measured = span.get("seconds") is not None
        times["device_acquisition_span (s)"] = span["seconds"] if measured else "unknown"
        if not measured:
            times["device_acquisition_span reason"] = span.get("reason")
    parts.append(table("Mốc thời gian thiết bị / Device timestamps", times))
    for i, step in enumerate(rec["procedure_steps"], 1):
        parts.append(table(f"MPPS {i}", {k: v for k, v in step.items() if k != "performed_series"}))
    for i, dev in enumerate(rec["devices"], 1):
        flat = {k: v for k, v in dev.items() if k not in ("machine_code", "clock", "series")}
        flat.update({f"MA_MAY {k}": v for k, v in dev["machine_code"].items()})
        flat.update({f"clock {k}": v for k, v in dev["clock"].items()})
        parts.append(table(f"Thiết bị / Device {i}", flat))
    parts.append(
        table(
            "Nhân sự / People",
            {
                f"{role}: {p['dicom_name']}": p["licence_code"] or "(not in staff register)"
                for role, group in rec["people"].items()
                for p in group
            },
        )
    )
    parts.append(
        table(
            "Thứ tự thời gian / Ordering checks",
            {c["check"]: f"{c['result']} {c['timestamps']}" for c in rec["ordering_checks"]},
        )
    )
    for ref in rec["reference_times"]:
        parts.append(table("Thời gian tham chiếu / Reference time (reference_only)", ref))
    parts.append(
        "<h2>Ghi chú / Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in rec["notes"]) + "</ul>"
    )
    parts.append("</body></html>")
    return "".join(parts)
