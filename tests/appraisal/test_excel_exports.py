"""Exports a claims office can use (issue 16), on SQLite and PostgreSQL, through the HTTP routes.

``export.csv`` read as Excel reads a CSV (the BOM first, quoted cells kept whole): each ``#``
header line is one cell, the label one cell in Vietnamese then one in English, every ID, code and
time verbatim (the CSV has no types: that is what the XLSX is for). ``export.xlsx`` read back with
openpyxl: the label sheet first (Vietnamese, then English, the filters, the generation time, the
notes), then the records with text cells of format ``@`` for IDs, codes and times (leading zeros
kept, nothing a formula) and integers for the counts, the same values as the JSON records and the
CSV. The XML fragment's fields come in the standard's order (``MA_LK`` before ``STT``), with
``MA_KHOA`` and the reading doctor. Notes, HTML headings and the label are Vietnamese first.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from starlette.testclient import TestClient

from pacs.index.schema import events
from pacs.model import Origin
from pacs.runtime import Runtime
from pacs.services.appraisal import exports
from pacs.services.appraisal.exports import CSV_FIELDS, FIELDS, claim_row
from pacs.services.orders.model import Control, OrderMessage, PatientInfo, Report, ScheduledStep
from tests.appraisal.excel import BOM, csv_export, csv_header, unneutralised, xlsx_export
from tests.appraisal.test_no_verdict import MONTH, Month
from tests.appraisal.test_records import MODALITY, _complete, _mpps, _store_study
from tests.factories import make_dataset, to_bytes

API = "/api/appraisal/v1"
NOW = datetime(2025, 2, 1, 1, 2, 3, tzinfo=UTC)  # 08:02:03 in Vietnam
HIS = Origin(address="10.0.0.2", protocol="hl7", user="HIS")
#: The XML3 fields of the data standard the extract carries, in the standard's order.
XML3_ORDER = (
    "MA_LK",
    "STT",
    "MA_DICH_VU",
    "TEN_DICH_VU",
    "MA_KHOA",
    "MA_BAC_SI",
    "NGUOI_THUC_HIEN",
    "NGAY_YL",
    "NGAY_TH_YL",
    "NGAY_KQ",
    "MA_MAY",
)
TEXT_FIELDS = [code for code, _, _, kind in FIELDS if kind == "text"]
INT_FIELDS = [code for code, _, _, kind in FIELDS if kind == "int"]
VIETNAMESE = re.compile(r"[àáảãạăằắẳẵặâầấẩẫậđèéẻẽẹêềếểễệìíỉĩịòóỏõọôồốổỗộơờớởỡợùúủũụưừứửữựỳýỷỹỵ]", re.I)


def _vietnamese_first(text: str) -> bool:
    """``"<vi> / <en>"``: Vietnamese before the first `` / ``, English (ASCII words) after it."""
    vi, sep, en = text.partition(" / ")
    return bool(sep) and bool(VIETNAMESE.search(vi)) and bool(re.search(r"[A-Za-z]{3}", en))


def _records(client: TestClient, **params: str) -> list[dict[str, Any]]:
    body = client.get(f"{API}/records", params={**params, "limit": "1000"}).json()
    assert body["next_cursor"] is None
    return list(body["records"])


def _leading_zeros(rt: Runtime) -> None:
    """A CT study whose IDs start with 0: citizen ID as PatientID, accession, licence codes."""
    rt.appraisal.clock = lambda: NOW
    _store_study(
        rt,
        accession="0012345",
        patient_id="079123456789",
        IssuerOfPatientID="CCCD",
        patient_name="Nguyễn^Thị Ánh Dương",
        NameOfPhysiciansReadingStudy="Trần^Thị Bình",  # 000123/BYT-CCHN in the staff register
    )


# ---------------------------------------------------------------------- CSV as Excel reads it


def test_csv_opens_in_excel_with_the_label_in_one_cell(rt: Runtime, client: TestClient) -> None:
    _leading_zeros(rt)
    r = client.get(f"{API}/export.csv")
    assert r.status_code == 200 and r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.content.startswith(BOM + b'"# loai: PACS_EXTRACT"\n')  # the BOM first, then the header
    header, [row] = csv_export(r.content)
    a = rt.settings.appraisal
    assert "," in a.label_vi and "," in a.label_en  # a label with commas, yet one cell each
    assert header.index(f"# nhan_vi: {a.label_vi}") < header.index(f"# nhan_en: {a.label_en}")
    # one header cell per line of the file: nothing of the label spills into a second line or column
    lines = r.content[len(BOM) :].decode("utf-8").split("\n")
    assert [ln for ln in lines if ln.startswith('"#')] == ['"' + h.replace('"', '""') + '"' for h in header]
    head = csv_header(header)
    assert head["ghi_chu"].startswith("Trích xuất từ PACS") and _vietnamese_first(head["ghi_chu"])
    assert _vietnamese_first(head["truong"]) and _vietnamese_first(head["excel"])
    assert "export.xlsx" in head["excel"] and "Text" in head["excel"]
    assert "MA_LK = Mã liên kết (HIS) / Episode key (HIS)" in head["cot"]
    # every ID, code and time verbatim: leading zeros, 12-character times, licence codes
    assert row["MA_BN"] == "079123456789" and row["SO_CCCD"] == "079123456789"
    assert row["PACS_SO_PHIEU_CHI_DINH"] == "0012345" and row["PACS_MA_BAN_GHI"] == "acc:0012345"
    assert row["MA_BAC_SI"] == "000123/BYT-CCHN" and row["PACS_MA_BS_DOC_KQ"] == "000123/BYT-CCHN"
    assert row["MA_MAY"] == "CL.1.SN-1234" and row["PACS_MA_MAY_4750"] == "CL.1.01001.SN-1234"
    assert row["TG_THIET_BI_BAT_DAU"] == "202501101015" and row["TG_THIET_BI_KET_THUC"] == "202501101019"
    assert row["STT"] == "1" and row["PACS_SO_LOAT_ANH"] == "1" and row["PACS_SO_ANH"] == "3"
    assert row["TEN_DICH_VU"] == "Chụp CT sọ não không tiêm thuốc cản quang"
    assert all(_vietnamese_first(n) for n in row["PACS_GHI_CHU"].split(" | ")), row["PACS_GHI_CHU"]


# ---------------------------------------------------------------------- XLSX read back


def test_xlsx_has_the_label_sheet_and_typed_columns(rt: Runtime, client: TestClient) -> None:
    _leading_zeros(rt)
    rt.archive.store_bytes(
        to_bytes(
            make_dataset(
                patient_id='=HYPERLINK("http://x")',
                accession="#N/A",  # an error literal, kept as text
                patient_name="Đỗ^Văn Hùng",
                StudyDescription="-2+3",
                OperatorsName="Lê&Phạm<Thu>\x01",  # a control character XLSX cannot hold
            )
        ),
        MODALITY,
    )
    params = {"from": "2025-01-10", "modality": "CT"}
    r = client.get(f"{API}/export.xlsx", params=params)
    assert r.status_code == 200
    assert r.headers["content-type"] == exports.XLSX_MEDIA_TYPE
    assert r.headers["content-disposition"] == 'attachment; filename="pacs-extract.xlsx"'
    book = xlsx_export(r.content)
    a = rt.settings.appraisal

    # the label sheet: Vietnamese, then English; then the notice, the filters, the time, the notes
    items = list(book.label)
    assert items[:2] == ["Nhãn (tiếng Việt)", "Label (English)"]
    assert book.label["Nhãn (tiếng Việt)"] == a.label_vi and book.label["Label (English)"] == a.label_en
    assert book.label["Mã nhãn / Label code"] == a.label_code
    assert items.index("Ghi chú") + 1 == items.index("Notice")
    assert (
        book.label["Ghi chú"] == exports.EXTRACT_NOTE_VI and book.label["Notice"] == exports.EXTRACT_NOTE_EN
    )
    assert book.label["Thời điểm trích xuất / Generated at"] == "2025-02-01T08:02:03+07:00"
    assert book.label["Bộ lọc: Từ ngày (ngày chụp) / Filter: From (study date)"] == "2025-01-10"
    assert book.label["Bộ lọc: Loại máy (modality) / Filter: Modality"] == "CT"
    assert book.label["Số bản ghi / Records"] == 2
    assert (
        book.label["Trường dữ liệu"] == exports.FIELD_NOTE_VI
        and book.label["Fields"] == exports.FIELD_NOTE_EN
    )
    label_sheet = book.workbook[exports.LABEL_SHEET]
    columns = [r for r in label_sheet.iter_rows(values_only=True) if r[0] in CSV_FIELDS]
    assert [c[0] for c in columns] == list(CSV_FIELDS)  # the column dictionary, in order
    assert label_sheet["B1"].data_type == "s" and label_sheet["B1"].alignment.wrap_text

    # the records sheet: frozen headings (Vietnamese, English, code), then typed cells
    sheet = book.workbook[exports.RECORDS_SHEET]
    assert sheet.freeze_panes == "A4"
    assert sheet.auto_filter.ref == f"A3:{sheet.cell(3, len(FIELDS)).column_letter}5"
    assert book.headings == [(vi, en, code) for code, vi, en, _ in FIELDS]
    assert book.headings[0] == ("Mã liên kết (HIS)", "Episode key (HIS)", "MA_LK")
    records = _records(client, **params)
    expected = [claim_row(rec, n) for n, rec in enumerate(records, 1)]
    assert "\x01" in expected[1]["PACS_GHI_CHU"]  # the JSON keeps it; a worksheet cannot hold it
    for row in expected:
        row.update({k: v.replace("\x01", "\ufffd") for k, v in row.items() if isinstance(v, str)})
    assert book.values() == expected
    for row in book.rows:
        for code in TEXT_FIELDS:
            cell = row[code]
            assert cell.number_format == "@", code
            assert cell.value is None or (cell.data_type == "s" and isinstance(cell.value, str)), code
        for code in INT_FIELDS:
            assert row[code].data_type == "n" and type(row[code].value) is int, code
    first, hostile = book.values()
    assert first["MA_BN"] == "079123456789" and first["SO_CCCD"] == "079123456789"
    assert first["PACS_SO_PHIEU_CHI_DINH"] == "0012345" and first["MA_BAC_SI"] == "000123/BYT-CCHN"
    assert first["TG_THIET_BI_BAT_DAU"] == "202501101015"  # text, 12 characters, as the standard
    assert first["PACS_SO_ANH"] == 3 and first["STT"] == 1
    assert first["TEN_DICH_VU"] == "Chụp CT sọ não không tiêm thuốc cản quang"
    assert hostile["MA_BN"] == '=HYPERLINK("http://x")' and book.rows[1]["MA_BN"].data_type == "s"
    assert (
        hostile["PACS_SO_PHIEU_CHI_DINH"] == "#N/A"
        and book.rows[1]["PACS_SO_PHIEU_CHI_DINH"].data_type == "s"
    )
    assert "Lê&Phạm<Thu>\ufffd" in hostile["PACS_GHI_CHU"]  # the control character replaced, the rest kept
    # the CSV has the same values (as text, formula-like ones neutralised)
    _, rows = csv_export(client.get(f"{API}/export.csv", params=params).content)
    assert [{k: unneutralised(v).replace("\x01", "\ufffd") for k, v in row.items()} for row in rows] == [
        {k: str(v) for k, v in row.items()} for row in book.values()
    ]


def test_xlsx_is_audited_and_a_cut_short_one_says_so(
    rt: Runtime, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _leading_zeros(rt)
    _store_study(rt, accession="ACC-2")
    monkeypatch.setattr(exports, "EXPORT_PAGE", 1)  # pages of one record: every page boundary crossed
    assert client.get(f"{API}/export.xlsx", params={"modality": "CT"}).status_code == 200
    assert client.get(f"{API}/records", params={"format": "xlsx"}).status_code == 200
    monkeypatch.setattr(exports, "XLSX_CHUNK", 512)
    chunks = rt.appraisal.stream_xlsx({"accession": "ACC-2"}, MODALITY)
    assert next(chunks).startswith(b"PK")
    chunks.close()  # the client went away
    whole = rt.appraisal.export_xlsx({}, MODALITY)
    assert len(xlsx_export(whole).rows) == 2
    with rt.engine.connect() as conn:
        details = [
            json.loads(d)
            for (d,) in conn.execute(
                select(events.c.details).where(events.c.kind == "appraisal.access").order_by(events.c.id)
            )
        ]
    exported = [d for d in details if d["request"] == "export.xlsx"]
    assert exported == [
        {"request": "export.xlsx", "filters": {"modality": "CT"}, "count": 2},
        {"request": "export.xlsx", "filters": {}, "count": 2},
        {"request": "export.xlsx", "filters": {"accession": "ACC-2"}, "count": 1, "complete": False},
        {"request": "export.xlsx", "filters": {}, "count": 2},
    ]


def test_xlsx_refuses_a_bad_filter_before_writing(client: TestClient) -> None:
    r = client.get(f"{API}/export.xlsx", params={"from": "yesterday"})
    assert r.status_code == 400 and "from" in r.json()["detail"]
    assert client.get(f"{API}/records", params={"format": "xlsx", "to": "2025-13-99x"}).status_code == 400
    assert client.get(f"{API}/records", params={"format": "pdf"}).status_code == 400
    empty = xlsx_export(client.get(f"{API}/export.xlsx", params={"accession": "NONE"}).content)
    assert empty.rows == [] and empty.label["Số bản ghi / Records"] == 0
    spec = client.get(f"{API}/openapi.json").json()
    assert f"{API}/export.xlsx" in spec["paths"]


# ---------------------------------------------------------------------- XML order, reading doctor


def test_xml_fields_come_in_the_standards_order(rt: Runtime, client: TestClient) -> None:
    _leading_zeros(rt)
    [item] = ET.fromstring(client.get(f"{API}/export.xml").content).iter("CHI_TIET_DVKT")
    tags = [e.tag for e in item]
    assert tags == list(CSV_FIELDS)
    assert tags[:2] == ["MA_LK", "STT"]
    positions = [tags.index(f) for f in XML3_ORDER]
    assert positions == sorted(positions), tags
    assert item.findtext("MA_KHOA") == "" and item.findtext("MA_LK") == ""
    assert item.findtext("PACS_MA_BS_DOC_KQ") == "000123/BYT-CCHN"
    assert "NameOfPhysiciansReadingStudy" in (item.findtext("PACS_NGUON_BS_DOC_KQ") or "")
    rec = client.get(f"{API}/records/acc:0012345").json()
    assert rec["claim_fields"]["MA_KHOA"] == "" and "HIS" in rec["claim_field_sources"]["MA_KHOA"]


def _order(accession: str, placer: str) -> OrderMessage:
    return OrderMessage(
        control=Control.NEW,
        placer_order_number=placer,
        accession_number=accession,
        patient=PatientInfo(patient_id="BN001", issuer_of_patient_id="BV01", name="Ngô^Thanh Tùng"),
        requested_procedure_id="RP1",
        requested_procedure_description="CT sọ não",
        ordered_at="20250110080500+0700",
        ordered_at_source="HL7 ORC-9",
        steps=(
            ScheduledStep(step_id="SPS1", modality="CT", station_ae_title="CT01AE", start="20250110090000"),
        ),
    )


@pytest.mark.parametrize(
    ("his_doctor", "code", "source"),
    [
        (None, "004567/HNO-CCHN", "DICOM NameOfPhysiciansReadingStudy"),  # DICOM name, in the register
        ("Trần^Thị Bình", "000123/BYT-CCHN", "do HIS gửi"),  # HIS name, through the register
        ("000123/BYT-CCHN", "000123/BYT-CCHN", "do HIS gửi"),  # HIS sent the licence code itself
        ("Phạm^Minh", "", "not in the staff register"),  # HIS name the register does not know
    ],
)
def test_the_reading_doctor_is_exported_with_its_source(
    rt: Runtime, client: TestClient, his_doctor: str | None, code: str, source: str
) -> None:
    ds = _store_study(rt, accession="ACC-R", NameOfPhysiciansReadingStudy="Lê^Văn Cường")
    if his_doctor is not None:
        rt.orders.apply(_order("ACC-R", "ORD-R"), HIS)
        rt.orders.record_report(
            Report(placer_order_number="ORD-R", reported_at="20250110143000", reporting_doctor=his_doctor),
            HIS,
        )
    step = rt.appraisal.create_step(None, _mpps(ds.StudyInstanceUID, accession="ACC-R"), MODALITY)
    rt.appraisal.update_step(step, _complete(ds.SeriesInstanceUID), MODALITY)
    rec = client.get(f"{API}/records/acc:ACC-R").json()
    assert rec["claim_fields"]["PACS_MA_BS_DOC_KQ"] == code
    got = rec["claim_field_sources"]["PACS_MA_BS_DOC_KQ"]
    assert source in got and _vietnamese_first(got)
    if his_doctor is not None:
        assert rec["his_orders"][0]["reporting_doctor"] == his_doctor
        assert rec["claim_fields"]["NGAY_KQ"] == "202501101430"
    if not code:
        assert any(his_doctor in n and _vietnamese_first(n) for n in rec["notes"])  # named, not guessed
    _, [row] = csv_export(client.get(f"{API}/export.csv").content)
    assert row["PACS_MA_BS_DOC_KQ"] == code and row["PACS_NGUON_BS_DOC_KQ"] == got
    [xrow] = xlsx_export(client.get(f"{API}/export.xlsx").content).values()
    assert xrow["PACS_MA_BS_DOC_KQ"] == code and xrow["PACS_NGUON_BS_DOC_KQ"] == got


def test_no_reading_doctor_is_left_empty_with_its_source(rt: Runtime, client: TestClient) -> None:
    _store_study(rt, accession="ACC-N")
    rec = client.get(f"{API}/records/acc:ACC-N").json()
    assert rec["claim_fields"]["PACS_MA_BS_DOC_KQ"] == ""
    got = rec["claim_field_sources"]["PACS_MA_BS_DOC_KQ"]
    assert "NameOfPhysiciansReadingStudy" in got and "left empty" in got and _vietnamese_first(got)


# ---------------------------------------------------------------------- Vietnamese first


def test_notes_headings_and_label_are_vietnamese_first(rt: Runtime, client: TestClient) -> None:
    # an unregistered device without a serial, an unknown service, unknown staff; and a step without images
    ds = make_dataset(
        accession="ACC-V",
        Modality="CR",
        StationName="CR99",
        StudyDescription="Chụp gì đó",
        OperatorsName="Ai^Đó",
    )
    del ds.DeviceSerialNumber
    rt.archive.store_bytes(to_bytes(ds), MODALITY)
    rt.appraisal.create_step(None, _mpps(generate_uid(), accession="ACC-W"), MODALITY)
    for rid in ("acc:ACC-V", "acc:ACC-W"):
        rec = client.get(f"{API}/records/{rid}").json()
        assert len(rec["notes"]) >= 2
        for note in rec["notes"]:
            assert _vietnamese_first(note), note
        html = client.get(f"{API}/records/{rid}.html").text
        headings = re.findall(r"<h2>(.*?)</h2>", html)
        assert len(headings) >= 8
        for h in headings:
            assert _vietnamese_first(h), h
        assert html.index("<p lang='vi'>") < html.index("<p lang='en'>")  # the label, Vietnamese first
    v = client.get(f"{API}/records/acc:ACC-V").json()
    assert any(
        "chưa có trong danh mục thiết bị" in n and "not in the device register" in n for n in v["notes"]
    )
    _, rows = csv_export(client.get(f"{API}/export.csv").content)
    book = xlsx_export(client.get(f"{API}/export.xlsx").content)
    for notes in [r["PACS_GHI_CHU"] for r in rows] + [r["PACS_GHI_CHU"] for r in book.values()]:
        assert all(_vietnamese_first(n) for n in notes.split(" | ")), notes


# ---------------------------------------------------------------------- a month, round trip


def test_a_month_round_trips_through_csv_and_xlsx(rt: Runtime, client: TestClient) -> None:
    month = Month(rt)
    for d in range(0, 31, 2):  # 16 days of nine varied service lines each
        month.day(MONTH + timedelta(days=d))
    rt.appraisal.clock = lambda: NOW
    params = {"from": "2025-03-01", "to": "2025-03-31"}
    records = _records(client, **params)
    assert len(records) == month.lines == 144
    expected = [claim_row(rec, n) for n, rec in enumerate(records, 1)]

    book = xlsx_export(client.get(f"{API}/export.xlsx", params=params).content)
    assert book.values() == expected
    assert book.label["Số bản ghi / Records"] == len(records)
    for row in book.rows:
        for code in TEXT_FIELDS:
            assert row[code].number_format == "@" and row[code].data_type in ("s", "n"), code
            assert row[code].value is None or isinstance(row[code].value, str), code
        for code in INT_FIELDS:
            assert type(row[code].value) is int, code
    values = book.values()
    # twelve-digit local IDs stay text, never numbers
    assert all(isinstance(v["MA_BN"], str) for v in values)
    assert any(re.fullmatch(r"\d{12}", v["MA_BN"]) for v in values)
    assert {v["PACS_SO_ANH"] for v in values} >= {0, 1, 3, 4, 6}  # steps without images, X-rays, CT, MR
    assert any("Dương^Thị Mỹ Linh" in v["PACS_GHI_CHU"] for v in values)  # Vietnamese text intact
    assert any(v["NGUOI_THUC_HIEN"] == "004567/HNO-CCHN" for v in values)  # a licence code, leading zeros
    assert {v["TG_THIET_BI_BAT_DAU"] for v in values if v["TG_THIET_BI_BAT_DAU"]} and all(
        re.fullmatch(r"\d{12}", v["TG_THIET_BI_BAT_DAU"]) for v in values if v["TG_THIET_BI_BAT_DAU"]
    )

    header, rows = csv_export(client.get(f"{API}/export.csv", params=params).content)
    assert csv_header(header)["bo_loc"] == json.dumps(params)
    assert [{k: unneutralised(v) for k, v in row.items()} for row in rows] == [
        {k: str(v) for k, v in row.items()} for row in expected
    ]
    items = list(ET.fromstring(client.get(f"{API}/export.xml", params=params).content).iter("CHI_TIET_DVKT"))
    assert [{e.tag: e.text or "" for e in item} for item in items] == [
        {k: str(v) for k, v in row.items()} for row in expected
    ]
