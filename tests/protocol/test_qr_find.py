"""C-FIND against a running archive: DCMTK findscu (Patient and Study Root, every level, UTF-8 and
Latin-1 names) and pynetdicom (malformed identifiers, the result cap, C-CANCEL), on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from pacs.config import Settings
from pacs.model import Origin
from pacs.scp.qr import QueryRetrieveSCP
from pacs.services.archive import Archive
from tests.conftest import require_tool
from tests.factories import make_dataset, to_bytes, write
from tests.serve import serve

UID_A = "1.2.826.0.1.3680043.10.777.1"
UID_B = "1.2.826.0.1.3680043.10.777.2"
UID_C = "1.2.826.0.1.3680043.10.777.3"
SERIES_A1 = UID_A + ".1"
SERIES_A2 = UID_A + ".2"


def seed_files(tmp: Path) -> list[Path]:
    """Study A (Nguyễn^Văn An, CT series of 2 + SR-like series of 1), B (Trần^Thị Bình, MR), C (Latin-1)."""
    out = tmp / "seed"
    out.mkdir(exist_ok=True)
    sets = [
        make_dataset(study_uid=UID_A, series_uid=SERIES_A1, instance_number=1),
        make_dataset(study_uid=UID_A, series_uid=SERIES_A1, instance_number=2),
        make_dataset(study_uid=UID_A, series_uid=SERIES_A2, modality="OT", series_number=2),
        make_dataset(
            study_uid=UID_B,
            patient_name="Trần^Thị Bình",
            patient_id="P2",
            modality="MR",
            study_date="20250111",
        ),
        make_dataset(
            study_uid=UID_C,
            patient_name="Müller^Jürgen",
            patient_id="P3",
            charset="ISO_IR 100",
            ReferringPhysicianName="Schmidt^Anna",
            StudyDescription="Kopf",
            study_date="20241231",
        ),
    ]
    return [write(ds, out / f"{i}.dcm") for i, ds in enumerate(sets)]


def store_with_storescu(port: int, files: list[Path], *options: str) -> None:
    r = subprocess.run(
        [
            require_tool("storescu"),
            *options,
            "-aet",
            "STORESCU",
            "-aec",
            "PACS",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def findscu(port: int, out: Path, *args: str, model: str = "-S") -> tuple[list[Dataset], str]:
    """Run findscu, keeping each response identifier as a file (-X); returns them and the log."""
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("rsp*.dcm"):
        f.unlink()
    r = subprocess.run(
        [
            require_tool("findscu"),
            "-v",
            model,
            "-aet",
            "FINDSCU",
            "-aec",
            "PACS",
            "-X",
            "-od",
            str(out),
            *("127.0.0.1", str(port), *args),
        ],
        capture_output=True,
        text=True,
        errors="replace",  # the log echoes query values in their own character set
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return [pydicom.dcmread(f) for f in sorted(out.glob("rsp*.dcm"))], r.stdout + r.stderr


def _k(**keys: str) -> list[str]:
    out: list[str] = []
    for k, v in keys.items():
        out += ["-k", f"{k}={v}" if v else k]
    return out


@pytest.fixture
def served(tmp_path: Path, db_url: str) -> Iterator[int]:
    require_tool("findscu")
    with serve(tmp_path, db_url) as srv:
        store_with_storescu(srv.dicom_port, seed_files(tmp_path))
        yield srv.dicom_port


def test_findscu_study_root_all_levels(served: int, tmp_path: Path) -> None:
    port, out = served, tmp_path / "rsp"
    # STUDY: Vietnamese name found by unaccented lower-case text; computed and unsupported keys.
    keys = _k(
        QueryRetrieveLevel="STUDY",
        PatientName="nguyen*",
        StudyInstanceUID="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        StudyDate="",
    )
    found, log = findscu(port, out, *keys, "-k", "(0032,1060)")  # RequestedProcedureDescription: not indexed
    assert len(found) == 1
    ds = found[0]
    assert str(ds.PatientName) == "Nguyễn^Văn An"
    assert ds.StudyInstanceUID == UID_A
    assert list(ds.ModalitiesInStudy) == ["CT", "OT"]
    assert ds.NumberOfStudyRelatedSeries == 2 and ds.NumberOfStudyRelatedInstances == 3
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.QueryRetrieveLevel == "STUDY" and ds.RetrieveAETitle == "PACS"
    assert ds[0x00321060].value in (None, "")
    asked = {0x00080052, 0x00100010, 0x0020000D, 0x00080061, 0x00201206, 0x00201208, 0x00080020, 0x00321060}
    assert {int(e.tag) for e in ds} == asked | {0x00080005, 0x00080054}
    assert "WarningUnsupportedOptionalKeys" in log  # 0xFF01: an optional key we do not support
    # Date range with an open end.
    found, _ = findscu(port, out, *_k(QueryRetrieveLevel="STUDY", StudyDate="20250111-", StudyInstanceUID=""))
    assert [d.StudyInstanceUID for d in found] == [UID_B]
    # SERIES of a study, IMAGE of a series.
    found, _ = findscu(
        port, out, *_k(QueryRetrieveLevel="SERIES", StudyInstanceUID=UID_A, SeriesInstanceUID="", Modality="")
    )
    assert sorted((d.SeriesInstanceUID, d.Modality) for d in found) == [(SERIES_A1, "CT"), (SERIES_A2, "OT")]
    found, _ = findscu(
        port,
        out,
        *_k(QueryRetrieveLevel="IMAGE", StudyInstanceUID=UID_A, SeriesInstanceUID=SERIES_A1),
        *_k(SOPInstanceUID="", InstanceNumber=""),
    )
    assert sorted(int(d.InstanceNumber) for d in found) == [1, 2]
    assert all(d.SeriesInstanceUID == SERIES_A1 for d in found)
    # Accented query text (UTF-8 sent without a declared character set) finds the same patient.
    found, _ = findscu(port, out, *_k(QueryRetrieveLevel="STUDY", PatientName="TRẦN*", PatientID=""))
    assert [d.PatientID for d in found] == ["P2"]


def test_findscu_patient_root(served: int, tmp_path: Path) -> None:
    port, out = served, tmp_path / "rsp"
    found, _ = findscu(
        port,
        out,
        *_k(QueryRetrieveLevel="PATIENT", PatientName="nguyen^van*", PatientID=""),
        *_k(NumberOfPatientRelatedStudies="", NumberOfPatientRelatedInstances=""),
        model="-P",
    )
    assert len(found) == 1 and found[0].PatientID == "PID001"
    assert found[0].NumberOfPatientRelatedStudies == 1 and found[0].NumberOfPatientRelatedInstances == 3
    found, _ = findscu(
        port,
        out,
        *_k(QueryRetrieveLevel="STUDY", PatientID="P2", StudyInstanceUID="", StudyDate=""),
        model="-P",
    )
    assert [(d.StudyInstanceUID, d.StudyDate) for d in found] == [(UID_B, "20250111")]
    found, _ = findscu(
        port,
        out,
        *_k(QueryRetrieveLevel="SERIES", PatientID="PID001", StudyInstanceUID=UID_A, Modality="OT"),
        model="-P",
    )
    assert [d.SeriesInstanceUID for d in found] == [SERIES_A2]


def test_findscu_latin1_query(served: int, tmp_path: Path) -> None:
    """A query sent in ISO_IR 100 finds the Latin-1 patient; the answer comes back in UTF-8."""
    q = Dataset()
    q.SpecificCharacterSet = "ISO_IR 100"
    q.QueryRetrieveLevel = "STUDY"
    q.PatientName = "Müller*"
    q.StudyInstanceUID = ""
    q.file_meta = pydicom.dataset.FileMetaDataset()
    q.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "q.dcm"
    q.save_as(path, implicit_vr=True, little_endian=True)
    assert "Müller".encode("latin-1") in path.read_bytes()
    found, _ = findscu(served, tmp_path / "rsp", str(path))
    assert [(str(d.PatientName), d.StudyInstanceUID) for d in found] == [("Müller^Jürgen", UID_C)]


def _assoc(port: int) -> object:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, ImplicitVRLittleEndian)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    return assoc


def _find(assoc: object, ds: Dataset) -> tuple[list[Dataset], Dataset]:
    pending: list[Dataset] = []
    final = Dataset()
    for st, ident in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):  # type: ignore[attr-defined]
        assert st, "no response"
        if st.Status in (0xFF00, 0xFF01):
            pending.append(ident)
        else:
            final = st
    return pending, final


def _q(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the invalid values we send
def test_malformed_identifiers_and_cap(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, env={"PACS_DICOM_MAX_FIND_RESULTS": "2"}) as srv:
        store_with_storescu(srv.dicom_port, seed_files(tmp_path))
        assoc = _assoc(srv.dicom_port)
        try:
            bad = [
                (_q("STUDY", StudyDate="2025-01-32x"), 0xA900),
                (_q("STUDY", StudyInstanceUID="1.2.abc"), 0xA900),
                (_q("STUDY", SeriesInstanceUID="1.2.3"), 0xA900),
                (_q("NONSENSE", PatientID=""), 0xA900),
                (_q("PATIENT", PatientID=""), 0xA900),  # no PATIENT level in Study Root
                (_q("STUDY", StudyTime="99-"), 0xA900),
            ]
            for ds, code in bad:
                pending, final = _find(assoc, ds)
                assert not pending
                assert final.Status == code, ds
                assert final.ErrorComment
            # The association survived: a good query on it still works.
            pending, final = _find(assoc, _q("STUDY", PatientID="P2", StudyInstanceUID=""))
            assert final.Status == 0x0000 and [p.StudyInstanceUID for p in pending] == [UID_B]
            # Cap: 5 instances, at most 2 answers, then Out of Resources with a reason.
            pending, final = _find(assoc, _q("IMAGE", SOPInstanceUID=""))
            assert len(pending) == 2
            assert final.Status == 0xA700 and "more than 2 matches" in final.ErrorComment
        finally:
            assoc.release()  # type: ignore[attr-defined]
        log = srv.log()
        assert "C-FIND refused from PYNETDICOM@127.0.0.1: 0xA900" in log
        assert "(capped)" in log


class FakeFindEvent:
    """Just enough of a pynetdicom C-FIND event; the peer cancels after ``cancel_after`` checks."""

    def __init__(self, identifier: Dataset, cancel_after: int, calling_ae: str = "PYNETDICOM") -> None:
        self.identifier = identifier
        self.request = type("Rq", (), {"AffectedSOPClassUID": StudyRootQueryRetrieveInformationModelFind})()
        peer = type("Peer", (), {"address": "127.0.0.1", "ae_title": calling_ae})()
        self.assoc = type("Assoc", (), {"requestor": peer, "acceptor": peer})()
        self._checks = 0
        self._cancel_after = cancel_after

    @property
    def is_cancelled(self) -> bool:
        self._checks += 1
        return self._checks > self._cancel_after


def test_find_handler_honours_cancel(archive: Archive) -> None:
    """C-CANCEL between pending responses ends the search with 0xFE00 (PS3.4 C.4.1.2.3).

    Over the wire the 30 answers are queued before the cancel is read, so the handler's contract
    is checked directly; C-CANCEL over a real association is tested with C-GET.
    """
    for i in range(5):
        archive.store_bytes(
            to_bytes(make_dataset(study_uid=UID_A, instance_number=i)), Origin(protocol="test")
        )
    scp = QueryRetrieveSCP(archive, Settings())
    responses = list(scp.handle_find(FakeFindEvent(_q("IMAGE", SOPInstanceUID=""), cancel_after=2)))
    assert [r[0] for r in responses] == [0xFF00, 0xFF00, 0xFE00]
    responses = list(scp.handle_find(FakeFindEvent(_q("IMAGE", SOPInstanceUID=""), cancel_after=99)))
    assert [r[0] for r in responses] == [0xFF00] * 5
