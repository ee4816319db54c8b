"""WADO-RS into compressed transfer syntaxes (pacs.dicom.codecs through pacs.services.transcode).

Every lossless target on a signed 16-bit CT (with negative stored values), an MR, an 8-bit RGB
image, a two-frame RGB stored RLE and a big-endian MR: decoded back by pydicom and by DCMTK /
GDCM, pixel for pixel. Lossy targets only when named in Accept, with the Lossy Image Compression
attributes and a new SOP Instance UID (PS3.3 C.7.6.1.1.5). A 12-bit or signed image asked for in
JPEG Baseline is refused with the reason, never rescaled.
"""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pacs.errors import TooLarge
from pacs.limits import DecodeBudget, DecodeLimits
from pacs.services import transcode
from tests.conftest import require_tool
from tests.web.conftest import relabel, split_multipart, store

JLS, JLS_NEAR = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"
J2K, J2K_LOSSY = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"
HTJ2K = "1.2.840.10008.1.2.4.201"
RLE = "1.2.840.10008.1.2.5"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
BASELINE, EXTENDED = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"
EXPLICIT = "1.2.840.10008.1.2.1"
LOSSLESS = [JLS, J2K, HTJ2K, RLE, JPEG_LOSSLESS]
#: The external decoder of each target (HTJ2K: none of DCMTK's or GDCM's installed versions).
DECODERS = {
    JLS: ["dcmdjpls", "gdcmconv"],
    J2K: ["gdcmconv"],
    RLE: ["dcmdrle", "gdcmconv"],
    JPEG_LOSSLESS: ["dcmdjpeg", "gdcmconv"],
    BASELINE: ["dcmdjpeg", "gdcmconv"],
}


def _accept(ts: str) -> dict[str, str]:
    return {"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={ts}'}


def _url(ds: Dataset) -> str:
    return (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _ct_signed() -> Dataset:
    """pydicom's CT_small with stored values 1024 lower: negative samples (its own are all positive)."""
    ds = relabel("CT_small.dcm")
    ds.PixelData = (ds.pixel_array.astype(np.int16) - 1024).tobytes()
    ds.RescaleIntercept = 0
    assert ds.PixelRepresentation == 1 and ds.pixel_array.min() < 0
    return ds


def _signed_8bit() -> Dataset:
    ds = relabel("MR_small.dcm")
    ds.PixelData = (ds.pixel_array // 16 - 64).astype(np.int8).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 1
    ds["PixelData"].VR = "OB"
    return ds


IMAGES = {
    "ct-signed": _ct_signed,
    "mr": lambda: relabel("MR_small.dcm"),
    "rgb": lambda: relabel("examples_rgb_color.dcm"),
}


def _retrieve(client, ds: Dataset, ts: str) -> tuple[dict[str, str], bytes]:
    r = client.get(_url(ds), headers=_accept(ts))
    assert r.status_code == 200, r.text
    ((headers, body),) = split_multipart(r.headers["content-type"], r.content)
    return headers, body


def _items(pixel_data: bytes) -> list[bytes]:
    """The items of encapsulated pixel data (PS3.5 A.4), the Basic Offset Table first."""
    items, pos = [], 0
    while pos + 8 <= len(pixel_data):
        group, element, length = struct.unpack_from("<HHL", pixel_data, pos)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        assert (group, element) == (0xFFFE, 0xE000)
        items.append(pixel_data[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return items


def _check_encapsulation(out: Dataset, frames: int) -> None:
    """One fragment per frame, behind a Basic Offset Table that points at each."""
    items = _items(out.PixelData)
    assert len(items) == frames + 1
    offsets = list(struct.unpack(f"<{frames}L", items[0]))
    expected, at = [], 0
    for fragment in items[1:]:
        expected.append(at)
        at += 8 + len(fragment)
    assert offsets == expected


@pytest.mark.parametrize("target", LOSSLESS)
@pytest.mark.parametrize("image", sorted(IMAGES))
def test_lossless_targets_decode_to_the_stored_pixels(sqlite_client, sqlite_rt, image, target):
    ds = IMAGES[image]()
    store(sqlite_rt, ds)
    headers, body = _retrieve(sqlite_client, ds, target)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={target}"
    out = pydicom.dcmread(io.BytesIO(body))
    assert out.file_meta.TransferSyntaxUID == target
    _check_encapsulation(out, 1)
    assert np.array_equal(out.pixel_array, ds.pixel_array)
    assert out.SOPInstanceUID == ds.SOPInstanceUID  # lossless: the same instance
    assert out.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert "LossyImageCompression" not in out
    assert out.PhotometricInterpretation == ds.PhotometricInterpretation
    assert out.PatientName == ds.PatientName and out.PixelRepresentation == ds.PixelRepresentation


def test_multiframe_compressed_to_another_compression(sqlite_client, sqlite_rt):
    ds = relabel("SC_rgb_rle_2frame.dcm")
    store(sqlite_rt, ds)
    _headers, body = _retrieve(sqlite_client, ds, JLS)
    out = pydicom.dcmread(io.BytesIO(body))
    _check_encapsulation(out, 2)
    assert out.NumberOfFrames == 2
    assert np.array_equal(out.pixel_array, ds.pixel_array)


def test_big_endian_instances_are_converted_for_wado_rs(sqlite_client, sqlite_rt):
    ds = relabel("MR_small_bigendian.dcm")
    store(sqlite_rt, ds)
    reference = pydicom.dcmread(io.BytesIO(_part10(ds))).pixel_array
    for ts in (EXPLICIT, JLS):
        _headers, body = _retrieve(sqlite_client, ds, ts)
        out = pydicom.dcmread(io.BytesIO(body))
        assert out.file_meta.TransferSyntaxUID == ts
        assert np.array_equal(out.pixel_array, reference)
    r = sqlite_client.get(_url(ds), headers={"Accept": 'multipart/related; type="application/dicom"'})
    ((_headers, body),) = split_multipart(r.headers["content-type"], r.content)
    assert pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == EXPLICIT  # the default


@pytest.mark.parametrize(
    ("target", "tool"), [(t, tool) for t, tools in DECODERS.items() for tool in tools if t != BASELINE]
)
@pytest.mark.parametrize("image", ["ct-signed", "rgb"])
def test_dcmtk_and_gdcm_decode_what_we_encode(sqlite_client, sqlite_rt, tmp_path, image, target, tool):
    ds = IMAGES[image]()
    store(sqlite_rt, ds)
    _headers, body = _retrieve(sqlite_client, ds, target)
    assert np.array_equal(_decode_with(tool, body, tmp_path), ds.pixel_array)


@pytest.mark.parametrize("tool", DECODERS[BASELINE])
def test_dcmtk_and_gdcm_decode_lossy_jpeg_colour(sqlite_client, sqlite_rt, tmp_path, tool):
    ds = IMAGES["rgb"]()
    store(sqlite_rt, ds)
    _headers, body = _retrieve(sqlite_client, ds, BASELINE)
    decoded = _decode_with(tool, body, tmp_path)
    assert decoded.shape == ds.pixel_array.shape
    assert np.abs(decoded.astype(float) - ds.pixel_array).mean() < 4  # YBR_FULL_422 back to RGB


def _decode_with(tool: str, body: bytes, tmp_path: Path) -> np.ndarray:
    exe = require_tool(tool)
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    src.write_bytes(body)
    args = [exe, "--raw", str(src), str(dst)] if tool == "gdcmconv" else [exe, str(src), str(dst)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = pydicom.dcmread(dst)
    assert not out.file_meta.TransferSyntaxUID.is_compressed
    return out.pixel_array


# ---------------------------------------------------------------- lossy: only when asked by name


@pytest.mark.parametrize(
    ("image", "target", "method", "tolerance"),
    [
        ("rgb", BASELINE, "ISO_10918_1", 4.0),  # mean error
        ("ct-signed", J2K_LOSSY, "ISO_15444_1", 4.0),
        ("mr", JLS_NEAR, "ISO_14495_1", 2.0),  # NEAR = 2: the largest error
    ],
)
def test_lossy_targets_on_request_are_new_instances(
    sqlite_client, sqlite_rt, image, target, method, tolerance
):
    ds = IMAGES[image]()
    store(sqlite_rt, ds)
    _headers, body = _retrieve(sqlite_client, ds, target)
    out = pydicom.dcmread(io.BytesIO(body))
    assert out.file_meta.TransferSyntaxUID == target
    _check_encapsulation(out, 1)
    error = np.abs(out.pixel_array.astype(float) - ds.pixel_array)
    assert (error.max() if target == JLS_NEAR else error.mean()) <= tolerance
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == method
    ratio = float(out.LossyImageCompressionRatio)
    uncompressed = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    assert ratio == pytest.approx(uncompressed / len(_items(out.PixelData)[1]), rel=0.01)
    # A new instance (PS3.3 C.7.6.1.1.5), the same one for every request, pointing at the original.
    assert out.SOPInstanceUID != ds.SOPInstanceUID
    assert out.SOPInstanceUID.startswith("2.25.")
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.ImageType[0] == "DERIVED"
    (source,) = out.SourceImageSequence
    assert source.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert source.ReferencedSOPClassUID == ds.SOPClassUID
    assert source.PurposeOfReferenceCodeSequence[0].CodeValue == "121320"  # uncompressed predecessor
    assert out.DerivationCodeSequence[0].CodeValue == "113040"  # lossy compression
    assert out.StudyInstanceUID == ds.StudyInstanceUID and out.SeriesInstanceUID == ds.SeriesInstanceUID
    _again, body2 = _retrieve(sqlite_client, ds, target)
    assert pydicom.dcmread(io.BytesIO(body2)).SOPInstanceUID == out.SOPInstanceUID
    if target == BASELINE:
        assert out.PhotometricInterpretation == "YBR_FULL_422"  # colour JPEG as decoders expect it


def test_a_second_lossy_step_appends_its_ratio_and_method(sqlite_client, sqlite_rt):
    ds = relabel("SC_rgb_jpeg_dcmtk.dcm")  # stored JPEG Baseline (lossy already)
    ds.LossyImageCompression, ds.LossyImageCompressionRatio = "01", "17.4"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    store(sqlite_rt, ds)
    _headers, body = _retrieve(sqlite_client, ds, J2K_LOSSY)
    out = pydicom.dcmread(io.BytesIO(body))
    assert list(out.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_15444_1"]
    assert len(out.LossyImageCompressionRatio) == 2 and float(out.LossyImageCompressionRatio[0]) == 17.4
    _headers, body = _retrieve(sqlite_client, ds, JLS)  # lossless from lossy: stays marked lossy
    out = pydicom.dcmread(io.BytesIO(body))
    assert out.LossyImageCompression == "01" and out.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(out.pixel_array, ds.pixel_array)


def test_lossy_is_never_chosen_unless_named(sqlite_client, sqlite_rt):
    mr, rgb = IMAGES["mr"](), IMAGES["rgb"]()
    for ds in (mr, rgb):
        store(sqlite_rt, ds)
    # Frames by media type only: lossless encodings of that type (PS3.18 Table 8.7.3-5 lists
    # the lossy ones too; they need naming).
    for ds in (mr, rgb):
        for media, ts in (("image/jpeg", JPEG_LOSSLESS), ("image/jls", JLS), ("image/jp2", J2K)):
            r = sqlite_client.get(
                f"{_url(ds)}/frames/1", headers={"Accept": f'multipart/related; type="{media}"'}
            )
            assert r.status_code == 200, r.text
            ((headers, body),) = split_multipart(r.headers["content-type"], r.content)
            assert headers["content-type"] == f"{media}; transfer-syntax={ts}"
            assert _decode_frame(ds, ts, body).tolist() == ds.pixel_array.tolist()
    # Named: lossy frames.
    accept = f'multipart/related; type="image/jpeg"; transfer-syntax={BASELINE}'
    r = sqlite_client.get(f"{_url(rgb)}/frames/1", headers={"Accept": accept})
    ((headers, body),) = split_multipart(r.headers["content-type"], r.content)
    assert headers["content-type"] == f"image/jpeg; transfer-syntax={BASELINE}"
    assert body[:2] == b"\xff\xd8" and b"\xff\xc0" in body  # baseline SOF0
    assert np.abs(_decode_frame(rgb, BASELINE, body).astype(float) - rgb.pixel_array).mean() < 4
    # Instances: a lossless syntax named beside a lossy one is preferred to it.
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={BASELINE}, ' + (
        f'multipart/related; type="application/dicom"; transfer-syntax={JLS}'
    )
    r = sqlite_client.get(_url(rgb), headers={"Accept": accept})
    ((headers, body),) = split_multipart(r.headers["content-type"], r.content)
    assert pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == JLS


def _decode_frame(ds: Dataset, ts: str, frame: bytes) -> np.ndarray:
    """One compressed frame of ``ds``'s image decoded by pydicom."""
    out = pydicom.dcmread(io.BytesIO(_part10(ds)))
    out.PixelData = pydicom.encaps.encapsulate([frame])
    out["PixelData"].is_undefined_length = True
    out["PixelData"].VR = "OB"
    out.file_meta.TransferSyntaxUID = ts
    if out.SamplesPerPixel == 3 and ts in (BASELINE, EXTENDED):
        out.PhotometricInterpretation = "YBR_FULL_422"
    return out.pixel_array


# ---------------------------------------------------------------- refused, never rescaled


def test_twelve_bit_and_signed_images_are_refused_in_jpeg_baseline(sqlite_client, sqlite_rt):
    twelve = relabel("examples_overlay.dcm")  # MR, 12 bits stored
    signed = _signed_8bit()
    for ds in (twelve, signed):
        store(sqlite_rt, ds)
    r = sqlite_client.get(_url(twelve), headers=_accept(BASELINE))
    assert r.status_code == 406
    detail = r.json()["detail"]
    assert "12 bits stored" in detail and "rescaled" in detail and twelve.SOPInstanceUID in detail
    r = sqlite_client.get(_url(signed), headers=_accept(BASELINE))
    assert r.status_code == 406 and "signed" in r.json()["detail"]
    accept = f'multipart/related; type="image/jpeg"; transfer-syntax={BASELINE}'
    r = sqlite_client.get(f"{_url(twelve)}/frames/1", headers={"Accept": accept})
    assert r.status_code == 406 and "12 bits stored" in r.json()["detail"]
    # The same 12-bit image fits JPEG Extended (12-bit) and every lossless syntax.
    _headers, body = _retrieve(sqlite_client, twelve, EXTENDED)
    out = pydicom.dcmread(io.BytesIO(body))
    assert out.BitsStored == 12 and np.abs(out.pixel_array.astype(float) - twelve.pixel_array).mean() < 4
    _headers, body = _retrieve(sqlite_client, signed, JLS)
    assert np.array_equal(pydicom.dcmread(io.BytesIO(body)).pixel_array, signed.pixel_array)


def test_encoding_is_charged_to_the_decode_budget(sqlite_rt):
    ds = IMAGES["mr"]()
    store(sqlite_rt, ds)
    (inst,) = sqlite_rt.dicomweb.instances(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    budget = DecodeBudget()
    assert sqlite_rt.dicomweb.check_acceptable([inst], {JLS}, budget) == [JLS]
    assert budget.total == 64 * 64 * 2  # booked before anything is encoded
    small = DecodeBudget(DecodeLimits(per_instance=1000, per_request=1 << 30))
    with pytest.raises(TooLarge):
        sqlite_rt.dicomweb.check_acceptable([inst], {JLS}, small)
    with sqlite_rt.archive.open(inst) as fh, pytest.raises(TooLarge):
        transcode.read_as(fh, JLS, DecodeBudget(DecodeLimits(per_instance=1000, per_request=1 << 30)))


def _part10(ds: Dataset) -> bytes:
    from tests.web.conftest import part10

    return part10(ds)
