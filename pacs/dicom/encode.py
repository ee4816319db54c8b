"""A small encoder for flat answer data sets (C-FIND / worklist responses) built from values the
archive already validated: bytes straight from (tag, VR, value) triples, in tag order, Little
Endian with Implicit or Explicit VR (PS3.5 7.1), sequences of undefined length.

pydicom's general writer spent about half of a worklist response's server time on each
identifier of 25 elements; these answers are always the same simple shape.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

#: Explicit VR with a 4-byte length (PS3.5 Table 7.1-1).
_LONG = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)

Element = tuple[int, str, Any]  # (tag, VR, value): str, list of str, int, None, or list of items


def encode_elements(elements: Sequence[Element], *, implicit: bool, charset: str = "utf-8") -> bytes:
    """The Little Endian encoding of ``elements`` (sorted here by tag); an item of a sequence is
    itself a list of elements. ``None`` or ``""`` gives a zero-length value."""
    out = bytearray()
    for tag, vr, value in sorted(elements, key=lambda e: e[0]):
        group, elem = tag >> 16, tag & 0xFFFF
        if vr == "SQ":
            out += (
                struct.pack("<HHI", group, elem, 0xFFFFFFFF)
                if implicit
                else struct.pack("<HH2sHI", group, elem, b"SQ", 0, 0xFFFFFFFF)
            )
            for item in value or ():
                out += _ITEM
                out += encode_elements(item, implicit=implicit, charset=charset)
                out += _ITEM_END
            out += _SEQ_END
            continue
        raw = _value(vr, value, charset)
        if implicit:
            out += struct.pack("<HHI", group, elem, len(raw))
        elif vr in _LONG:
            out += struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(raw))
        else:
            out += struct.pack("<HH2sH", group, elem, vr.encode(), len(raw))
        out += raw
    return bytes(out)


def _value(vr: str, value: Any, charset: str) -> bytes:
    if value is None or value == "":
        return b""
    text = "\\".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
    raw = text.encode(charset if vr in _TEXT_CHARSET else "ascii", "replace")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


#: VRs whose value is in the data set's Specific Character Set (PS3.5 6.1.2.3); the rest are ASCII.
_TEXT_CHARSET = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
