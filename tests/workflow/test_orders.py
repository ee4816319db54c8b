"""The orders service (issue 15), on SQLite and PostgreSQL: orders become worklist items, the
worklist query engine, cancel / change / discontinue, resends, MPPS moving the step, images
linked to their order (an accent-stripped name shown as the HIS has it), HIS times in the
appraisal records, patient update and merge. Each message is all or nothing."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from pacs.errors import InvalidOrder, NotFound
from pacs.index import orders as order_sql
from pacs.index.schema import order_messages, orders, patients, worklist_items
from pacs.model import Origin
from pacs.query import from_worklist_identifier
from pacs.runtime import Runtime
from pacs.services.orders.model import (
    Code,
    Control,
    MessageId,
    OrderMessage,
    PatientInfo,
    PatientMerge,
    PatientUpdate,
    Report,
    ScheduledStep,
)
from tests.appraisal.test_records import _complete, _mpps
from tests.factories import make_dataset, to_bytes

HIS = Origin(address="10.0.0.5", protocol="hl7", user="HIS")
CT = Origin(address="10.0.0.7", calling_ae="CT01AE", protocol="dimse")
NAME = "Nguyễn^Thị Đức Hạnh"


def _order(control: Control = Control.NEW, placer: str = "ORD1", **kw: Any) -> OrderMessage:
    base: dict[str, Any] = {
        "control": control,
        "placer_order_number": placer,
        "accession_number": "ACC15",
        "patient": PatientInfo(
            patient_id="BN001", issuer_of_patient_id="BV01", name=NAME, birth_date="19800102", sex="F"
        ),
        "requested_procedure_id": "RP1",
        "requested_procedure_description": "CT sọ não không tiêm thuốc",
        "requested_procedure_code": Code("CT-SN", "BYT", "CT sọ não"),
        "referring_physician": "Trần^Văn Bình",
        "ordered_at": "20261203080500+0700",
        "ordered_at_source": "HL7 ORC-9",
        "steps": (
            ScheduledStep(
                step_id="SPS1",
                modality="CT",
                station_ae_title="CT01AE",
                start="20261203090000",
                description="CT sọ não",
            ),
            ScheduledStep(
                step_id="SPS2",
                modality="CT",
                station_ae_title="CT01AE",
                start="20261203093000",
                description="CT sọ não có tiêm",
            ),
            ScheduledStep(
                step_id="SPS3",
                modality="MR",
                station_ae_title="MR01AE",
                start="20261204100000",
                description="MRI sọ não",
            ),
        ),
    }
    base.update(kw)
    return OrderMessage(**base)


def _wl(rt: Runtime, **keys: Any) -> list[dict[str, Any]]:
    ds = Dataset()
    sps = Dataset()
    for k, v in keys.items():
        setattr(sps if k.startswith("Scheduled") or k == "Modality" else ds, k, v)
    ds.ScheduledProcedureStepSequence = [sps]
    return rt.orders.worklist(from_worklist_identifier(ds), 100)


def _count(rt: Runtime, table: Any) -> int:
    with rt.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_order_becomes_worklist_items_and_matches(rt: Runtime) -> None:
    applied = rt.orders.apply(_order(), HIS)
    assert applied.steps == 3 and applied.order_keys == ["P:ORD1"]
    assert len(_wl(rt)) == 3
    assert [r["scheduled_procedure_step_id"] for r in _wl(rt, ScheduledStationAETitle="CT01AE")] == [
        "SPS1",
        "SPS2",
    ]
    assert [r["modality"] for r in _wl(rt, Modality="MR")] == ["MR"]
    assert len(_wl(rt, ScheduledProcedureStepStartDate="20261203")) == 2
    assert len(_wl(rt, ScheduledProcedureStepStartDate="20261204-")) == 1
    # combined date-time range (PS3.4 C.2.2.2.5.1)
    got = _wl(rt, ScheduledProcedureStepStartDate="20261203", ScheduledProcedureStepStartTime="0915-1000")
    assert [r["scheduled_procedure_step_id"] for r in got] == ["SPS2"]
    # the name matches without accents, with wildcards, any case
    assert len(_wl(rt, PatientName="nguyen^thi duc*")) == 3
    assert len(_wl(rt, PatientName="NGUYEN*")) == 3
    assert _wl(rt, PatientName="Tran*") == []
    assert len(_wl(rt, PatientID="BN001", AccessionNumber="ACC15")) == 3
    row = _wl(rt, ScheduledProcedureStepID="SPS1")[0]
    assert row["patient_name"] == NAME  # stored as the HIS sent it
    assert row["study_instance_uid"]  # assigned at order time, shared by the order's steps
    assert {r["study_instance_uid"] for r in _wl(rt)} == {row["study_instance_uid"]}


def test_change_cancel_discontinue_status(rt: Runtime) -> None:
    rt.orders.apply(_order(), HIS)
    changed = _order(
        Control.CHANGE,
        steps=(
            ScheduledStep(step_id="SPS1", modality="CT", station_ae_title="CT02AE", start="20261203110000"),
        ),
    )
    rt.orders.apply(changed, HIS)
    items = {r["scheduled_procedure_step_id"]: r for r in _wl(rt)}
    assert set(items) == {"SPS1"}  # the steps the change no longer has left the worklist
    assert items["SPS1"]["scheduled_station_ae_title"] == "CT02AE"
    rt.orders.apply(_order(Control.CANCEL, steps=()), HIS)
    assert _wl(rt) == []
    assert rt.orders.get_order("P:ORD1")["status"] == "CANCELED"

    rt.orders.apply(_order(placer="ORD2", accession_number="ACC16"), HIS)
    rt.orders.apply(_order(Control.DISCONTINUE, placer="ORD2", steps=()), HIS)
    assert rt.orders.get_order("P:ORD2")["status"] == "DISCONTINUED" and _wl(rt) == []

    rt.orders.apply(_order(placer="ORD3", accession_number="ACC17"), HIS)
    rt.orders.apply(_order(Control.STATUS, placer="ORD3", steps=(), order_status="CM"), HIS)
    assert rt.orders.get_order("P:ORD3")["status"] == "COMPLETED" and _wl(rt) == []


def test_bad_messages_write_nothing(rt: Runtime) -> None:
    bad = [
        _order(patient=None),
        _order(steps=(ScheduledStep(step_id="S", modality="CT", station_ae_title="X" * 17),)),
        _order(steps=(ScheduledStep(step_id="S", modality=""),)),
        _order(ordered_at="yesterday"),
        _order(study_instance_uid="1.2.03"),
        # a valid first step, then an invalid one: the first must not remain either
        _order(
            steps=(
                ScheduledStep(step_id="A", modality="CT"),
                ScheduledStep(step_id="B", modality="CT", start="2026-12-03"),
            )
        ),
        _order(placer="", filler_order_number=""),
    ]
    for msg in bad:
        with pytest.raises(InvalidOrder):
            rt.orders.apply(msg, HIS, MessageId("HIS|BV01", f"bad-{id(msg)}"))
    with pytest.raises(NotFound):
        rt.orders.apply(_order(Control.CANCEL, placer="NOPE"), HIS)
    with pytest.raises(NotFound):
        rt.orders.record_report(Report(placer_order_number="NOPE", reported_at="20261203"), HIS)
    assert (_count(rt, orders), _count(rt, worklist_items), _count(rt, order_messages)) == (0, 0, 0)
    rt.orders.apply(_order(), HIS)
    with pytest.raises(InvalidOrder, match="XO"):
        rt.orders.apply(_order(), HIS)  # a second NW of the same order
    assert _count(rt, worklist_items) == 3


def test_resent_message_is_applied_once(rt: Runtime) -> None:
    mid = MessageId("HIS^BV01", "MSG0001")
    first = rt.orders.apply(_order(), HIS, mid)
    again = rt.orders.apply(_order(), HIS, mid)  # the HIS timed out waiting for our ACK
    assert not first.duplicate and again.duplicate and again.order_keys == ["P:ORD1"]
    assert _count(rt, worklist_items) == 3


def test_mpps_moves_the_step_and_the_order(rt: Runtime) -> None:
    rt.orders.apply(_order(), HIS)
    study_uid = _wl(rt)[0]["study_instance_uid"]
    m = _mpps(study_uid, "ACC15")
    m.ScheduledStepAttributesSequence[0].ScheduledProcedureStepID = "SPS1"
    uid = rt.appraisal.create_step(None, m, CT)
    items = {r["scheduled_procedure_step_id"]: r for r in _wl(rt)}
    assert items["SPS1"]["scheduled_procedure_step_status"] == "IN PROGRESS"
    assert items["SPS1"]["mpps_sop_instance_uid"] == uid
    assert items["SPS2"]["scheduled_procedure_step_status"] == "SCHEDULED"
    assert rt.orders.get_order("P:ORD1")["status"] == "IN PROGRESS"
    rt.appraisal.update_step(uid, _complete("1.2.3.4"), CT)
    assert "SPS1" not in {r["scheduled_procedure_step_id"] for r in _wl(rt)}  # completed: off the worklist
    steps = {s["scheduled_procedure_step_id"]: s for s in rt.orders.get_order("P:ORD1")["steps"]}
    assert steps["SPS1"]["status"] == "COMPLETED" and not steps["SPS1"]["on_worklist"]
    assert rt.orders.get_order("P:ORD1")["status"] == "IN PROGRESS"  # SPS2 and SPS3 still to do


def test_store_links_the_order_and_restores_the_accents(rt: Runtime) -> None:
    rt.orders.apply(_order(), HIS)
    # A modality that cannot type Vietnamese, and took no Study Instance UID from the worklist.
    ds = make_dataset(
        patient_name="NGUYEN^THI DUC HANH",
        patient_id="BN001",
        accession="ACC15",
        charset="ISO_IR 100",
        IssuerOfPatientID="BV01",
    )
    data = to_bytes(ds)
    rt.archive.store_bytes(data, CT)
    with rt.db.read() as conn:
        p = conn.execute(select(patients.c.patient_name, patients.c.patient_name_key)).one()
        corrected = order_sql.events_of(conn, ["patient.name_corrected"])
        linked = order_sql.events_of(conn, ["order.linked"])
    assert p.patient_name == NAME and p.patient_name_key == "nguyen thi duc hanh"
    assert len(corrected) == 1 and "NGUYEN^THI DUC HANH" in corrected[0]["details"]
    assert len(linked) == 1
    assert rt.orders.get_order("P:ORD1")["linked_study_instance_uid"] == ds.StudyInstanceUID
    # the file keeps its data set as received (the archive only records the sender in the meta)
    (stored,) = rt.archive.instances(sop_instance_uid=ds.SOPInstanceUID)
    with rt.archive.open(stored) as f:
        kept = f.read()
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    assert kept.endswith(data[meta_end:])
    assert dcmread(BytesIO(kept)).PatientName == "NGUYEN^THI DUC HANH"


def test_other_name_is_not_overwritten(rt: Runtime) -> None:
    rt.orders.apply(_order(), HIS)
    ds = make_dataset(
        patient_name="LE^VAN TAM", patient_id="BN001", accession="ACC15", IssuerOfPatientID="BV01"
    )
    rt.archive.store_bytes(to_bytes(ds), CT)
    with rt.db.read() as conn:
        assert conn.execute(select(patients.c.patient_name)).scalar_one() == "LE^VAN TAM"
        assert len(order_sql.events_of(conn, ["order.mismatch"])) == 1


def test_his_times_reach_the_appraisal_record(rt: Runtime) -> None:
    rt.orders.apply(_order(), HIS)
    ds = make_dataset(patient_id="BN001", accession="ACC15", IssuerOfPatientID="BV01")
    rt.archive.store_bytes(to_bytes(ds), CT)
    rec = rt.appraisal.get_record("acc:ACC15", HIS)
    assert rec["claim_fields"]["NGAY_YL"] == "202612030805"
    assert "HIS order time: HL7 ORC-9" in rec["claim_field_sources"]["NGAY_YL"]
    assert rec["claim_fields"]["NGAY_KQ"] == "" and "not sent" in rec["claim_field_sources"]["NGAY_KQ"]
    rt.orders.record_report(
        Report(
            placer_order_number="ORD1",
            reported_at="20261203143000",
            reported_at_source="HL7 OBR-22",
            reporting_doctor="Phạm^Minh",
            performed_at="20261203091500",
            performed_at_source="HL7 OBR-7",
        ),
        HIS,
    )
    rec = rt.appraisal.get_record("acc:ACC15", HIS)
    assert rec["claim_fields"]["NGAY_KQ"] == "202612031430"
    assert rec["claim_fields"]["NGAY_TH_YL"] == "202612030915"
    assert "Vietnam time (UTC+07:00) assumed" in rec["claim_field_sources"]["NGAY_KQ"]
    assert rec["his_orders"][0]["report_status"] == "F"
    # the device times stay in their own fields
    assert rec["claim_fields"]["NGAY_TH_YL"] != rec["claim_fields"]["TG_THIET_BI_BAT_DAU"]


def test_patient_update_and_merge(rt: Runtime) -> None:
    rt.orders.apply(_order(), HIS)
    ds = make_dataset(
        patient_name="Nguyen^Thi", patient_id="BN001", accession="OTHER", IssuerOfPatientID="BV01"
    )
    rt.archive.store_bytes(to_bytes(ds), CT)
    rt.orders.update_patient(
        PatientUpdate(PatientInfo("BN001", "BV01", "Nguyễn^Thị Hạnh", "19800102", "F")), HIS
    )
    assert {r["patient_name"] for r in _wl(rt)} == {"Nguyễn^Thị Hạnh"}
    with rt.db.read() as conn:
        assert conn.execute(select(patients.c.patient_name)).scalar_one() == "Nguyễn^Thị Hạnh"
    # a second record of the same person, merged into the first
    dup = make_dataset(
        patient_name="Nguyen^Thi Hanh", patient_id="BN900", accession="X2", IssuerOfPatientID="BV01"
    )
    rt.archive.store_bytes(to_bytes(dup), CT)
    rt.orders.apply(
        _order(
            placer="ORD9", accession_number="ACC99", patient=PatientInfo("BN900", "BV01", "Nguyen^Thi Hanh")
        ),
        HIS,
    )
    rt.orders.merge_patients(
        PatientMerge(PatientInfo("BN001", "BV01", "Nguyễn^Thị Hạnh"), "BN900", "BV01"), HIS
    )
    with rt.db.read() as conn:
        rows = conn.execute(select(patients.c.patient_id, patients.c.number_of_patient_related_studies)).all()
    assert [(r[0], r[1]) for r in rows] == [("BN001", 2)]
    assert rt.orders.get_order("P:ORD9")["patient"]["patient_id"] in ("BN001", "BN900")
    assert {r["patient_id"] for r in _wl(rt)} == {"BN001"}
    with pytest.raises(InvalidOrder):
        rt.orders.merge_patients(PatientMerge(PatientInfo("BN001", "BV01"), "BN001", "BV01"), HIS)
