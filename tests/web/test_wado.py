"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, negotiation, errors."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from tests.factories import make_dataset
from tests.web.conftest import relabel, split_multipart, store

OCTET_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
OCTET_ANY_QUOTED = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'


def _url(ds: pydicom.Dataset) -> str:
    s = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    return f"{s}/instances/{ds.SOPInstanceUID}"


def test_retrieve_study_metadata_and_errors(client, rt):
    study, series = generate_uid(), generate_uid()
    sets = [make_dataset(study_uid=study, series_uid=series, instance_number=i + 1) for i in range(3)]
    for ds in sets:
        store(rt, ds)
    r = client.get(
        f"/dicom-web/studies/{study}", headers={"Accept": 'multipart/related; type="application/dicom"'}
    )
    assert r.status_code == 200
    parts = split_multipart(r.headers["content-type"], r.content)
    got = sorted(pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID for _, body in parts)
    assert got == sorted(d.SOPInstanceUID for d in sets)
    assert all(h["content-type"].startswith("application/dicom") for h, _ in parts)
    meta = client.get(f"/dicom-web/studies/{study}/series/{series}/metadata").json()
    assert len(meta) == 3
    m = meta[0]
    assert m["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Nguyễn^Văn An"}]}
    assert m["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    assert m["00280010"] == {"vr": "US", "Value": [16]}
    assert m["00281050"]["Value"] == [40]
    # Second call hits the metadata cache and answers the same.
    assert client.get(f"/dicom-web/studies/{study}/series/{series}/metadata").json() == meta
    assert client.get(f"/dicom-web/studies/{generate_uid()}").status_code == 404
    assert client.get(f"/dicom-web/studies/{study}/series/{generate_uid()}/metadata").status_code == 404
    r = client.get("/dicom-web/studies/1.2.x/metadata")
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"


def test_frames_native_and_compressed(sqlite_client, sqlite_rt):
    client, rt = sqlite_client, sqlite_rt
    native = make_dataset()
    store(rt, native)
    r = client.get(f"{_url(native)}/frames/1", headers={"Accept": OCTET_ANY})
    ((headers, body),) = split_multipart(r.headers["content-type"], r.content)
    assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert body == native.PixelData
    jls = relabel("MR_small_jpeg_ls_lossless.dcm")
    store(rt, jls)
    reference = pydicom.dcmread(io.BytesIO(_raw(jls))).pixel_array
    for accept in (OCTET_ANY, OCTET_ANY_QUOTED, 'multipart/related; type="image/jls"'):
        r = client.get(f"{_url(jls)}/frames/1", headers={"Accept": accept})
        assert r.status_code == 200, accept
        ((headers, body),) = split_multipart(r.headers["content-type"], r.content)
        assert "transfer-syntax=1.2.840.10008.1.2.4.80" in headers["content-type"]
        assert body[:2] == b"\xff\xd8"  # a JPEG-LS codestream as stored
    # Default octet-stream: decoded server side to native little endian.
    r = client.get(
        f"{_url(jls)}/frames/1", headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    ((headers, body),) = split_multipart(r.headers["content-type"], r.content)
    assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    decoded = np.frombuffer(body, "<i2" if jls.PixelRepresentation else "<u2").reshape(reference.shape)
    assert np.array_equal(decoded, reference)
    # A compressed syntax we do not hold: encoded (lossless, as no lossy one was named).
    r = client.get(f"{_url(jls)}/frames/1", headers={"Accept": 'multipart/related; type="image/jp2"'})
    ((headers, body),) = split_multipart(r.headers["content-type"], r.content)
    assert headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    assert body[:4] == b"\xff\x4f\xff\x51"  # a J2K codestream
    # One we cannot encode into: 406.
    mpeg2 = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.100'
    r = client.get(f"{_url(jls)}/frames/1", headers={"Accept": mpeg2})
    assert r.status_code == 406 and r.json()["detail"]
    assert client.get(f"{_url(jls)}/frames/2", headers={"Accept": OCTET_ANY}).status_code == 404
    assert client.get(f"{_url(jls)}/frames/0", headers={"Accept": OCTET_ANY}).status_code == 400
    assert client.get(f"{_url(jls)}/frames/a,b", headers={"Accept": OCTET_ANY}).status_code == 400


def test_multiframe_frames_through_offsets(sqlite_client, sqlite_rt):
    ds = relabel("examples_ybr_color.dcm")
    store(sqlite_rt, ds)
    full = pydicom.dcmread(io.BytesIO(_raw(ds)))
    frames = list(pydicom.encaps.generate_frames(full.PixelData, number_of_frames=int(full.NumberOfFrames)))
    r = sqlite_client.get(f"{_url(ds)}/frames/2,5", headers={"Accept": OCTET_ANY})
    parts = split_multipart(r.headers["content-type"], r.content)
    assert [body for _, body in parts] == [frames[1], frames[4]]
    assert parts[0][0]["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"
    r = sqlite_client.get(f"{_url(ds)}/frames/3", headers={"Accept": 'multipart/related; type="image/jpeg"'})
    ((headers, body),) = split_multipart(r.headers["content-type"], r.content)
    assert headers["content-type"].startswith("image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50")
    assert body == frames[2]


def test_retrieve_transcodes_when_stored_syntax_not_accepted(sqlite_client, sqlite_rt):
    ds = relabel("MR_small_RLE.dcm")
    store(sqlite_rt, ds)
    r = sqlite_client.get(_url(ds), headers={"Accept": 'multipart/related; type="application/dicom"'})
    ((_headers, body),) = split_multipart(r.headers["content-type"], r.content)
    out = pydicom.dcmread(io.BytesIO(body))
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert out.SOPInstanceUID == ds.SOPInstanceUID  # transcoding keeps the identity
    assert np.array_equal(out.pixel_array, pydicom.dcmread(io.BytesIO(_raw(ds))).pixel_array)
    r = sqlite_client.get(
        _url(ds), headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    )
    ((_headers, body),) = split_multipart(r.headers["content-type"], r.content)
    assert pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    r = sqlite_client.get(  # a syntax we can encode into (tests/web/test_transcode_encode.py)
        _url(ds),
        headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'
        },
    )
    ((_headers, body),) = split_multipart(r.headers["content-type"], r.content)
    assert pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    r = sqlite_client.get(  # one we cannot (MPEG2)
        _url(ds),
        headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.100'
        },
    )
    assert r.status_code == 406


def test_bulkdata(sqlite_client, sqlite_rt):
    ds = make_dataset()
    ds.add_new(0x00091010, "LO", "ACME")  # private creator
    ds.add_new(0x00091011, "OB", b"\x01" * 5000)
    store(sqlite_rt, ds)
    meta = sqlite_client.get(f"{_url(ds)}/metadata").json()[0]
    uri = meta["00091011"]["BulkDataURI"]
    r = sqlite_client.get(uri)
    ((_headers, body),) = split_multipart(r.headers["content-type"], r.content)
    assert body == b"\x01" * 5000
    assert sqlite_client.get(f"{_url(ds)}/bulkdata/..%2F..%2Fetc").status_code in (400, 404)
    assert sqlite_client.get(f"{_url(ds)}/bulkdata/00100011").status_code == 404


def _raw(ds: pydicom.Dataset) -> bytes:
    from tests.web.conftest import part10

    return part10(ds)
