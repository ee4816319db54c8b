"""Monthly exports (issue 16): filters by department, device and service code; totals per device
per day (plain counts) in the XLSX and as CSV / JSON; checked against what was generated.

Also a small month stored through the archive's store path (the path C-STORE takes), exported and
read back with openpyxl.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from openpyxl import load_workbook
from starlette.testclient import TestClient

from pacs import cli
from pacs.runtime import Runtime
from pacs.services.appraisal.exports import HEADING_ROWS, RECORDS_SHEET, TOTALS_SHEET
from pacs.services.appraisal.totals import TOTAL_CODES
from tests.appraisal.conftest import MonthRuntime
from tests.appraisal.excel import csv_export, xlsx_export
from tests.appraisal.month import DEVICES, KINDS, RECODED, machine_code
from tests.appraisal.test_no_verdict import MONTH, Month

API = "/api/appraisal/v1"
NOV = {"from": "2026-11-01", "to": "2026-11-30"}


def _csv(client: TestClient, **params: str) -> list[dict[str, str]]:
    r = client.get(f"{API}/export.csv", params={**NOV, **params})
    assert r.status_code == 200, r.text[:300]
    return csv_export(r.content)[1]


def test_filter_by_department(generated_month: MonthRuntime) -> None:
    month = generated_month.month
    rows = _csv(generated_month.client, department="K02")
    want = [s for s in month.studies if s.device.department == "K02" and s.device.registered]
    assert len(rows) == len(want) and {r["MA_KHOA"] for r in rows} == {"K02"}
    assert sorted(r["PACS_SO_PHIEU_CHI_DINH"] for r in rows) == sorted(s.accession for s in want)
    assert _csv(generated_month.client, department="K99") == []


def test_filter_by_machine_code_follows_the_register_dates(generated_month: MonthRuntime) -> None:
    month = generated_month.month
    for code in ("XQ.2.XR-01B", "XQ.1.XR-01", "CL.1.CT-02"):
        rows = _csv(generated_month.client, machine_code=code)
        want = [s for s in month.studies if machine_code(s.device, s.day) == code]
        assert want and len(rows) == len(want), code
        assert {r["MA_MAY"] for r in rows} == {code}
    old = _csv(generated_month.client, machine_code="XQ.1.01001.XR-01")  # the 4750 form
    assert all(r["PACS_MA_MAY_4750"] == "XQ.1.01001.XR-01" for r in old) and old


def test_filter_by_service_code(generated_month: MonthRuntime) -> None:
    month = generated_month.month
    code = KINDS["CT"][1]
    rows = _csv(generated_month.client, service_code=code, department="K01")
    want = [s for s in month.studies if s.service_code == code and machine_code(s.device, s.day)]
    assert len(rows) == len(want) and {r["MA_DICH_VU"] for r in rows} == {code}


def _expected_totals(month: Any, first: int = 1, last: int = 30) -> Counter[tuple[str, str, str]]:
    want: Counter[tuple[str, str, str]] = Counter()
    for s in month.studies:
        if first <= s.day <= last:
            key = (f"2026-11-{s.day:02d}", machine_code(s.device, s.day), s.device.station)
            want[key] += s.images
    return want


def test_totals_per_device_per_day(generated_month: MonthRuntime) -> None:
    c, month = generated_month.client, generated_month.month
    body = c.get(f"{API}/totals", params=NOV).json()
    got = Counter({(t["NGAY"], t["MA_MAY"], t["TEN_TRAM"]): t["SO_ANH"] for t in body["totals"]})
    assert got == _expected_totals(month)
    assert sum(t["SO_CA_CHUP"] for t in body["totals"]) == len(month.studies)
    assert {t["TEN_TRAM"] for t in body["totals"]} == {d.station for d in DEVICES}
    empty = [t for t in body["totals"] if not t["MA_MAY"]]
    assert empty and all("no MA_MAY" in t["GHI_CHU"] for t in empty)
    r = c.get("/api/appraisal/totals", params={**NOV, "format": "csv", "machine_code": "XQ.2.XR-01B"})
    assert r.content.startswith(b"\xef\xbb\xbf")
    rows = [row for row in csv.reader(io.StringIO(r.content[3:].decode())) if not row[0].startswith("#")]
    assert tuple(rows[0]) == TOTAL_CODES and len(rows) == 1 + 15  # one device, 16-30 November
    assert {row[1] for row in rows[1:]} == {"XQ.2.XR-01B"}


def test_a_week_in_xlsx_with_its_totals_sheet(generated_month: MonthRuntime) -> None:
    c, month = generated_month.client, generated_month.month
    r = c.get(f"{API}/export.xlsx", params={"from": "2026-11-10", "to": "2026-11-16"})
    assert r.status_code == 200
    wb = load_workbook(io.BytesIO(r.content), read_only=True)
    assert wb.sheetnames[1:] == [RECORDS_SHEET, TOTALS_SHEET]
    records = list(wb[RECORDS_SHEET].iter_rows(min_row=HEADING_ROWS + 1, values_only=True))
    in_week = [s for s in month.studies if 10 <= s.day <= 16]
    assert len(records) >= len(in_week)  # and the procedure steps without images
    totals = list(wb[TOTALS_SHEET].iter_rows(min_row=HEADING_ROWS + 1, values_only=True))
    got = Counter({(t[0], t[1] or "", t[7]): t[10] for t in totals})
    assert got == _expected_totals(month, 10, 16)
    recoded = {t[1] for t in totals if t[6] == RECODED}
    assert recoded == {"XQ.1.XR-01", "XQ.2.XR-01B"}  # the code changed on the 16th
    assert all(isinstance(t[8], int) and isinstance(t[10], int) for t in totals)


def test_the_cli_exports_the_month(generated_month: MonthRuntime, tmp_path: Any) -> None:
    cfg = str(generated_month.folder / "config.toml")
    out = tmp_path / "k03.csv"
    args = ["appraisal", "export", "--config", cfg, "--month", "2026-11", "--department", "K03"]
    assert cli.main([*args, "--output", str(out)]) == 0
    rows = csv_export(out.read_bytes())[1]
    assert rows and {r["MA_KHOA"] for r in rows} == {"K03"}
    out = tmp_path / "totals.csv"
    assert cli.main(["appraisal", "totals", "--config", cfg, "--month", "2026-11", "--output", str(out)]) == 0
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")


def test_a_stored_month_exports_and_reads_back(rt: Runtime, client: TestClient) -> None:
    """Three days through the archive's store path (X-ray, multi-phase CT, US, MR, MPPS with and
    without images), exported as XLSX and read back."""
    m = Month(rt)
    for d in range(3):
        m.day(MONTH + timedelta(days=d))
    rt.appraisal.clock = lambda: datetime(2025, 4, 2, tzinfo=UTC)
    book = xlsx_export(
        client.get(f"{API}/export.xlsx", params={"from": "2025-03-01", "to": "2025-03-03"}).content
    )
    assert len(book.rows) == m.lines == 27
    totals = list(book.workbook[TOTALS_SHEET].iter_rows(min_row=HEADING_ROWS + 1, values_only=True))
    by_station = Counter()
    for t in totals:
        by_station[t[7]] += t[10]
    assert by_station["CT01"] == 3 * (6 + 3) and by_station["DR01"] == 3 * 2 and by_station["MR01"] == 3 * 4
    ct = [t for t in totals if t[7] == "CT01"]
    assert {t[1] for t in ct} == {"CL.1.SN-1234"} and all(t[8] == 2 for t in ct)  # two CT studies a day
