"""The file meta information (PS3.10 7.1) this archive writes in front of every stored data set.

:func:`encode_file_meta` packs the handful of elements directly (Explicit VR Little Endian, as
the standard requires for group 0002): it runs once per received instance, and building a
pydicom :class:`FileMetaDataset` and writing it cost as much as a tenth of a C-STORE.
:func:`build_file_meta` is the same content as a pydicom dataset; the tests hold the two equal.
"""

from __future__ import annotations

import struct

IMPLEMENTATION_CLASS_UID = "2.25.121038856505597671843989960980704295441"  # UUID-derived (PS3.5 B.2)
IMPLEMENTATION_VERSION_NAME = "PACS_010"
PREAMBLE = b"\x00" * 128 + b"DICM"


def _short(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", errors="replace")
    return raw + b" " if len(raw) % 2 else raw


def source_ae_title(ae: str) -> str:
    """An AE title as it may appear in the file meta: at most 16 characters, no padding."""
    return ae.strip()[:16]


def encode_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """Preamble, ``DICM`` and the file meta group naming the sender's AE title (if any)."""
    body = (
        struct.pack("<HH2s2xI", 0x0002, 0x0001, b"OB", 2)
        + b"\x00\x01"
        + _short(0x0002, 0x0002, b"UI", _uid(sop_class_uid))
        + _short(0x0002, 0x0003, b"UI", _uid(sop_instance_uid))
        + _short(0x0002, 0x0010, b"UI", _uid(transfer_syntax))
        + _short(0x0002, 0x0012, b"UI", _uid(IMPLEMENTATION_CLASS_UID))
        + _short(0x0002, 0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME))
    )
    ae = source_ae_title(source_ae)
    if ae:
        body += _short(0x0002, 0x0016, b"AE", _text(ae))
    return PREAMBLE + _short(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body
