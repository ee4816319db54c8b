"""MPPS (pynetdicom SCU) and C-STORE (DCMTK storescu) against a real ``pacs serve``, read back over HTTP."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from tests.appraisal.conftest import appraisal_config
from tests.appraisal.test_records import _complete, _mpps
from tests.conftest import require_tool
from tests.factories import make_dataset, write
from tests.serve import serve


def test_mpps_and_storescu_through_pacs_serve(db_url: str, tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    study, series = generate_uid(), generate_uid()
    files = []
    for n, t in enumerate(("090000", "090230"), 1):
        ds = make_dataset(
            study_uid=study,
            series_uid=series,
            instance_number=n,
            accession="ACC777",
            study_date="20250215",
            PatientName="Đặng^Thị Hoà",
        )
        ds.AcquisitionDate, ds.AcquisitionTime = "20250215", t
        files.append(write(ds, tmp_path / f"img{n}.dcm"))
    with serve(tmp_path, db_url, extra_config=appraisal_config(tmp_path, db_url)) as srv:
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(ModalityPerformedProcedureStep)
        assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS")
        assert assoc.is_established
        try:
            uid = generate_uid()
            create = _mpps(study, accession="ACC777")
            create.PerformedProcedureStepStartDate = "20250215"
            st, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, uid)
            assert st.Status == 0x0000
            st, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, uid)
            assert st.Status == 0x0111  # duplicate SOP instance
            st, _ = assoc.send_n_set(_complete(series), ModalityPerformedProcedureStep, uid)
            assert st.Status == 0x0000
            st, _ = assoc.send_n_set(_complete(series), ModalityPerformedProcedureStep, uid)
            assert st.Status == 0x0110 and st.ErrorID == 0xA710  # may no longer be updated
            assert "COMPLETED" in st.ErrorComment
            st, _ = assoc.send_n_set(_complete(series), ModalityPerformedProcedureStep, generate_uid())
            assert st.Status == 0x0112  # no such object instance
            bad = Dataset()
            bad.PerformedProcedureStepStatus = "COMPLETED"
            st, _ = assoc.send_n_create(bad, ModalityPerformedProcedureStep, generate_uid())
            assert st.Status == 0x0106  # N-CREATE must be IN PROGRESS
        finally:
            assoc.release()

        run = subprocess.run(
            [
                storescu,
                "-aet",
                "STORESCU",
                "-aec",
                "PACS",
                "127.0.0.1",
                str(srv.dicom_port),
                *map(str, files),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        with httpx.Client(base_url=srv.base_url, timeout=30) as http:
            rec = http.get("/api/appraisal/v1/records/acc:ACC777").json()
            listed = http.get("/api/appraisal/v1/records", params={"accession": "ACC777"}).json()
            by_study = http.get(f"/api/appraisal/v1/records/{study}").json()
        assert [r["id"] for r in listed["records"]] == ["acc:ACC777"] and by_study == rec
        assert rec["service_line"]["study_instance_uids"] == [study]
        assert rec["label"]["code"]
        [step] = rec["procedure_steps"]
        assert step["sop_instance_uid"] == uid and step["status"] == "COMPLETED"
        assert step["sending_ae_title"] == "PYNETDICOM"
        assert step["performed_series"][0]["series_instance_uid"] == series
        assert rec["devices"][0]["sending_ae_titles"] == ["STORESCU"]
        assert rec["device_timestamps"]["first_acquisition"]["value"] == "2025-02-15T09:00:00+07:00"
        assert rec["device_timestamps"]["last_acquisition"]["value"] == "2025-02-15T09:02:30+07:00"
        assert rec["device_acquisition_span"]["seconds"] == 150.0
        assert rec["claim_fields"]["NGAY_TH_YL"] == ""  # the HIS only, never the MPPS start (issue 16)
        assert rec["device_timestamps"]["procedure_step_start"] == "2025-02-15T10:10:00+07:00"
        assert rec["studies"][0]["number_of_instances"] == 2
        assert rec["people"]["operators"] == [{"dicom_name": "Phạm^Thu", "licence_code": None}]
        assert "N-SET refused" in srv.log()
