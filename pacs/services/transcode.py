"""The one transcoder: a stored instance in another transfer syntax, for every edge that sends one.

WADO-RS (``transfer-syntax=`` in Accept, PS3.18 8.7.3.5) and C-MOVE / C-GET sub-operations (the
contexts a peer accepted, PS3.4 C.4.2.3 / C.4.3.3) ask the same two questions here: which
transfer syntax to send (:func:`choose`) and how to get there (:func:`transcode`).

What converts (PS3.5 A.1-A.5):

- anything into itself: sent as stored, never parsed by the caller (the fast path);
- native into native: explicit <-> implicit VR, deflated <-> inflated, big <-> little endian with
  the bytes of OW/OL/OF/OD/OV values and of 16/32/64-bit native pixel data swapped;
- encapsulated (compressed) into native: decoded with pydicom's decoders (a missing plugin or a
  corrupt codestream is a :class:`CannotTranscode` with the decoder's reason).

Nothing is ever compressed: a compressed target we do not hold is refused.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.uid import UID

from pacs.dicom.pixels import BIG_ENDIAN, DEFLATED, EXPLICIT_LE, IMPLICIT_LE, NATIVE_SYNTAXES, swap_bytes
from pacs.errors import NotAcceptable

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


def transcode(ds: Dataset, target: str) -> Dataset:
    """Convert ``ds`` (as read from a stored Part-10 file) into ``target``, in place, and return it.

    Afterwards ``ds.file_meta.TransferSyntaxUID`` is ``target`` and the dataset's encoding is
    the target's, so pydicom and pynetdicom write it as such. Raises :class:`CannotTranscode`.
    """
    stored = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    if stored == target:
        return ds
    reason = why_not(stored, target)
    if reason is not None:
        raise CannotTranscode(f"stored as {name(stored)}: {reason}")
    if stored not in NATIVE_SYNTAXES:
        _decompress(ds, stored)
        stored = EXPLICIT_LE
    try:
        _reencode(ds, UID(stored), UID(target))
    except Exception as exc:  # a value pydicom cannot decode in the stored encoding
        raise CannotTranscode(
            f"cannot convert {name(stored)} to {name(target)}: {type(exc).__name__}: {exc}"
        ) from exc
    return ds


def read_as(fh: BinaryIO, target: str) -> Dataset:
    """Parse a stored Part-10 file and convert it into ``target`` (see :func:`transcode`)."""
    fh.seek(0)
    try:
        ds = pydicom.dcmread(fh)
    except Exception as exc:
        raise CannotTranscode(f"unreadable stored instance: {type(exc).__name__}: {exc}") from exc
    return transcode(ds, target)


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


def part10_as(fh: BinaryIO, target: str) -> bytes:
    """A stored Part-10 file's bytes in ``target``: :func:`read_as` then :func:`part10`."""
    return part10(read_as(fh, target))


# ---------------------------------------------------------------- the conversions


def _decompress(ds: Dataset, stored: str) -> None:
    """Encapsulated pixel data -> native, Explicit VR Little Endian (pydicom's decoders)."""
    if "PixelData" not in ds:
        raise CannotTranscode(f"stored as {name(stored)} without pixel data to decompress")
    try:
        ds.decompress(generate_instance_uid=False)
    except Exception as exc:  # no decoder plugin, a corrupt codestream
        raise CannotTranscode(f"cannot decompress {name(stored)}: {type(exc).__name__}: {exc}") from exc
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)


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
    "offers",
    "part10",
    "part10_as",
    "read_as",
    "transcode",
    "why_not",
]
