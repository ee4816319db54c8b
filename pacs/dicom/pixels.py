"""Pixel data: locate, validate, read raw frames, decode, and render to an 8-bit image.

Rendering follows the grayscale pipeline of PS3.3 C.11 (Modality LUT -> VOI LUT / window ->
MONOCHROME1 inversion) and the colour paths (RGB, YBR converted by the decoder, palette colour
C.7.6.3.1.5). Frames are read one at a time: native frames by offset, encapsulated frames through
the Basic (or Extended) Offset Table or by walking the fragments (PS3.5 A.4), so a single frame
never needs the whole object in memory.

Every decoding of the archive happens here (:func:`decode_frame`, :func:`decoded_frames`: WADO-RS
frames and transcoded instances, rendered images and thumbnails, C-MOVE / C-GET conversion through
:mod:`pacs.services.transcode`, frames decoded to be encoded again by :mod:`pacs.dicom.codecs`), and
each decoded frame is charged to the request's
:class:`~pacs.limits.DecodeBudget` before the decoder allocates it (:func:`reserve` books a whole
request up front, so that it can still be refused with an error).
"""

from __future__ import annotations

import io
import math
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID

from pacs import limits
from pacs.errors import InvalidInstance, NoPixelData
from pacs.limits import DecodeBudget

#: Largest decoded frame we agree to produce (bytes); bigger ones are refused, not attempted.
MAX_FRAME_BYTES = 256 * 1024 * 1024
#: Largest number of frames we accept in one instance.
MAX_FRAMES = 100_000

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = frozenset({EXPLICIT_LE, IMPLICIT_LE, BIG_ENDIAN, DEFLATED})

#: Media types of compressed frames (PS3.18 Table 8.7.3-2 / 8.7.3-5).
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}


@dataclass(frozen=True)
class PixelInfo:
    """Where the pixel data of a stored Part-10 file is and what it holds."""

    header: Dataset
    transfer_syntax_uid: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    number_of_frames: int
    value_offset: int  # file offset of the Pixel Data value
    value_length: int  # 0xFFFFFFFF when encapsulated
    pixel_vr: str = ""  # OB or OW for explicit VR syntaxes

    @property
    def encapsulated(self) -> bool:
        """True for compressed (encapsulated) pixel data."""
        return self.transfer_syntax_uid not in NATIVE_SYNTAXES

    @property
    def frame_bits(self) -> int:
        """Bits of one native frame (YBR_FULL_422 keeps two samples per pixel, PS3.3 C.7.6.3.1.2)."""
        bits = self.rows * self.columns * self.samples_per_pixel * self.bits_allocated
        photometric = str(self.header.get("PhotometricInterpretation", "") or "").upper()
        if photometric == "YBR_FULL_422" and not self.encapsulated:
            return bits * 2 // 3
        return bits

    @property
    def decoded_frame_bytes(self) -> int:
        """Bytes of one decoded frame (at least one byte per sample)."""
        return self.rows * self.columns * self.samples_per_pixel * max(1, math.ceil(self.bits_allocated / 8))


def locate(fh: BinaryIO) -> PixelInfo:
    """Parse the header of a Part-10 file and find its Pixel Data, validating the image geometry.

    Raises :class:`NoPixelData` when there is none and :class:`InvalidInstance` when the header
    and the pixel data disagree or the image is larger than we agree to decode.
    """
    fh.seek(0)
    try:
        ds = pydicom.dcmread(fh, stop_before_pixels=True, defer_size=1 << 16)
    except Exception as exc:
        raise InvalidInstance(f"unparsable DICOM header: {exc}") from exc
    ts = str(ds.file_meta.get("TransferSyntaxUID", "") or EXPLICIT_LE)
    if ts == DEFLATED:
        # Offsets in a deflated stream are meaningless: read it whole (rare; small objects).
        fh.seek(0)
        full = pydicom.dcmread(fh)
        if "PixelData" not in full:
            raise NoPixelData("the instance has no pixel data")
        return _info(full, ts, _IN_MEMORY, len(full.PixelData))
    head = fh.read(8)
    if len(head) < 8:
        raise NoPixelData("the instance has no pixel data")
    uid = UID(ts)
    endian = "<" if uid.is_little_endian else ">"
    group, element = struct.unpack(f"{endian}HH", head[:4])
    if (group, element) != (0x7FE0, 0x0010):
        raise NoPixelData(f"the instance has no pixel data (found ({group:04X},{element:04X}) instead)")
    vr = ""
    if uid.is_implicit_VR:
        (length,) = struct.unpack(f"{endian}L", head[4:8])
    else:
        vr = head[4:6].decode("latin-1")
        (length,) = struct.unpack(f"{endian}L", fh.read(4))
    return _info(ds, ts, fh.tell(), length, vr)


#: ``value_offset`` of pixel data held in ``header`` itself (a deflated object parsed whole, a dataset).
_IN_MEMORY = -1


def info_of(ds: Dataset) -> PixelInfo:
    """What :func:`locate` says of a stored file, for a dataset held in memory with its pixel data."""
    if "PixelData" not in ds:
        raise NoPixelData("the instance has no pixel data")
    ts = str(ds.get("file_meta", Dataset()).get("TransferSyntaxUID", "") or EXPLICIT_LE)
    length = 0xFFFFFFFF if ts not in NATIVE_SYNTAXES else len(ds.PixelData)
    return _info(ds, ts, _IN_MEMORY, length)


def _info(ds: Dataset, ts: str, offset: int, length: int, vr: str = "") -> PixelInfo:
    def num(keyword: str, default: int | None = None) -> int:
        value = ds.get(keyword, default)
        if value is None or value == "":
            if default is None:
                raise InvalidInstance(f"the image has no {keyword}")
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InvalidInstance(f"{keyword} is not a number: {value!r}") from None

    rows, columns = num("Rows"), num("Columns")
    spp, bits = num("SamplesPerPixel", 1), num("BitsAllocated")
    frames = num("NumberOfFrames", 1) or 1
    if rows <= 0 or columns <= 0:
        raise InvalidInstance(f"invalid image size {rows}x{columns}")
    if spp not in (1, 3, 4):
        raise InvalidInstance(f"unsupported SamplesPerPixel {spp}")
    if bits not in (1, 8, 16, 32, 64):
        raise InvalidInstance(f"unsupported BitsAllocated {bits}")
    if not 0 < frames <= MAX_FRAMES:
        raise InvalidInstance(f"unsupported NumberOfFrames {frames}")
    info = PixelInfo(ds, ts, rows, columns, spp, bits, frames, offset, length, vr)
    if info.decoded_frame_bytes > MAX_FRAME_BYTES:
        raise InvalidInstance(
            f"a {rows}x{columns}x{spp} frame of {bits} bits is larger than the "
            f"{MAX_FRAME_BYTES >> 20} MiB limit"
        )
    if not info.encapsulated:
        needed = math.ceil(info.frame_bits * frames / 8)
        if length == 0xFFFFFFFF or length < needed:
            raise InvalidInstance(
                f"pixel data holds {length} bytes but Rows*Columns*Samples*Bits*Frames needs {needed}"
            )
    elif length != 0xFFFFFFFF:
        raise InvalidInstance("compressed pixel data must be encapsulated (undefined length)")
    return info


def check_frame_numbers(info: PixelInfo, numbers: list[int]) -> None:
    """Frame numbers are 1-based and at most NumberOfFrames (PS3.18 8.3.3.3)."""
    for n in numbers:
        if not 1 <= n <= info.number_of_frames:
            from pacs.errors import NotFound

            raise NotFound(f"frame {n} does not exist (the instance has {info.number_of_frames})")


def raw_frame(fh: BinaryIO, info: PixelInfo, number: int) -> bytes:
    """The stored bytes of frame ``number`` (1-based): a native frame or one compressed frame."""
    extended = None
    if "ExtendedOffsetTable" in info.header and "ExtendedOffsetTableLengths" in info.header:
        extended = (info.header.ExtendedOffsetTable, info.header.ExtendedOffsetTableLengths)
    if info.value_offset == _IN_MEMORY:  # the whole dataset was parsed
        if not info.encapsulated:
            return _native_from_bytes(info, bytes(info.header.PixelData), number)
        return _encapsulated_frame(info.header.PixelData, info, number, extended)
    if not info.encapsulated:
        bits = info.frame_bits
        if bits % 8:
            fh.seek(info.value_offset)
            return _native_from_bytes(info, fh.read(math.ceil(bits * info.number_of_frames / 8)), number)
        size = bits // 8
        fh.seek(info.value_offset + (number - 1) * size)
        data = fh.read(size)
        if len(data) != size:
            raise InvalidInstance(f"frame {number} is truncated")
        if info.transfer_syntax_uid == BIG_ENDIAN and info.bits_allocated > 8:
            data = swap_bytes(data, info.bits_allocated // 8)
        return data
    fh.seek(info.value_offset)
    return _encapsulated_frame(fh, info, number, extended)


def _encapsulated_frame(
    src: BinaryIO | bytes, info: PixelInfo, number: int, extended: tuple[Any, Any] | None
) -> bytes:
    try:
        return get_frame(src, number - 1, number_of_frames=info.number_of_frames, extended_offsets=extended)
    except (ValueError, IndexError, struct.error) as exc:
        raise InvalidInstance(f"cannot read frame {number} of the encapsulated pixel data: {exc}") from exc


def _native_from_bytes(info: PixelInfo, data: bytes, number: int) -> bytes:
    if info.bits_allocated == 1:
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        per = info.rows * info.columns * info.samples_per_pixel
        frame = bits[(number - 1) * per : number * per]
        return np.packbits(frame, bitorder="little").tobytes()
    size = info.frame_bits // 8
    return data[(number - 1) * size : number * size]


def _instance(info: PixelInfo) -> str:
    """The instance a budget charges ``info``'s decoding to."""
    return str(info.header.get("SOPInstanceUID", "") or "") or "without SOP Instance UID"


def reserve(info: PixelInfo, frames: int, budget: DecodeBudget | None) -> None:
    """Book the decoding of ``frames`` frames of ``info`` in ``budget`` before decoding any, so
    that a request over a limit is refused before its answer starts (:class:`~pacs.errors.TooLarge`)."""
    if budget is not None:
        budget.reserve(_instance(info), frames * info.decoded_frame_bytes)


def decode_frame(
    fh: BinaryIO, info: PixelInfo, number: int, budget: DecodeBudget | None = None
) -> np.ndarray:
    """Decode frame ``number`` (1-based) to an array (colour as RGB, YBR converted by the decoder).

    The frame is charged to ``budget`` (a budget of its own, with the default limits, when None)
    before it is decoded; over a limit is :class:`~pacs.errors.TooLarge`.
    """
    return _decode(fh, info, number, budget)[0]


def decoded_frame(
    fh: BinaryIO | None, info: PixelInfo, number: int, budget: DecodeBudget | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`decode_frame` with the decoder's description of the decoded pixels (as
    :func:`decoded_frames` gives it): what an encoder of :mod:`pacs.dicom.codecs` needs."""
    return _decode(fh, info, number, budget)


def decoded_frames(
    fh: BinaryIO | None, info: PixelInfo, budget: DecodeBudget | None = None
) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Every frame decoded, in order and one at a time, with the decoder's description of the
    decoded pixels (``photometric_interpretation``, ``planar_configuration``, ...).

    ``fh`` is the stored file :func:`locate` read ``info`` from (None for a dataset of
    :func:`info_of`). The whole instance is booked in ``budget`` before the first frame is decoded.
    """
    budget = budget if budget is not None else DecodeBudget()
    reserve(info, info.number_of_frames, budget)
    for number in range(1, info.number_of_frames + 1):
        yield _decode(fh, info, number, budget)


def _decode(
    fh: BinaryIO | None, info: PixelInfo, number: int, budget: DecodeBudget | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """THE decoding: the budget is charged first, the codestream header checked, then pydicom decodes."""
    (budget if budget is not None else DecodeBudget()).spend(_instance(info), info.decoded_frame_bytes)
    if fh is None:
        if info.value_offset != _IN_MEMORY:
            raise InvalidInstance("no stored file to read the pixel data from")
        fh = io.BytesIO()  # not read: the pixel data is in the header
    try:
        if info.encapsulated:  # decoders allocate what the codestream claims: check it first
            limits.check_codestream(raw_frame(fh, info, number), info.rows, info.columns)
        if info.value_offset == _IN_MEMORY:
            decoder = get_decoder(UID(info.transfer_syntax_uid))
            arr, meta = decoder.as_array(info.header, index=number - 1, validate=True)
            return arr, dict(meta)
        # What pydicom's pixel_array(fh) does after parsing the header again: we parsed it already.
        opts = as_pixel_options(info.header)
        opts["transfer_syntax_uid"] = UID(info.transfer_syntax_uid)
        opts["pixel_keyword"] = "PixelData"
        if info.pixel_vr:
            opts["pixel_vr"] = info.pixel_vr
        fh.seek(info.value_offset)
        arr, meta = get_decoder(opts["transfer_syntax_uid"]).as_array(
            fh, index=number - 1, validate=True, **opts
        )
        return arr, dict(meta)
    except NotImplementedError as exc:
        raise InvalidInstance(f"no decoder available for transfer syntax {info.transfer_syntax_uid}") from exc
    except (ValueError, RuntimeError, struct.error, EOFError, OSError) as exc:
        fallback = _imagecodecs_jpeg(fh, info, number)
        if fallback is not None:
            return fallback
        raise InvalidInstance(f"cannot decode frame {number}: {exc}") from exc


#: JPEG processes pydicom's plugins cannot always decode: libjpeg refuses some real 12-bit
#: extended (process 4) encoders' streams ("scan start must be zero ... sequential") and Pillow
#: has no 12-bit JPEG; imagecodecs' libjpeg-turbo build decodes them (pydicom's JPEG-lossy.dcm).
_IMAGECODECS_JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}


def _imagecodecs_jpeg(fh: BinaryIO, info: PixelInfo, number: int) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A JPEG baseline/extended frame decoded by imagecodecs when pydicom's plugins failed, or None
    (not such a frame, imagecodecs missing, or it cannot decode it either). Grayscale only:
    colour streams keep pydicom's handling of their photometric interpretation."""
    if info.transfer_syntax_uid not in _IMAGECODECS_JPEG or info.samples_per_pixel != 1:
        return None
    try:
        import imagecodecs
    except ImportError:
        return None
    try:
        arr = np.asarray(imagecodecs.jpeg8_decode(raw_frame(fh, info, number)))
    except Exception:  # imagecodecs raises its own error classes per codec
        return None
    if arr.shape[:2] != (info.rows, info.columns):
        return None
    bits = int(info.header.get("BitsStored", 8) or 8)
    if int(info.header.get("PixelRepresentation", 0) or 0) == 1:  # two's complement in BitsStored bits
        wide = arr.astype(np.int32)
        arr = np.where(wide >= 1 << (bits - 1), wide - (1 << bits), wide).astype(
            np.int16 if bits > 8 else np.int8
        )
    photometric = str(info.header.get("PhotometricInterpretation", "MONOCHROME2"))
    return arr, {"photometric_interpretation": photometric, "bits_stored": bits}


def swap_bytes(data: bytes, width: int) -> bytes:
    """``data`` with the bytes of each ``width``-byte word reversed (a trailing partial word kept):
    big <-> little endian for native samples and OW/OL/OF/OD/OV values (PS3.5 7.3)."""
    whole = len(data) - len(data) % width
    swapped = np.frombuffer(data, dtype=f"<u{width}", count=whole // width).byteswap().tobytes()
    return swapped + data[whole:]


def native_frame_bytes(arr: np.ndarray) -> bytes:
    """A decoded frame as Explicit VR Little Endian pixel bytes (colour by pixel, PS3.5 8.2)."""
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False)).tobytes()


# ---------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2); ``function`` is LINEAR, LINEAR_EXACT or SIGMOID."""

    center: float
    width: float
    function: str = "LINEAR"


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) or (hasattr(value, "__getitem__") and not isinstance(value, str)):
        try:
            value = value[0]
        except (IndexError, TypeError):
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def header_window(ds: Dataset) -> Window | None:
    """The first window of the header (C.11.2), or ``None``."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    return Window(center, width, function if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR")


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Window ``values`` to 0..255 floats per PS3.3 C.11.2.1.2.1 / C.11.2.1.3."""
    x = values.astype(np.float64, copy=False)
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if window.function == "LINEAR_EXACT":
        return np.clip(((x - c) / w + 0.5) * 255.0, 0.0, 255.0)
    if w < 1:
        w = 1.0
    if w == 1:
        return np.where(x <= c - 0.5, 0.0, 255.0)
    return np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0, 0.0, 255.0)


def to_display(ds: Dataset, arr: np.ndarray, window: Window | None = None) -> np.ndarray:
    """One decoded frame -> uint8 (H, W) grayscale or (H, W, 3) RGB ready to encode."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return _to_uint8_colour(rgb, 16 if rgb.dtype.itemsize > 1 else 8)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        bits = int(ds.get("BitsStored", 8) or 8)
        return _to_uint8_colour(arr[..., :3], bits)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2 and arr.dtype.isnative:
        lut = _grayscale_lut(ds, arr, window, photometric)
        if lut is not None:
            # Stored values index the table through their unsigned bit pattern (one take, no float math).
            return np.take(lut, arr.view(np.uint8 if arr.dtype.itemsize == 1 else np.uint16))
    return np.rint(_grayscale(ds, arr, window, photometric)).astype(np.uint8)


def _grayscale(
    ds: Dataset,
    arr: np.ndarray,
    window: Window | None,
    photometric: str,
    span: tuple[float, float] | None = None,
) -> np.ndarray:
    """The grayscale pipeline (C.11) as floats 0..255; ``span`` is the (lo, hi) of modality values
    used when there is no window at all (the image's own range)."""
    values = apply_modality_lut(arr, ds)
    if window is None:
        window = header_window(ds)
    if window is not None:
        out = apply_window(values, window)
    elif "VOILUTSequence" in ds:
        lut_out = apply_voi_lut(values, ds).astype(np.float64)
        descriptor = ds.VOILUTSequence[0].get("LUTDescriptor", [0, 0, 16])
        top = float(2 ** int(descriptor[2]) - 1) or 1.0
        out = np.clip(lut_out / top * 255.0, 0.0, 255.0)
    else:
        lo, hi = span if span is not None else (float(np.min(values)), float(np.max(values)))
        out = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros(values.shape)
    if photometric == "MONOCHROME1":
        out = 255.0 - out
    return out  # type: ignore[no-any-return]


#: Lookup tables of recent (dtype, rescale, window, photometric) combinations: a series shares one.
_LUTS: dict[tuple[Any, ...], np.ndarray] = {}
_LUTS_MAX = 64
_LUTS_LOCK = threading.Lock()


def _grayscale_lut(
    ds: Dataset, arr: np.ndarray, window: Window | None, photometric: str
) -> np.ndarray | None:
    """A table: stored value (by its unsigned bit pattern) -> 8-bit output, the whole pipeline of
    :func:`_grayscale` applied once per possible value instead of once per pixel.

    ``None`` where a table does not pay (small images whose table could not be reused) or could
    differ from the per-pixel result (no window and a non-linear Modality LUT).
    """
    dtype = arr.dtype
    domain = 1 << (8 * dtype.itemsize)
    effective = window or header_window(ds)
    luts = "ModalityLUTSequence" in ds or (effective is None and "VOILUTSequence" in ds)
    key: tuple[Any, ...] | None = None
    span = None
    if effective is None and "VOILUTSequence" not in ds:
        if "ModalityLUTSequence" in ds or arr.size < domain:
            return None
        # Linear rescale is monotonic: the image's range of values comes from its extreme stored values.
        ends = apply_modality_lut(np.array([arr.min(), arr.max()], dtype=dtype), ds).astype(np.float64)
        span = (float(ends.min()), float(ends.max()))
    elif not luts:
        key = (
            dtype.str,
            photometric,
            str(ds.get("RescaleSlope", "")),
            str(ds.get("RescaleIntercept", "")),
            effective,
        )
        cached = _LUTS.get(key)
        if cached is not None:
            return cached
    elif arr.size < domain:
        return None
    stored = np.arange(domain, dtype=np.uint8 if domain == 256 else np.uint16).view(dtype)
    lut = np.rint(_grayscale(ds, stored, window, photometric, span)).astype(np.uint8)
    if key is not None:
        with _LUTS_LOCK:
            while len(_LUTS) >= _LUTS_MAX:
                _LUTS.pop(next(iter(_LUTS)))
            _LUTS[key] = lut
    return lut


def _to_uint8_colour(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if bits > 8:
        return (arr.astype(np.uint32) >> (bits - 8)).clip(0, 255).astype(np.uint8)
    return arr.clip(0, 255).astype(np.uint8)


def encode_image(
    pixels: np.ndarray,
    media_type: str = "image/jpeg",
    *,
    quality: int = 90,
    viewport: tuple[int, int] | None = None,
) -> bytes:
    """Encode a display-ready frame as JPEG or PNG, scaled to fit ``viewport`` (width, height)."""
    from PIL import Image

    img = Image.fromarray(pixels)
    if viewport is not None:
        vw, vh = viewport
        scale = min(vw / img.width, vh / img.height)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        if size != img.size:
            img = img.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if media_type == "image/png":
        img.save(buf, format="PNG", compress_level=3)
    elif media_type == "image/gif":
        img.save(buf, format="GIF")
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
