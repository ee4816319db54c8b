"""C-MOVE and C-GET against a running archive: DCMTK movescu -> DCMTK storescp, DCMTK getscu, and
pynetdicom (C-CANCEL, failed sub-operations), on SQLite and PostgreSQL.

A JPEG Baseline instance is in the study: DCMTK's storescp and getscu accept only uncompressed
syntaxes by default, so it must arrive decompressed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRBigEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs.blobstore import FileBlobStore
from pacs.index.database import Database
from pacs.index.engine import make_engine
from pacs.services.archive import Archive
from tests.conftest import require_tool
from tests.factories import make_dataset, write
from tests.protocol.test_qr_find import store_with_storescu
from tests.serve import serve

STUDY = "1.2.826.0.1.3680043.10.778.1"
SERIES = STUDY + ".1"


def _seed(tmp: Path, n_plain: int = 2) -> tuple[list[Path], str]:
    out = tmp / "seed"
    out.mkdir(exist_ok=True)
    files = [
        write(make_dataset(study_uid=STUDY, series_uid=SERIES, instance_number=i + 1), out / f"{i}.dcm")
        for i in range(n_plain)
    ]
    jpeg = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert jpeg.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    jpeg.StudyInstanceUID = STUDY
    jpeg.SeriesInstanceUID = STUDY + ".2"
    jpeg.PatientID = "PID001"
    jpeg.PatientName = "Nguyen^Van An"
    files.append(write(jpeg, out / "jpeg.dcm"))
    return files, str(jpeg.SOPInstanceUID)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp on a free port, writing what it receives to a directory."""
    exe = require_tool("storescp")
    out = tmp_path / "received"
    out.mkdir()
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "-aet", "STORESCP", "-od", str(out), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "storescp exited"
                assert time.monotonic() < deadline, "storescp did not start"
                time.sleep(0.05)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, errors="replace", timeout=60)


def test_movescu_to_storescp(tmp_path: Path, db_url: str, storescp: tuple[int, Path]) -> None:
    scp_port, received = storescp
    dest = json.dumps([{"ae_title": "STORESCP", "host": "127.0.0.1", "port": scp_port}])
    with serve(tmp_path, db_url, env={"PACS_DICOM_DESTINATIONS": dest}) as srv:
        files, jpeg_uid = _seed(tmp_path)
        store_with_storescu(srv.dicom_port, files[:-1])
        store_with_storescu(srv.dicom_port, files[-1:], "-xy")  # keep JPEG Baseline as sent
        movescu = require_tool("movescu")
        base = [movescu, "-v", "-S", "-aet", "MOVESCU", "-aec", "PACS", "127.0.0.1", str(srv.dicom_port)]
        r = _run(
            *base, "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}"
        )
        assert r.returncode == 0, r.stdout + r.stderr
        got = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in received.iterdir()}
        assert len(got) == 3
        assert not got[jpeg_uid].file_meta.TransferSyntaxUID.is_compressed  # decompressed for storescp
        assert got[jpeg_uid].pixel_array.shape[-1] == 3
        # An AE title that is not a configured destination.
        r = _run(
            *base, "-aem", "NOWHERE", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}"
        )
        assert "Refused: MoveDestinationUnknown" in r.stderr
        # Malformed identifier: failure status, the server keeps serving.
        r = _run(
            *base, "-aem", "STORESCP", "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={STUDY}"
        )
        assert "DataSetDoesNotMatchSOPClass" in r.stderr, r.stderr  # DCMTK's name for 0xA900
        log = srv.log()
        assert "C-MOVE 3 instance(s) to STORESCP" in log
        assert "unknown destination 'NOWHERE'" in log
        assert "C-MOVE refused" in log and "needs SeriesInstanceUID" in log


def test_getscu(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url) as srv:
        files, jpeg_uid = _seed(tmp_path)
        store_with_storescu(srv.dicom_port, files[:-1])
        store_with_storescu(srv.dicom_port, files[-1:], "-xy")  # keep JPEG Baseline as sent
        out = tmp_path / "got"
        out.mkdir()
        r = _run(
            require_tool("getscu"),
            "-v",
            "-S",
            "-aet",
            "GETSCU",
            "-aec",
            "PACS",
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={STUDY}",
            "127.0.0.1",
            str(srv.dicom_port),
        )
        assert r.returncode == 0, r.stdout + r.stderr
        got = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in out.iterdir()}
        assert len(got) == 3
        assert not got[jpeg_uid].file_meta.TransferSyntaxUID.is_compressed
        assert "C-GET 3 instance(s) for GETSCU" in srv.log()


def _get_ae(received: list[Dataset]) -> tuple[AE, list[tuple[object, object]]]:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    return ae, [(evt.EVT_C_STORE, on_store)]


def _study_query() -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = STUDY
    return q


def test_get_cancel_and_failed_suboperations(tmp_path: Path, db_url: str) -> None:
    """pynetdicom C-GET: C-CANCEL stops the sub-operations; a missing file and an SOP class the
    requester took no context for are failed sub-operations listed in the final response.
    """
    with serve(tmp_path, db_url) as srv:
        files, jpeg_uid = _seed(tmp_path, n_plain=12)
        store_with_storescu(srv.dicom_port, files[:-1])
        store_with_storescu(srv.dicom_port, files[-1:], "-xy")  # keep JPEG Baseline as sent
        received: list[Dataset] = []
        ae, handlers = _get_ae(received)
        role = build_role(CTImageStorage, scp_role=True)
        assoc = ae.associate(
            "127.0.0.1", srv.dicom_port, ae_title="PACS", ext_neg=[role], evt_handlers=handlers
        )
        assert assoc.is_established
        try:
            statuses = []
            for st, _ in assoc.send_c_get(_study_query(), StudyRootQueryRetrieveInformationModelGet):
                statuses.append(st.Status)
                if st.Status == 0xFF00 and len(statuses) == 1:
                    assoc.send_c_cancel(1, None, StudyRootQueryRetrieveInformationModelGet)
            assert statuses[-1] == 0xFE00
            assert 1 <= len(received) < 13
            # Remove one CT file from storage behind the archive's back.
            archive = Archive(Database(make_engine(db_url)), FileBlobStore(srv.storage))
            victim = archive.instances(STUDY, SERIES)[0]
            path = archive.path(victim)
            assert path is not None
            path.unlink()
            archive.db.close()
            received.clear()
            final = None
            for st, ident in assoc.send_c_get(_study_query(), StudyRootQueryRetrieveInformationModelGet):
                if st.Status != 0xFF00:
                    final, failed_ident = st, ident
            assert final is not None and final.Status == 0xB000  # warning: some sub-operations failed
            assert final.NumberOfCompletedSuboperations == 11
            assert final.NumberOfFailedSuboperations == 2  # the missing file + the JPEG SC (no context)
            assert set(failed_ident.FailedSOPInstanceUIDList) == {victim.sop_instance_uid, jpeg_uid}
            assert len(received) == 11
        finally:
            assoc.release()
        log = srv.log()
        assert "C-GET cancelled by PYNETDICOM" in log
        assert f"cannot send sop={victim.sop_instance_uid}" in log


def test_get_converts_big_endian_for_a_little_endian_requester(tmp_path: Path, db_url: str) -> None:
    """An instance stored as Explicit VR Big Endian (pydicom's MR_small_bigendian, sent as is)
    reaches a C-GET requester that accepts only little endian, with the same pixels and header."""
    original = pydicom.dcmread(get_testdata_file("MR_small_bigendian.dcm"))
    assert original.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    with serve(tmp_path, db_url) as srv:
        store_with_storescu(srv.dicom_port, [Path(get_testdata_file("MR_small_bigendian.dcm"))], "-xb")
        received: list[Dataset] = []
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)

        def on_store(event: evt.Event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            received.append(ds)
            return 0x0000

        assoc = ae.associate(
            "127.0.0.1",
            srv.dicom_port,
            ae_title="PACS",
            ext_neg=[build_role(MRImageStorage, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )
        assert assoc.is_established
        try:
            q = Dataset()
            q.QueryRetrieveLevel = "STUDY"
            q.StudyInstanceUID = original.StudyInstanceUID
            statuses = [st.Status for st, _ in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet)]
        finally:
            assoc.release()
    assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
    assert len(received) == 1
    got = received[0]
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.SOPInstanceUID == original.SOPInstanceUID and got.PatientName == original.PatientName
    assert got.Rows == original.Rows and got.PixelRepresentation == original.PixelRepresentation
    assert np.array_equal(got.pixel_array, original.pixel_array)
