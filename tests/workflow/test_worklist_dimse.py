"""The scheduled workflow against a real ``pacs serve`` (issue 15), on SQLite and PostgreSQL:
orders in over REST, DCMTK ``findscu -W`` pulls the worklist (UTF-8, and without accents for an
old modality's AE), pynetdicom reports the procedure step (MPPS), DCMTK ``storescu`` sends the
images with the name typed without accents, and the archive shows the order's name."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep, ModalityWorklistInformationFind

from tests.conftest import require_tool
from tests.factories import make_dataset, write
from tests.serve import serve

NAME = "Đặng^Thị Hoà Bình"


def _order(placer: str, accession: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "placer_order_number": placer,
        "accession_number": accession,
        "patient": {
            "patient_id": "BN77",
            "issuer": "BV01",
            "name": NAME,
            "birth_date": "19900101",
            "sex": "F",
        },
        "requested_procedure": {
            "id": f"RP-{placer}",
            "description": "CT ngực có tiêm thuốc cản quang",
            "code": {"value": "CT-N", "scheme": "BYT", "meaning": "CT ngực"},
        },
        "referring_physician": "Võ^Văn Kiệt",
        "ordered_at": "20261203073000+0700",
        "steps": steps,
    }


def _findscu(port: int, out: Path, aet: str, *keys: str) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = [require_tool("findscu"), "-W", "-aet", aet, "-aec", "PACS", "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    run = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


SPS_KEYS = [
    "ScheduledProcedureStepSequence[0].Modality",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus",
]
TOP_KEYS = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedureCodeSequence",
    "ReferringPhysicianName",
]


def _without(key: str) -> list[str]:
    return [k for k in TOP_KEYS if k != key]


def test_worklist_mpps_and_reconciliation(db_url: str, tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    extra = '[worklist]\nascii_fallback_aes = ["OLDMWL"]\n'
    with serve(tmp_path, db_url, extra_config=extra) as srv:
        http = httpx.Client(base_url=srv.base_url, timeout=30)
        steps = [
            {
                "step_id": "S1",
                "modality": "CT",
                "station_ae_title": "CT01AE",
                "start": "20261203090000",
                "description": "CT ngực thì động mạch",
            },
            {
                "step_id": "S2",
                "modality": "CT",
                "station_ae_title": "CT01AE",
                "start": "20261203091500",
                "description": "CT ngực thì tĩnh mạch",
            },
        ]
        assert http.post("/api/orders", json=_order("O-1", "ACC-1", steps)).status_code == 201
        other = [{"step_id": "1", "modality": "MR", "station_ae_title": "MR01AE", "start": "20261204080000"}]
        assert http.post("/api/orders", json=_order("O-2", "ACC-2", other)).status_code == 201

        # A UTF-8 modality asks for today's CT01AE steps.
        got = _findscu(
            srv.dicom_port,
            tmp_path / "utf8",
            "FINDSCU",
            "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT01AE",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261203",
            *SPS_KEYS,
            *TOP_KEYS,
        )
        assert len(got) == 2
        first = got[0]
        assert first.SpecificCharacterSet == "ISO_IR 192"
        assert str(first.PatientName) == NAME
        assert first.AccessionNumber == "ACC-1" and first.RequestedProcedureID == "RP-O-1"
        assert first.RequestedProcedureCodeSequence[0].CodeMeaning == "CT ngực"
        study_uid = first.StudyInstanceUID
        assert {d.StudyInstanceUID for d in got} == {study_uid}  # assigned at order time
        sps = {d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID: d for d in got}
        assert set(sps) == {"S1", "S2"}
        assert sps["S1"].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "SCHEDULED"

        # Name matching is accent-insensitive, as in C-FIND.
        by_name = _findscu(
            srv.dicom_port, tmp_path / "name", "FINDSCU", "PatientName=DANG^THI*", *TOP_KEYS[1:]
        )
        assert len(by_name) == 3
        none = _findscu(srv.dicom_port, tmp_path / "none", "FINDSCU", "PatientName=TRAN*", *TOP_KEYS[1:])
        assert none == []
        # An old modality gets the same items in the default repertoire, accents removed.
        old = _findscu(
            srv.dicom_port,
            tmp_path / "ascii",
            "OLDMWL",
            "AccessionNumber=ACC-1",
            *_without("AccessionNumber"),
            *SPS_KEYS,
        )
        assert len(old) == 2
        assert "SpecificCharacterSet" not in old[0] or old[0].SpecificCharacterSet in ("", "ISO_IR 6")
        assert str(old[0].PatientName) == "Dang^Thi Hoa Binh"
        assert old[0].RequestedProcedureDescription == "CT nguc co tiem thuoc can quang"
        # An AE not granted the worklist is refused at negotiation.
        denied = subprocess.run(
            [
                require_tool("findscu"),
                "-W",
                "-aet",
                "ECHOSCU",
                "-aec",
                "PACS",
                "-k",
                "PatientName",
                "127.0.0.1",
                str(srv.dicom_port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert denied.returncode != 0

        # The modality starts step S1 (MPPS N-CREATE referring to it), then completes it.
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(ModalityPerformedProcedureStep)
        ae.add_requested_context(ModalityWorklistInformationFind)
        assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS")
        assert assoc.is_established
        try:
            mpps_uid, series_uid = generate_uid(), generate_uid()
            create = Dataset()
            create.SpecificCharacterSet = "ISO_IR 192"
            create.PerformedProcedureStepStatus = "IN PROGRESS"
            create.PerformedProcedureStepStartDate = "20261203"
            create.PerformedProcedureStepStartTime = "090200"
            create.PerformedStationAETitle = "CT01AE"
            create.Modality = "CT"
            create.PatientName = "DANG^THI HOA BINH"
            create.PatientID = "BN77"
            ref = Dataset()
            ref.StudyInstanceUID = study_uid
            ref.AccessionNumber = "ACC-1"
            ref.RequestedProcedureID = "RP-O-1"
            ref.ScheduledProcedureStepID = "S1"
            create.ScheduledStepAttributesSequence = [ref]
            st, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, mpps_uid)
            assert st.Status == 0x0000
            order = http.get("/api/orders/O-1").json()
            states = {s["scheduled_procedure_step_id"]: s["status"] for s in order["steps"]}
            assert states == {"S1": "IN PROGRESS", "S2": "SCHEDULED"} and order["status"] == "IN PROGRESS"

            done = Dataset()
            done.PerformedProcedureStepStatus = "COMPLETED"
            done.PerformedProcedureStepEndDate = "20261203"
            done.PerformedProcedureStepEndTime = "091000"
            ps = Dataset()
            ps.SeriesInstanceUID = series_uid
            ps.ReferencedImageSequence = []
            done.PerformedSeriesSequence = [ps]
            st, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, mpps_uid)
            assert st.Status == 0x0000
            # S1 left the worklist; S2 is still on it (over the same association: the SCP
            # dispatches C-FIND by SOP class between Q/R and the worklist).
            q = Dataset()
            q.AccessionNumber = "ACC-1"
            item = Dataset()
            item.ScheduledProcedureStepID = ""
            item.ScheduledProcedureStepStatus = ""
            q.ScheduledProcedureStepSequence = [item]
            answers = [
                ident
                for status, ident in assoc.send_c_find(q, ModalityWorklistInformationFind)
                if status and status.Status in (0xFF00, 0xFF01)
            ]
            assert [a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for a in answers] == ["S2"]
        finally:
            assoc.release()
        order = http.get("/api/orders/O-1").json()
        assert {s["scheduled_procedure_step_id"]: s["status"] for s in order["steps"]} == {
            "S1": "COMPLETED",
            "S2": "SCHEDULED",
        }

        # The images arrive with the name typed without accents, in the order's study.
        ds = make_dataset(
            study_uid=study_uid,
            series_uid=series_uid,
            patient_name="DANG^THI HOA BINH",
            patient_id="BN77",
            accession="ACC-1",
            charset="ISO_IR 100",
            IssuerOfPatientID="BV01",
        )
        path = write(ds, tmp_path / "img.dcm")
        run = subprocess.run(
            [storescu, "-aet", "STORESCU", "-aec", "PACS", "127.0.0.1", str(srv.dicom_port), str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        found = http.get("/dicom-web/studies", params={"StudyInstanceUID": study_uid}).json()
        assert found[0]["00100010"]["Value"][0]["Alphabetic"] == NAME
        # ... while the file keeps what the modality sent.
        meta = http.get(f"/dicom-web/studies/{study_uid}/metadata").json()
        assert meta[0]["00100010"]["Value"][0]["Alphabetic"] == "DANG^THI HOA BINH"
