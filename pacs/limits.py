"""Guards against hostile input: hard limits no configuration should lift, and the decoded-pixel budget.

The configurable limits (associations, PDU size, upload size, query caps, login rate) live in
:mod:`pacs.config`; these are the guards against known failure classes of peer archives:
decompression bombs in Deflated Explicit VR Little Endian datasets (PS3.5 A.5), compressed frames
whose codestream claims another size than the image, and (:class:`DecodeBudget`, its limits
configurable) compressed pixel data that decodes to far more than it is: a 9 KB JPEG 2000 object
of 40 frames of 4096 x 4096 decodes to 1.25 GiB.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from pacs.errors import InvalidInstance, TooLarge

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian (PS3.5 A.5)

#: Largest inflated size of a deflated dataset. pydicom inflates the whole dataset in memory
#: (even to read only the header), so a few MB of zeros could otherwise cost gigabytes.
MAX_INFLATED_BYTES = 256 * 1024 * 1024

_CHUNK = 1 << 16


def check_deflated(stream: BinaryIO, offset: int, limit: int = MAX_INFLATED_BYTES) -> int:
    """Refuse a deflated dataset (from ``offset`` to the end) that inflates beyond ``limit`` bytes.

    Inflates in bounded steps and throws the output away, so the check itself costs at most
    ``_CHUNK`` bytes of output at a time. Returns the inflated size; leaves the stream at ``offset``.
    Data that is not valid deflate is left for the parser to refuse.
    """
    stream.seek(offset)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while chunk := stream.read(_CHUNK):
            data = chunk
            while data and not inflater.eof:  # bytes after the end of the stream: stop
                out = inflater.decompress(data, _CHUNK)
                total += len(out)
                if total > limit:
                    raise InvalidInstance(
                        f"deflated dataset inflates beyond the {limit >> 20} MiB limit "
                        "(decompression bomb refused)"
                    )
                data = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error:
        pass  # not deflate: the parser gives the reason
    finally:
        stream.seek(offset)
    return total


def codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) announced by a JPEG, JPEG-LS or JPEG 2000 frame header, or None if unknown.

    JPEG and JPEG-LS: the first SOFn / SOF55 marker segment (ITU-T T.81 B.2.2, T.87 C.2.2);
    JPEG 2000: the SIZ marker segment (ITU-T T.800 A.5.1), the image area minus its offsets.
    """
    if frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24:  # J2K codestream: SOC then SIZ
        xsiz, ysiz, xo, yo = (int.from_bytes(frame[i : i + 4], "big") for i in (8, 12, 16, 20))
        return max(0, ysiz - yo), max(0, xsiz - xo)
    if frame[:2] != b"\xff\xd8":
        j2k = frame.find(b"\xff\x4f\xff\x51")  # JP2 file format wrapping a codestream
        if 0 <= j2k < 4096:
            return codestream_size(frame[j2k:])
        return None
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(frame[pos + 2 : pos + 4], "big")
        is_sof = (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7
        if is_sof and pos + 9 <= len(frame):
            rows = int.from_bytes(frame[pos + 5 : pos + 7], "big")
            columns = int.from_bytes(frame[pos + 7 : pos + 9], "big")
            return rows, columns
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def check_codestream(frame: bytes, rows: int, columns: int) -> None:
    """Refuse a compressed frame whose own header announces another size than Rows x Columns.

    Decoders allocate what the codestream header says: a JPEG claiming 65535 x 65535 inside an
    8 x 8 image costs gigabytes and minutes before failing. A JPEG header with 0 rows (allowed by
    T.81, the count then comes from a DNL marker) is accepted as unknown.
    """
    size = codestream_size(frame)
    if size is None or size[0] == 0:
        return
    if size != (rows, columns):
        raise InvalidInstance(
            f"the compressed frame announces {size[0]}x{size[1]} pixels but the image is {rows}x{columns}"
        )


# ---------------------------------------------------------------- decoded pixel data

MIB = 1 << 20
#: Defaults of ``[http] max_decoded_mb_per_instance`` / ``max_decoded_mb_per_request`` (pacs.config
#: repeats them: it imports nothing of ours; a test checks that both agree).
DECODED_PER_INSTANCE = 1024 * MIB
DECODED_PER_REQUEST = 4096 * MIB


@dataclass(frozen=True)
class DecodeLimits:
    """How many bytes of decoded pixel data one request may produce, per instance and in all.

    Per instance: what a whole-instance conversion holds in memory at once (pydicom datasets and
    pynetdicom hold the native pixel data whole), so it bounds memory. Per request: the sum over
    the instances (a series of bombs each under the first limit), so it bounds work.
    """

    per_instance: int = DECODED_PER_INSTANCE
    per_request: int = DECODED_PER_REQUEST

    @classmethod
    def from_mb(cls, per_instance_mb: int, per_request_mb: int) -> DecodeLimits:
        """Limits given in MiB, as in the configuration."""
        return cls(per_instance_mb * MIB, per_request_mb * MIB)

    def budget(self) -> DecodeBudget:
        """A fresh budget for one request."""
        return DecodeBudget(self)


class DecodeBudget:
    """The decoded bytes one request has spent, per instance and in all, against :class:`DecodeLimits`.

    :func:`pacs.dicom.pixels.reserve` books what a request is about to decode before anything is
    decoded (so an answer can still be an error), and every decoded frame is charged as it is
    made (:func:`pacs.dicom.pixels.decode_frame`); a frame already booked is not counted twice.
    Over a limit is :class:`~pacs.errors.TooLarge`, raised before the decoder allocates.
    """

    def __init__(self, limits: DecodeLimits | None = None) -> None:
        self.limits = limits or DecodeLimits()
        self.total = 0  # bytes booked in all
        self._booked: dict[str, int] = {}  # per instance: bytes booked
        self._spent: dict[str, int] = {}  # per instance: bytes decoded
        self._lock = threading.Lock()

    def reserve(self, instance: str, nbytes: int) -> None:
        """Book ``nbytes`` more decoded bytes of ``instance``, beyond what is booked and unspent."""
        with self._lock:
            self._book(instance, self._spent.get(instance, 0) + nbytes)

    def spend(self, instance: str, nbytes: int) -> None:
        """Charge ``nbytes`` decoded from ``instance`` (booking them first when they were not)."""
        with self._lock:
            spent = self._spent.get(instance, 0) + nbytes
            self._book(instance, spent)
            self._spent[instance] = spent

    def _book(self, instance: str, needed: int) -> None:
        booked = self._booked.get(instance, 0)
        extra = needed - booked
        if extra <= 0:
            return
        if needed > self.limits.per_instance:
            raise TooLarge(
                f"instance {instance} would decode to {_mib(needed)} of pixel data, over the limit of "
                f"{_mib(self.limits.per_instance)} per instance; retrieve it as stored (compressed) "
                "or fewer frames at a time"
            )
        if self.total + extra > self.limits.per_request:
            raise TooLarge(
                f"this request would decode {_mib(self.total + extra)} of pixel data, over the limit of "
                f"{_mib(self.limits.per_request)} per request; retrieve as stored (compressed) or ask "
                "for fewer instances at a time"
            )
        self._booked[instance] = needed
        self.total += extra


def _mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.0f} MiB" if nbytes >= MIB else f"{nbytes} bytes"
