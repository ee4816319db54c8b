"""Reconciliation of an HIS claim (XML3) with the archive (issue 16): every category, every key.

The generated month (10,005 studies, 24 devices) is reconciled against a GIAMDINHHS envelope
(XML1 patients + XML3 lines) with deliberate differences: lines left out (PACS studies with no
claim line), claim lines for studies that do not exist, twins (two same-service studies of one
patient on one day: ambiguous), days moved (not found, the other days listed; or matched by
accession, with the days shown as different). The HIS order link (MA_LK = the order's visit) and
patient + service + day are checked on SQLite and PostgreSQL. Hostile uploads are refused with a
4xx and a reason, in bounded memory.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
import tracemalloc
from typing import Any

import pytest
from openpyxl import load_workbook
from starlette.testclient import TestClient

from pacs import cli
from pacs.model import Origin
from pacs.runtime import Runtime
from pacs.services.appraisal.reconcile_out import RESULT_CODES, RESULTS_SHEET
from pacs.services.orders.model import Control, OrderMessage, PatientInfo, ScheduledStep
from tests.appraisal.conftest import MonthRuntime
from tests.appraisal.month import Claim, make_claim, xml3
from tests.appraisal.test_records import _store_study

API = "/api/appraisal/v1"
XML = {"Content-Type": "application/xml"}


@pytest.fixture(scope="module")
def claim(generated_month: MonthRuntime) -> Claim:
    return make_claim(generated_month.month)


@pytest.fixture(scope="module")
def reconciled(generated_month: MonthRuntime, claim: Claim) -> dict[str, Any]:
    r = generated_month.client.post(
        f"{API}/reconcile", params={"month": "2026-11"}, content=claim.body, headers=XML
    )
    assert r.status_code == 200, r.text[:500]
    return dict(r.json())


def test_every_category_of_a_month(
    reconciled: dict[str, Any], claim: Claim, generated_month: MonthRuntime
) -> None:
    doc = reconciled
    lines = doc["lines"]
    assert len(lines) == len(claim.expected)
    got = [(ln["category"], ln["pacs"]["record_id"] if ln["pacs"] else None) for ln in lines]
    assert got == claim.expected
    assert {r["pacs"]["record_id"] for r in doc["pacs_only"]} == claim.pacs_only
    counts = doc["counts"]
    assert counts["ambiguous"] == 10 and counts["not_found"] == 20 and counts["pacs_only"] == 45
    assert counts["matched"] == len(claim.expected) - 30 and counts["outside_imaging"] == claim.outside
    by = {ln["matched_by"] for ln in lines if ln["category"] == "matched"}
    assert by == {"accession", "patient_service_date"}
    # the twins: each line lists both studies of the patient's day
    for ln in lines:
        if ln["category"] == "ambiguous":
            assert len(ln["candidates"]) == 2 and ln["matched_by"] == "patient_service_date"
            assert "không khớp" in ln["category_text"] and "not matched" in ln["category_text"]
    # moved with an accession: matched, the days shown as different; without: the other day listed
    moved = [ln for ln in lines if ln.get("same_day") is False]
    assert len(moved) == 5 and all("khác ngày / different days" in " ".join(ln["facts"]) for ln in moved)
    for position, rid in claim.moved.items():
        near = lines[position - 1]["same_patient_and_service_other_days"]
        assert [n["record_id"] for n in near] == [rid]
    twins_only = [r for r in doc["pacs_only"] if r["candidate_of_ambiguous_line"]]
    assert len(twins_only) == 10
    # the evidence summary of a matched line
    first = lines[0]["pacs"]
    s = generated_month.month.studies[0]
    assert first["images"] == s.images and first["series"] == s.series and first["study_date"] == s.date
    assert first["devices"][0]["device_serial_number"] == s.device.serial


def test_the_run_is_stored_and_downloadable(
    generated_month: MonthRuntime, reconciled: dict[str, Any], claim: Claim
) -> None:
    c = generated_month.client
    run = reconciled["run"]
    again = c.get(f"{API}/reconcile/{run}").json()
    assert again["counts"] == reconciled["counts"] and again["lines"] == reconciled["lines"]
    assert len(reconciled["upload"]["sha256"]) == 64
    r = c.get(f"/api/appraisal/reconcile/{run}", params={"format": "xlsx"})
    assert r.status_code == 200 and r.content.startswith(b"PK")
    wb = load_workbook(io.BytesIO(r.content), read_only=True)
    rows = list(wb[RESULTS_SHEET].iter_rows(min_row=4, values_only=True))
    assert len(rows) == len(reconciled["lines"]) + len(reconciled["pacs_only"])
    categories = [row[1] for row in rows]
    for cat in ("matched", "not_found", "ambiguous", "pacs_only"):
        assert categories.count(cat) == (reconciled["counts"][cat])
    r = c.get(f"{API}/reconcile/{run}", params={"format": "csv"})
    assert r.content.startswith(b"\xef\xbb\xbf")
    text = r.content[3:].decode("utf-8")
    records = [row for row in csv.reader(io.StringIO(text)) if not (len(row) == 1 and row[0].startswith("#"))]
    assert tuple(records[0]) == RESULT_CODES
    assert len(records) - 1 == len(rows)
    assert c.get(f"{API}/reconcile/999999").status_code == 404


def test_a_csv_list_of_accession_numbers(generated_month: MonthRuntime) -> None:
    studies = generated_month.month.studies
    body = (
        "accession_number,MA_LK\n"
        + "".join(f"{s.accession},LK{s.n}\n" for s in studies[:30])
        + "NOPE-1,LKX\n"
    )
    r = generated_month.client.post(
        f"{API}/reconcile", params={"month": "2026-11", "format": "json"}, content=body.encode(),
        headers={"Content-Type": "text/csv"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    cats = [ln["category"] for ln in r.json()["lines"]]
    assert cats == ["matched"] * 30 + ["not_found"]


def test_the_cli_reconciles_a_file(
    generated_month: MonthRuntime, claim: Claim, tmp_path: Any, capsys: Any
) -> None:
    path = tmp_path / "xml3.xml"
    path.write_bytes(claim.body)
    out = tmp_path / "out.json"
    cfg = str(generated_month.folder / "config.toml")
    assert (
        cli.main(
            [
                "appraisal",
                "reconcile",
                "--config",
                cfg,
                "--xml3",
                str(path),
                "--month",
                "2026-11",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["counts"]["ambiguous"] == 10 and doc["counts"]["pacs_only"] == 45
    assert "run " in capsys.readouterr().err


# ---------------------------------------------------------------- hostile uploads

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<CHITIEU_CHITIET_DVKT_VTYT><DSACH_CHI_TIET_DVKT><CHI_TIET_DVKT><MA_LK>&lol9;</MA_LK></CHI_TIET_DVKT>
</DSACH_CHI_TIET_DVKT></CHITIEU_CHITIET_DVKT_VTYT>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>
<CHITIEU_CHITIET_DVKT_VTYT><DSACH_CHI_TIET_DVKT><CHI_TIET_DVKT><MA_LK>&e;</MA_LK></CHI_TIET_DVKT>
</DSACH_CHI_TIET_DVKT></CHITIEU_CHITIET_DVKT_VTYT>"""


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (BILLION_LAUGHS, "DTD"),
        (XXE, "DTD"),
        (b"<CHITIEU_CHITIET_DVKT_VTYT><DSACH", "not well-formed"),
        (b"<a><b/></a>", "no claim line"),
        (
            b"<GIAMDINHHS><FILEHOSO><LOAIHOSO>XML3</LOAIHOSO><NOIDUNGFILE>%%%</NOIDUNGFILE></FILEHOSO></GIAMDINHHS>",
            "base64",
        ),
    ],
)
def test_hostile_or_broken_xml_is_refused_with_the_reason(
    generated_month: MonthRuntime, body: bytes, reason: str
) -> None:
    tracemalloc.start()
    t = time.perf_counter()
    r = generated_month.client.post(
        f"{API}/reconcile", params={"month": "2026-11"}, content=body, headers=XML
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r.status_code == 400, r.text
    assert reason in r.json()["detail"]
    assert peak < 20 << 20 and time.perf_counter() - t < 5  # nothing was expanded


async def _post_chunked(app: Any, total: int, size: int = 1 << 20) -> tuple[int, bytes]:
    """POST ``total`` bytes in chunks of ``size`` (no Content-Length) straight to the ASGI app: the
    chunks are made as the app asks for them, so the memory seen is the app's own."""
    sent, status, body = 0, 0, bytearray()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent >= total:
            return {"type": "http.disconnect"}
        sent += size
        return {"type": "http.request", "body": b"<" * size, "more_body": sent < total}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": f"{API}/reconcile", "raw_path": f"{API}/reconcile".encode(), "query_string": b"month=2026-11",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/xml")],
        "client": ("127.0.0.1", 5000), "server": ("testserver", 80), "root_path": "",
    }  # fmt: skip
    await app(scope, receive, send)
    return status, bytes(body)


def test_a_50_mb_body_is_refused_before_it_is_read(generated_month: MonthRuntime) -> None:
    c = generated_month.client
    r = c.post(f"{API}/reconcile", content=b"x" * (50 << 20), headers=XML)  # Content-Length: 50 MiB
    assert r.status_code == 413 and "MiB" in r.json()["detail"]
    tracemalloc.start()
    status, body = asyncio.run(_post_chunked(c.app, 50 << 20))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert status == 413 and b"MiB" in body
    assert peak < 40 << 20  # the cap (32 MiB) and one chunk, never the 50 MiB


def test_a_csv_that_is_not_utf8_is_refused(generated_month: MonthRuntime) -> None:
    r = generated_month.client.post(
        f"{API}/reconcile", params={"month": "2026-11"}, content="MA_LK\nLê\n".encode("cp1258"),
        headers={"Content-Type": "text/csv"},
    )  # fmt: skip
    assert r.status_code == 400 and "UTF-8" in r.json()["detail"]
    bad = generated_month.client.post(f"{API}/reconcile", params={"month": "2026-13"}, content=b"MA_LK\nX\n")
    assert bad.status_code == 400 and "month" in bad.json()["detail"]


# ---------------------------------------------------------------- the HIS order link, both backends

HIS = Origin(address="10.0.0.2", protocol="hl7", user="HIS")


def _order(rt: Runtime, placer: str, accession: str, admission: str, patient: str) -> None:
    rt.orders.apply(
        OrderMessage(
            control=Control.NEW,
            placer_order_number=placer,
            accession_number=accession,
            patient=PatientInfo(patient_id=patient, issuer_of_patient_id="BV01", name="Ngô^Thanh Tùng"),
            requested_procedure_id="RP1",
            requested_procedure_description="CT sọ não",
            ordered_at="20250110080500+0700",
            admission_id=admission,
            steps=(
                ScheduledStep(
                    step_id="SPS1", modality="CT", station_ae_title="CT01AE", start="20250110090000"
                ),
            ),
        ),
        HIS,
    )


@pytest.mark.pg
def test_his_order_link_and_patient_service_day(rt: Runtime, client: TestClient) -> None:
    _order(rt, "ORD-1", "HISACC1", "LK-HIS-1", "BN777")
    _store_study(rt, accession="HISACC1", patient_id="BN777", StudyDescription="CT sọ não")
    _store_study(rt, accession="OTHER-2", patient_id="BN888", StudyDescription="CT sọ não")
    _store_study(rt, accession="OTHER-3", patient_id="BN999", StudyDescription="X-quang ngực thẳng")
    line = (
        "<CHI_TIET_DVKT><MA_LK>{}</MA_LK><STT>1</STT><MA_DICH_VU>{}</MA_DICH_VU>"
        "<NGAY_TH_YL>202501101000</NGAY_TH_YL>{}</CHI_TIET_DVKT>"
    )
    body = xml3(
        [
            line.format("LK-HIS-1", "18.0001.0001", ""),  # by the HIS order of the visit
            line.format("LK-2", "18.0001.0001", "<MA_BN>BN888</MA_BN>"),  # patient + service + day
            line.format(
                "LK-3", "18.0001.0001", "<MA_BN>BN999</MA_BN>"
            ),  # patient, another service: not found
        ]
    )
    r = client.post(
        f"{API}/reconcile", params={"from": "2025-01-01", "to": "2025-01-31"}, content=body, headers=XML
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    got = [
        (ln["category"], ln["matched_by"], (ln["pacs"] or {}).get("accession_number")) for ln in doc["lines"]
    ]
    assert got == [
        ("matched", "his_order", "HISACC1"),
        ("matched", "patient_service_date", "OTHER-2"),
        ("not_found", None, None),
    ]
    assert [p["pacs"]["accession_number"] for p in doc["pacs_only"]] == ["OTHER-3"]
    assert client.get(f"{API}/reconcile/{doc['run']}").json()["counts"] == doc["counts"]
