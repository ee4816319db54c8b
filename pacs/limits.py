"""Hard limits on hostile input that no configuration should lift.

The configurable limits (associations, PDU size, upload size, query caps, login rate) live in
:mod:`pacs.config`; these are the guards against known failure classes of peer archives:
decompression bombs in Deflated Explicit VR Little Endian datasets (PS3.5 A.5).
"""

from __future__ import annotations

import zlib
from typing import BinaryIO

from pacs.errors import InvalidInstance

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
