"""Device times in records and exports: where they go, what they measure, what they are called
(issue 16; SQLite and PostgreSQL, through the service and the HTTP routes).

The Ministry of Health (2025) wrote that times recorded by PACS, DICOM files or device logs reflect
only the machine's operating time and must not be used alone to refuse payment. So: a device time
never fills a field of the data standard (``NGAY_TH_YL`` is the HIS's); a span the times cannot
measure is ``unknown`` with the reason, never 0; a late sending is a receive delay, not a clock
fault; and every time names its own source.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from pacs.model import Origin
from pacs.runtime import Runtime
from tests.appraisal.excel import csv_export
from tests.appraisal.test_records import MODALITY, RECEIVED, _complete, _mpps, _store_study
from tests.factories import make_dataset, to_bytes

RECORDS = "/api/appraisal/v1/records"
ASSUMED = "assumed +0700 ([appraisal] device_utc_offset)"
SPAN_ROW = "Khoảng thu nhận ảnh của thiết bị / device_acquisition_span (giây / s)"  # in the HTML view
XRAY = Origin(address="10.0.0.9", calling_ae="DR01AE", protocol="dimse")


def _store(rt: Runtime, ds: Dataset, origin: Origin = MODALITY) -> None:
    rt.archive.store_bytes(to_bytes(ds), origin)


def _csv_rows(client: TestClient, **params: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The ``#`` header lines of ``export.csv`` and its rows by record id."""
    r = client.get("/api/appraisal/v1/export.csv", params=params)
    assert r.status_code == 200, r.text
    header, rows = csv_export(r.content)
    return header, {row["PACS_MA_BAN_GHI"]: row for row in rows}


def _xml_items(client: TestClient) -> dict[str, ET.Element]:
    r = client.get("/api/appraisal/v1/export.xml")
    assert r.status_code == 200, r.text
    items = ET.fromstring(r.content).iter("CHI_TIET_DVKT")
    return {str(e.findtext("PACS_MA_BAN_GHI")): e for e in items}


def _xray(rt: Runtime, accession: str, times: list[str], **extra: Any) -> None:
    """A DX series of ``len(times)`` images (AcquisitionTime each) received at 10:20:30 Vietnam time."""
    rt.archive.clock = lambda: RECEIVED
    study, series = generate_uid(), generate_uid()
    for n, t in enumerate(times, 1):
        ds = make_dataset(
            patient_name="Hoàng^Thị Mai",
            study_uid=study,
            series_uid=series,
            instance_number=n,
            accession=accession,
            modality="DX",
            StationName="DR01",
            DeviceSerialNumber="XR-0001",
            StudyDescription="Chụp X-quang ngực thẳng",
            **extra,
        )
        ds.AcquisitionTime = t
        _store(rt, ds, XRAY)


# ---------------------------------------------------------------------- 1. NGAY_TH_YL is the HIS's


def test_no_device_time_goes_into_a_standard_claim_field(rt: Runtime, client: TestClient) -> None:
    # MPPS start 10:10, images 10:15-10:19:30: before issue 16 NGAY_TH_YL said 202501101010
    ds = _store_study(rt, accession="ACC-MPPS")
    step = rt.appraisal.create_step(None, _mpps(ds.StudyInstanceUID, accession="ACC-MPPS"), MODALITY)
    rt.appraisal.update_step(step, _complete(ds.SeriesInstanceUID), MODALITY)
    _store_study(rt, accession="ACC-IMG")  # images only: NGAY_TH_YL used to be the first image

    for rid in ("acc:ACC-MPPS", "acc:ACC-IMG"):
        rec = client.get(f"{RECORDS}/{rid}").json()
        claim, sources = rec["claim_fields"], rec["claim_field_sources"]
        for field in ("NGAY_YL", "NGAY_TH_YL", "NGAY_KQ"):
            assert claim[field] == "", (rid, field)
            assert "HIS" in sources[field] and "not connected" in sources[field]
        # device times stay in the PACS extension fields, labelled with their source
        assert claim["TG_THIET_BI_BAT_DAU"] == "202501101015"
        assert claim["TG_THIET_BI_KET_THUC"] == "202501101019"
        assert sources["TG_THIET_BI_BAT_DAU"].startswith("first image acquisition time written by the device")
        assert "machine operating time only" in sources["TG_THIET_BI_BAT_DAU"]
        assert any("NGAY_TH_YL" in n and "HIS" in n for n in rec["notes"])
    # the MPPS start is still reported, as a device time with its source
    stamps = client.get(f"{RECORDS}/acc:ACC-MPPS").json()["device_timestamps"]
    assert stamps["procedure_step_start"] == "2025-01-10T10:10:00+07:00"
    assert stamps["procedure_step_start_source"] == "PerformedProcedureStepStartDate/Time (0040,0244/0245)"

    header, rows = _csv_rows(client)
    assert set(rows) == {"acc:ACC-MPPS", "acc:ACC-IMG"}
    for row in rows.values():
        assert row["NGAY_YL"] == row["NGAY_TH_YL"] == row["NGAY_KQ"] == ""
        assert row["TG_THIET_BI_BAT_DAU"] == "202501101015"
    [fields] = [h for h in header if h.startswith("# truong:")]
    assert "NGAY_TH_YL" in fields and "HIS" in fields and "(MPPS start" not in fields
    for rid, item in _xml_items(client).items():
        assert item.findtext("NGAY_TH_YL") == "", rid
        assert item.findtext("TG_THIET_BI_BAT_DAU") == "202501101015"
    html = client.get(f"{RECORDS}/acc:ACC-MPPS.html").text
    assert "not connected" in html


# ---------------------------------------------------------------------- 2. no span of 0 seconds


def _series_times_only(rt: Runtime) -> None:
    """Three CT images without acquisition or content times, only SeriesDate/SeriesTime."""
    rt.archive.clock = lambda: RECEIVED
    study, series = generate_uid(), generate_uid()
    for n in range(1, 4):
        ds = make_dataset(
            study_uid=study,
            series_uid=series,
            instance_number=n,
            accession="ACC-SERIES",
            SeriesDate="20250110",
            SeriesTime="101400",
        )
        del ds.AcquisitionDate, ds.AcquisitionTime
        _store(rt, ds)


@pytest.mark.parametrize(
    ("store", "rid", "reason"),
    [
        (lambda rt: _xray(rt, "XQ-1", ["101500"]), "acc:XQ-1", "one image"),
        (_series_times_only, "acc:ACC-SERIES", "SeriesDate/SeriesTime only"),
        (lambda rt: _xray(rt, "XQ-2", ["101500", "101500"]), "acc:XQ-2", "same acquisition time"),
    ],
    ids=["single-image-xray", "series-time-only", "same-time"],
)
def test_a_span_that_cannot_be_measured_is_unknown_never_zero(
    rt: Runtime, client: TestClient, store: Any, rid: str, reason: str
) -> None:
    store(rt)
    rec = client.get(f"{RECORDS}/{rid}").json()
    span = rec["device_acquisition_span"]
    assert span["seconds"] is None and span["status"] == "unknown", span
    assert reason in span["reason"] and "two" in span["reason"]
    [svc] = rt.appraisal.list_records({"accession": rid.split(":", 1)[1]}, MODALITY).records
    assert svc["device_acquisition_span"] == span
    html = client.get(f"{RECORDS}/{rid}.html").text
    assert f"<th>{SPAN_ROW}</th><td>không xác định / unknown</td>" in html
    assert reason in html and "<td>0.0</td>" not in html


def test_a_span_of_two_different_acquisition_times_is_measured(rt: Runtime, client: TestClient) -> None:
    _xray(rt, "XQ-3", ["101500", "101730"])
    span = client.get(f"{RECORDS}/acc:XQ-3").json()["device_acquisition_span"]
    assert span["status"] == "measured" and span["seconds"] == 150.0 and "reason" not in span
    assert span["from"] == "2025-01-10T10:15:00+07:00" and span["to"] == "2025-01-10T10:17:30+07:00"
    html = client.get(f"{RECORDS}/acc:XQ-3.html").text
    assert f"<th>{SPAN_ROW}</th><td>150.0</td>" in html


# ---------------------------------------------------------------------- 3. receive delay, not clock fault


def test_a_late_sender_has_a_receive_delay_not_a_clock_fault(rt: Runtime, client: TestClient) -> None:
    # synchronised DR acquires at 10:00:00 and sends at 10:20:30 (20 min 30 s later; tolerance 5 min)
    _xray(rt, "XQ-LATE", ["095900", "100000"], AcquisitionTimeSynchronized="Y")
    rec = client.get(f"{RECORDS}/acc:XQ-LATE").json()
    [dev] = rec["devices"]
    clock = dev["clock"]
    assert clock["receive_delay_min_seconds"] == 1230.0
    assert (
        "receive delay" in clock["receive_delay_basis"]
        and "not a clock offset" in clock["receive_delay_basis"]
    )
    assert clock["clock_ahead_at_least_seconds"] is None
    assert clock["clock_ahead_beyond_tolerance"] is None
    assert clock["clock_offset_beyond_tolerance"] is None  # was True: a correct clock flagged
    assert "clock_offset_seconds" not in clock
    assert rec["series"][0]["receive_delay_seconds"] == 1230.0

    rt.appraisal.clock = lambda: datetime(2025, 1, 20, tzinfo=UTC)
    [summary] = client.get("/api/appraisal/v1/devices", params={"device": "XR-0001"}).json()["devices"]
    c = summary["clock"]
    assert c["receive_delay_median_seconds"] == c["receive_delay_latest_seconds"] == 1230.0
    assert c["clock_offset_beyond_tolerance"] is None and c["latest_clock_ahead_beyond_tolerance"] is None
    assert c["clock_ahead_at_least_seconds"] is None and "clock_offset_median_seconds" not in c


def test_device_times_after_receipt_show_a_clock_ahead(rt: Runtime, client: TestClient) -> None:
    # the device wrote 10:30:30 for an image the archive had at 10:20:30: its clock is ahead >= 600 s
    _xray(rt, "XQ-AHEAD", ["103000", "103030"])
    [dev] = client.get(f"{RECORDS}/acc:XQ-AHEAD").json()["devices"]
    assert dev["clock"]["receive_delay_min_seconds"] == -600.0
    assert dev["clock"]["clock_ahead_at_least_seconds"] == 600.0
    assert dev["clock"]["clock_ahead_beyond_tolerance"] is True
    assert dev["clock"]["clock_offset_beyond_tolerance"] is True  # the deprecated alias agrees


# ---------------------------------------------------------------------- 4. each time its own source


def test_every_time_names_its_own_source(rt: Runtime, client: TestClient) -> None:
    ds = _store_study(rt, accession="ACC-MPPS")
    step = rt.appraisal.create_step(None, _mpps(ds.StudyInstanceUID, accession="ACC-MPPS"), MODALITY)
    rt.appraisal.update_step(step, _complete(ds.SeriesInstanceUID), MODALITY)
    rec = client.get(f"{RECORDS}/acc:ACC-MPPS").json()
    [entry] = rec["procedure_steps"]
    assert entry["start_source"] == "PerformedProcedureStepStartDate/Time (0040,0244/0245)"
    assert entry["start_timezone_source"] == entry["end_timezone_source"] == ASSUMED  # MPPS: no offset
    assert rec["device_timestamps"]["procedure_step_start_timezone_source"] == ASSUMED

    # one line, two series: ContentDate/Time only (no offset), then AcquisitionDateTime with +0700
    rt.archive.clock = lambda: RECEIVED
    study = generate_uid()
    content = make_dataset(study_uid=study, accession="ACC-MIX", ContentDate="20250110", ContentTime="090000")
    del content.AcquisitionDate, content.AcquisitionTime
    _store(rt, content)
    dt = make_dataset(study_uid=study, accession="ACC-MIX", AcquisitionDateTime="20250110093000+0700")
    _store(rt, dt)
    mix = client.get(f"{RECORDS}/acc:ACC-MIX").json()
    first, last = mix["device_timestamps"]["first_acquisition"], mix["device_timestamps"]["last_acquisition"]
    assert (first["source"], first["timezone_source"]) == ("ContentDate+ContentTime", ASSUMED)
    assert (last["source"], last["timezone_source"]) == (
        "AcquisitionDateTime",
        "offset in AcquisitionDateTime",
    )
    by_source = {s["acquisition_time_source"]: s["timezone_source"] for s in mix["series"]}
    assert by_source == {
        "ContentDate+ContentTime": ASSUMED,
        "AcquisitionDateTime": "offset in AcquisitionDateTime",
    }

    _, rows = _csv_rows(client)
    img = f"AcquisitionDate+AcquisitionTime, {ASSUMED}"
    assert rows["acc:ACC-MPPS"]["PACS_NGUON_TG_THIET_BI"] == (
        f"TG_THIET_BI_BAT_DAU: {img}; TG_THIET_BI_KET_THUC: {img}"
    )
    mixed = (
        f"TG_THIET_BI_BAT_DAU: ContentDate+ContentTime, {ASSUMED}; "
        "TG_THIET_BI_KET_THUC: AcquisitionDateTime, offset in AcquisitionDateTime"
    )
    assert rows["acc:ACC-MIX"]["PACS_NGUON_TG_THIET_BI"] == mixed
    assert rows["acc:ACC-MIX"]["TG_THIET_BI_BAT_DAU"] == "202501100900"
    assert rows["acc:ACC-MIX"]["TG_THIET_BI_KET_THUC"] == "202501100930"
    assert _xml_items(client)["acc:ACC-MIX"].findtext("PACS_NGUON_TG_THIET_BI") == mixed
    html = client.get(f"{RECORDS}/acc:ACC-MPPS.html").text
    assert "Bắt đầu bước thực hiện (MPPS): nguồn múi giờ / timezone source" in html and ASSUMED in html
