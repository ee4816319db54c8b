"""Known failure classes of peer archives (issue 7): decompression bombs, pixel sizes that lie,
image-decoder size overflows, and a gzip request body. Each is refused with a reason, fast and
in bounded memory, and the archive stays consistent.
"""

from __future__ import annotations

import functools
import gzip
import io
import resource
import time

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs import limits
from pacs.errors import InvalidInstance
from pacs.model import Level
from pacs.runtime import Runtime
from pacs.services.archive import Archive
from tests.factories import make_dataset, to_bytes
from tests.robustness.bombs import deflate_bomb, deflated, encapsulated_jpeg, lying_pixels
from tests.robustness.conftest import ORIGIN, STOW_TYPE, stow_body

GIB = 1 << 30


@functools.cache
def _bomb() -> bytes:
    """1 GiB of zeros deflated to ~5 MB (built once: compressing takes a few seconds)."""
    return deflate_bomb(make_dataset(), GIB)


def _url(ds: Dataset) -> str:
    return (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def test_deflate_bomb_refused_before_inflating(archive: Archive) -> None:
    """1 GiB of zeros deflated to ~5 MB: refused in well under a second, without the 1 GiB."""
    bomb = _bomb()
    assert len(bomb) < 8 << 20  # 1 GiB in under 8 MB
    rss_before = _rss_mb()
    t0 = time.monotonic()
    with pytest.raises(InvalidInstance, match="decompression bomb"):
        archive.store(io.BytesIO(bomb), ORIGIN)
    assert time.monotonic() - t0 < 5
    assert _rss_mb() - rss_before < 200  # pydicom alone would have held > 1 GiB
    assert archive.count(Level.IMAGE) == 0
    assert archive.verify().ok and not list(archive.blobs.keys())


def test_deflated_dataset_under_the_limit_is_stored_as_received(archive: Archive) -> None:
    ds = make_dataset()
    data = deflated(ds)
    result = archive.store(io.BytesIO(data), ORIGIN)
    assert result.sop_instance_uid == ds.SOPInstanceUID
    assert limits.check_deflated(io.BytesIO(data), _dataset_offset(data)) > len(ds.PixelData)
    assert archive.verify().ok


def test_check_deflated_counts_the_inflated_size() -> None:
    bomb = deflate_bomb(make_dataset(), 8 << 20)
    offset = _dataset_offset(bomb)
    assert limits.check_deflated(io.BytesIO(bomb), offset) >= (8 << 20) - 64
    with pytest.raises(InvalidInstance):
        limits.check_deflated(io.BytesIO(bomb), offset, limit=1 << 20)


def _dataset_offset(data: bytes) -> int:
    from pydicom.filereader import _read_file_meta_info, read_preamble

    fp = io.BytesIO(data)
    read_preamble(fp, force=False)  # type: ignore[arg-type]
    _read_file_meta_info(fp)  # type: ignore[arg-type]
    return fp.tell()


def test_stow_deflate_bomb_and_gzip_body(client, rt: Runtime) -> None:  # type: ignore[no-untyped-def]
    """STOW-RS: a deflate bomb part is refused (0xC000) next to a good part that is stored; a
    gzip-compressed body is not inflated by the server (no Content-Encoding support): 4xx."""
    good = make_dataset()
    body = stow_body(_bomb(), to_bytes(good))
    r = client.post("/dicom-web/studies", content=body, headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 202, r.text
    failed = r.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0xC000]
    assert r.json()["00081199"]["Value"][0]["00081155"]["Value"] == [good.SOPInstanceUID]

    zipped = gzip.compress(stow_body(to_bytes(make_dataset())) + bytes(64 << 20))  # 64 MB of zeros
    r = client.post(
        "/dicom-web/studies",
        content=zipped,
        headers={"Content-Type": STOW_TYPE, "Content-Encoding": "gzip"},
    )
    assert 400 <= r.status_code < 500, r.text
    assert rt.archive.count(Level.IMAGE) == 1
    assert rt.archive.verify().ok


@pytest.mark.parametrize(
    ("rows", "columns", "frames", "status"),
    [
        (4096, 4096, 1, 422),  # pixel data far shorter than Rows*Columns*Bits
        (65535, 65535, 1, 422),  # 8 GiB per frame: above the decoded-frame cap
        (512, 512, 100_000, 422),  # frames x size far beyond the bytes present
        (16, 16, 2_000_000_000, 422),  # NumberOfFrames overflow
    ],
)
def test_lying_pixel_sizes_are_checked_before_decoding(
    sqlite_client, sqlite_rt: Runtime, rows: int, columns: int, frames: int, status: int
) -> None:  # type: ignore[no-untyped-def]
    """Stored as received (the header is fine), but rendering, frames and thumbnails answer 4xx
    at once, without allocating what the header claims."""
    ds = make_dataset(pixels=np.zeros((16, 16), np.int16))
    sqlite_rt.archive.store(io.BytesIO(lying_pixels(ds, rows, columns, frames)), ORIGIN)
    base = _url(ds)
    rss_before = _rss_mb()
    t0 = time.monotonic()
    for url, accept in (
        (base + "/rendered", "image/png"),
        (base + "/thumbnail", "image/jpeg"),
        (base + "/frames/1", 'multipart/related; type="application/octet-stream"'),
    ):
        r = sqlite_client.get(url, headers={"Accept": accept})
        assert r.status_code == status, (url, r.status_code, r.text)
        assert "detail" in r.json()
    assert time.monotonic() - t0 < 5
    assert _rss_mb() - rss_before < 200
    assert sqlite_client.get("/dicom-web/studies").status_code == 200  # still serving


@pytest.mark.parametrize(("header_rows", "header_columns"), [(65535, 65535), (20000, 20000), (4, 4)])
def test_jpeg_header_bigger_than_the_image_is_refused_before_decoding(
    sqlite_client, sqlite_rt: Runtime, header_rows: int, header_columns: int
) -> None:  # type: ignore[no-untyped-def]
    """An 8x8 JPEG Baseline image whose SOF0 claims 65535x65535: without the check, pillow
    allocated 16 GB and took 99 s to fail; now 422 in milliseconds."""
    ds = make_dataset(pixels=np.zeros((8, 8), np.uint16), sop_uid=generate_uid())
    sqlite_rt.archive.store(io.BytesIO(encapsulated_jpeg(ds, 8, 8, header_rows, header_columns)), ORIGIN)
    base = _url(ds)
    t0 = time.monotonic()
    r = sqlite_client.get(base + "/rendered", headers={"Accept": "image/png"})
    assert r.status_code == 422, r.text
    assert "announces" in r.json()["detail"]
    r = sqlite_client.get(
        base + "/frames/1", headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    assert r.status_code in (406, 422), r.text
    assert time.monotonic() - t0 < 5


def test_jpeg_with_matching_header_still_renders(sqlite_client, sqlite_rt: Runtime) -> None:  # type: ignore[no-untyped-def]
    ds = make_dataset(pixels=np.zeros((8, 8), np.uint16))
    sqlite_rt.archive.store(io.BytesIO(encapsulated_jpeg(ds, 8, 8, 8, 8)), ORIGIN)
    base = _url(ds)
    r = sqlite_client.get(base + "/rendered", headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_codestream_size_parsers() -> None:
    from tests.robustness.bombs import jpeg_with_dimensions

    assert limits.codestream_size(jpeg_with_dimensions(300, 200)) == (300, 200)
    j2k = b"\xff\x4f\xff\x51\x00\x29\x00\x00" + (640).to_bytes(4, "big") + (480).to_bytes(4, "big") + bytes(8)
    assert limits.codestream_size(j2k) == (480, 640)
    assert limits.codestream_size(b"RLE-or-garbage") is None
    limits.check_codestream(b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x00\x00\x10", 16, 16)  # rows 0 = DNL


@pytest.mark.timeout(10)
def test_check_deflated_stops_at_the_end_of_the_deflate_stream() -> None:
    """Bytes after the end of the deflate stream (padding, garbage) end the check; they once
    made it loop forever inside the C-STORE thread."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("image_dfl.dcm")  # a real deflated file with bytes after the stream
    assert path is not None
    with open(path, "rb") as fh:
        real = fh.read()
    big = deflated(make_dataset(pixels=np.zeros((512, 512), np.int16))) + b"trailing garbage" * 100
    for data in (real, big):
        assert limits.check_deflated(io.BytesIO(data), _dataset_offset(data)) > 0
