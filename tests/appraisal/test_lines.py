"""Service lines: one record per accession / requested procedure / study, MPPS-only lines, procedure
codes from the image headers, the device clock summary, and the rebuild (SQLite + PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from pacs.model import Origin
from pacs.runtime import Runtime
from pacs.services.appraisal import line_key
from tests.appraisal.test_records import MODALITY, RECEIVED, _mpps
from tests.factories import make_dataset, to_bytes


def _store(rt: Runtime, ds: Dataset, origin: Origin = MODALITY) -> None:
    rt.archive.store_bytes(to_bytes(ds), origin)


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "LOCAL", meaning
    return item


def test_studies_sharing_an_accession_are_one_record(rt: Runtime, client: TestClient) -> None:
    rt.archive.clock = lambda: RECEIVED
    a, b = generate_uid(), generate_uid()
    for study, modality, t in ((a, "CT", "101500"), (b, "DX", "103000")):
        ds = make_dataset(study_uid=study, accession="ACC-42", modality=modality, study_time=t)
        ds.AcquisitionTime = t
        _store(rt, ds)
    _store(rt, make_dataset(accession="OTHER"))
    body = client.get("/api/appraisal/v1/records", params={"from": "20250110"}).json()
    assert [r["id"] for r in body["records"]] == ["acc:ACC-42", "acc:OTHER"]
    rec = body["records"][0]
    assert rec["service_line"]["study_instance_uids"] == [a, b]
    assert [s["study_instance_uid"] for s in rec["studies"]] == [a, b]
    assert sorted(s["modality"] for s in rec["series"]) == ["CT", "DX"]
    assert rec["device_timestamps"]["first_acquisition"]["value"] == "2025-01-10T10:15:00+07:00"
    assert rec["device_timestamps"]["last_acquisition"]["value"] == "2025-01-10T10:30:00+07:00"
    assert client.get(f"/api/appraisal/v1/records/{b}").json()["id"] == "acc:ACC-42"
    dx = client.get("/api/appraisal/v1/records", params={"modality": "DX"}).json()
    assert [r["id"] for r in dx["records"]] == ["acc:ACC-42"]


def test_mpps_only_line_is_listed_and_images_join_it(rt: Runtime, client: TestClient) -> None:
    study = generate_uid()
    step = rt.appraisal.create_step(None, _mpps(study, accession="ACC-MPPS"), MODALITY)
    rec = client.get("/api/appraisal/v1/records/acc:ACC-MPPS").json()
    assert rec["service_line"]["images"] == "none yet" and rec["series"] == []
    assert rec["service_line"]["study_instance_uids"] == []
    assert [s["sop_instance_uid"] for s in rec["procedure_steps"]] == [step]
    assert rec["service"]["service_code"] == "18.0001.0001"  # CT-SN from the MPPS
    assert rec["device_acquisition_span"]["status"] == "unknown"  # no image: unknown, never 0 (issue 16)
    assert rec["device_acquisition_span"]["seconds"] is None
    assert any("none yet" in n for n in rec["notes"])
    listed = client.get("/api/appraisal/v1/records", params={"from": "20250110", "to": "20250110"}).json()
    assert [r["id"] for r in listed["records"]] == ["acc:ACC-MPPS"]
    # images without an accession number join the line of the step that names their study
    rt.archive.clock = lambda: RECEIVED
    _store(rt, make_dataset(study_uid=study, accession=""))
    rec = client.get("/api/appraisal/v1/records/acc:ACC-MPPS").json()
    assert rec["service_line"]["images"] == "received"
    assert rec["service_line"]["study_instance_uids"] == [study]
    assert client.get("/api/appraisal/v1/records", params={"from": "20250110"}).json()["count"] == 1


def test_procedure_codes_and_request_keys_from_image_headers(rt: Runtime, client: TestClient) -> None:
    rt.archive.clock = lambda: RECEIVED
    coded = make_dataset(accession="", StudyDescription="khác")
    coded.RequestedProcedureCodeSequence = [_code("CT-SN", "CT sọ não")]
    request = Dataset()
    request.RequestedProcedureID = "RP-7"
    request.ScheduledProcedureStepID = "SPS-7"
    coded.RequestAttributesSequence = [request]
    _store(rt, coded)
    rec = client.get("/api/appraisal/v1/records/rp:RP-7").json()
    assert rec["service_line"]["key_source"] == "RequestedProcedureID"
    assert rec["service_line"]["scheduled_procedure_step_id"] == "SPS-7"
    svc = rec["service"]
    assert svc["service_code"] == "18.0001.0001" and svc["procedure_code"] == "CT-SN"
    assert svc["procedure_coding_scheme"] == "LOCAL" and svc["procedure_code_meaning"] == "CT sọ não"
    assert svc["source"] == svc["procedure_code_source"] == "RequestedProcedureCodeSequence"

    sps_only = make_dataset(accession="", StudyDescription="X-QUANG NGUC THANG")
    only = Dataset()
    only.ScheduledProcedureStepID = "SPS-9"
    sps_only.RequestAttributesSequence = [only]
    sps_only.ProcedureCodeSequence = [_code("UNMAPPED", "không có trong danh mục")]
    _store(rt, sps_only)
    rec = client.get("/api/appraisal/v1/records/sps:SPS-9").json()
    assert rec["service"]["procedure_code_source"] == "ProcedureCodeSequence"
    # the code is not in the register: the description maps, without case or accents
    assert rec["service"]["service_code"] == "18.0067.0028" and rec["service"]["source"] == "StudyDescription"
    xq = client.get("/api/appraisal/v1/records", params={"service_code": "18.0067.0028"}).json()
    assert [r["id"] for r in xq["records"]] == ["sps:SPS-9"]
    ct = client.get("/api/appraisal/v1/records", params={"service_code": "18.0001.0001"}).json()
    assert [r["id"] for r in ct["records"]] == ["rp:RP-7"]

    plain = make_dataset(accession="")
    _store(rt, plain)
    assert (
        client.get(f"/api/appraisal/v1/records/study:{plain.StudyInstanceUID}").json()["service_line"][
            "key_source"
        ]
        == "StudyInstanceUID"
    )


def test_unsafe_accession_gets_a_url_safe_id(rt: Runtime, client: TestClient) -> None:
    rt.archive.clock = lambda: RECEIVED
    ds = make_dataset(accession="SỐ 12/A")
    _store(rt, ds)
    rid = line_key("acc", "SỐ 12/A")
    assert rid.startswith("acc64:") and "/" not in rid
    rec = client.get(f"/api/appraisal/v1/records/{rid}").json()
    assert rec["id"] == rid and rec["service_line"]["accession_number"] == "SỐ 12/A"
    assert client.get("/api/appraisal/v1/records/acc:nope").status_code == 404


def test_device_clock_summary(rt: Runtime, client: TestClient) -> None:
    # CT: device 1 minute behind arrival, synchronised; DR: 70 minutes ahead, not synchronised.
    for n, (arrive, acq) in enumerate(((3, "101930"), (4, "111930")), 1):
        rt.archive.clock = lambda h=arrive: datetime(2025, 1, 10, h, 20, 30, tzinfo=UTC)
        ds = make_dataset(accession=f"CT{n}", AcquisitionTimeSynchronized="Y")
        ds.AcquisitionTime = acq
        _store(rt, ds)
    for n, (arrive, acq) in enumerate(((3, "113000"), (5, "133000")), 1):
        rt.archive.clock = lambda h=arrive: datetime(2025, 1, 10, h, 20, 30, tzinfo=UTC)
        ds = make_dataset(
            accession=f"DR{n}",
            Modality="DX",
            StationName="DR01",
            DeviceSerialNumber="XR-0001",
            AcquisitionTimeSynchronized="N",
        )
        ds.AcquisitionTime = acq
        _store(rt, ds, Origin(address="10.0.0.9", calling_ae="DR01AE"))
    rt.appraisal.clock = lambda: datetime(2025, 1, 20, tzinfo=UTC)
    r = client.get("/api/appraisal/v1/devices")  # default window: the last 30 days
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"]["code"] == rt.settings.appraisal.label_code
    by_serial = {d["device_serial_number"]: d for d in body["devices"]}
    ct, dr = by_serial["SN-1234"], by_serial["XR-0001"]
    assert ct["series_count"] == 2 and ct["clock"]["samples"] == 2
    assert ct["clock"]["receive_delay_median_seconds"] == 60.0
    assert ct["clock"]["receive_delay_latest_seconds"] == 60.0
    assert ct["clock"]["time_synchronised"] is True
    assert ct["clock"]["clock_offset_beyond_tolerance"] is None  # a delay shows no offset (issue 16)
    assert ct["machine_code"] == "CL.1.SN-1234"
    assert dr["clock"]["receive_delay_median_seconds"] == -4170.0  # received 10:20:30, written 11:30:00
    assert dr["clock"]["clock_ahead_at_least_seconds"] == 4170.0
    assert dr["clock"]["latest_received_at"] == "2025-01-10T05:20:30+00:00"
    assert dr["clock"]["time_synchronised"] is False and dr["clock"]["acquisition_time_synchronized"] == "N"
    assert dr["clock"]["clock_offset_beyond_tolerance"] is True
    assert dr["sending_ae_titles"] == ["DR01AE"]
    only = client.get("/api/appraisal/v1/devices", params={"device": "DR01", "from": "2025-01-10"}).json()
    assert [d["station_name"] for d in only["devices"]] == ["DR01"]
    assert client.get("/api/appraisal/v1/devices", params={"from": "2025-02-01"}).json()["count"] == 0
    assert client.get("/api/appraisal/v1/devices", params={"from": "x"}).status_code == 400


def test_rebuild_gives_the_same_records(rt: Runtime, client: TestClient) -> None:
    rt.archive.clock = lambda: RECEIVED
    study = generate_uid()
    rt.appraisal.create_step(None, _mpps(study, accession="ACC-R"), MODALITY)
    for n in range(2):
        ds = make_dataset(study_uid=study, accession="ACC-R", instance_number=n + 1)
        ds.AcquisitionTime = f"10150{n}"
        _store(rt, ds)
    _store(rt, make_dataset(accession=""))
    rt.appraisal.create_step(None, _mpps(generate_uid(), accession="ACC-ALONE"), MODALITY)
    before = client.get("/api/appraisal/v1/records", params={"limit": "50"}).json()["records"]
    assert rt.appraisal.rebuild_lines() == 3
    after = client.get("/api/appraisal/v1/records", params={"limit": "50"}).json()["records"]
    assert sorted(after, key=lambda r: r["id"]) == sorted(before, key=lambda r: r["id"])


def test_rebuild_keeps_the_request_facts_of_the_image_headers(rt: Runtime, client: TestClient) -> None:
    """A rebuild merges a study's facts by the rule of the store path: procedure codes and the SPS ID
    that only the image headers carry (``_line_for_study``) survive ``rebuild_lines`` (issue 13)."""
    rt.archive.clock = lambda: RECEIVED
    coded = make_dataset(accession="ACC-C", StudyDescription="khác")
    coded.RequestedProcedureCodeSequence = [_code("CT-SN", "CT sọ não")]
    _store(rt, coded)
    sps_only = make_dataset(accession="", StudyDescription="khác")
    request = Dataset()
    request.ScheduledProcedureStepID = "SPS-11"
    sps_only.RequestAttributesSequence = [request]
    sps_only.ProcedureCodeSequence = [_code("CT-SN", "CT sọ não")]
    _store(rt, sps_only)
    # the usual order: N-CREATE without a code, the images with one, then an N-SET with another
    study = generate_uid()
    step_ds = _mpps(study, accession="ACC-M")
    del step_ds.ProcedureCodeSequence
    step = rt.appraisal.create_step(None, step_ds, MODALITY)
    imaged = make_dataset(study_uid=study, accession="ACC-M", StudyDescription="khác")
    imaged.ProcedureCodeSequence = [_code("CT-SN", "CT sọ não")]
    _store(rt, imaged)
    later = Dataset()
    later.ProcedureCodeSequence = [_code("OTHER", "không có trong danh mục")]
    rt.appraisal.update_step(step, later, MODALITY)

    before = client.get("/api/appraisal/v1/records", params={"limit": "50"}).json()["records"]
    by_id = {r["id"]: r for r in before}
    assert set(by_id) == {"acc:ACC-C", "sps:SPS-11", "acc:ACC-M"}
    for rec in by_id.values():
        assert rec["service"]["service_code"] == "18.0001.0001"
        assert rec["service"]["procedure_code"] == "CT-SN"
    assert rt.appraisal.rebuild_lines() == 3
    after = client.get("/api/appraisal/v1/records", params={"limit": "50"}).json()["records"]
    assert sorted(after, key=lambda r: r["id"]) == sorted(before, key=lambda r: r["id"])
