"""C-STORE from DCMTK's storescu into a running archive (SQLite and PostgreSQL).

Covers: a study and a folder (``+r``), compressed transfer syntaxes made by dcmcjpeg, dcmcrle,
dcmcjpls and gdcmconv and stored as received, ISO_IR 100 and ISO_IR 192 names, the calling AE in
the stored file meta, and a calling AE pinned to another host.
"""

from __future__ import annotations

import json
import os
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacs.model import Level
from tests.conftest import require_tool
from tests.factories import make_dataset, write
from tests.protocol.store_util import dataset_part, files_under, open_archive, patient_names, stored_bytes
from tests.serve import serve

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_dicom"


def _storescu_files(port: int, files: list[Path], *options: str) -> subprocess.CompletedProcess[str]:
    """Send files (or folders, with ``+r``) with storescu as STORESCU."""
    cmd = [require_tool("storescu"), "-aet", "STORESCU", "-aec", "PACS", *options, "127.0.0.1", str(port)]
    return subprocess.run(
        cmd + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


#: Sample folders and the storescu option that proposes their transfer syntax.
SAMPLE_SYNTAXES = [
    ("ct_head", "-xt"),
    ("ct_head_prior", "-xt"),
    ("cr_chest", "-xt"),
    ("mr_brain", "-xr"),
    ("us_abdomen", "-xy"),
]


def test_storescu_study_then_folder(db_url: str, tmp_path: Path) -> None:
    """A CT study file by file, then the whole sample folder recursively: all indexed, bytes kept."""
    ct = sorted((SAMPLES / "ct_head").glob("*.dcm"))
    everything = sorted(SAMPLES.rglob("*.dcm"))
    with serve(tmp_path, db_url, env={"PACS_STORAGE_FSYNC": "false"}) as srv:  # see test_store_crash
        done = _storescu_files(srv.dicom_port, ct, "-xt")  # JPEG-LS Lossless, as stored
        assert done.returncode == 0, done.stderr
        with open_archive(db_url, srv.storage) as archive:
            assert archive.count(Level.IMAGE) == len(ct)
        # +r: a folder, each with its stored transfer syntax proposed (JPEG-LS, RLE, JPEG baseline).
        for folder, option in SAMPLE_SYNTAXES:
            done = _storescu_files(srv.dicom_port, [SAMPLES / folder], "+r", "+sd", option)
            assert done.returncode == 0, (folder, done.stderr)
        with open_archive(db_url, srv.storage) as archive:
            assert archive.count(Level.IMAGE) == len(everything)
            assert archive.count(Level.STUDY) == 5
            assert {"Nguyễn^Thị Hồng Nhung", "Trần^Văn Đức", "Lê^Hoàng Phúc"} <= patient_names(archive)
            for f in everything:
                sent = pydicom.dcmread(f, stop_before_pixels=True)
                stored = stored_bytes(archive, sent.SOPInstanceUID)
                assert dataset_part(stored) == dataset_part(f), f
                meta = pydicom.dcmread(BytesIO(stored), stop_before_pixels=True).file_meta
                assert meta.SourceApplicationEntityTitle == "STORESCU"
                assert meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
            assert archive.verify().ok
        assert "stored instance sop=" in srv.log()


# (tool command builder, storescu proposal option, expected transfer syntax)
COMPRESSORS = [
    ("dcmcjpeg", lambda s, d: ["dcmcjpeg", s, d], "-xs", "1.2.840.10008.1.2.4.70"),
    ("dcmcrle", lambda s, d: ["dcmcrle", s, d], "-xr", "1.2.840.10008.1.2.5"),
    ("dcmcjpls", lambda s, d: ["dcmcjpls", s, d], "-xt", "1.2.840.10008.1.2.4.80"),
    ("gdcmconv", lambda s, d: ["gdcmconv", "--j2k", s, d], "-xv", "1.2.840.10008.1.2.4.90"),
]


def test_compressed_transfer_syntaxes_stored_as_received(db_url: str, tmp_path: Path) -> None:
    """JPEG Lossless, RLE, JPEG-LS and JPEG 2000 files keep their transfer syntax and bytes."""
    for tool, *_ in COMPRESSORS:
        require_tool(tool)
    rng = np.random.default_rng(7)
    made: list[tuple[Path, str, str]] = []
    for i, (tool, build, option, ts) in enumerate(COMPRESSORS):
        pixels = (rng.normal(1000, 200, (64, 64)).clip(0, 4095)).astype(np.uint16)
        ds = make_dataset(pixels=pixels, instance_number=i + 1, BitsStored=12, HighBit=11)
        src = write(ds, tmp_path / f"src{i}.dcm")
        dst = tmp_path / f"{tool}.dcm"
        subprocess.run(build(str(src), str(dst)), check=True, capture_output=True, timeout=60)
        assert pydicom.dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
        made.append((dst, option, ts))
    with serve(tmp_path, db_url) as srv:
        for path, option, _ts in made:
            done = _storescu_files(srv.dicom_port, [path], option)
            assert done.returncode == 0, f"{path.name}: {done.stderr}"
        with open_archive(db_url, srv.storage) as archive:
            for path, _option, ts in made:
                sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                [inst] = archive.instances(sop_instance_uid=sop)
                assert inst.transfer_syntax_uid == ts, path.name
                stored = stored_bytes(archive, sop)
                assert dataset_part(stored) == dataset_part(path), path.name
                back = pydicom.dcmread(BytesIO(stored))
                assert back.file_meta.TransferSyntaxUID == ts
                assert back.pixel_array.shape == (64, 64)  # still decodable


def test_character_sets_latin1_and_vietnamese(db_url: str, tmp_path: Path) -> None:
    """ISO_IR 100 and ISO_IR 192 names are decoded once and found in the index."""
    latin = make_dataset(patient_name="Müller^Zoë", patient_id="L1", charset="ISO_IR 100")
    latin.StudyDescription = "Tête"
    latin.ReferringPhysicianName = "Lefèvre^Hélène"
    viet = make_dataset(patient_name="Đỗ^Thị Ngọc Ánh", patient_id="V1", charset="ISO_IR 192")
    files = [write(latin, tmp_path / "latin1.dcm"), write(viet, tmp_path / "viet.dcm")]
    assert b"M\xfcller^Zo\xeb" in files[0].read_bytes()  # really Latin-1 on the wire
    with serve(tmp_path, db_url) as srv:
        done = _storescu_files(srv.dicom_port, files)
        assert done.returncode == 0, done.stderr
        with open_archive(db_url, srv.storage) as archive:
            assert {"Müller^Zoë", "Đỗ^Thị Ngọc Ánh"} <= patient_names(archive)
            with archive.read() as conn:
                from sqlalchemy import text

                rows = dict(conn.execute(text("select patient_id, patient_name from patients")).all())
            assert rows == {"L1": "Müller^Zoë", "V1": "Đỗ^Thị Ngọc Ánh"}


@pytest.mark.parametrize("pinned_host", ["10.9.9.9"])
def test_host_pinned_ae_from_another_host_is_rejected(db_url: str, tmp_path: Path, pinned_host: str) -> None:
    """``allowed_aes = [{ae_title="X", host=...}]``: X from another address gets A-ASSOCIATE-RJ."""
    allowed = json.dumps([{"ae_title": "STORESCU", "host": pinned_host}, {"ae_title": "ECHOSCU"}])
    f = write(make_dataset(), tmp_path / "one.dcm")
    with serve(tmp_path, db_url, env={"PACS_DICOM_ALLOWED_AES": allowed}) as srv:
        done = _storescu_files(srv.dicom_port, [f])
        assert done.returncode != 0
        assert "Calling AE Title Not Recognized" in done.stdout + done.stderr
        assert "calling AE 'STORESCU' not allowed from 127.0.0.1" in srv.log()
        with open_archive(db_url, srv.storage) as archive:
            assert archive.count(Level.IMAGE) == 0
        assert files_under(srv.storage / "blobs") == []
