"""The one transcoder: a stored instance in another transfer syntax, for every edge that sends one.

WADO-RS (``transfer-syntax=`` in Accept, PS3.18 8.7.3.5) and C-MOVE / C-GET sub-operations (the
contexts a peer accepted, PS3.4 C.4.2.3 / C.4.3.3) ask the same two questions here: which
transfer syntax to send (:func:`choose`) and how to get there (:func:`transcode`).

What converts (PS3.5 A.1-A.5):

- anything into itself: sent as stored, never parsed by the caller (the fast path);
- native into native: explicit <-> implicit VR, deflated <-> inflated, big <-> little endian with
  the bytes of OW/OL/OF/OD/OV values and of 16/32/64-bit native pixel data swapped;
- encapsulated (compressed) into native: decoded frame by frame by :mod:`pacs.dicom.pixels` (a
  missing plugin or a corrupt codestream is a :class:`CannotTranscode` with the decoder's reason),
  every frame charged to the request's :class:`~pacs.limits.DecodeBudget` (over a limit is
  :class:`~pacs.errors.TooLarge`, before anything is decoded). :func:`stream_as` writes the
  decoded pixel data out one frame at a time (WADO-RS); :func:`read_as` holds it whole, as
  pynetdicom needs a dataset (C-MOVE / C-GET), within the per-instance limit.

Nothing is ever compressed: a compressed target we do not hold is refused.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import correct_ambiguous_vr, write_dataset
from pydicom.uid import UID

from pacs.dicom import pixels
from pacs.dicom.pixels import BIG_ENDIAN, DEFLATED, EXPLICIT_LE, IMPLICIT_LE, NATIVE_SYNTAXES, swap_bytes
from pacs.errors import InvalidInstance, NoPixelData, NotAcceptable
from pacs.limits import DecodeBudget

#: Stands for "as stored, whatever that is" in a list of accepted syntaxes (WADO-RS ``*``).
ANY = "*"
#: The syntaxes we can write, in the order we pick them when the stored one is not accepted.
TARGETS: tuple[str, ...] = (EXPLICIT_LE, IMPLICIT_LE, DEFLATED, BIG_ENDIAN)
#: Byte width of the words of each binary VR whose values depend on the byte order (PS3.5 6.2).
_WORD_VRS = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
_PIXEL_DATA = 0x7FE00010


class CannotTranscode(NotAcceptable):
    """A stored instance cannot be converted into a transfer syntax; ``str(exc)`` says why."""


def name(ts: str) -> str:
    """A transfer syntax's name when pydicom knows it, else its UID."""
    uid = UID(ts)
    return uid.name if uid.is_transfer_syntax else ts or "no transfer syntax"


def why_not(stored: str, target: str) -> str | None:
    """Why ``stored`` cannot become ``target`` (judged from the syntaxes alone); None when it can.

    A conversion that is possible here may still fail on the object itself (no decoder for its
    codestream, no pixel data to decode): :func:`transcode` says so.
    """
    if target == stored:
        return None
    if target not in NATIVE_SYNTAXES:
        return f"{name(target)} would need compressing, which this archive never does"
    return None


def choose(stored: str, accepted: Iterable[str]) -> str | None:
    """The transfer syntax to send an instance stored as ``stored`` to a peer accepting ``accepted``.

    As stored when accepted (or :data:`ANY` is), else the first of :data:`TARGETS` the peer
    accepts, else None (nothing the peer takes can carry it).
    """
    acc = set(accepted)
    if ANY in acc or stored in acc:
        return stored
    for target in TARGETS:
        if target in acc and why_not(stored, target) is None:
            return target
    return None


def choose_frames(stored: str, accepted: Iterable[str]) -> str | None:
    """The transfer syntax of frames retrieved from pixel data stored as ``stored`` (PS3.18 8.7.3.5.3).

    Native frames go out as Explicit VR Little Endian bytes (when that, the stored syntax or
    :data:`ANY` is accepted); compressed frames as stored when accepted, else decoded to native.
    """
    acc = set(accepted)
    if stored in NATIVE_SYNTAXES:
        return EXPLICIT_LE if acc & {ANY, EXPLICIT_LE, stored} else None
    if acc & {ANY, stored}:
        return stored
    return EXPLICIT_LE if EXPLICIT_LE in acc else None


def offers(stored: str) -> list[tuple[str, ...]]:
    """Transfer syntaxes to propose to a peer for an instance stored as ``stored`` (one tuple per
    presentation context): the compressed stored syntax alone, then uncompressed little endian."""
    uncompressed = (EXPLICIT_LE, IMPLICIT_LE)
    return [uncompressed] if stored in NATIVE_SYNTAXES else [(stored,), uncompressed]


def transcode(ds: Dataset, target: str, budget: DecodeBudget | None = None) -> Dataset:
    """Convert ``ds`` (as read from a stored Part-10 file) into ``target``, in place, and return it.

    Afterwards ``ds.file_meta.TransferSyntaxUID`` is ``target`` and the dataset's encoding is
    the target's, so pydicom and pynetdicom write it as such. Raises :class:`CannotTranscode`,
    or :class:`~pacs.errors.TooLarge` when decoding would go over ``budget`` (a budget of its own,
    with the default limits, when None).
    """
    stored = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    if stored == target:
        return ds
    reason = why_not(stored, target)
    if reason is not None:
        raise CannotTranscode(f"stored as {name(stored)}: {reason}")
    if stored not in NATIVE_SYNTAXES:
        _decompress(ds, stored, budget)
        stored = EXPLICIT_LE
    try:
        _reencode(ds, UID(stored), UID(target))
    except Exception as exc:  # a value pydicom cannot decode in the stored encoding
        raise CannotTranscode(
            f"cannot convert {name(stored)} to {name(target)}: {type(exc).__name__}: {exc}"
        ) from exc
    return ds


def read_as(fh: BinaryIO, target: str, budget: DecodeBudget | None = None) -> Dataset:
    """Parse a stored Part-10 file and convert it into ``target`` (see :func:`transcode`)."""
    fh.seek(0)
    try:
        ds = pydicom.dcmread(fh)
    except Exception as exc:
        raise CannotTranscode(f"unreadable stored instance: {type(exc).__name__}: {exc}") from exc
    return transcode(ds, target, budget)


def part10(ds: Dataset) -> bytes:
    """The Part-10 bytes of ``ds`` in the transfer syntax its file meta names."""
    ts = UID(ds.file_meta.TransferSyntaxUID)
    buf = io.BytesIO()
    try:
        ds.save_as(
            buf, enforce_file_format=True, implicit_vr=ts.is_implicit_VR, little_endian=ts.is_little_endian
        )
    except Exception as exc:
        raise CannotTranscode(f"cannot encode as {name(ts)}: {type(exc).__name__}: {exc}") from exc
    return buf.getvalue()


def part10_as(fh: BinaryIO, target: str, budget: DecodeBudget | None = None) -> bytes:
    """A stored Part-10 file's bytes in ``target``: :func:`read_as` then :func:`part10`."""
    return part10(read_as(fh, target, budget))


def needs_decoding(stored: str, target: str) -> bool:
    """Whether sending ``stored`` as ``target`` decodes its pixel data."""
    return target != stored and stored not in NATIVE_SYNTAXES and target in NATIVE_SYNTAXES


def reserve(fh: BinaryIO, target: str, budget: DecodeBudget) -> None:
    """Book in ``budget`` the decoding a conversion of the stored file ``fh`` into ``target`` will
    do, before any (:class:`~pacs.errors.TooLarge` over a limit, :class:`InvalidInstance` for
    pixel data whose geometry is wrong): an answer can still be an error when it is raised."""
    try:
        info = pixels.locate(fh)
    except NoPixelData:
        return  # nothing to decode: the conversion says what it can do
    if needs_decoding(info.transfer_syntax_uid, target):
        pixels.reserve(info, info.number_of_frames, budget)


def stream_as(fh: BinaryIO, target: str, budget: DecodeBudget | None = None) -> Iterator[bytes]:
    """A stored Part-10 file's bytes in ``target``, in pieces.

    Compressed pixel data into Explicit or Implicit VR Little Endian is decoded and written one
    frame at a time (never whole in memory: a multi-frame object costs one frame); every other
    conversion is made whole (:func:`part10_as`). Raises what :func:`transcode` raises.
    """
    try:
        info: pixels.PixelInfo | None = pixels.locate(fh)
    except (NoPixelData, InvalidInstance):
        info = None  # the whole conversion says why, if it cannot be done
    if (
        info is None
        or info.value_offset < 0
        or info.bits_allocated == 1  # frames of bits are not byte aligned
        or not needs_decoding(info.transfer_syntax_uid, target)
        or target not in (EXPLICIT_LE, IMPLICIT_LE)
    ):
        yield part10_as(fh, target, budget)
        return
    yield from _stream_decoded(fh, info, UID(target), budget if budget is not None else DecodeBudget())


# ---------------------------------------------------------------- the conversions


def _decompress(ds: Dataset, stored: str, budget: DecodeBudget | None) -> None:
    """Encapsulated pixel data -> native, Explicit VR Little Endian, decoded frame by frame by
    :mod:`pacs.dicom.pixels` into one buffer (what pydicom's ``Dataset.decompress`` does, without
    holding every frame twice)."""
    if "PixelData" not in ds:
        raise CannotTranscode(f"stored as {name(stored)} without pixel data to decompress")
    buf = io.BytesIO()
    meta: dict[str, Any] = {}
    try:
        info = pixels.info_of(ds)
        frame_len = 0
        for arr, frame_meta in pixels.decoded_frames(None, info, budget):
            meta = frame_meta
            data = pixels.native_frame_bytes(arr)
            if frame_len and len(data) != frame_len:
                raise InvalidInstance("the frames decode to different sizes")
            frame_len = len(data)
            buf.write(data)
    except (InvalidInstance, NoPixelData) as exc:  # no decoder plugin, a corrupt codestream
        raise CannotTranscode(f"cannot decompress {name(stored)}: {exc}") from exc
    if info.bits_allocated == 1:  # decoders unpack bits; native pixel data keeps them packed
        value = np.packbits(np.frombuffer(buf.getbuffer(), np.uint8), bitorder="little").tobytes()
    else:
        if buf.tell() % 2:
            buf.write(b"\x00")
        value = buf.getvalue()  # shares the buffer's bytes: the pixel data is held once
    del buf
    elem = ds["PixelData"]
    elem.value = value
    elem.is_undefined_length = False
    elem.VR = "OB" if info.bits_allocated <= 8 else "OW"
    _describe_decoded(ds, meta, info.number_of_frames)
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)


def _describe_decoded(ds: Dataset, meta: dict[str, Any], frames: int) -> None:
    """The Image Pixel attributes of decoded pixel data (as pydicom's ``decompress`` sets them)."""
    if meta.get("photometric_interpretation"):
        ds.PhotometricInterpretation = str(meta["photometric_interpretation"])
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PlanarConfiguration = int(meta.get("planar_configuration", 0) or 0)
    if "NumberOfFrames" in ds or frames > 1:
        ds.NumberOfFrames = frames
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):  # of the encapsulated data only
        if keyword in ds:
            delattr(ds, keyword)


def _stream_decoded(
    fh: BinaryIO, info: pixels.PixelInfo, target: UID, budget: DecodeBudget
) -> Iterator[bytes]:
    """Header, then the pixel data one decoded frame at a time, then the elements after it."""
    frames = pixels.decoded_frames(fh, info, budget)  # books the whole instance first
    try:
        first, meta = next(frames)
    except (InvalidInstance, NoPixelData) as exc:
        raise CannotTranscode(f"cannot decompress {name(info.transfer_syntax_uid)}: {exc}") from exc
    tail = _trailing(fh, info)
    fh.seek(0)
    try:
        head = pydicom.dcmread(fh, stop_before_pixels=True)
    except Exception as exc:
        raise CannotTranscode(f"unreadable stored instance: {type(exc).__name__}: {exc}") from exc
    data = pixels.native_frame_bytes(first)
    length = len(data) * info.number_of_frames
    if length >= 0xFFFFFFFF:
        raise CannotTranscode("the decoded pixel data would be longer than a DICOM value can be (4 GiB)")
    _describe_decoded(head, meta, info.number_of_frames)
    head.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)
    _reencode(head, UID(EXPLICIT_LE), target)
    yield part10(head)
    padded = length + length % 2
    if target.is_implicit_VR:
        yield struct.pack("<HHL", 0x7FE0, 0x0010, padded)
    else:
        vr = b"OB" if info.bits_allocated <= 8 else b"OW"
        yield struct.pack("<HH", 0x7FE0, 0x0010) + vr + struct.pack("<HL", 0, padded)
    yield data
    size = len(data)
    try:
        for arr, _ in frames:
            data = pixels.native_frame_bytes(arr)
            if len(data) != size:
                raise CannotTranscode("the frames decode to different sizes")
            yield data
    except (InvalidInstance, NoPixelData) as exc:
        raise CannotTranscode(f"cannot decompress {name(info.transfer_syntax_uid)}: {exc}") from exc
    if length % 2:
        yield b"\x00"
    if len(tail):
        yield _elements(tail, target)


def _trailing(fh: BinaryIO, info: pixels.PixelInfo) -> Dataset:
    """The elements after encapsulated pixel data (private groups above 7FE0, signatures; the
    trailing padding (FFFC,FFFC) left out), found by walking the items to the sequence delimiter."""
    fh.seek(info.value_offset)
    while True:
        item = fh.read(8)
        if len(item) < 8:
            return Dataset()
        group, element, length = struct.unpack("<HHL", item)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            return Dataset()  # malformed: the decoder did not mind, nothing trustworthy follows
        fh.seek(length, io.SEEK_CUR)
    try:
        tail = read_dataset(fh, is_implicit_VR=False, is_little_endian=True, bytelength=None)
    except Exception:
        return Dataset()
    if 0xFFFCFFFC in tail:
        del tail[0xFFFCFFFC]
    return tail


def _elements(ds: Dataset, target: UID) -> bytes:
    """The elements of ``ds`` (read as Explicit VR Little Endian) encoded in ``target``."""
    ds.file_meta = FileMetaDataset()
    ds.set_original_encoding(False, True, ds.original_character_set)
    _reencode(ds, UID(EXPLICIT_LE), target)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = target.is_little_endian, target.is_implicit_VR
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def _reencode(ds: Dataset, stored: UID, target: UID) -> None:
    """Native -> native. Raw values are decoded in the stored encoding first (pydicom writes raw
    values as they are), ambiguous VRs resolved with the stored byte order, and byte-order
    dependent binary values swapped when the byte order changes."""
    same = (stored.is_implicit_VR, stored.is_little_endian) == (
        target.is_implicit_VR,
        target.is_little_endian,
    )
    if not same:
        for _elem in ds.iterall():  # decodes every raw element, sequences included
            pass
        correct_ambiguous_vr(ds, stored.is_little_endian)
        if stored.is_little_endian != target.is_little_endian:
            _swap_words(ds)
        _set_encoding(ds, target)
    ds.file_meta.TransferSyntaxUID = target


def _set_encoding(ds: Dataset, target: UID) -> None:
    ds.set_original_encoding(target.is_implicit_VR, target.is_little_endian, ds.original_character_set)
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _set_encoding(item, target)


def _swap_words(ds: Dataset) -> None:
    """Swap the bytes of every byte-order dependent binary value of ``ds`` and its items.

    Native pixel data follows Bits Allocated (16, 32 or 64-bit samples, whatever its VR says);
    8-bit samples swap in pairs only when encoded as OW (as pydicom's decoders read them), and
    1-bit pixel data has no byte order.
    """
    bits = int(ds.get("BitsAllocated", 8) or 8)
    for elem in ds:
        vr = str(elem.VR)
        if vr == "SQ":
            for item in elem.value:
                _swap_words(item)
            continue
        if int(elem.tag) == _PIXEL_DATA:
            width = bits // 8 if bits in (16, 32, 64) else 2 if bits == 8 and vr == "OW" else 0
        else:
            width = _WORD_VRS.get(vr, 0)
        if width and isinstance(elem.value, bytes | bytearray):
            elem.value = swap_bytes(bytes(elem.value), width)


__all__ = [
    "ANY",
    "TARGETS",
    "CannotTranscode",
    "choose",
    "choose_frames",
    "needs_decoding",
    "offers",
    "part10",
    "part10_as",
    "read_as",
    "reserve",
    "stream_as",
    "transcode",
    "why_not",
]
