"""DCMTK's storescu re-sending under a stored SOP Instance UID, against a real ``pacs serve``
(issue 17, default ``duplicate_policy = "keep-versions"``; SQLite and PostgreSQL): a corrected
object and the same object in another transfer syntax are both answered success, kept as
versions, and WADO-RS serves the newest."""

from __future__ import annotations

import os
import subprocess
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pydicom

from pacs.model import Level
from tests.conftest import require_tool
from tests.factories import make_dataset, write
from tests.protocol.store_util import open_archive
from tests.serve import serve
from tests.web.conftest import split_multipart

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _storescu(port: int, path: Path, *options: str) -> str:
    """Send one file as STORESCU (verbose); the output, after checking the exit status."""
    cmd = [
        require_tool("storescu"),
        "-v",
        "-aet",
        "STORESCU",
        "-aec",
        "PACS",
        *options,
        "127.0.0.1",
        str(port),
    ]
    done = subprocess.run(
        [*cmd, str(path)], capture_output=True, text=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"}
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return out


def _wado(base: str, ds: pydicom.Dataset) -> pydicom.Dataset:
    url = (
        f"{base}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    r = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200, r.text
    [(_headers, part)] = split_multipart(r.headers["content-type"], r.content)
    return pydicom.dcmread(BytesIO(part))


def test_storescu_resends_are_success_and_the_newest_is_served(db_url: str, tmp_path: Path) -> None:
    require_tool("dcmcjpeg")
    pixels = (np.random.default_rng(17).normal(1000, 200, (64, 64)).clip(0, 4095)).astype(np.uint16)
    first = make_dataset(
        pixels=pixels, accession="WRONG-ACC", patient_name="Tran^Van Duc", BitsStored=12, HighBit=11
    )
    original = write(first, tmp_path / "original.dcm")
    first.AccessionNumber = "ACC-17"
    first.PatientName = "Trần^Văn Đức"
    corrected = write(first, tmp_path / "corrected.dcm")
    jpeg = tmp_path / "corrected-jpeg.dcm"
    subprocess.run(
        [require_tool("dcmcjpeg"), str(corrected), str(jpeg)], check=True, capture_output=True, timeout=60
    )
    assert pydicom.dcmread(jpeg, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG_LOSSLESS_SV1
    sop = first.SOPInstanceUID

    with serve(tmp_path, db_url, env={"PACS_STORAGE_FSYNC": "false"}) as srv:
        assert "Received Store Response (Success)" in _storescu(srv.dicom_port, original)
        assert _wado(srv.base_url, first).AccessionNumber == "WRONG-ACC"

        # A corrected object under the same SOP Instance UID: success (not 0x0111), and served.
        out = _storescu(srv.dicom_port, corrected)
        assert "Received Store Response (Success)" in out and "Duplicate" not in out
        served = _wado(srv.base_url, first)
        assert (served.AccessionNumber, str(served.PatientName)) == ("ACC-17", "Trần^Văn Đức")
        assert served.file_meta.TransferSyntaxUID == EXPLICIT_LE

        # The same object again, now JPEG Lossless: kept as a version too, and the one served.
        out = _storescu(srv.dicom_port, jpeg, "-xs")
        assert "Received Store Response (Success)" in out
        served = _wado(srv.base_url, first)
        assert served.file_meta.TransferSyntaxUID == JPEG_LOSSLESS_SV1
        assert np.array_equal(served.pixel_array, pixels)  # lossless

        listed = httpx.get(f"{srv.base_url}/api/instances/{sop}/versions").json()["versions"]
        assert [(v["transfer_syntax_uid"], v["current"], v["calling_ae"]) for v in listed] == [
            (JPEG_LOSSLESS_SV1, True, "STORESCU"),
            (EXPLICIT_LE, False, "STORESCU"),
            (EXPLICIT_LE, False, "STORESCU"),
        ]
        oldest = httpx.get(f"{srv.base_url}{listed[2]['url']}")
        assert oldest.status_code == 200
        assert pydicom.dcmread(BytesIO(oldest.content)).AccessionNumber == "WRONG-ACC"

        # And a plain resend of what is served: a no-op duplicate, still success.
        assert "Received Store Response (Success)" in _storescu(srv.dicom_port, jpeg, "-xs")
        with open_archive(db_url, srv.storage) as archive:
            assert archive.count(Level.IMAGE) == 1
            assert len(archive.versions(sop)) == 3 == sum(1 for _ in archive.blobs.keys())
            assert archive.verify().ok
        log = srv.log()
        assert log.count(f"new version of instance sop={sop} kept") == 2
        assert f"duplicate instance sop={sop}" in log
