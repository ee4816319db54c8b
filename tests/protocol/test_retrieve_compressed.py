"""C-MOVE / C-GET to peers that accept only compressed transfer syntaxes, against a running archive.

DCMTK ``storescp`` configured (``-xf``) to accept only JPEG-LS Lossless gets JPEG-LS that decodes
pixel for pixel; one accepting only JPEG Baseline gets nothing unless its ``[dicom] destinations``
entry says ``lossy = true``, and then only the 8-bit image (a new instance with the Lossy Image
Compression attributes), the 16-bit ones failing with the reason. A pynetdicom C-GET requester
that takes only JPEG-LS for MR gets JPEG-LS too. SQLite only: the index plays no part.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    UltrasoundImageStorage,
)

from tests.conftest import require_tool
from tests.protocol.test_qr_find import store_with_storescu
from tests.serve import serve
from tests.web.test_transcode_encode import IMAGES

JLS, BASELINE = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.50"
STUDY = "1.2.826.0.1.3680043.10.778.77"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _storescp(tmp: Path, title: str, syntax: str) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp accepting CT, MR and US images in ``syntax`` only (a ``-xf`` profile)."""
    exe = require_tool("storescp")
    cfg = tmp / f"{title}.cfg"
    contexts = "\n".join(
        f"PresentationContext{i} = {sop}\\Only"
        for i, sop in enumerate(("CTImageStorage", "MRImageStorage", "UltrasoundImageStorage"), 1)
    )
    cfg.write_text(
        f"[[TransferSyntaxes]]\n[Only]\nTransferSyntax1 = {syntax}\n"
        f"[[PresentationContexts]]\n[Only]\n{contexts}\n"
        "[[Profiles]]\n[Only]\nPresentationContexts = Only\n",
        encoding="utf-8",
    )
    out = tmp / title
    out.mkdir()
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "-aet", title, "-xf", str(cfg), "Only", "-od", str(out), str(port)],
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
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else "storescp exited"
                assert time.monotonic() < deadline, "storescp did not start"
                time.sleep(0.05)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def _seed(tmp: Path) -> dict[str, Dataset]:
    series = {name: f"{STUDY}.{i}" for i, name in enumerate(sorted(IMAGES), 1)}
    seeds = {}
    for name, make in IMAGES.items():
        ds = make()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series[name]
        ds.save_as(tmp / f"{name}.dcm", enforce_file_format=True)
        seeds[name] = ds
    return seeds


def _move(port: int, destination: str) -> Dataset:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    q = Dataset()
    q.QueryRetrieveLevel, q.StudyInstanceUID = "STUDY", STUDY
    try:
        responses = list(assoc.send_c_move(q, destination, StudyRootQueryRetrieveInformationModelMove))
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final is not None and final.Status != 0xFF00
    return final


def _received(folder: Path) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in sorted(folder.iterdir()))}


def test_move_and_get_to_peers_that_take_only_compressed(tmp_path: Path) -> None:
    seeds = _seed(tmp_path)
    with (
        _storescp(tmp_path, "JLSONLY", "JPEGLSLossless") as (jls_port, jls_dir),
        _storescp(tmp_path, "JPEGONLY", "JPEGBaseline") as (jpeg_port, jpeg_dir),
    ):
        destinations = [
            {"ae_title": "JLSONLY", "host": "127.0.0.1", "port": jls_port},
            {"ae_title": "JPEGONLY", "host": "127.0.0.1", "port": jpeg_port},
            {"ae_title": "JPEGLOSSY", "host": "127.0.0.1", "port": jpeg_port, "lossy": True},
        ]
        env = {"PACS_DICOM_DESTINATIONS": json.dumps(destinations)}
        with serve(tmp_path, f"sqlite:///{tmp_path / 'index.sqlite'}", env=env) as srv:
            store_with_storescu(srv.dicom_port, [tmp_path / f"{n}.dcm" for n in sorted(seeds)])

            # Only JPEG-LS Lossless: every instance arrives in it, the same instance, the same pixels.
            final = _move(srv.dicom_port, "JLSONLY")
            assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 3
            got = _received(jls_dir)
            assert set(got) == {str(ds.SOPInstanceUID) for ds in seeds.values()}
            for ds in seeds.values():
                out = got[str(ds.SOPInstanceUID)]
                assert out.file_meta.TransferSyntaxUID == JLS
                assert np.array_equal(out.pixel_array, ds.pixel_array)
                assert "LossyImageCompression" not in out
            path = next(p for p in jls_dir.iterdir() if pydicom.dcmread(p).Modality == "CT")
            decoded = tmp_path / "dcmdjpls.dcm"
            r = subprocess.run(
                [require_tool("dcmdjpls"), str(path), str(decoded)], capture_output=True, text=True
            )
            assert r.returncode == 0, r.stderr
            assert np.array_equal(pydicom.dcmread(decoded).pixel_array, seeds["ct-signed"].pixel_array)

            # Only JPEG Baseline, lossy not allowed: no lossy context is proposed, so the peer
            # accepts none and pynetdicom refuses the move (0xA801, it cannot associate).
            final = _move(srv.dicom_port, "JPEGONLY")
            assert final.Status == 0xA801
            assert not list(jpeg_dir.iterdir())

            # Allowed lossy: the 8-bit RGB image goes as a new, lossy instance; 16-bit ones cannot.
            final = _move(srv.dicom_port, "JPEGLOSSY")
            assert final.NumberOfCompletedSuboperations == 1 and final.NumberOfFailedSuboperations == 2
            (out,) = _received(jpeg_dir).values()
            rgb = seeds["rgb"]
            assert out.file_meta.TransferSyntaxUID == BASELINE
            assert out.SOPInstanceUID != rgb.SOPInstanceUID
            assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == rgb.SOPInstanceUID
            assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_10918_1"
            assert np.abs(out.pixel_array.astype(float) - rgb.pixel_array).mean() < 4
            assert "at most 8 bits per sample" in srv.log()  # why the CT and MR were not sent

            # C-GET by a requester that takes MR in JPEG-LS only.
            received: list[Dataset] = []

            def on_store(event: evt.Event) -> int:
                ds = event.dataset
                ds.file_meta = event.file_meta
                received.append(ds)
                return 0x0000

            ae = AE(ae_title="PYNETDICOM")
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            ae.add_requested_context(MRImageStorage, JLS)
            assoc = ae.associate(
                "127.0.0.1",
                srv.dicom_port,
                ae_title="PACS",
                ext_neg=[build_role(MRImageStorage, scp_role=True)],
                evt_handlers=[(evt.EVT_C_STORE, on_store)],
            )
            assert assoc.is_established
            mr = seeds["mr"]
            q = Dataset()
            q.QueryRetrieveLevel, q.StudyInstanceUID = "SERIES", STUDY
            q.SeriesInstanceUID = mr.SeriesInstanceUID
            try:
                statuses = [
                    st.Status for st, _ in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet)
                ]
            finally:
                assoc.release()
            assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
            (got_mr,) = received
            assert got_mr.file_meta.TransferSyntaxUID == JLS
            assert got_mr.SOPInstanceUID == mr.SOPInstanceUID
            assert np.array_equal(got_mr.pixel_array, mr.pixel_array)

            # A requester without a lossy destination entry that takes US only in JPEG Baseline:
            # a failed sub-operation, with the reason in the log.
            ae = AE(ae_title="PYNETDICOM")
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            ae.add_requested_context(UltrasoundImageStorage, BASELINE)
            assoc = ae.associate(
                "127.0.0.1",
                srv.dicom_port,
                ae_title="PACS",
                ext_neg=[build_role(UltrasoundImageStorage, scp_role=True)],
                evt_handlers=[(evt.EVT_C_STORE, on_store)],
            )
            assert assoc.is_established
            q.SeriesInstanceUID = seeds["rgb"].SeriesInstanceUID
            try:
                finals = [st for st, _ in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet)]
            finally:
                assoc.release()
            assert finals[-1].NumberOfFailedSuboperations == 1 and len(received) == 1
            assert "is lossy and this peer is not allowed lossy compression" in srv.log()
