"""The one transcoder (pacs.services.transcode) on pydicom's bundled files: what converts, what
cannot, and which transfer syntax is picked for a peer."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom.dsutils import decode, encode

from pacs.dicom.codecs import Image
from pacs.errors import NotAcceptable
from pacs.services import transcode
from pacs.services.transcode import ANY, CannotTranscode, choose, choose_frames
from pacs.services.transcode import transcode as convert

EXPLICIT, IMPLICIT = str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)
BIG, DEFLATED = str(ExplicitVRBigEndian), str(DeflatedExplicitVRLittleEndian)
NATIVE = [EXPLICIT, IMPLICIT, BIG, DEFLATED]


def _path(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


def _read(name: str) -> Dataset:
    return pydicom.dcmread(_path(name))


def _round_trip(name: str, target: str) -> Dataset:
    """Convert a file with the Part-10 path (as WADO-RS does) and read the result back."""
    with _path(name).open("rb") as fh:
        data = transcode.part10_as(fh, target)
    out = pydicom.dcmread(io.BytesIO(data))
    assert out.file_meta.TransferSyntaxUID == target
    return out


def _header(ds: Dataset) -> dict[str, object]:
    """Public, non-pixel, non-group-length elements by keyword (what a conversion must keep)."""
    return {
        e.keyword: e.value
        for e in ds
        if e.keyword and e.tag.element != 0 and e.keyword != "PixelData" and e.VR != "SQ"
    }


# ---------------------------------------------------------------- native <-> native


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_bigendian.dcm",  # 16-bit signed
        "rtdose_expb.dcm",  # 32-bit, multi-frame, sequences
        "SC_rgb_small_odd_big_endian.dcm",  # 8-bit RGB encoded as OW: swapped in pairs
        "liver_expb_1frame.dcm",
    ],
)
@pytest.mark.parametrize("target", [EXPLICIT, IMPLICIT, DEFLATED])
def test_big_endian_to_little_endian_keeps_pixels_and_header(name: str, target: str) -> None:
    original = _read(name)
    assert original.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    out = _round_trip(name, target)
    assert np.array_equal(out.pixel_array, original.pixel_array)
    assert _header(out) == _header(original)
    assert out.SOPInstanceUID == original.SOPInstanceUID


def test_little_endian_to_big_endian_and_back_is_byte_exact() -> None:
    original = _read("MR_small.dcm")
    big = _round_trip("MR_small.dcm", BIG)
    assert np.array_equal(big.pixel_array, original.pixel_array)
    assert big.PixelData != original.PixelData  # the 16-bit samples were swapped
    back = convert(big, EXPLICIT)
    assert back.PixelData == original.PixelData
    assert _header(back) == _header(original)


@pytest.mark.parametrize(
    ("name", "target"), [("MR_small.dcm", IMPLICIT), ("MR_small_implicit.dcm", EXPLICIT)]
)
def test_explicit_and_implicit_vr_convert_into_each_other(name: str, target: str) -> None:
    original = _read(name)
    out = _round_trip(name, target)
    assert np.array_equal(out.pixel_array, original.pixel_array)
    assert _header(out) == _header(original)


def test_implicit_little_endian_to_big_endian_resolves_ambiguous_vrs() -> None:
    original = _read("MR_small_implicit.dcm")
    out = _round_trip("MR_small_implicit.dcm", BIG)
    assert out["PixelData"].VR == "OW"
    assert np.array_equal(out.pixel_array, original.pixel_array)
    assert _header(out) == _header(original)


def test_deflated_inflates_and_deflates() -> None:
    original = _read("image_dfl.dcm")
    assert original.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    inflated = _round_trip("image_dfl.dcm", EXPLICIT)
    assert np.array_equal(inflated.pixel_array, original.pixel_array)
    deflated = _round_trip("MR_small.dcm", DEFLATED)
    assert np.array_equal(deflated.pixel_array, _read("MR_small.dcm").pixel_array)


@pytest.mark.parametrize("target", NATIVE)
def test_converted_datasets_encode_as_pynetdicom_sends_them(target: str) -> None:
    """C-MOVE / C-GET hand the converted Dataset to pynetdicom, which encodes it in the context's
    syntax: the encoding must agree with the file meta and decode to the same pixels."""
    original = _read("MR_small_bigendian.dcm")
    ds = convert(_read("MR_small_bigendian.dcm"), target)
    ts = ds.file_meta.TransferSyntaxUID
    assert ds.original_encoding == (ts.is_implicit_VR, ts.is_little_endian)
    data = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    assert data is not None
    got = decode(io.BytesIO(data), ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    got.file_meta = ds.file_meta
    assert np.array_equal(got.pixel_array, original.pixel_array)
    assert got.PatientName == original.PatientName


# ---------------------------------------------------------------- compressed -> native


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("MR_small_RLE.dcm", RLELossless),
        ("MR_small_jp2klossless.dcm", JPEG2000Lossless),
        ("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless),
    ],
)
@pytest.mark.parametrize("target", [EXPLICIT, IMPLICIT, BIG])
def test_lossless_compressed_decompresses_to_the_original_pixels(name: str, syntax: str, target: str) -> None:
    assert _read(name).file_meta.TransferSyntaxUID == syntax
    out = _round_trip(name, target)
    assert not out.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(out.pixel_array, _read("MR_small.dcm").pixel_array)
    assert out.SOPInstanceUID == _read(name).SOPInstanceUID  # the identity is kept


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_compressed_to_explicit_little_endian_equals_the_decoded_stored_pixels(name: str) -> None:
    original = _read(name)
    assert original.file_meta.TransferSyntaxUID.is_compressed
    out = _round_trip(name, EXPLICIT)
    assert np.array_equal(out.pixel_array, original.pixel_array)
    if original.file_meta.TransferSyntaxUID == JPEGBaseline8Bit:
        assert out.PhotometricInterpretation == "RGB"  # YBR_FULL decoded to RGB


# ---------------------------------------------------------------- what cannot be done


def test_a_target_we_cannot_encode_is_refused_with_a_reason() -> None:
    mpeg2 = "1.2.840.10008.1.2.4.100"
    with pytest.raises(CannotTranscode, match="not a transfer syntax this archive can encode") as info:
        convert(_read("MR_small.dcm"), mpeg2)
    assert isinstance(info.value, NotAcceptable)  # the edges answer it as 406 / a failed sub-operation
    assert transcode.why_not(EXPLICIT, mpeg2)
    assert transcode.why_not(EXPLICIT, str(JPEGLSLossless)) is None  # encoded (test_transcode_encode.py)
    with pytest.raises(CannotTranscode, match="at most 8 bits"):
        convert(_read("MR_small_RLE.dcm"), str(JPEGBaseline8Bit))  # 16-bit into baseline: never rescaled


def test_a_corrupt_codestream_is_refused_with_the_decoders_reason() -> None:
    ds = _read("MR_small_RLE.dcm")
    ds.PixelData = ds.PixelData[:40]
    with pytest.raises(CannotTranscode, match="cannot decompress RLE Lossless"):
        convert(ds, EXPLICIT)


def test_compressed_without_pixel_data_is_refused() -> None:
    ds = _read("MR_small_RLE.dcm")
    del ds.PixelData
    with pytest.raises(CannotTranscode, match="without pixel data"):
        convert(ds, EXPLICIT)


def test_an_unreadable_file_is_refused() -> None:
    with pytest.raises(CannotTranscode, match="unreadable"):
        transcode.read_as(io.BytesIO(b"\x00" * 128 + b"DICM" + b"\xff" * 10), EXPLICIT)


def test_as_stored_is_returned_unconverted() -> None:
    with _path("MR_small_RLE.dcm").open("rb") as fh:
        ds = transcode.read_as(fh, str(RLELossless))
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    assert ds.PixelData == _read("MR_small_RLE.dcm").PixelData


# ---------------------------------------------------------------- choosing


def test_choose_prefers_the_stored_syntax() -> None:
    assert choose(str(RLELossless), [EXPLICIT, str(RLELossless)]) == RLELossless
    assert choose(BIG, [EXPLICIT, BIG]) == BIG
    assert choose(IMPLICIT, [EXPLICIT, IMPLICIT]) == IMPLICIT
    assert choose(str(JPEGBaseline8Bit), [ANY]) == JPEGBaseline8Bit


def test_choose_falls_back_to_what_we_can_convert_to() -> None:
    assert choose(str(RLELossless), [IMPLICIT, EXPLICIT]) == EXPLICIT  # our preference, not the list's order
    assert choose(BIG, [IMPLICIT]) == IMPLICIT
    assert choose(EXPLICIT, [BIG]) == BIG
    assert choose(EXPLICIT, [str(JPEGLSLossless)]) == JPEGLSLossless  # lossless compression
    assert choose(EXPLICIT, [str(JPEGLSLossless), IMPLICIT]) == IMPLICIT  # native first
    assert choose(str(RLELossless), [str(JPEGBaseline8Bit)]) is None  # lossy: not allowed
    allowed = [str(JPEGBaseline8Bit)]
    assert choose(str(RLELossless), allowed, lossy=allowed) == JPEGBaseline8Bit
    assert choose(EXPLICIT, []) is None


def test_choose_frames() -> None:
    assert choose_frames(BIG, [ANY]) == EXPLICIT  # native frames go out little endian
    assert choose_frames(IMPLICIT, [IMPLICIT]) == EXPLICIT
    assert choose_frames(EXPLICIT, [str(RLELossless)]) is None
    assert choose_frames(str(RLELossless), [ANY]) == RLELossless
    assert choose_frames(str(RLELossless), [EXPLICIT]) == EXPLICIT  # decoded
    assert choose_frames(str(RLELossless), [str(JPEGLSLossless)]) is None


def test_offers() -> None:
    assert transcode.offers(BIG, compressed=False) == [(EXPLICIT, IMPLICIT)]
    assert transcode.offers(str(RLELossless), compressed=False) == [(str(RLELossless),), (EXPLICIT, IMPLICIT)]
    offered = transcode.offers(str(RLELossless))
    assert offered[:2] == [(str(RLELossless),), (EXPLICIT, IMPLICIT)]
    assert (str(JPEGLSLossless),) in offered and (str(JPEGBaseline8Bit),) not in offered
    assert (str(JPEGBaseline8Bit),) in transcode.offers(EXPLICIT, lossy=True)


def test_choose_passes_over_codecs_that_cannot_carry_the_image() -> None:
    baseline, extended, jls = str(JPEGBaseline8Bit), "1.2.840.10008.1.2.4.51", str(JPEGLSLossless)
    twelve = Image(64, 64, 1, 16, 12, False, "MONOCHROME2")
    signed = Image(64, 64, 1, 8, 8, True, "MONOCHROME2")
    lossy = [baseline, extended]
    assert choose(EXPLICIT, lossy, lossy=lossy, image=twelve) == extended  # 12-bit JPEG
    assert choose(EXPLICIT, [baseline, jls], lossy=lossy, image=signed) == jls
    assert choose(EXPLICIT, [baseline], lossy=lossy, image=signed) is None
    assert "signed" in transcode.refusal(EXPLICIT, [baseline], lossy=lossy, image=signed)
    assert "not allowed lossy" in transcode.refusal(EXPLICIT, [baseline], image=signed)
    assert choose(EXPLICIT, [jls], image=transcode.NO_PIXELS) is None  # nothing to encode
    assert choose_frames(EXPLICIT, [jls], image=twelve) == jls
    assert choose_frames(EXPLICIT, [baseline], image=Image(8, 8, 3, 8, 8, False, "RGB")) is None  # not named
    assert choose_frames(EXPLICIT, [baseline], lossy=[baseline], image=Image(8, 8, 3, 8, 8, False, "RGB"))


def test_lossy_copies_get_one_new_uid_per_original_and_codec() -> None:
    from pacs.dicom.codecs import CODECS

    baseline, j2k = CODECS[str(JPEGBaseline8Bit)], CODECS["1.2.840.10008.1.2.4.91"]
    uid = transcode.lossy_uid("1.2.3.4", baseline)
    assert uid == transcode.lossy_uid("1.2.3.4", baseline) and uid.startswith("2.25.") and len(uid) <= 64
    assert uid != transcode.lossy_uid("1.2.3.5", baseline) != transcode.lossy_uid("1.2.3.4", j2k)


def test_proposals_offer_stored_and_uncompressed_contexts_of_every_class_first() -> None:
    from pacs.model import StoredInstance
    from pacs.services.retrieve import proposals

    def inst(sop_class: str, ts: str) -> StoredInstance:
        return StoredInstance("1.2.3", sop_class, "1", "2", ts, "k", 1, "0" * 64)

    classes = [f"1.2.840.10008.5.1.4.1.1.{i}" for i in (2, 4, 7)]
    contexts = proposals([inst(c, str(RLELossless)) for c in classes], limit=7)
    assert contexts[:6] == [(c, ts) for c in classes for ts in ((str(RLELossless),), (EXPLICIT, IMPLICIT))]
    assert contexts[6] == (classes[0], (str(JPEGLSLossless),))  # then what we can encode into
    every = proposals([inst(classes[0], EXPLICIT)], lossy=True)
    assert (classes[0], (str(JPEGBaseline8Bit),)) in every
    assert (classes[0], (str(JPEGBaseline8Bit),)) not in proposals([inst(classes[0], EXPLICIT)])
