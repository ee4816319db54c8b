"""read_header's structural checks (without converting every value)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacs.dicom.extract import read_header
from pacs.errors import InvalidInstance
from tests.factories import make_dataset, write


def _part10(tmp_path: Path, extra: bytes = b"", syntax: str = ExplicitVRLittleEndian) -> bytes:
    """A small header without pixel data, then ``extra`` (elements after the last one)."""
    ds = make_dataset()
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = syntax
    path = write(ds, tmp_path / "x.dcm")
    return path.read_bytes() + extra


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH", group, element) + vr + b"\0\0" + struct.pack("<L", len(value)) + value
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def test_a_sound_header_reads(tmp_path: Path) -> None:
    ds = read_header(io.BytesIO(_part10(tmp_path, _explicit(0x0028, 0x0010, b"US", struct.pack("<H", 64)))))
    assert ds.Rows == 64


@pytest.mark.parametrize(
    ("element", "reason"),
    [
        (_explicit(0x0028, 0x0010, b"US", b"\x01\x02\x03"), "not a multiple of 2"),  # Rows, 3 bytes
        (_explicit(0x0018, 0x9004, b"FD", b"\0" * 6), "not a multiple of 8"),
        (_explicit(0x0020, 0x9165, b"AT", b"\0" * 6), "not a multiple of 4"),
    ],
)
def test_binary_value_of_the_wrong_length_is_refused(tmp_path: Path, element: bytes, reason: str) -> None:
    with pytest.raises(InvalidInstance, match=reason):
        read_header(io.BytesIO(_part10(tmp_path, element)))


def test_large_value_past_the_end_is_refused(tmp_path: Path) -> None:
    # A 64 KiB private OB value (deferred by the reader) of which only 100 bytes arrived.
    head = struct.pack("<HH", 0x0029, 0x1010) + b"OB\0\0" + struct.pack("<L", 65536)
    data = _part10(tmp_path, _explicit(0x0029, 0x0010, b"LO", b"ACME") + head + b"\0" * 100)
    with pytest.raises(InvalidInstance, match="truncated"):
        read_header(io.BytesIO(data))


def test_implicit_vr_uses_the_dictionary_vr(tmp_path: Path) -> None:
    rows = struct.pack("<HHL", 0x0028, 0x0010, 3) + b"\x01\x02\x03"  # Rows is US: 3 bytes cannot be
    with pytest.raises(InvalidInstance, match="not a multiple of 2"):
        read_header(io.BytesIO(_part10(tmp_path, rows, ImplicitVRLittleEndian)))
    private = struct.pack("<HHL", 0x0029, 0x1010, 3) + b"abc"  # unknown VR (UN): any length
    assert read_header(io.BytesIO(_part10(tmp_path, private, ImplicitVRLittleEndian)))
