"""The C-STORE fast path (``pacs.scp.faststore``) at its edges, on a real ``pacs serve``.

Requests are written to the socket as raw P-DATA-TF PDUs, cut the way a test needs (a command
set over two PDUs, a command fragment in the middle of a data set), on an association that
pynetdicom negotiated; responses are read back through pynetdicom's own decoder.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind, Verification

from pacs.errors import NotFound
from tests.factories import make_dataset, write
from tests.protocol.store_util import associate, dataset_part, files_under, open_archive
from tests.serve import Served, serve


def _association(port: int) -> AbstractContextManager[Association]:
    return associate(
        port,
        [
            (CTImageStorage, ExplicitVRLittleEndian),
            (Verification, ImplicitVRLittleEndian),
            (PatientRootQueryRetrieveInformationModelFind, ImplicitVRLittleEndian),
        ],
    )


def _instance(tmp: Path, n: int) -> tuple[str, bytes, Path]:
    pixels = np.arange(128 * 128, dtype=np.int16).reshape(128, 128)  # 32 KiB: several fragments
    ds = make_dataset(patient_name="Trần^Thị Bích", patient_id=f"FAST{n}", instance_number=n, pixels=pixels)
    path = write(ds, tmp / f"fast{n}.dcm")
    return str(ds.SOPInstanceUID), dataset_part(path), path


def _pdvs(context_id: int, sop_instance: str, data: bytes, message_id: int) -> list[bytes]:
    """The PDV items (control byte first) pynetdicom would send for this C-STORE, 4 KiB fragments."""
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = CTImageStorage
    req.AffectedSOPInstanceUID = sop_instance
    req.Priority = 2
    req.DataSet = io.BytesIO(data)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return [bytes(d) for p in msg.encode_msg(context_id, 4096) for _, d in p.presentation_data_value_list]


def _pdu(context_id: int, *pdvs: bytes) -> bytes:
    body = b"".join(struct.pack(">LB", len(v) + 1, context_id) + v for v in pdvs)
    return struct.pack(">BBL", 4, 0, len(body)) + body


def _context_id(assoc: Association, abstract: str) -> int:
    return next(int(cx.context_id) for cx in assoc.accepted_contexts if cx.abstract_syntax == abstract)


@contextmanager
def _paused(assoc: Association) -> Iterator[None]:
    """Keep the requestor's reactor from taking our responses (as pynetdicom's send_* do)."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        yield
    finally:
        assoc._reactor_checkpoint.set()


def _response(assoc: Association) -> C_STORE:
    _cid, rsp = assoc.dimse.get_msg(block=True)
    assert isinstance(rsp, C_STORE), rsp
    return rsp


def _indexed(srv: Served, sop: str) -> bool:
    with open_archive(srv.database_url, srv.storage) as archive:
        try:
            return bool(archive.instances(sop_instance_uid=sop))
        except NotFound:
            return False


def test_fast_and_pynetdicom_paths_share_one_association(db_url: str, tmp_path: Path) -> None:
    with serve(tmp_path, db_url) as srv, _association(srv.dicom_port) as assoc:
        cid = _context_id(assoc, CTImageStorage)
        sops = []
        # 1. An ordinary C-STORE (command and data in separate PDUs): the fast path.
        sop, _, path = _instance(tmp_path, 1)
        assert assoc.send_c_store(path).Status == 0x0000
        sops.append(sop)
        # 2. C-ECHO and C-FIND in between go through pynetdicom.
        assert assoc.send_c_echo().Status == 0x0000
        query = Dataset()
        query.QueryRetrieveLevel = "PATIENT"
        query.PatientID = "FAST1"
        statuses = [
            s.Status for s, _ in assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind)
        ]
        assert statuses[-1] == 0x0000 and 0xFF00 in statuses
        # 3. Command set split over two PDUs: pynetdicom's path, by design.
        sop, data, _ = _instance(tmp_path, 2)
        items = _pdvs(cid, sop, data, message_id=101)
        command = items[0][1:]
        half = len(command) // 2
        with _paused(assoc):
            assoc.dul.socket.send(_pdu(cid, b"\x01" + command[:half]))
            assoc.dul.socket.send(_pdu(cid, b"\x03" + command[half:]))
            for item in items[1:]:
                assoc.dul.socket.send(_pdu(cid, item))
            rsp = _response(assoc)
        assert (rsp.Status, rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPInstanceUID) == (0, 101, sop)
        sops.append(sop)
        # 4. Command and every data fragment in one PDU: the fast path again.
        sop, data, _ = _instance(tmp_path, 3)
        with _paused(assoc):
            assoc.dul.socket.send(_pdu(cid, *_pdvs(cid, sop, data, message_id=102)))
            rsp = _response(assoc)
        assert (rsp.Status, rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPInstanceUID) == (0, 102, sop)
        sops.append(sop)
        # 5. And pynetdicom's own SCU once more.
        sop, _, path = _instance(tmp_path, 4)
        assert assoc.send_c_store(path).Status == 0x0000
        sops.append(sop)
    for sop in sops:
        assert _indexed(srv, sop), sop
    with open_archive(db_url, srv.storage) as archive:
        assert archive.verify().ok


@pytest.mark.parametrize("violation", ["command fragment", "other context"])
def test_protocol_violation_mid_data_set_aborts_and_leaves_nothing(
    db_url: str, tmp_path: Path, violation: str
) -> None:
    with serve(tmp_path, db_url) as srv:
        with _association(srv.dicom_port) as assoc:
            cid = _context_id(assoc, CTImageStorage)
            echo_cid = _context_id(assoc, Verification)
            sop, data, _ = _instance(tmp_path, 1)
            items = _pdvs(cid, sop, data, message_id=7)
            assert len(items) > 3
            assoc.dul.socket.send(_pdu(cid, items[0]))  # the command
            assoc.dul.socket.send(_pdu(cid, items[1]))  # the first data fragment
            if violation == "command fragment":
                assoc.dul.socket.send(_pdu(cid, items[0]))
            else:
                assoc.dul.socket.send(_pdu(echo_cid, items[2]))
            deadline = time.monotonic() + 10
            while assoc.is_established and time.monotonic() < deadline:
                time.sleep(0.05)
            assert assoc.is_aborted, f"the server should abort the association:\n{srv.log()[-3000:]}"
        assert not _indexed(srv, sop)
        assert files_under(srv.storage / "blobs") == []
        # The server goes on serving.
        sop, _, path = _instance(tmp_path, 2)
        with _association(srv.dicom_port) as again:
            assert again.send_c_store(path).Status == 0x0000
        assert "inside the data set of C-STORE message 7" in srv.log()


def test_fast_store_off_stores_the_same(db_url: str, tmp_path: Path) -> None:
    with serve(tmp_path, db_url, env={"PACS_DICOM_FAST_STORE": "false"}) as srv:
        with _association(srv.dicom_port) as assoc:
            sop, _, path = _instance(tmp_path, 1)
            assert assoc.send_c_store(path).Status == 0x0000
        assert _indexed(srv, sop)
        assert "C-STORE through pynetdicom" in srv.log()
