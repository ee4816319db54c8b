"""The one transcoder: a stored instance in another transfer syntax, for every edge that sends one.

WADO-RS (``transfer-syntax=`` in Accept, PS3.18 8.7.3.5) and C-MOVE / C-GET sub-operations (the
contexts a peer accepted, PS3.4 C.4.2.3 / C.4.3.3) ask the same two questions here: which
transfer syntax to send (:func:`choose`) and how to get there (:func:`transcode`).

What converts (PS3.5 A.1-A.5, 8.2):

- anything into itself: sent as stored, never parsed by the caller (the fast path);
- native into native: explicit <-> implicit VR, deflated <-> inflated, big <-> little endian with
  the bytes of OW/OL/OF/OD/OV values and of 16/32/64-bit native pixel data swapped;
- encapsulated (compressed) into native: decoded frame by frame by :mod:`pacs.dicom.pixels` (a
  missing plugin or a corrupt codestream is a :class:`CannotTranscode` with the decoder's reason),
  every frame charged to the request's :class:`~pacs.limits.DecodeBudget` (over a limit is
  :class:`~pacs.errors.TooLarge`, before anything is decoded). :func:`stream_as` writes the
  decoded pixel data out one frame at a time (WADO-RS); :func:`read_as` holds it whole, as
  pynetdicom needs a dataset (C-MOVE / C-GET), within the per-instance limit;
- native or encapsulated into a compressed syntax of :mod:`pacs.dicom.codecs` (JPEG-LS, JPEG 2000,
  HTJ2K, RLE, JPEG lossless; lossy JPEG, JPEG 2000 and JPEG-LS near-lossless): decoded frame by
  frame (charged to the budget as above) and encoded one fragment per frame behind a Basic Offset
  Table (PS3.5 A.4). Lossless targets give back exactly the decoded stored pixels; an image a
  codec cannot carry as it is (12 bits or signed into JPEG Baseline) is refused with the reason,
  never rescaled.

Lossy targets are only chosen when the caller allows them (:func:`choose` ``lossy``): WADO-RS when
the client named that transfer syntax in its Accept, C-MOVE / C-GET for a ``[dicom] destinations``
entry with ``lossy = true``. A lossy copy is a new instance in the standard's eyes (PS3.3
C.7.6.1.1.5: "if an image is a compressed version of another image ... the Image shall receive a
new SOP Instance UID"), so it gets one, derived from the original's UID and the codec (the same
request gives the same UID again), with Lossy Image Compression "01", its ratio and method
appended to any earlier ones, Image Type DERIVED, and the original referenced in Source Image
Sequence (purpose "Uncompressed predecessor") and Derivation Code Sequence "Lossy Compression".
Lossless conversions keep the instance's identity: the same pixels in another encoding.
WADO-RS instances get the new UID too, although some archives keep the original's for a
transient rendition: a Part-10 object is something a client may store or forward, and two
different pixel sets under one SOP Instance UID is what every archive downstream would then
have to untangle (ours would keep both as versions). Frames (bulk data, WADO-RS frames in a
lossy syntax) carry no header and so no UID: they are the rendition the client asked for.
"""

from __future__ import annotations

import hashlib
import io
import struct
import uuid
from collections.abc import Collection, Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import correct_ambiguous_vr, write_dataset
from pydicom.uid import UID

from pacs.dicom import codecs, pixels
from pacs.dicom.codecs import CODECS, Codec, CodecError, Image
from pacs.dicom.pixels import BIG_ENDIAN, DEFLATED, EXPLICIT_LE, IMPLICIT_LE, NATIVE_SYNTAXES, swap_bytes
from pacs.errors import InvalidInstance, NoPixelData, NotAcceptable
from pacs.limits import DecodeBudget

#: Stands for "as stored, whatever that is" in a list of accepted syntaxes (WADO-RS ``*``).
ANY = "*"
#: The native syntaxes we can write, in the order we pick them when the stored one is not accepted.
NATIVE_TARGETS: tuple[str, ...] = (EXPLICIT_LE, IMPLICIT_LE, DEFLATED, BIG_ENDIAN)
#: Every syntax we can write, in the order we pick them when the stored one is not accepted:
#: native (decoding is cheap and exact), then lossless compressed, then lossy (when allowed).
TARGETS: tuple[str, ...] = NATIVE_TARGETS + codecs.LOSSLESS + codecs.LOSSY
#: Namespace of the UUID-derived UIDs (PS3.5 B.2) of lossy copies.
_LOSSY_NAMESPACE = uuid.UUID("5d0c6f3e-2a47-4b8e-9f61-3c1e7a9b0d52")
#: Byte width of the words of each binary VR whose values depend on the byte order (PS3.5 6.2).
_WORD_VRS = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
_PIXEL_DATA = 0x7FE00010


class CannotTranscode(NotAcceptable):
    """A stored instance cannot be converted into a transfer syntax; ``str(exc)`` says why."""


def name(ts: str) -> str:
    """A transfer syntax's name when pydicom knows it, else its UID."""
    uid = UID(ts)
    return uid.name if uid.is_transfer_syntax else ts or "no transfer syntax"


def is_lossy(ts: str) -> bool:
    """Whether writing ``ts`` loses information (a lossy codec of :mod:`pacs.dicom.codecs`)."""
    codec = CODECS.get(ts)
    return codec is not None and codec.lossy


def why_not(stored: str, target: str) -> str | None:
    """Why ``stored`` cannot become ``target`` (judged from the syntaxes alone); None when it can.

    A conversion that is possible here may still fail on the object itself (an image the codec
    cannot carry, no decoder for its codestream, no pixel data): :func:`why_not_image` and
    :func:`transcode` say so.
    """
    if target == stored or target in NATIVE_SYNTAXES or target in CODECS:
        return None
    return f"{name(target)} is not a transfer syntax this archive can encode"


#: The :class:`Image` of an instance without pixel data (:func:`image_of`).
NO_PIXELS = Image(0, 0, 0, 0, 0, False, "")


def why_not_image(image: Image, target: str) -> str | None:
    """Why an image described by ``image`` (:data:`NO_PIXELS`: none) cannot be encoded into
    ``target``; None when it can (or ``target`` is native)."""
    codec = CODECS.get(target)
    if codec is None:
        return None
    if image == NO_PIXELS:
        return f"no pixel data to encode as {codec.name}"
    if image.bits_allocated == 1:
        return f"{codec.name} does not carry 1-bit pixel data"
    return codec.why_not(image)


def wants_image(stored: str, accepted: Iterable[str]) -> bool:
    """Whether :func:`choose` needs the image's description to choose among ``accepted``: the
    stored syntax is not accepted and a compressed target is."""
    acc = set(accepted)
    return not (ANY in acc or stored in acc) and any(ts in CODECS for ts in acc)


def choose(
    stored: str,
    accepted: Iterable[str],
    *,
    lossy: Collection[str] = (),
    image: Image | None = None,
) -> str | None:
    """The transfer syntax to send an instance stored as ``stored`` to a peer accepting ``accepted``.

    As stored when accepted (or :data:`ANY` is), else the first of :data:`TARGETS` the peer
    accepts and we can write, else None (nothing the peer takes can carry it). Lossy targets
    are considered only when in ``lossy`` (what the request allows). ``image`` describes the
    stored pixels (:func:`image_of`), so that a compressed target that cannot carry them is
    passed over; left out, compressed targets are judged from the syntaxes alone.
    """
    acc = set(accepted)
    if ANY in acc or stored in acc:
        return stored
    for target in TARGETS:
        if target not in acc or why_not(stored, target) is not None:
            continue
        if is_lossy(target) and target not in lossy:
            continue
        if image is not None and why_not_image(image, target):
            continue
        return target
    return None


def refusal(
    stored: str, accepted: Iterable[str], *, lossy: Collection[str] = (), image: Image | None = None
) -> str:
    """Why :func:`choose` found nothing among ``accepted`` for an instance stored as ``stored``."""
    reasons = []
    for target in sorted(set(accepted) - {ANY}):
        why = why_not(stored, target)
        if why is None and is_lossy(target) and target not in lossy:
            why = f"{name(target)} is lossy and this peer is not allowed lossy compression"
        if why is None and image is not None:
            why = why_not_image(image, target)
        if why is not None:
            reasons.append(why)
    listed = ", ".join(name(t) for t in sorted(set(accepted) - {ANY})) or "nothing"
    because = f": {'; '.join(reasons)}" if reasons else ""
    return f"stored as {name(stored)}, which cannot be sent as {listed}{because}"


def image_of(fh: BinaryIO) -> Image:
    """The description of a stored file's pixel data for :func:`choose` (:data:`NO_PIXELS`: none)."""
    try:
        info = pixels.locate(fh)
    except NoPixelData:
        return NO_PIXELS
    except InvalidInstance as exc:
        raise CannotTranscode(f"cannot read the pixel data: {exc}") from exc
    return describe(info)


def describe(info: pixels.PixelInfo) -> Image:
    """The :class:`Image` of pixel data :func:`pacs.dicom.pixels.locate` found."""
    image = Image.of(info.header)
    return Image(
        info.rows,
        info.columns,
        info.samples_per_pixel,
        info.bits_allocated,
        image.bits_stored,
        image.signed,
        image.photometric,
    )


def select(stored: str, accepted: Iterable[str], fh: BinaryIO, *, lossy: Collection[str] = ()) -> str:
    """:func:`choose` for a stored file, reading its image description only when a compressed
    target is in play; :class:`CannotTranscode` with the reason when nothing fits."""
    acc = list(accepted)
    image = image_of(fh) if wants_image(stored, acc) else None
    target = choose(stored, acc, lossy=lossy, image=image)
    if target is None:
        raise CannotTranscode(refusal(stored, acc, lossy=lossy, image=image))
    return target


def choose_frames(
    stored: str, accepted: Iterable[str], *, lossy: Collection[str] = (), image: Image = NO_PIXELS
) -> str | None:
    """The transfer syntax of frames retrieved from pixel data stored as ``stored`` (PS3.18 8.7.3.5.3).

    Native frames go out as Explicit VR Little Endian bytes (when that, the stored syntax or
    :data:`ANY` is accepted); compressed frames as stored when accepted, else decoded to native;
    else encoded into an accepted compressed syntax that can carry ``image`` (lossy ones only
    when in ``lossy``).
    """
    acc = set(accepted)
    if stored in NATIVE_SYNTAXES:
        if acc & {ANY, EXPLICIT_LE, stored}:
            return EXPLICIT_LE
    elif acc & {ANY, stored}:
        return stored
    elif EXPLICIT_LE in acc:
        return EXPLICIT_LE
    for target in codecs.LOSSLESS + codecs.LOSSY:
        if target in acc and (not is_lossy(target) or target in lossy) and not why_not_image(image, target):
            return target
    return None


def offers(stored: str, *, lossy: bool = False, compressed: bool = True) -> list[tuple[str, ...]]:
    """Transfer syntaxes to propose to a peer for an instance stored as ``stored`` (one tuple per
    presentation context): the compressed stored syntax alone, uncompressed little endian, then
    (``compressed``) each lossless syntax we can encode alone, and the lossy ones when ``lossy``
    (PS3.5 10.1-10.2: JPEG Baseline and JPEG Lossless SV1 are among them)."""
    out: list[tuple[str, ...]] = [] if stored in NATIVE_SYNTAXES else [(stored,)]
    out.append((EXPLICIT_LE, IMPLICIT_LE))
    if compressed:
        extra = codecs.LOSSLESS + (codecs.LOSSY if lossy else ())
        out.extend((ts,) for ts in extra if ts != stored)
    return out


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
    if target in CODECS:
        _compress(ds, stored, CODECS[target], budget)
        return ds
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
    """Whether sending ``stored`` as ``target`` decodes its pixel data (to native, or to encode it)."""
    if target == stored:
        return False
    return target in CODECS or (stored not in NATIVE_SYNTAXES and target in NATIVE_SYNTAXES)


def reserve(fh: BinaryIO, target: str, budget: DecodeBudget) -> None:
    """Book in ``budget`` the decoding a conversion of the stored file ``fh`` into ``target`` will
    do, before any (:class:`~pacs.errors.TooLarge` over a limit, :class:`InvalidInstance` for
    pixel data whose geometry is wrong, :class:`CannotTranscode` for an image the target's codec
    cannot carry): an answer can still be an error when it is raised."""
    try:
        info = pixels.locate(fh)
    except NoPixelData:
        if target in CODECS:
            raise CannotTranscode(f"no pixel data to encode as {name(target)}") from None
        return  # nothing to decode: the conversion says what it can do
    if target in CODECS and target != info.transfer_syntax_uid:
        why = why_not_image(describe(info), target)
        if why is not None:
            raise CannotTranscode(f"stored as {name(info.transfer_syntax_uid)}: {why}")
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


def encode_frame(
    fh: BinaryIO, info: pixels.PixelInfo, number: int, target: str, budget: DecodeBudget | None = None
) -> bytes:
    """Frame ``number`` (1-based) of a stored file decoded (charged to ``budget``) and encoded as
    ``target``'s codestream (WADO-RS frames in a syntax they are not stored in)."""
    codec = CODECS[target]
    try:
        arr, meta = pixels.decoded_frame(fh, info, number, budget)
    except (InvalidInstance, NoPixelData) as exc:
        raise CannotTranscode(f"cannot decode frame {number}: {exc}") from exc
    image = _decoded_image(describe(info), meta)
    why = why_not_image(image, target)
    if why is not None:
        raise CannotTranscode(why)
    try:
        return codec.encode(arr, image)
    except CodecError as exc:
        raise CannotTranscode(str(exc)) from exc


def _decoded_image(image: Image, meta: dict[str, Any]) -> Image:
    """``image`` as the decoder said its frames came out (colour converted to RGB, ...)."""
    photometric = str(meta.get("photometric_interpretation") or image.photometric).strip().upper()
    if photometric == image.photometric:
        return image
    return Image(
        image.rows,
        image.columns,
        image.samples_per_pixel,
        image.bits_allocated,
        image.bits_stored,
        image.signed,
        photometric,
    )


def _compress(ds: Dataset, stored: str, codec: Codec, budget: DecodeBudget | None) -> None:
    """Pixel data (native or encapsulated) -> ``codec``'s syntax: every frame decoded by
    :mod:`pacs.dicom.pixels` (charged to ``budget``) and encoded, one fragment per frame behind
    a Basic Offset Table (PS3.5 A.4); the rest of the dataset re-encoded as Explicit VR Little
    Endian, which every encapsulated syntax is."""
    if "PixelData" not in ds:
        raise CannotTranscode(f"stored as {name(stored)} without pixel data to encode as {codec.name}")
    try:
        info = pixels.info_of(ds)
    except (InvalidInstance, NoPixelData) as exc:
        raise CannotTranscode(f"cannot encode as {codec.name}: {exc}") from exc
    image = describe(info)
    why = why_not_image(image, codec.uid)
    if why is not None:
        raise CannotTranscode(f"stored as {name(stored)}: {why}")
    fragments: list[bytes] = []
    try:
        for arr, meta in pixels.decoded_frames(None, info, budget):
            if not fragments:  # what the decoder made of the colour decides what is encoded
                image = _decoded_image(image, meta)
                why = why_not_image(image, codec.uid)
                if why is not None:
                    raise CannotTranscode(f"stored as {name(stored)}: {why}")
            fragments.append(codec.encode(arr, image))
    except (InvalidInstance, NoPixelData) as exc:  # no decoder plugin, a corrupt codestream
        raise CannotTranscode(f"cannot decode {name(stored)} to encode it as {codec.name}: {exc}") from exc
    except CodecError as exc:
        raise CannotTranscode(str(exc)) from exc
    encoded = sum(len(f) + len(f) % 2 + 8 for f in fragments) + 8 + 4 * len(fragments)
    if encoded >= 0xFFFFFFFF:  # a Basic Offset Table counts in 32 bits
        raise CannotTranscode(f"the {codec.name} pixel data would be longer than 4 GiB")
    del ds["PixelData"]
    if stored in NATIVE_SYNTAXES:
        _reencode(ds, UID(stored), UID(EXPLICIT_LE))
    ds.PixelData = encapsulate(fragments, has_bot=True)
    elem = ds["PixelData"]
    elem.VR = "OB"  # PS3.5 A.4: encapsulated pixel data is OB, of undefined length
    elem.is_undefined_length = True
    ds.PhotometricInterpretation = codec.photometric(image)
    if image.samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    if "NumberOfFrames" in ds or len(fragments) > 1:
        ds.NumberOfFrames = len(fragments)
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):  # of the stored encapsulation
        if keyword in ds:
            delattr(ds, keyword)
    ds.set_original_encoding(False, True, ds.original_character_set)
    ds.file_meta.TransferSyntaxUID = UID(codec.uid)
    if codec.lossy:
        ratio = image.frame_bytes * len(fragments) / max(1, sum(len(f) for f in fragments))
        _mark_lossy(ds, codec, ratio)


#: Purpose of Reference of the original in a lossy copy's Source Image Sequence (CID 7202).
_UNCOMPRESSED_PREDECESSOR = ("121320", "DCM", "Uncompressed predecessor")
#: Derivation of a lossy copy (CID 7203).
_LOSSY_COMPRESSION = ("113040", "DCM", "Lossy Compression")


def lossy_uid(original: str, codec: Codec) -> str:
    """The SOP Instance UID of the lossy copy of ``original`` made by ``codec`` (UUID-derived,
    PS3.5 B.2): the same for every request, different from the original and between codecs."""
    settings = f"{codec.uid}|{codecs.JPEG_QUALITY}|{codecs.JLS_NEAR}|{codecs.J2K_PSNR_8BIT}"
    digest = hashlib.sha256(f"{original}|{settings}".encode()).hexdigest()
    return f"2.25.{uuid.uuid5(_LOSSY_NAMESPACE, digest).int}"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _mark_lossy(ds: Dataset, codec: Codec, ratio: float) -> None:
    """What PS3.3 C.7.6.1.1.5 asks of an image compressed with a lossy algorithm."""
    earlier = str(ds.get("LossyImageCompression", "") or "") == "01"
    ratios = [str(v) for v in _values(ds.get("LossyImageCompressionRatio"))] if earlier else []
    methods = [str(v) for v in _values(ds.get("LossyImageCompressionMethod"))] if earlier else []
    if earlier and len(methods) < len(ratios):  # an earlier step without its method: keep the order
        methods += ["UNKNOWN"] * (len(ratios) - len(methods))
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"[:16]]
    ds.LossyImageCompressionMethod = [*methods, codec.method]
    image_type = [str(v) for v in _values(ds.get("ImageType"))]
    ds.ImageType = ["DERIVED", *(image_type[1:] or ["PRIMARY"])]
    original_class = str(ds.get("SOPClassUID", "") or "")
    original = str(ds.get("SOPInstanceUID", "") or "")
    if original:
        source = Dataset()
        source.ReferencedSOPClassUID = original_class
        source.ReferencedSOPInstanceUID = original
        source.PurposeOfReferenceCodeSequence = [_code(*_UNCOMPRESSED_PREDECESSOR)]
        ds.SourceImageSequence = [*ds.get("SourceImageSequence", []), source]
        new = lossy_uid(original, codec)
        ds.SOPInstanceUID = new
        ds.file_meta.MediaStorageSOPInstanceUID = UID(new)
    ds.DerivationCodeSequence = [*ds.get("DerivationCodeSequence", []), _code(*_LOSSY_COMPRESSION)]
    text = f"Lossy compression by pacs: {codec.name} ({codec.method}), ratio {ratio:.2f}:1"
    before = str(ds.get("DerivationDescription", "") or "")
    ds.DerivationDescription = f"{before}; {text}"[-1024:] if before else text


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


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
    "NATIVE_TARGETS",
    "NO_PIXELS",
    "TARGETS",
    "CannotTranscode",
    "choose",
    "choose_frames",
    "describe",
    "encode_frame",
    "image_of",
    "is_lossy",
    "lossy_uid",
    "needs_decoding",
    "offers",
    "part10",
    "part10_as",
    "read_as",
    "refusal",
    "reserve",
    "select",
    "stream_as",
    "transcode",
    "wants_image",
    "why_not",
    "why_not_image",
]
