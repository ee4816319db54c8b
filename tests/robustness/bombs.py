"""Builders of hostile DICOM objects: deflate bombs, lying pixel sizes, oversized JPEG headers,
multi-frame JPEG 2000 decompression bombs (and well-formed multi-frame JPEG 2000 objects)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

DEFLATED = "1.2.840.10008.1.2.1.99"


def _meta_bytes(ds: Dataset, ts: str) -> bytes:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.3.4"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue()


def _body(ds: Dataset) -> bytes:
    head = Dataset()
    for elem in ds:
        if elem.tag != 0x7FE00010:
            head.add(elem)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, head)
    return buf.getvalue()


def deflate_bomb(ds: Dataset, inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR LE Part-10 file whose dataset inflates to ``inflated_bytes``.

    The header is ``ds`` (without its pixel data); then an OB Pixel Data element of zeros. Built
    in streaming fashion: the bomb itself never exists inflated here.
    """
    comp = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = _body(ds)
    n = max(0, inflated_bytes - len(body) - 12)
    n -= n % 2
    out = [comp.compress(body), comp.compress(b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", n))]
    zeros = bytes(1 << 20)
    left = n
    while left:
        step = min(left, len(zeros))
        out.append(comp.compress(zeros[:step]))
        left -= step
    out.append(comp.flush())
    return _meta_bytes(ds, DEFLATED) + b"".join(out)


def deflated(ds: Dataset) -> bytes:
    """A well-formed Deflated Explicit VR LE Part-10 file of ``ds`` (pixel data included)."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    comp = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return _meta_bytes(ds, DEFLATED) + comp.compress(buf.getvalue()) + comp.flush()


def lying_pixels(ds: Dataset, rows: int, columns: int, frames: int = 1) -> bytes:
    """Native pixel data whose Rows/Columns/Frames claim far more than the bytes present."""
    ds = ds.copy()
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    return _meta_bytes(ds, ExplicitVRLittleEndian) + _body(ds) + _pixel_element(bytes(ds.PixelData))


def _pixel_element(data: bytes) -> bytes:
    return b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", len(data)) + data


def jpeg_with_dimensions(rows: int, columns: int) -> bytes:
    """A tiny baseline JPEG (8x8 grey) whose SOF0 header is then patched to claim rows x columns."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", rows, columns)
    return bytes(data)


def encapsulated_jpeg(ds: Dataset, rows: int, columns: int, header_rows: int, header_columns: int) -> bytes:
    """A JPEG Baseline instance: DICOM says rows x columns, the JPEG header another size."""
    from pydicom.encaps import encapsulate

    ds = ds.copy()
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    frame = jpeg_with_dimensions(header_rows, header_columns)
    pixel = encapsulate([frame])
    elem = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff" + pixel
    return _meta_bytes(ds, "1.2.840.10008.1.2.4.50") + _body(ds) + elem


J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"  # JPEG 2000 Image Compression (Lossless Only)
#: Multi-frame Grayscale Word Secondary Capture Image Storage
MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"


def j2k_frame(pixels: np.ndarray) -> bytes:
    """One unsigned 8- or 16-bit grayscale frame as a lossless JPEG 2000 codestream (openjpeg)."""
    import openjpeg

    bits = 8 * pixels.dtype.itemsize
    return bytes(openjpeg.encode(pixels, bits_stored=bits, photometric_interpretation=2, use_mct=False))


def j2k_multiframe(
    ds: Dataset,
    frames: list[bytes],
    rows: int,
    columns: int,
    bits: int = 16,
    sop_class_uid: str = MULTIFRAME_WORD_SC,
) -> bytes:
    """A JPEG 2000 Lossless Part-10 object of ``ds``'s header with ``frames`` (codestreams of
    ``rows`` x ``columns`` unsigned ``bits``-bit samples) as its pixel data, with a Basic Offset Table."""
    from pydicom.encaps import encapsulate

    ds = ds.copy()
    ds.SOPClassUID = sop_class_uid
    ds.Rows, ds.Columns = rows, columns
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    pixel = encapsulate(frames, has_bot=True) + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # + delimiter
    elem = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff" + pixel
    return _meta_bytes(ds, J2K_LOSSLESS) + _body(ds) + elem


def j2k_bomb(ds: Dataset, frames: int = 40, rows: int = 4096, columns: int = 4096) -> bytes:
    """The issue-14 bomb: ~9 KB of JPEG 2000 (one 195-byte codestream of zeros, repeated) that
    decodes to ``frames`` x ``rows`` x ``columns`` 16-bit samples (40 x 4096 x 4096: 1.25 GiB)."""
    frame = j2k_frame(np.zeros((rows, columns), np.uint16))
    return j2k_multiframe(ds, [frame] * frames, rows, columns)
