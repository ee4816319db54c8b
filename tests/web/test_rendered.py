"""Rendered images and thumbnails (PS3.18 8.3.5), checked against an independent numpy reference."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from pacs import runtime
from pacs.model import StoreOutcome
from tests.conftest import settings_for
from tests.factories import make_dataset
from tests.web.conftest import TestClient, part10, relabel, split_multipart, store


def _url(ds: pydicom.Dataset) -> str:
    s = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    return f"{s}/instances/{ds.SOPInstanceUID}"


def _reference(ds: pydicom.Dataset, frame: int = 0, window: tuple[float, float] | None = None) -> np.ndarray:
    """Our own rendering: pydicom's decoded array, rescale, linear window (C.11.2.1.2.1), MONOCHROME1."""
    full = pydicom.dcmread(io.BytesIO(part10(ds)))
    arr = full.pixel_array
    if int(full.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[frame]
    pi = full.PhotometricInterpretation
    if pi == "PALETTE COLOR":
        rgb = pydicom.pixels.apply_color_lut(arr, full)
        return rgb.astype(np.float64) / (257 if rgb.dtype != np.uint8 else 1)
    if arr.ndim == 3:
        return arr.astype(np.float64)
    x = arr.astype(np.float64) * float(full.get("RescaleSlope", 1) or 1) + float(
        full.get("RescaleIntercept", 0) or 0
    )
    if window is None and "WindowCenter" in full:
        wc, ww = full.WindowCenter, full.WindowWidth
        window = (
            float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc),
            float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww),
        )
    if window is None:
        y = (x - x.min()) / max(x.max() - x.min(), 1e-9) * 255
    else:
        c, w = window
        y = np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255, 0, 255)
    if pi == "MONOCHROME1":
        y = 255 - y
    return y


def _decode(body: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(body))
    return np.asarray(img.convert("RGB" if img.mode in ("RGB", "P") else "L")).astype(np.float64)


CASES = [
    ("MR_small.dcm", {}),
    ("MR_small_jp2klossless.dcm", {}),
    ("JPEG2000.dcm", {}),
    ("MR_small_jpeg_ls_lossless.dcm", {}),
    ("MR_small_RLE.dcm", {}),
    ("SC_rgb_jpeg_dcmd.dcm", {}),
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", {}),
    ("examples_palette.dcm", {}),
    ("SC_ybr_full_422_uncompressed.dcm", {}),
    ("examples_ybr_color.dcm", {}),  # multi-frame YBR JPEG baseline
    ("rtdose_rle.dcm", {}),  # multi-frame 32-bit RLE
    ("MR_small.dcm", {"PhotometricInterpretation": "MONOCHROME1"}),
]


@pytest.mark.parametrize(("name", "changes"), CASES, ids=[f"{n}{'-M1' if c else ''}" for n, c in CASES])
def test_rendered_png_matches_reference(sqlite_client, sqlite_rt, name, changes):
    ds = relabel(name, **changes)
    store(sqlite_rt, ds)
    r = sqlite_client.get(f"{_url(ds)}/rendered", headers={"Accept": "image/png"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    got, ref = _decode(r.content), _reference(ds)
    assert got.shape[:2] == ref.shape[:2]
    assert np.abs(got - ref).mean() < 1.0, (name, np.abs(got - ref).mean())


@pytest.mark.parametrize(
    ("flag", "syntax", "bits"),
    [
        ("+eb", "1.2.840.10008.1.2.4.50", 8),
        ("+ee", "1.2.840.10008.1.2.4.51", 12),
        ("+el", "1.2.840.10008.1.2.4.57", 16),
    ],
    ids=["baseline-8bit", "extended-12bit", "lossless"],
)
def test_rendered_from_dcmtk_jpeg_encoders(sqlite_client, sqlite_rt, tmp_path, flag, syntax, bits):
    """JPEG as DCMTK's dcmcjpeg writes it (baseline 8-bit, extended 12-bit, lossless), rendered
    and compared with the reference computed from pydicom's decoding of the same file."""
    import subprocess

    from tests.conftest import require_tool

    exe = require_tool("dcmcjpeg")
    src = relabel("CT_small.dcm")
    if bits == 8:  # baseline is 8-bit: scale the CT's 16-bit values down first
        arr = src.pixel_array.astype(np.float64)
        src.PixelData = np.round((arr - arr.min()) / max(np.ptp(arr), 1) * 255).astype(np.uint16).tobytes()
        src.BitsStored, src.HighBit, src.PixelRepresentation = 8, 7, 0
        src.RescaleIntercept, src.RescaleSlope = 0, 1
        for kw in ("WindowCenter", "WindowWidth"):
            if kw in src:
                delattr(src, kw)
    elif bits == 12:
        arr = src.pixel_array.astype(np.int32)
        src.PixelData = np.clip(arr - arr.min(), 0, 4095).astype(np.uint16).tobytes()
        src.BitsStored, src.HighBit, src.PixelRepresentation = 12, 11, 0
    src.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    subprocess.run([exe, flag, str(tmp_path / "in.dcm"), str(tmp_path / "out.dcm")], check=True, timeout=60)
    ds = pydicom.dcmread(tmp_path / "out.dcm")
    assert ds.file_meta.TransferSyntaxUID == syntax
    store(sqlite_rt, ds)
    r = sqlite_client.get(f"{_url(ds)}/rendered", headers={"Accept": "image/png"})
    assert r.status_code == 200, r.text
    got, ref = _decode(r.content), _reference(ds)
    assert got.shape[:2] == ref.shape[:2]
    assert np.abs(got - ref).mean() < 1.0, (flag, np.abs(got - ref).mean())
    assert got.std() > 5  # an image, not a flat field


def test_window_viewport_quality_and_frames(sqlite_client, sqlite_rt):
    ds = relabel("MR_small.dcm")
    store(sqlite_rt, ds)
    r = sqlite_client.get(f"{_url(ds)}/rendered?window=600,800", headers={"Accept": "image/png"})
    assert np.abs(_decode(r.content) - _reference(ds, window=(600, 800))).mean() < 1.0
    r = sqlite_client.get(f"{_url(ds)}/rendered?viewport=32,32&quality=50")
    assert r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)
    multi = relabel("examples_ybr_color.dcm")
    store(sqlite_rt, multi)
    r = sqlite_client.get(f"{_url(multi)}/frames/5/rendered", headers={"Accept": "image/png"})
    assert np.abs(_decode(r.content) - _reference(multi, frame=4)).mean() < 2.0
    for bad in ("window=abc", "window=40,-1", "viewport=0,10", "quality=101", "window=1,2,cubic"):
        r = sqlite_client.get(f"{_url(ds)}/rendered?{bad}")
        assert r.status_code == 400 and r.json()["detail"], bad
    r = sqlite_client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/rendered")
    parts = split_multipart(r.headers["content-type"], r.content)
    assert len(parts) == 1 and parts[0][1][:2] == b"\xff\xd8"


def test_thumbnails_cached_with_etag(sqlite_client, sqlite_rt):
    ds = relabel("CT_small.dcm")
    store(sqlite_rt, ds)
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/thumbnail?viewport=256,256"
    r = sqlite_client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) == 256
    etag = r.headers["etag"]
    again = sqlite_client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.content
    cached = list((sqlite_rt.settings.storage.path / "cache" / "thumbnails").rglob("*.jpg"))
    assert len(cached) == 1
    for path in (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail",
        f"{_url(ds)}/thumbnail",
        f"{_url(ds)}/frames/1/thumbnail",
    ):
        r = sqlite_client.get(path)
        assert r.status_code == 200 and r.content[:2] == b"\xff\xd8", path


def test_accept_query_parameter_stands_in_for_the_accept_header(sqlite_client, sqlite_rt):
    """PS3.18 8.3.3.1: ``?accept=`` is the URL form of the Accept header and stands in for it.

    OHIF 3.12 (thumbnailRendering 'thumbnail' or 'rendered') asks for ``/thumbnail?accept=image/jpeg``
    with ``Accept: multipart/related; type="application/octet-stream"``: a 406 left it without thumbnails.
    """
    ds = relabel("CT_small.dcm")
    store(sqlite_rt, ds)
    ohif = {"Accept": 'multipart/related; type="application/octet-stream"'}
    for suffix in ("/thumbnail?accept=image/jpeg", "/rendered?accept=image/jpeg"):
        r = sqlite_client.get(f"{_url(ds)}{suffix}", headers=ohif)
        assert r.status_code == 200, (suffix, r.text)
        assert r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    r = sqlite_client.get(f"{_url(ds)}/rendered?accept=image/png", headers={"Accept": "image/jpeg"})
    assert r.headers["content-type"] == "image/png"
    r = sqlite_client.get(f"{_url(ds)}/thumbnail", headers=ohif)
    assert r.status_code == 406 and "octet-stream" in r.json()["detail"]
    r = sqlite_client.get(f"{_url(ds)}/rendered?accept=text/html", headers=ohif)
    assert r.status_code == 406 and "accept='text/html'" in r.json()["detail"]


def test_no_pixels_and_broken_pixels_are_4xx(sqlite_client, sqlite_rt):
    sr = make_dataset(modality="SR", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11")
    del sr.PixelData
    store(sqlite_rt, sr)
    for suffix in ("/rendered", "/thumbnail", "/frames/1"):
        r = sqlite_client.get(_url(sr) + suffix)
        assert 400 <= r.status_code < 500, suffix
        assert r.headers["content-type"] == "application/problem+json"
        assert "pixel" in r.json()["detail"]
    liar = make_dataset()
    liar.Rows = 4000  # header says far more pixels than the data holds
    store(sqlite_rt, liar)
    r = sqlite_client.get(_url(liar) + "/rendered")
    assert r.status_code == 422 and "needs" in r.json()["detail"]
    # A codestream no decoder can read (its SIZ segment holds sequence-delimiter bytes; pydicom,
    # GDCM and imagecodecs all refuse it): a clear 422, never a 500.
    odd = relabel("JPEG2000-embedded-sequence-delimiter.dcm")
    store(sqlite_rt, odd)
    r = sqlite_client.get(_url(odd) + "/rendered")
    assert r.status_code == 422, r.text
    assert sqlite_client.get("/healthz").status_code == 200


@pytest.fixture
def replacing_client(db_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, runtime.Runtime]]:
    """An app whose archive replaces an instance sent again with other content (SQLite and PostgreSQL)."""
    settings = settings_for(db_url, tmp_path / "storage")
    settings = dataclasses.replace(
        settings, storage=dataclasses.replace(settings.storage, duplicate_policy="replace")
    )
    rt = runtime.build(settings)
    try:
        with TestClient(runtime.web_app(rt)) as c:
            yield c, rt
    finally:
        rt.close()


def _pattern(k: int) -> np.ndarray:
    yy, xx = np.mgrid[:32, :32]
    return (((xx * (k + 1) + yy * 3 * k) % 64) * 6 - 150).astype(np.int16)


def test_thumbnail_cache_follows_new_and_replaced_instances(replacing_client):
    client, rt = replacing_client
    study, series = generate_uid(), generate_uid()
    a, b = (
        make_dataset(study_uid=study, series_uid=series, instance_number=n, pixels=_pattern(n))
        for n in (1, 2)
    )
    store(rt, a)
    store(rt, b)
    urls = {
        "study": f"/dicom-web/studies/{study}/thumbnail",
        "series": f"/dicom-web/studies/{study}/series/{series}/thumbnail",
        "instance": f"{_url(b)}/thumbnail",
    }

    def get(url: str, etag: str | None = None) -> tuple[int, str, bytes]:
        r = client.get(url, headers={"If-None-Match": etag} if etag else {})
        assert r.status_code in (200, 304), r.text
        return r.status_code, r.headers["etag"], r.content

    first = {k: get(u) for k, u in urls.items()}
    for k, u in urls.items():  # warm: same ETag, 304 when the client has it
        assert get(u)[1:] == first[k][1:]
        assert get(u, first[k][1])[0] == 304

    # A new instance in the series: study and series thumbnails are stamped anew (never a 304).
    store(rt, make_dataset(study_uid=study, series_uid=series, instance_number=3, pixels=_pattern(3)))
    added = {k: get(u, first[k][1]) for k, u in urls.items()}
    for k in ("study", "series"):
        assert added[k][0] == 200 and added[k][1] != first[k][1], k
    assert added["instance"][0] == 304  # that instance did not change

    # The instance the thumbnails are made from (the middle one) is replaced with other pixels.
    b.PixelData = _pattern(7).tobytes()
    assert store(rt, b).outcome is StoreOutcome.REPLACED
    replaced = {k: get(u, added[k][1]) for k, u in urls.items()}
    for k in urls:
        status, etag, content = replaced[k]
        assert status == 200 and etag != added[k][1], k
        assert content != first[k][2], k  # the new pixels, not the cached image
        assert get(urls[k], etag)[0] == 304  # and that is cached in turn
    missing = client.get(f"/dicom-web/studies/{generate_uid()}/thumbnail")
    assert missing.status_code == 404
