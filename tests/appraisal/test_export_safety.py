"""Appraisal exports and filters that must neither run nor leak (issues 14 and 16; SQLite and PostgreSQL).

``export.csv`` cells that a spreadsheet would run as formulas are neutralised with a leading
``'`` (OWASP CSV injection) while numbers, dates and IDs keep their text; each ``#`` header line
is one quoted cell starting with ``#``; ``export.xlsx`` keeps every value verbatim in a text cell,
never a formula; the ``patient_id`` filter matches whole identifiers only, never a part of
another patient's.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import pytest
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from pacs.model import Origin
from pacs.runtime import Runtime
from pacs.services.appraisal.exports import csv_cell, csv_comment
from tests.appraisal.excel import csv_export, xlsx_export
from tests.factories import make_dataset, to_bytes

MODALITY = Origin(address="10.0.0.5", calling_ae="CT01AE", protocol="dimse")
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _store(rt: Runtime, patient_id: str, accession: str, **extra: Any) -> None:
    ds = make_dataset(study_uid=generate_uid(), patient_id=patient_id, accession=accession, **extra)
    rt.archive.store_bytes(to_bytes(ds), MODALITY)


def _csv(content: bytes) -> tuple[list[str], list[dict[str, str]]]:
    """The ``#`` header cells and the rows of an export, read as a spreadsheet reads them."""
    return csv_export(content)


def _runnable(cell: str) -> bool:
    """Whether a spreadsheet would read ``cell`` as a formula."""
    return cell.startswith(TRIGGERS) and not NUMBER.fullmatch(cell)


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("@SUM(1)", "'@SUM(1)"),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("=1", "'=1"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-", "'-"),
        # legitimate values are left alone
        ("-12.5", "-12.5"),
        ("-2", "-2"),
        ("+84912345678", "+84912345678"),
        ("1e-5", "1e-5"),
        ("ACC-001", "ACC-001"),
        ("2025-01-10", "2025-01-10"),
        ("202501101015", "202501101015"),
        ("CL.1.SN-1234", "CL.1.SN-1234"),
        ("acc:=1", "acc:=1"),
        ("Nguyễn^Văn An", "Nguyễn^Văn An"),
        (" =1", " =1"),
        ("", ""),
    ],
)
def test_csv_cell(value: str, written: str) -> None:
    assert csv_cell(value) == written


def test_csv_cell_keeps_non_text() -> None:
    assert csv_cell(-3) == -3 and csv_cell(1.5) == 1.5 and csv_cell(None) is None


def test_csv_comment_is_one_cell_that_cannot_start_a_formula() -> None:
    raw = '# bo_loc: {"accession": "a,=cmd|\' /C calc\'!A0", "x": "b,\\"@SUM(1)", "y": "c\n=1\r\n+2"}'
    line = csv_comment(raw)
    assert "\n" not in line and "\r" not in line  # one line of the file
    [cells] = list(csv.reader(io.StringIO(line)))
    assert cells == [raw.replace("\r\n", " ").replace("\n", " ")]  # one cell, commas and quotes kept
    assert cells[0].startswith("# bo_loc: ") and not _runnable(cells[0])
    assert csv_comment("# truong: a, b (c)") == '"# truong: a, b (c)"'
    assert csv_comment("=1+1") == '"# =1+1"'  # a line that is not a comment is made one


def test_export_neutralises_formulas(rt: Runtime, client: TestClient) -> None:
    hostile = {
        '=HYPERLINK("http://x")': "=1+1",
        "@SUM(1)": "@A1",
        "+1+1": "+1+1",
        "-2+3": "-2+3",
    }
    for n, (pid, acc) in enumerate(hostile.items()):
        _store(rt, pid, acc, OperatorsName='=HYPERLINK("http://x")', StudyDescription=f"-{n}+cmd")
    _store(rt, "-42", "ACC-7-1", OperatorsName="Lê^Văn-An")  # a number and a '-' inside: untouched

    r = client.get("/api/appraisal/v1/export.csv", params={"accession": "a,=cmd|' /C calc'!A0"})
    assert r.status_code == 200
    header, _ = _csv(r.content)
    assert any("a,=cmd|' /C calc'!A0" in cell for cell in header)  # the filter, in one cell
    for cell in header:
        assert cell.startswith("# ") and not _runnable(cell), cell

    r = client.get("/api/appraisal/v1/export.csv")
    assert r.status_code == 200
    _, rows = _csv(r.content)
    assert len(rows) == 5
    for row in rows:
        for field, cell in row.items():
            assert not _runnable(cell), (field, cell)
    by_pid = {row["MA_BN"]: row for row in rows}
    assert set(by_pid) == {"'" + pid for pid in hostile} | {"-42"}
    for pid, acc in hostile.items():
        assert by_pid["'" + pid]["PACS_SO_PHIEU_CHI_DINH"] == "'" + acc
        assert by_pid["'" + pid]["PACS_MA_BAN_GHI"].startswith("acc")  # record ids are safe as they are
    legit = by_pid["-42"]
    assert legit["PACS_SO_PHIEU_CHI_DINH"] == "ACC-7-1" and legit["PACS_MA_BAN_GHI"] == "acc:ACC-7-1"
    assert legit["TG_THIET_BI_BAT_DAU"] == "202501101015" and legit["MA_MAY"] == "CL.1.SN-1234"
    assert "Lê^Văn-An" in legit["PACS_GHI_CHU"]

    # The JSON and XML keep the values as they are: only a spreadsheet runs formulas.
    records = client.get("/api/appraisal/v1/records", params={"accession": "=1+1"}).json()["records"]
    assert [rec["patient"]["patient_id"] for rec in records] == ['=HYPERLINK("http://x")']
    assert b"<MA_BN>+1+1</MA_BN>" in client.get("/api/appraisal/v1/export.xml").content

    # The XLSX keeps them too, as text cells: a text cell is never run, so nothing is prefixed.
    book = xlsx_export(client.get("/api/appraisal/v1/export.xlsx").content)
    for row in book.rows:
        for field, cell in row.items():
            assert cell.data_type in ("s", "n"), (field, cell.data_type)  # never "f" (formula)
    cells = {row["MA_BN"].value: row for row in book.rows}
    assert set(cells) == set(hostile) | {"-42"}
    for pid, acc in hostile.items():
        assert cells[pid]["MA_BN"].data_type == "s" and cells[pid]["MA_BN"].number_format == "@"
        assert cells[pid]["PACS_SO_PHIEU_CHI_DINH"].value == acc
    assert cells["-42"]["MA_BN"].data_type == "s"  # an ID that looks like a number stays text


def test_patient_id_filter_is_exact(rt: Runtime, client: TestClient) -> None:
    _store(rt, "0791", "ACC-A")
    _store(rt, "107910", "ACC-B", OtherPatientIDs=["X0791", "20791", "107910123456"])
    _store(rt, "P-3", "ACC-C", OtherPatientIDs=["HC4010123456789", "0791"])  # the same person's other ID
    _store(rt, "P-4", "ACC-D", OtherPatientIDs=["0791%", "07_1"])

    def ids(**params: str) -> list[str]:
        body = client.get("/api/appraisal/v1/records", params=params).json()
        return sorted(rec["id"] for rec in body["records"])

    assert ids(patient_id="0791") == ["acc:ACC-A", "acc:ACC-C"]
    assert ids(patient_id="107910") == ["acc:ACC-B"]
    assert ids(patient_id="1079") == []
    assert ids(patient_id="791") == []
    assert ids(patient_id="HC4010123456789") == ["acc:ACC-C"]
    assert ids(patient_id="07_1") == ["acc:ACC-D"]  # LIKE wildcards are literal
    assert ids(patient_id="07%") == []
    assert ids(patient_id="0791\\X0791") == []  # never two members at once
    _, rows = _csv(client.get("/api/appraisal/v1/export.csv", params={"patient_id": "0791"}).content)
    assert sorted(row["MA_BN"] for row in rows) == ["0791", "P-3"]
    book = xlsx_export(client.get("/api/appraisal/v1/export.xlsx", params={"patient_id": "0791"}).content)
    assert sorted(row["MA_BN"] for row in book.values()) == ["0791", "P-3"]
