"""Streamed exports and paged record building give what the whole-document code gave (SQLite + PostgreSQL).

The references below are the previous implementations (``csv.DictWriter`` over every record, one
ElementTree document serialised at the end), fed by the JSON list API; the streams are cut into
pages of 2 records and chunks of 1 row so that every page and chunk boundary is crossed.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from starlette.testclient import TestClient

from pacs.index.schema import events
from pacs.model import Origin
from pacs.runtime import Runtime
from pacs.services.appraisal import exports as svc_mod
from pacs.services.appraisal.exports import CSV_FIELDS, claim_row, csv_header_lines
from pacs.services.appraisal.records import RecordBuilder
from tests.appraisal.test_records import MODALITY, RECEIVED, _complete, _mpps, _store_study
from tests.factories import make_dataset, to_bytes

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
EXPORT = "/api/appraisal/v1/export"


@pytest.fixture
def small_index(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Five service lines (one with an MPPS step, one with XML-special characters, one DX device
    outside the register), small export pages and chunks, a fixed clock; returns the JSON records."""
    monkeypatch.setattr(svc_mod, "EXPORT_PAGE", 2)
    monkeypatch.setattr(svc_mod, "EXPORT_CHUNK", 1)
    rt.appraisal.clock = lambda: NOW
    ds = _store_study(rt, accession="ACC001")
    step = rt.appraisal.create_step(None, _mpps(ds.StudyInstanceUID), MODALITY)
    rt.appraisal.update_step(step, _complete(ds.SeriesInstanceUID), MODALITY)
    special = make_dataset(accession="ACC002", OperatorsName="Lê&Phạm<Thu>")
    rt.archive.store_bytes(to_bytes(special), MODALITY)
    _store_study(rt, accession="ACC003")
    rt.archive.clock = lambda: RECEIVED
    dx = make_dataset(accession="ACC004", Modality="DX", DeviceSerialNumber="UNREGISTERED-9")
    rt.archive.store_bytes(to_bytes(dx), Origin(address="10.0.0.9", calling_ae="DR09AE"))
    rt.appraisal.create_step(None, _mpps(generate_uid(), accession="ACC005"), MODALITY)
    records = rt.appraisal.list_records({}, MODALITY, limit=100).records
    assert [r["id"] for r in records] == [f"acc:ACC00{n}" for n in range(1, 6)]
    return json.loads(json.dumps(records, ensure_ascii=False))


def _reference_csv(rt: Runtime, params: dict[str, str], records: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    out.write("\ufeff")  # the BOM, then each header line as one quoted cell
    header = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    for line in csv_header_lines(rt.appraisal._header(params, NOW)):
        header.writerow([line])
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for n, rec in enumerate(records, 1):
        writer.writerow(claim_row(rec, n))
    return out.getvalue()


def _reference_xml(rt: Runtime, params: dict[str, str], records: list[dict[str, Any]]) -> bytes:
    a = rt.settings.appraisal
    header = rt.appraisal._header(params, NOW)
    root = ET.Element("PACS_TRICH_XUAT", {k: v for k, v in header.items() if k not in ("nhan_vi", "nhan_en")})
    label = ET.SubElement(root, "NHAN", {"MA": a.label_code})
    ET.SubElement(label, "VI").text = a.label_vi
    ET.SubElement(label, "EN").text = a.label_en
    body = ET.SubElement(ET.SubElement(root, "CHITIEU_CHITIET_DVKT_VTYT"), "DSACH_CHI_TIET_DVKT")
    for n, rec in enumerate(records, 1):
        item = ET.SubElement(body, "CHI_TIET_DVKT")
        for k, v in claim_row(rec, n).items():
            ET.SubElement(item, k).text = str(v)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def test_streamed_exports_equal_the_whole_document_exports(
    rt: Runtime, client: TestClient, small_index: list[dict[str, Any]]
) -> None:
    for params, n in (({}, 5), ({"modality": "CT"}, 4), ({"accession": "NONE"}, 0)):
        records = client.get("/api/appraisal/v1/records", params={**params, "limit": "100"}).json()["records"]
        assert len(records) == n
        got_csv = client.get(f"{EXPORT}.csv", params=params)
        assert got_csv.status_code == 200 and got_csv.headers["content-type"].startswith("text/csv")
        assert "content-length" not in got_csv.headers  # streamed (chunked), not held whole
        assert got_csv.content.decode("utf-8") == _reference_csv(rt, params, records)
        got_xml = client.get(f"{EXPORT}.xml", params=params)
        assert got_xml.status_code == 200 and got_xml.headers["content-type"].startswith("application/xml")
        assert got_xml.content == _reference_xml(rt, params, records)
    assert rt.appraisal.export_csv({}, MODALITY) == _reference_csv(rt, {}, small_index)
    assert rt.appraisal.export_xml({}, MODALITY) == _reference_xml(rt, {}, small_index)
    # XML-special characters in a staff name are escaped, and the text round-trips
    root = ET.fromstring(client.get(f"{EXPORT}.xml").content)
    notes = [e.findtext("PACS_GHI_CHU") for e in root.iter("CHI_TIET_DVKT")]
    assert any("Lê&Phạm<Thu>" in (n or "") for n in notes)
    # an export is audited once, with the number of rows
    with rt.engine.connect() as conn:
        details = [
            json.loads(d)
            for (d,) in conn.execute(select(events.c.details).where(events.c.kind == "appraisal.access"))
        ]
    assert {"request": "export.xml", "filters": {"modality": "CT"}, "count": 4} in details
    assert {"request": "export.csv", "filters": {"accession": "NONE"}, "count": 0} in details


def test_paged_records_equal_one_page_and_get(
    rt: Runtime, client: TestClient, small_index: list[dict[str, Any]]
) -> None:
    paged: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/appraisal/v1/records", params=params).json()
        paged += body["records"]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert paged == small_index
    for rec in small_index:
        assert client.get(f"/api/appraisal/v1/records/{rec['id']}").json() == rec


def test_export_cut_short_is_audited_as_incomplete(rt: Runtime, small_index: list[dict[str, Any]]) -> None:
    chunks = rt.appraisal.stream_csv({}, MODALITY)
    first = next(chunks)
    assert first.startswith('\ufeff"# loai: PACS_EXTRACT'.encode())
    chunks.close()  # the client went away
    with rt.engine.connect() as conn:
        last = conn.execute(
            select(events.c.details).where(events.c.kind == "appraisal.access").order_by(events.c.id.desc())
        ).scalar()
    detail = json.loads(last)
    assert detail["request"] == "export.csv" and detail["complete"] is False
    assert 0 < detail["count"] < len(small_index)


def test_bad_export_filter_is_400_before_streaming(client: TestClient) -> None:
    r = client.get(f"{EXPORT}.csv", params={"from": "yesterday"})
    assert r.status_code == 400 and "from" in r.json()["detail"]
    assert client.get(f"{EXPORT}.xml", params={"to": "2025-13-99x"}).status_code == 400


def test_a_request_leaves_the_garbage_collector_alone(
    client: TestClient, small_index: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building records changes no process-wide state: the collector stays as the application set it."""
    seen: list[bool] = []
    build = RecordBuilder.record

    def spy(self: RecordBuilder, *rows: Any) -> dict[str, Any]:
        seen.append(gc.isenabled())
        return build(self, *rows)

    monkeypatch.setattr(RecordBuilder, "record", spy)
    assert gc.isenabled()
    assert client.get("/api/appraisal/v1/records").json()["count"] == len(small_index)
    assert client.get(f"{EXPORT}.csv").status_code == 200
    assert len(seen) == 2 * len(small_index) and all(seen) and gc.isenabled()
    gc.disable()  # a collector the application disabled stays disabled
    try:
        seen.clear()
        assert client.get("/api/appraisal/v1/records").json()["count"] == len(small_index)
        assert len(seen) == len(small_index) and not any(seen) and not gc.isenabled()
    finally:
        gc.enable()
