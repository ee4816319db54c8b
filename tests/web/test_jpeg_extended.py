"""12-bit JPEG extended (process 4) that pydicom's plugins refuse: pydicom's ``JPEG-lossy.dcm``
(libjpeg: "scan start must be zero ... sequential"; Pillow: no 12-bit JPEG) is decoded through
imagecodecs, pixel for pixel as GDCM's ``gdcmconv --raw`` decodes it, and renders (issue 17)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

from pacs.model import Origin
from tests.conftest import require_tool

EXPLICIT = "1.2.840.10008.1.2.1"


def test_jpeg_lossy_12_bit_decodes_as_gdcm_does_and_renders(sqlite_rt, sqlite_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = Path(get_testdata_file("JPEG-lossy.dcm"))
    raw = tmp_path / "raw.dcm"
    done = subprocess.run(
        [require_tool("gdcmconv"), "--raw", str(src), str(raw)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    expected = pydicom.dcmread(raw).pixel_array
    res = sqlite_rt.archive.store_bytes(src.read_bytes(), Origin(protocol="cli"))
    url = (
        f"/dicom-web/studies/{res.study_instance_uid}/series/{res.series_instance_uid}"
        f"/instances/{res.sop_instance_uid}"
    )
    r = sqlite_client.get(
        url, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}'}
    )
    assert r.status_code == 200, r.text[:300]
    body = r.content
    start = body.index(b"DICM") - 128
    got = pydicom.dcmread(io.BytesIO(body[start:]))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT
    assert np.array_equal(got.pixel_array, expected)
    png = sqlite_client.get(f"{url}/rendered", headers={"Accept": "image/png"})
    assert png.status_code == 200
    assert Image.open(io.BytesIO(png.content)).size == (expected.shape[1], expected.shape[0])
