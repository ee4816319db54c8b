"""A corpus of hostile Part-10 inputs (issue 7): oversized elements, deep sequences, bad lengths,
path tricks in UIDs, invalid UTF-8 in names. Each item is raw bytes, built without pydicom's
writer where pydicom would refuse to write it."""

from __future__ import annotations

import struct

import numpy as np
from pydicom.uid import generate_uid

from tests.factories import make_dataset
from tests.robustness.bombs import _body, _meta_bytes

EXPLICIT_LE = "1.2.840.10008.1.2.1"
_LONG = {"OB", "OW", "SQ", "UN", "UT", "UC", "UR"}


def elem(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element; ``length`` overrides the true length."""
    n = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in _LONG:
        return head + b"\x00\x00" + struct.pack("<I", n) + value
    return head + struct.pack("<H", n & 0xFFFF) + value


def _file(ds, extra: bytes = b"", drop: tuple[str, ...] = ()) -> bytes:  # type: ignore[no-untyped-def]
    ds = ds.copy()
    for kw in drop:
        delattr(ds, kw)
    return _meta_bytes(ds, EXPLICIT_LE) + _body(ds) + extra


def _pixels(ds) -> bytes:  # type: ignore[no-untyped-def]
    return elem(0x7FE00010, "OW", bytes(ds.PixelData))


def deep_sequence(depth: int) -> bytes:
    """ContentSequence items nested ``depth`` deep (undefined lengths, PS3.5 7.5)."""
    open_ = (elem(0x0040A730, "SQ", b"", 0xFFFFFFFF) + b"\xfe\xff\x00\xe0\xff\xff\xff\xff") * depth
    close = (b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") * depth
    return open_ + close


def corpus() -> list[tuple[str, bytes, str]]:
    """(name, Part-10 bytes, SOP Instance UID it claims)."""
    out: list[tuple[str, bytes, str]] = []

    def add(name: str, ds, extra: bytes = b"", with_pixels: bool = True) -> None:  # type: ignore[no-untyped-def]
        out.append((name, _file(ds, extra + (_pixels(ds) if with_pixels else b"")), str(ds.SOPInstanceUID)))

    small = dict(pixels=np.zeros((8, 8), np.int16))
    # Oversized elements.
    add("oversized PatientName (4 MB LO)", make_dataset(**small, PatientName="A" * (4 << 20)))
    add(
        "oversized StudyDescription (1 MB, 10k values)",
        make_dataset(**small, StudyDescription="\\".join(["x" * 100] * 10_000)),
    )
    ds = make_dataset(**small)
    add("8 MB private OB element", ds, elem(0x00091010, "OB", bytes(8 << 20)), with_pixels=False)
    # Deep sequences.
    for depth in (50, 500, 5000):
        ds = make_dataset(**small)
        add(f"ContentSequence nested {depth} deep", ds, deep_sequence(depth), with_pixels=False)
    # Bad lengths.
    ds = make_dataset(**small)
    add(
        "element length beyond the end",
        make_dataset(**small),
        elem(0x00091011, "OB", b"abc", 0x7FFFFFF0),
        with_pixels=False,
    )
    add(
        "undefined length on a LO",
        make_dataset(**small),
        elem(0x00091012, "UT", b"abc", 0xFFFFFFFF),
        with_pixels=False,
    )
    add("odd length OB", make_dataset(**small), elem(0x00091013, "OB", b"abc"), with_pixels=False)
    add(
        "PixelData length 0xFFFFFFF0",
        make_dataset(**small),
        elem(0x7FE00010, "OW", bytes(16), 0xFFFFFFF0),
        with_pixels=False,
    )
    add(
        "sequence item length beyond the end",
        make_dataset(**small),
        elem(0x0040A730, "SQ", b"\xfe\xff\x00\xe0\xf0\xff\xff\x7f" + bytes(8), 16),
        with_pixels=False,
    )
    data = _file(make_dataset(**small))
    out.append(("truncated in the middle of the header", data[: len(data) // 3], ""))
    out.append(
        (
            "truncated in the middle of the pixel data",
            _file(
                make_dataset(pixels=np.zeros((64, 64), np.int16)),
                _pixels(make_dataset(pixels=np.zeros((64, 64), np.int16))),
            )[:-100],
            "",
        )
    )
    out.append(("file meta only", _meta_bytes(make_dataset(**small), EXPLICIT_LE), ""))
    out.append(("empty", b"", ""))
    out.append(("DICM then garbage", b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4, ""))
    # Path tricks in UIDs (each of the four identifying UIDs).
    tricks = [
        "../../../../etc/passwd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "1.2.3\x00/../../x",
        "1." + "9" * 200,
        "1.2.840/../../blobs",
        "..",
        "1.2.3;DROP TABLE instance",
        "C:\\Windows\\system32",
    ]
    for kw in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        for t in tricks:
            ds = make_dataset(**small)
            setattr(ds, kw, t)
            if kw == "SOPInstanceUID":
                ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            add(f"{kw} = {t[:30]!r}", ds)
    # Invalid UTF-8 and character-set tricks in names.
    for name, charset, raw in (
        ("invalid UTF-8 in PatientName", "ISO_IR 192", b"Nguy\xc3\x28n^\xff\xfe"),
        ("overlong UTF-8 '/' in PatientName", "ISO_IR 192", b"\xc0\xaf\xc0\xae\xc0\xae^x"),
        ("unknown character set", "ISO_IR 999", b"Tr\xe1\xba\xa7n"),
        ("ISO 2022 escape garbage", "ISO 2022 IR 87", b"\x1b$B\x1b(J\x1b\x1b\x1b"),
        ("NUL inside PatientName", "ISO_IR 192", b"ab\x00cd"),
        ("SQL in PatientName", "ISO_IR 192", b"'; DROP TABLE patient; --"),
    ):
        ds = make_dataset(**small, charset=charset)
        del ds.PatientName
        out.append(
            (
                name,
                _file(ds, _pixels(ds)).replace(
                    b"\x10\x00\x20\x00LO",
                    elem(0x00100010, "PN", raw + (b" " if len(raw) % 2 else b"")) + b"\x10\x00\x20\x00LO",
                    1,
                ),
                str(ds.SOPInstanceUID),
            )
        )
    return out
