"""Appraisal records, exports and MPPS steps through the service and the HTTP routes (SQLite + PostgreSQL)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from starlette.testclient import TestClient

from pacs.errors import DuplicateInstance, MissingAttribute, NotFound, StepNotInProgress
from pacs.index.schema import events
from pacs.model import Origin
from pacs.runtime import Runtime
from tests.appraisal.conftest import FACILITY
from tests.appraisal.excel import csv_export
from tests.factories import make_dataset, to_bytes

RECEIVED = datetime(2025, 1, 10, 3, 20, 30, tzinfo=UTC)  # 10:20:30 in Vietnam
MODALITY = Origin(address="10.0.0.5", calling_ae="CT01AE", protocol="dimse")


def _store_study(rt: Runtime, accession: str = "ACC001", **extra: object) -> Dataset:
    """A 3-image CT study acquired 10:15:00-10:19:30 (device time, no offset) received at 10:20:30."""
    study, series = generate_uid(), generate_uid()
    rt.archive.clock = lambda: RECEIVED
    first = None
    for n, t in enumerate(("101500", "101700", "101930"), 1):
        ds = make_dataset(
            study_uid=study,
            series_uid=series,
            instance_number=n,
            accession=accession,
            OtherPatientIDs=["079123456789", "HC4010123456789"],
            PerformingPhysicianName="Lê^Văn Cường",
            OperatorsName="Phạm^Thu",
            ManufacturerModelName="Máy CT 64",
            SeriesDate="20250110",
            SeriesTime="101400",
            **extra,
        )
        ds.AcquisitionTime = t
        rt.archive.store_bytes(to_bytes(ds), MODALITY)
        first = first or ds
    assert first is not None
    return first


def _mpps(study_uid: str, accession: str = "ACC001") -> Dataset:
    m = Dataset()
    m.SpecificCharacterSet = "ISO_IR 192"
    m.PerformedProcedureStepStatus = "IN PROGRESS"
    m.PerformedProcedureStepStartDate = "20250110"
    m.PerformedProcedureStepStartTime = "101000"
    m.PerformedStationAETitle = "CT01AE"
    m.PerformedStationName = "CT01"
    m.Modality = "CT"
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.AccessionNumber = accession
    item.RequestedProcedureID = "RP1"
    m.ScheduledStepAttributesSequence = [item]
    code = Dataset()
    code.CodeValue = "CT-SN"
    code.CodingSchemeDesignator = "LOCAL"
    code.CodeMeaning = "CT sọ não"
    m.ProcedureCodeSequence = [code]
    return m


def _complete(series_uid: str) -> Dataset:
    s = Dataset()
    s.SpecificCharacterSet = "ISO_IR 192"
    s.PerformedProcedureStepStatus = "COMPLETED"
    s.PerformedProcedureStepEndDate = "20250110"
    s.PerformedProcedureStepEndTime = "102000"
    ps = Dataset()
    ps.SeriesInstanceUID = series_uid
    ps.PerformingPhysicianName = "Lê^Văn Cường"
    ps.OperatorsName = "Phạm^Thu"
    ps.ReferencedImageSequence = []
    s.PerformedSeriesSequence = [ps]
    return s


def test_record_field_by_field(rt: Runtime, client: TestClient) -> None:
    ds = _store_study(rt)
    uid = rt.appraisal.create_step(None, _mpps(ds.StudyInstanceUID), MODALITY)
    assert rt.appraisal.update_step(uid, _complete(ds.SeriesInstanceUID), MODALITY) == "COMPLETED"

    r = client.get("/api/appraisal/v1/records/acc:ACC001")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    rec = r.json()
    assert rec["id"] == "acc:ACC001"
    assert client.get(f"/api/appraisal/v1/records/{ds.StudyInstanceUID}").json() == rec  # alias
    assert rec["label"]["code"] == rt.settings.appraisal.label_code
    assert rec["label"]["vi"].startswith("Các mốc thời gian") and "2775/QĐ-BYT" in rec["label"]["vi"]
    assert rec["facility_code"] == FACILITY
    assert rec["service_line"] == {
        "key_source": "AccessionNumber",
        "accession_number": "ACC001",
        "requested_procedure_id": "RP1",  # from the MPPS scheduled step
        "scheduled_procedure_step_id": None,
        "study_instance_uids": [ds.StudyInstanceUID],
        "images": "received",
    }
    assert rec["service"]["service_code"] == "18.0001.0001"
    assert rec["service"]["source"] == "ProcedureCodeSequence (MPPS)"
    # Other Patient IDs without an issuer are never typed by their shape (issue 16): a 12-digit
    # local ID is not guessed to be a CCCD (tests/appraisal/test_register_import.py types them).
    assert rec["patient"] == {
        "patient_id": "PID001",
        "issuer_of_patient_id": None,
        "patient_id_type": "unknown",
        "citizen_id": None,
        "insurance_card_code": None,
    }
    first, last = rec["device_timestamps"]["first_acquisition"], rec["device_timestamps"]["last_acquisition"]
    assert first["value"] == "2025-01-10T10:15:00+07:00"
    assert last["value"] == "2025-01-10T10:19:30+07:00"
    assert first["source"] == last["source"] == "AcquisitionDate+AcquisitionTime"
    assert "assumed +0700" in first["timezone_source"]
    assert rec["device_acquisition_span"]["seconds"] == 270.0
    assert rec["device_acquisition_span"]["status"] == "measured"
    assert rec["archive_receipt"]["first_received"] == "2025-01-10T03:20:30+00:00"
    [study] = rec["studies"]
    assert study["number_of_instances"] == 3 and study["study_id"] == "1"
    [series] = rec["series"]
    assert series["instance_count"] == 3 and series["modality"] == "CT"
    [dev] = rec["devices"]
    assert dev["device_serial_number"] == "SN-1234" and dev["station_name"] == "CT01"
    assert dev["manufacturer"] == "ACME" and dev["manufacturer_model_name"] == "Máy CT 64"
    assert dev["sending_ae_titles"] == ["CT01AE"]
    assert dev["machine_code"]["current"] == "CL.1.SN-1234"
    assert dev["machine_code"]["previous"] == f"CL.1.{FACILITY}.SN-1234"
    assert dev["clock"]["receive_delay_min_seconds"] == 60.0  # last image 10:19:30, received 10:20:30
    # a receive delay cannot show the clock offset (issue 16): not shown either way
    assert dev["clock"]["clock_ahead_beyond_tolerance"] is None
    assert dev["clock"]["clock_offset_beyond_tolerance"] is None
    [step] = rec["procedure_steps"]
    assert step["status"] == "COMPLETED" and step["sop_instance_uid"] == uid
    assert step["start"] == "2025-01-10T10:10:00+07:00" and step["end"] == "2025-01-10T10:20:00+07:00"
    assert step["performed_series"][0]["series_instance_uid"] == ds.SeriesInstanceUID
    assert step["accession_number"] == "ACC001" and step["requested_procedure_id"] == "RP1"
    people = rec["people"]
    assert people["referring"] == [{"dicom_name": "Trần^Thị Bình", "licence_code": "000123/BYT-CCHN"}]
    assert people["performing"] == [{"dicom_name": "Lê^Văn Cường", "licence_code": "004567/HNO-CCHN"}]
    assert people["operators"] == [{"dicom_name": "Phạm^Thu", "licence_code": None}]
    assert any("Phạm^Thu" in n for n in rec["notes"])  # unknown staff: empty code, and said so
    checks = {c["check"]: c for c in rec["ordering_checks"]}
    assert checks["order_time <= first_acquisition"]["result"] == "unknown"
    assert checks["first_acquisition <= last_acquisition"]["result"] == "consistent"
    assert checks["last_acquisition <= result_time"]["result"] == "unknown"
    assert checks["procedure_step_start <= first_acquisition"]["timestamps"]["procedure_step_start"] == (
        "2025-01-10T10:10:00+07:00"
    )
    assert rec["reference_times"] == []  # the shipped register is empty: no value ships without a citation
    claim = rec["claim_fields"]
    assert claim["NGAY_TH_YL"] == ""  # the HIS only, never a device time (issue 16)
    assert claim["TG_THIET_BI_BAT_DAU"] == "202501101015"
    assert claim["TG_THIET_BI_KET_THUC"] == "202501101019"
    assert claim["MA_MAY"] == "CL.1.SN-1234" and claim["MA_LK"] == ""
    assert claim["NGUOI_THUC_HIEN"] == "004567/HNO-CCHN"

    html = client.get("/api/appraisal/v1/records/acc:ACC001.html")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert rt.settings.appraisal.label_vi in html.text.replace("&#x27;", "'")
    assert client.get("/api/appraisal/v1/records/acc:ACC001?format=html").text == html.text


def test_list_filters_paging_and_audit(rt: Runtime, client: TestClient) -> None:
    for n in range(5):
        _store_study(rt, accession=f"ACC{n}")
    uids = [f"acc:ACC{n}" for n in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"from": "2025-01-10", "to": "20250110", "limit": "2", "modality": "CT"}
        if cursor:
            params["cursor"] = cursor
        body = client.get("/api/appraisal/v1/records", params=params).json()
        assert body["label"]["code"] == rt.settings.appraisal.label_code
        assert body["count"] == len(body["records"]) <= 2
        seen += [r["id"] for r in body["records"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == uids
    get = client.get
    assert get("/api/appraisal/v1/records", params={"to": "20250109"}).json()["count"] == 0
    assert get("/api/appraisal/v1/records", params={"modality": "MR"}).json()["count"] == 0
    assert get("/api/appraisal/v1/records", params={"device": "SN-1234"}).json()["count"] == 5
    assert get("/api/appraisal/v1/records", params={"device": "CT01"}).json()["count"] == 5
    assert get("/api/appraisal/v1/records", params={"patient_id": "HC4010123456789"}).json()["count"] == 5
    assert get("/api/appraisal/v1/records", params={"facility": "99999"}).json()["count"] == 0
    assert get("/api/appraisal/v1/records", params={"facility": FACILITY}).json()["count"] == 5
    assert get("/api/appraisal/v1/records", params={"service_code": "18.0001.0001"}).json()["count"] == 5
    assert get("/api/appraisal/v1/records", params={"service_code": "18.0067.0028"}).json()["count"] == 0
    assert [
        r["id"] for r in get("/api/appraisal/v1/records", params={"accession": "ACC3"}).json()["records"]
    ] == ["acc:ACC3"]
    bad = get("/api/appraisal/v1/records", params={"from": "yesterday"})
    assert bad.status_code == 400 and "from" in bad.json()["detail"]
    assert get("/api/appraisal/v1/records", params={"cursor": "!!"}).status_code == 400
    assert get("/api/appraisal/v1/records/1.2.3").status_code == 404
    assert get("/api/appraisal/v1/records/not-a-uid").status_code == 404
    with rt.engine.connect() as conn:
        audit = conn.execute(select(events).where(events.c.kind == "appraisal.access")).mappings().all()
    assert len(audit) >= 12
    details = [json.loads(a["details"]) for a in audit]
    assert {"request": "records.list", "filters": {"device": "SN-1234"}, "count": 5} in details
    assert all(a["peer_address"] for a in audit)


def test_exports_label_and_vietnamese(rt: Runtime, client: TestClient) -> None:
    ds = _store_study(rt)
    r = client.get("/api/appraisal/v1/export.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    header, rows = csv_export(r.content)
    assert any("PACS_EXTRACT" in h for h in header)
    assert f"# nhan_vi: {rt.settings.appraisal.label_vi}" in header  # the label: one cell each
    assert f"# nhan_en: {rt.settings.appraisal.label_en}" in header
    [row] = rows
    assert row["PACS_STUDY_UID"] == ds.StudyInstanceUID and row["PACS_MA_BAN_GHI"] == "acc:ACC001"
    assert row["TEN_DICH_VU"] == "Chụp CT sọ não không tiêm thuốc cản quang"
    assert row["TG_THIET_BI_BAT_DAU"] == "202501101015" and row["TG_THIET_BI_KET_THUC"] == "202501101019"
    assert row["MA_MAY"] == "CL.1.SN-1234" and row["PACS_MA_NHAN"] == rt.settings.appraisal.label_code

    x = client.get("/api/appraisal/v1/export.xml")
    assert x.status_code == 200
    root = ET.fromstring(x.content)
    assert root.tag == "PACS_TRICH_XUAT" and root.get("loai") == "PACS_EXTRACT"
    assert root.findtext("NHAN/VI") == rt.settings.appraisal.label_vi
    items = root.findall("CHITIEU_CHITIET_DVKT_VTYT/DSACH_CHI_TIET_DVKT/CHI_TIET_DVKT")
    assert len(items) == 1
    assert items[0].findtext("TEN_DICH_VU") == "Chụp CT sọ não không tiêm thuốc cản quang"
    assert items[0].findtext("NGAY_TH_YL") == ""  # the HIS only, never a device time (issue 16)
    # the JSON list also round-trips Vietnamese as UTF-8
    body = client.get("/api/appraisal/v1/records").content.decode("utf-8")
    assert "Trần^Thị Bình" in body and "Máy CT 64" in body
    via_list = ET.fromstring(client.get("/api/appraisal/v1/records", params={"format": "xml"}).content)
    assert via_list.findtext(".//PACS_STUDY_UID") == ds.StudyInstanceUID
    assert client.get("/api/appraisal/v1/export.pdf").status_code == 404


def test_drifting_clock_is_reported_as_fact(rt: Runtime, client: TestClient) -> None:
    # The device writes 11:30 local time for images the archive received at 10:20:30 local.
    ds = _store_study(rt, AcquisitionTimeSynchronized="N", TimezoneOffsetFromUTC="+0700")
    rt.archive.clock = lambda: RECEIVED
    late = make_dataset(
        study_uid=ds.StudyInstanceUID,
        series_uid=generate_uid(),
        StationName="DR01",
        DeviceSerialNumber="XR-0001",
        Modality="DX",
        TimezoneOffsetFromUTC="+0700",
    )
    late.AcquisitionTime = "113000"
    rt.archive.store_bytes(to_bytes(late), Origin(address="10.0.0.9", calling_ae="DR01AE"))
    rec = client.get("/api/appraisal/v1/records/acc:ACC001").json()
    by_serial = {d["device_serial_number"]: d for d in rec["devices"]}
    ct, dr = by_serial["SN-1234"]["clock"], by_serial["XR-0001"]["clock"]
    assert ct["time_synchronised"] is False and ct["acquisition_time_synchronized"] == "N"
    assert ct["timezone_offset_from_utc"] == "+0700" and ct["timezone_source"] == "TimezoneOffsetFromUTC"
    assert dr["receive_delay_min_seconds"] == -4170.0  # received 10:20:30, device wrote 11:30:00
    assert dr["clock_ahead_at_least_seconds"] == 4170.0
    assert dr["clock_ahead_beyond_tolerance"] is True and dr["clock_offset_beyond_tolerance"] is True
    checks = {c["check"]: c for c in rec["ordering_checks"]}
    assert checks["first_acquisition <= first_received_at_archive"]["result"] == "consistent"
    assert by_serial["XR-0001"]["machine_code"]["current"] == "XQ.1.XR-0001"


def test_mpps_rules(rt: Runtime) -> None:
    study = generate_uid()
    uid = rt.appraisal.create_step("1.2.826.0.1.3680043.10.1.1", _mpps(study), MODALITY)
    assert uid == "1.2.826.0.1.3680043.10.1.1"
    with pytest.raises(DuplicateInstance):
        rt.appraisal.create_step(uid, _mpps(study), MODALITY)
    incomplete = Dataset()
    incomplete.PerformedProcedureStepStatus = "COMPLETED"
    with pytest.raises(MissingAttribute):  # COMPLETED needs the end date and time
        rt.appraisal.update_step(uid, incomplete, MODALITY)
    assert rt.appraisal.update_step(uid, _complete(generate_uid()), MODALITY) == "COMPLETED"
    with pytest.raises(StepNotInProgress):
        rt.appraisal.update_step(uid, _complete(generate_uid()), MODALITY)
    with pytest.raises(NotFound):
        rt.appraisal.update_step("1.2.3.4.5", _complete(generate_uid()), MODALITY)
    no_start = _mpps(study)
    del no_start.PerformedProcedureStepStartTime
    with pytest.raises(MissingAttribute):
        rt.appraisal.create_step(None, no_start, MODALITY)
    with rt.engine.connect() as conn:
        kinds = [r[0] for r in conn.execute(select(events.c.kind).where(events.c.sop_instance_uid == uid))]
    assert kinds == ["mpps.created", "mpps.updated"]


def test_openapi(client: TestClient) -> None:
    doc = client.get("/api/appraisal/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/api/appraisal/v1/records" in doc["paths"] and "/api/appraisal/v1/records/{id}" in doc["paths"]
    assert "Record" in doc["components"]["schemas"]


def test_same_instant_keeps_each_offset(rt: Runtime, client: TestClient) -> None:
    # device time 10:20:30 (+07:00) is the very instant the archive received the image (03:20:30 UTC):
    # each is still printed in its own offset (equal aware datetimes must not share a formatted form)
    rt.archive.clock = lambda: RECEIVED
    ds = make_dataset(accession="ACC-SAME")
    ds.AcquisitionTime = "102030"
    rt.archive.store_bytes(to_bytes(ds), MODALITY)
    for _ in range(2):
        rec = client.get("/api/appraisal/v1/records/acc:ACC-SAME").json()
        assert rec["device_timestamps"]["first_acquisition"]["value"] == "2025-01-10T10:20:30+07:00"
        assert rec["archive_receipt"]["first_received"] == "2025-01-10T03:20:30+00:00"
        [series] = rec["series"]
        assert series["first_acquisition"] == "2025-01-10T10:20:30+07:00"
        assert series["received_first"] == "2025-01-10T03:20:30+00:00"
        checks = {c["check"]: c for c in rec["ordering_checks"]}
        stamps = checks["first_acquisition <= first_received_at_archive"]["timestamps"]
        assert stamps == {
            "first_acquisition": "2025-01-10T10:20:30+07:00",
            "first_received_at_archive": "2025-01-10T03:20:30+00:00",
        }
        assert checks["first_acquisition <= first_received_at_archive"]["result"] == "consistent"
