"""The UID rule of PS3.5 9.1 (issue 14): the validator, and every edge that takes a UID.

A component may not start with ``0`` unless it is the single digit ``0``. C-STORE, MPPS N-CREATE
and C-FIND are checked over the wire (pynetdicom SCU against ``pacs serve``); STOW-RS, QIDO-RS and
WADO-RS in process. Each refuses with its usual answer: a failure status, a STOW FailureReason,
a 400.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import ModalityPerformedProcedureStep, StudyRootQueryRetrieveInformationModelFind

from pacs import runtime
from pacs.dicom.text import is_valid_uid
from pacs.errors import InvalidInstance, NotFound
from pacs.model import Origin
from tests.appraisal.conftest import appraisal_config
from tests.appraisal.test_records import _mpps
from tests.factories import make_dataset, to_bytes, write
from tests.protocol.store_util import associate, files_under, open_archive
from tests.serve import serve

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

LEADING_ZERO = ("1.2.03.04", "01.2.3", "1.2.840.10008.05", "1.2.3.00", "1.2.3.0001")
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(autouse=True)
def _quiet_pydicom() -> Iterator[None]:
    """pydicom warns when it writes the non-conforming UIDs these tests need."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.mark.parametrize(
    "uid",
    ["0", "0.0", "1.2.840.10008.1.2.1", "1.2.0.3", "2.25.0", "1.2.10.20", "1." + "2" * 62],
)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [*LEADING_ZERO, "", "1..2", ".1.2", "1.2.", "1.2.3a", "1.2 .3", "1.2.3\n", "1." + "2" * 63, "١.٢"],
)
def test_invalid_uids(uid: str) -> None:
    assert not is_valid_uid(uid)


def test_loose_form_is_explicit() -> None:
    """Leading zeros pass only when a caller asks for the loose form; nothing else does."""
    assert is_valid_uid("1.2.03.04", strict=False)
    assert not is_valid_uid("1..2", strict=False)
    assert not is_valid_uid("1.2.3a", strict=False)


def test_dimse_edges_refuse_leading_zero_uids(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C-STORE: failure status with a reason and nothing kept; MPPS N-CREATE: 0x0106;
    C-FIND: 0xA900. The association goes on after each refusal."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bytes as a modality sends them
    sop = make_dataset(patient_id="BADSOP", sop_uid="1.2.03.04")
    study = make_dataset(patient_id="BADSTUDY", study_uid="1.2.3.05")
    series = make_dataset(patient_id="BADSERIES", series_uid="01.2.3")
    bad = {
        "SOPInstanceUID": write(sop, tmp_path / "sop.dcm"),
        "StudyInstanceUID": write(study, tmp_path / "study.dcm"),
        "SeriesInstanceUID": write(series, tmp_path / "series.dcm"),
    }
    good = make_dataset(patient_id="GOOD", sop_uid="1.2.0.4", study_uid="1.2.0.5")
    with serve(tmp_path, db_url, extra_config=appraisal_config(tmp_path, db_url)) as srv:
        with associate(srv.dicom_port, [(CT, ExplicitVRLittleEndian)]) as assoc:
            for keyword, path in bad.items():
                rsp = assoc.send_c_store(path)
                assert rsp is not None and "Status" in rsp, keyword
                assert 0xA000 <= int(rsp.Status) <= 0xCFFF, (keyword, hex(int(rsp.Status)))
                assert "invalid" in str(rsp.get("ErrorComment", "")).lower(), keyword
            assert int(assoc.send_c_store(write(good, tmp_path / "good.dcm")).Status) == 0
        assert len(files_under(srv.storage / "blobs")) == 1

        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(ModalityPerformedProcedureStep)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS")
        assert assoc.is_established
        try:
            st, _ = assoc.send_n_create(
                _mpps(good.StudyInstanceUID), ModalityPerformedProcedureStep, "1.2.03.9"
            )
            assert st.Status == 0x0106  # invalid attribute value
            st, _ = assoc.send_n_create(
                _mpps(good.StudyInstanceUID), ModalityPerformedProcedureStep, "1.2.0.9"
            )
            assert st.Status == 0x0000

            def find(uid: str) -> list[int]:
                q = Dataset()
                q.QueryRetrieveLevel = "STUDY"
                q.StudyInstanceUID = uid
                q.PatientID = ""
                responses = assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind)
                return [
                    int(status.Status) for status, _ in responses if status is not None and "Status" in status
                ]

            assert find("1.2.0.05") == [0xA900]
            assert find("1.2.0.5") == [0xFF00, 0x0000]  # the one study, then success
        finally:
            assoc.release()
            ae.shutdown()

        with open_archive(db_url, srv.storage) as archive:
            for sop_uid in ("1.2.03.04", study.SOPInstanceUID, series.SOPInstanceUID):
                with pytest.raises(NotFound):
                    archive.instances(sop_instance_uid=sop_uid)
            [kept] = archive.instances(sop_instance_uid="1.2.0.4")
            assert kept.sop_instance_uid == "1.2.0.4"
        assert srv.process.poll() is None


def test_mpps_service_refuses_leading_zero_uid(rt: runtime.Runtime) -> None:
    with pytest.raises(InvalidInstance, match=r"1\.2\.03\.9"):
        rt.appraisal.create_step("1.2.03.9", _mpps(generate_uid()), Origin(protocol="dimse"))


B = "uid-rules-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={B}'


def _stow_body(*parts: bytes) -> bytes:
    out = b"".join(f"--{B}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return out + f"--{B}--\r\n".encode()


def test_web_edges_refuse_leading_zero_uids(rt: runtime.Runtime) -> None:
    """STOW-RS: FailureReason per instance, the good one stored; QIDO-RS and WADO-RS: 400."""
    good = make_dataset(study_uid="1.2.0.77")
    bad = make_dataset(study_uid="1.2.0.77", sop_uid="1.2.0.077")
    with TestClient(runtime.web_app(rt)) as client:
        r = client.post(
            "/dicom-web/studies",
            content=_stow_body(to_bytes(good), to_bytes(bad)),
            headers={"Content-Type": STOW_TYPE},
        )
        assert r.status_code == 202, r.text
        [failed] = r.json()["00081198"]["Value"]
        assert failed["00081155"]["Value"] == ["1.2.0.077"]
        assert failed["00081197"]["Value"][0] in range(0xA000, 0xD000)
        [stored] = r.json()["00081199"]["Value"]
        assert stored["00081155"]["Value"] == [good.SOPInstanceUID]
        with pytest.raises(NotFound):
            rt.archive.instances(sop_instance_uid="1.2.0.077")

        for params in (
            {"StudyInstanceUID": "1.2.0.077"},
            {"StudyInstanceUID": "1.2.0.77,1.2.03"},
            {"SeriesInstanceUID": "01.2"},
            {"SOPInstanceUID": "1.2.3.00"},
        ):
            path = "/dicom-web/instances" if "SOPInstanceUID" in params else "/dicom-web/studies"
            if "SeriesInstanceUID" in params:
                path = "/dicom-web/series"
            q = client.get(path, params=params)
            assert q.status_code == 400, (params, q.text)
            assert "not a valid UID" in q.json()["detail"], q.text
        assert client.get("/dicom-web/studies/1.2.00.77/series").status_code == 400
        assert client.get("/dicom-web/studies/1.2.00.77/metadata").status_code == 400
        found = client.get("/dicom-web/studies", params={"StudyInstanceUID": "1.2.0.77"})
        assert found.status_code == 200 and len(found.json()) == 1
