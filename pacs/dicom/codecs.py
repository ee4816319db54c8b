"""Encoding decoded frames into the compressed transfer syntaxes: the other half of :mod:`pacs.dicom.pixels`.

One :class:`Codec` per transfer syntax we can write (PS3.5 8.2, A.4), each saying what it can
carry (:meth:`Codec.why_not`: bit depth, signedness, samples per pixel, photometric
interpretation) and encoding one frame at a time (:meth:`Codec.encode`), through ``imagecodecs``
(libjpeg-turbo, CharLS, OpenJPEG, OpenJPH) and pydicom's own RLE encoder:

================================  =====================  ============================================
transfer syntax                   encoder                 carries
================================  =====================  ============================================
JPEG-LS Lossless (4.80)           CharLS                  1-16 bits, signed, grey or RGB
JPEG 2000 Lossless (4.90)         OpenJPEG (reversible)   1-16 bits, signed, grey or RGB
HTJ2K Lossless (4.201)            OpenJPH (reversible)    1-16 bits, signed, grey or RGB
RLE Lossless (1.2.5)              pydicom / pylibjpeg-rle 1-16 bits, signed, grey or RGB
JPEG Lossless SV1 (4.70)          libjpeg-turbo           1-16 bits, signed, grey or RGB
JPEG Baseline (4.50), lossy       libjpeg-turbo           1-8 bits unsigned; RGB -> YBR_FULL_422
JPEG Extended (4.51), lossy       libjpeg-turbo           1-12 bits unsigned; RGB -> YBR_FULL_422
JPEG 2000 (4.91), lossy           OpenJPEG (irreversible) 1-16 bits, signed, grey or RGB
JPEG-LS Near-Lossless (4.81)      CharLS (NEAR = 2)       1-16 bits, signed, grey or RGB
================================  =====================  ============================================

Samples are encoded as the bit pattern of their Bits Stored (two's complement for Pixel
Representation 1, sign-extended where the codec's precision is the whole word), never rescaled:
an image a codec cannot carry as it is (12-bit into JPEG Baseline, signed into lossy JPEG,
palette indices into a lossy codec) is refused with the reason. Colour is encoded without
colour transform (RGB stays RGB) except for lossy JPEG, which decoders expect in YCbCr with
4:2:2 chroma subsampling (YBR_FULL_422, as DCMTK's ``dcmcjpeg`` writes it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

#: JPEG quality of lossy JPEG (libjpeg's 0-100 scale).
JPEG_QUALITY = 90
#: Largest difference per sample of JPEG-LS near-lossless (its NEAR parameter; DCMTK's default).
JLS_NEAR = 2
#: JPEG 2000 lossy target, in dB of PSNR over an 8-bit range (6 dB more per bit stored above 8).
J2K_PSNR_8BIT = 45.0


class CodecError(Exception):
    """An encoder failed on a frame (``str(exc)`` says why)."""


@dataclass(frozen=True)
class Image:
    """What an encoder needs to know of an image's decoded frames (PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str  # of the decoded frames (colour is RGB once decoded)

    @classmethod
    def of(cls, ds: Any, photometric: str | None = None) -> Image:
        """The decoded frames of a dataset's pixel data as its Image Pixel module describes them;
        ``photometric`` is what the decoder said of them (else predicted: YBR colour decodes to RGB)."""
        if photometric is None:
            photometric = str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper()
            if photometric.startswith("YBR"):
                photometric = "RGB"
        bits_allocated = int(ds.get("BitsAllocated", 0) or 0)
        return cls(
            rows=int(ds.get("Rows", 0) or 0),
            columns=int(ds.get("Columns", 0) or 0),
            samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
            bits_allocated=bits_allocated,
            bits_stored=int(ds.get("BitsStored", bits_allocated) or bits_allocated),
            signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
            photometric=photometric,
        )

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame uncompressed (the measure of a compression ratio)."""
        return self.rows * self.columns * self.samples_per_pixel * max(1, self.bits_allocated // 8)


@dataclass(frozen=True)
class Codec:
    """One transfer syntax we can encode into."""

    uid: str
    name: str
    lossy: bool
    #: LossyImageCompressionMethod (0028,2114) of a lossy codec (PS3.3 C.7.6.1.1.5.1).
    method: str
    max_bits: int
    signed: bool  # carries Pixel Representation 1
    allocated: tuple[int, ...]  # Bits Allocated it takes
    _encode: Callable[[np.ndarray, Image], bytes]

    def why_not(self, image: Image) -> str | None:
        """Why this codec cannot carry ``image`` as it is; None when it can."""
        what = f"{self.name} carries"
        if image.bits_stored > self.max_bits:
            return (
                f"{what} at most {self.max_bits} bits per sample; this image has {image.bits_stored} bits "
                "stored: it would have to be rescaled, which is never done"
            )
        if image.signed and not self.signed:
            return (
                f"{what} unsigned samples only; this image is signed (Pixel Representation 1): "
                "it would have to be rescaled, which is never done"
            )
        if image.bits_allocated not in self.allocated:
            return (
                f"{what} {_list(self.allocated)}-bit words, not {image.bits_allocated}-bit (Bits Allocated)"
            )
        if image.samples_per_pixel not in (1, 3):
            return f"{what} 1 or 3 samples per pixel, not {image.samples_per_pixel}"
        if self.lossy and image.photometric == "PALETTE COLOR":
            return f"{what} no palette colour: lossy compression of palette indices changes the colours"
        if image.samples_per_pixel == 3 and image.photometric != "RGB":
            return f"{what} colour decoded to RGB, not {image.photometric}"
        return None

    def photometric(self, image: Image) -> str:
        """The Photometric Interpretation of the encoded frames."""
        if image.samples_per_pixel == 3:
            return "YBR_FULL_422" if self.uid in (JPEG_BASELINE, JPEG_EXTENDED) else "RGB"
        return image.photometric

    def encode(self, frame: np.ndarray, image: Image) -> bytes:
        """One decoded frame (rows x columns [x samples], as :mod:`pacs.dicom.pixels` decodes it)
        as this codec's codestream; :class:`CodecError` when the encoder fails."""
        expected = (image.rows, image.columns) + ((3,) if image.samples_per_pixel == 3 else ())
        if frame.shape != expected:
            raise CodecError(f"a frame of shape {frame.shape} is not the image's {expected}")
        try:
            return bytes(self._encode(_stored_bits(frame, image), image))
        except CodecError:
            raise
        except Exception as exc:  # imagecodecs and pydicom raise their own error classes
            raise CodecError(f"{self.name} encoder failed: {type(exc).__name__}: {exc}") from exc


def _list(values: tuple[int, ...]) -> str:
    return ", ".join(map(str, values[:-1])) + (" or " if len(values) > 1 else "") + str(values[-1])


def _stored_bits(frame: np.ndarray, image: Image) -> np.ndarray:
    """The frame's samples reduced to their Bits Stored (PS3.5 8.1.1: bits above High Bit are not
    pixel data), signed ones sign-extended, in the integer type of their Bits Allocated."""
    bits, width = image.bits_stored, max(1, image.bits_allocated // 8)
    kind = "i" if image.signed else "u"
    arr = np.ascontiguousarray(frame).astype(f"{kind}{width}", copy=False)
    if bits < 8 * width:
        unsigned = arr.view(f"u{width}") & np.array((1 << bits) - 1, dtype=f"u{width}")
        if image.signed:
            shift = 8 * width - bits
            arr = ((unsigned << shift).view(f"i{width}") >> shift).astype(f"i{width}")
        else:
            arr = unsigned
    return arr


def _pattern(arr: np.ndarray, bits: int) -> np.ndarray:
    """Signed samples as their two's complement pattern in ``bits`` bits (what JPEG codestreams hold)."""
    if arr.dtype.kind != "i":
        return arr
    unsigned = arr.view(arr.dtype.str.replace("i", "u"))
    return unsigned & np.array((1 << bits) - 1, dtype=unsigned.dtype) if bits < 8 * arr.itemsize else unsigned


# ---------------------------------------------------------------- the encoders


def _imagecodecs() -> Any:
    try:
        import imagecodecs
    except ImportError as exc:  # a dependency of the package: only a broken install lacks it
        raise CodecError("imagecodecs is not installed") from exc
    return imagecodecs


def _jpegls(near: int) -> Callable[[np.ndarray, Image], bytes]:
    def encode(arr: np.ndarray, image: Image) -> bytes:
        # CharLS takes unsigned samples; its precision is the word's, so sign-extended
        # patterns decode to the same values whether a decoder masks to Bits Stored or not.
        data = arr.view(arr.dtype.str.replace("i", "u")) if arr.dtype.kind == "i" else arr
        return bytes(_imagecodecs().jpegls_encode(data, level=near))

    return encode


def _resolutions(image: Image) -> int:
    """Wavelet decomposition levels + 1 that fit the image (OpenJPEG's default of 6 needs 32 x 32)."""
    return max(1, min(6, int(math.log2(min(image.rows, image.columns))) + 1))


def _jpeg2k(reversible: bool) -> Callable[[np.ndarray, Image], bytes]:
    def encode(arr: np.ndarray, image: Image) -> bytes:
        level = 0
        if not reversible:
            level = round(J2K_PSNR_8BIT + 6.02 * (image.bits_stored - 8))
        return bytes(
            _imagecodecs().jpeg2k_encode(
                arr,
                level=level,
                codecformat="J2K",  # a bare codestream, no JP2 box (PS3.5 A.4.4)
                reversible=reversible,
                bitspersample=image.bits_stored,
                resolutions=_resolutions(image),
                mct=False,  # RGB stays RGB (no YBR_RCT / YBR_ICT to declare)
                numthreads=1,
            )
        )

    return encode


def _htj2k(arr: np.ndarray, image: Image) -> bytes:
    return bytes(
        _imagecodecs().htj2k_encode(arr, reversible=True, resolutions=_resolutions(image), rgb=False)
    )


def _jpeg_lossless(arr: np.ndarray, image: Image) -> bytes:
    # Process 14, first-order prediction (selection value 1, PS3.5 10.2), precision = Bits Stored.
    bits = max(2, image.bits_stored)
    data = _pattern(arr, bits)
    if data.dtype.itemsize == 1 and bits > 8:
        data = data.astype(np.uint16)
    return bytes(_imagecodecs().jpeg8_encode(data, lossless=True, predictor=1, bitspersample=bits))


def _jpeg_lossy(arr: np.ndarray, image: Image) -> bytes:
    # 8-bit precision for 8-bit samples (baseline), else 12-bit (extended): values are kept as they are.
    bits = 8 if image.bits_allocated == 8 else 12
    data = arr.astype(np.uint8) if bits == 8 else arr.astype(np.uint16)
    colour: dict[str, Any] = {}
    if image.samples_per_pixel == 3:
        colour = {"colorspace": "RGB", "outcolorspace": "YCbCr", "subsampling": "422"}
    return bytes(
        _imagecodecs().jpeg8_encode(data, level=JPEG_QUALITY, bitspersample=bits, optimize=True, **colour)
    )


def _rle(arr: np.ndarray, image: Image) -> bytes:
    from pydicom.pixels import get_encoder

    return get_encoder(RLE_LOSSLESS).encode(
        arr,
        rows=image.rows,
        columns=image.columns,
        samples_per_pixel=image.samples_per_pixel,
        bits_allocated=image.bits_allocated,
        bits_stored=image.bits_stored,
        pixel_representation=int(image.signed),
        photometric_interpretation=image.photometric,
        planar_configuration=0,
        number_of_frames=1,
    )


_WORDS = (8, 16)
CODECS: dict[str, Codec] = {
    c.uid: c
    for c in (
        Codec(JPEG_LS_LOSSLESS, "JPEG-LS Lossless", False, "", 16, True, _WORDS, _jpegls(0)),
        Codec(JPEG_2000_LOSSLESS, "JPEG 2000 Lossless", False, "", 16, True, _WORDS, _jpeg2k(True)),
        Codec(HTJ2K_LOSSLESS, "HTJ2K Lossless", False, "", 16, True, _WORDS, _htj2k),
        Codec(RLE_LOSSLESS, "RLE Lossless", False, "", 16, True, _WORDS, _rle),
        Codec(JPEG_LOSSLESS_SV1, "JPEG Lossless SV1", False, "", 16, True, _WORDS, _jpeg_lossless),
        Codec(JPEG_BASELINE, "JPEG Baseline", True, "ISO_10918_1", 8, False, (8,), _jpeg_lossy),
        Codec(JPEG_EXTENDED, "JPEG Extended", True, "ISO_10918_1", 12, False, _WORDS, _jpeg_lossy),
        Codec(JPEG_2000, "JPEG 2000", True, "ISO_15444_1", 16, True, _WORDS, _jpeg2k(False)),
        Codec(
            JPEG_LS_NEAR_LOSSLESS,
            "JPEG-LS Near-Lossless",
            True,
            "ISO_14495_1",
            16,
            True,
            _WORDS,
            _jpegls(JLS_NEAR),
        ),
    )
}
#: Lossless codecs, in the order we pick them for a peer that accepts several (the cheapest to
#: encode and most widely decoded first).
LOSSLESS: tuple[str, ...] = tuple(uid for uid, c in CODECS.items() if not c.lossy)
#: Lossy codecs, in the order we pick them when lossy is allowed.
LOSSY: tuple[str, ...] = tuple(uid for uid, c in CODECS.items() if c.lossy)


__all__ = ["CODECS", "LOSSLESS", "LOSSY", "Codec", "CodecError", "Image"]
