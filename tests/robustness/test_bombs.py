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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
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


# ---------------------------------------------------------------- decoded-size bombs (issue 14)
#
# A 9 KB JPEG 2000 object of 40 frames of 4096 x 4096 decodes to 1.25 GiB: once made one WADO-RS
# GET peak at 5.9 GB. Every decoding goes through pacs.dicom.pixels, which charges each frame to
# the request's DecodeBudget (pacs.limits) before the decoder allocates it.

MIB = 1 << 20
EXPLICIT = "1.2.840.10008.1.2.1"
OCTET = 'multipart/related; type="application/octet-stream"'  # frames decoded to Explicit VR LE
OCTET_AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
DICOM_EXPLICIT = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}'


def _j2k_instance(
    frames: list[np.ndarray], *, sop_class_uid: str | None = None, **uids: str
) -> tuple[Dataset, bytes]:
    """A JPEG 2000 Lossless instance of unsigned 16-bit ``frames`` (its header, its Part-10 bytes)."""
    from tests.robustness.bombs import MULTIFRAME_WORD_SC, j2k_frame, j2k_multiframe

    ds = make_dataset(pixels=np.zeros((8, 8), np.uint16), sop_uid=generate_uid(), **uids)
    rows, columns = frames[0].shape
    codestreams = [j2k_frame(f) for f in frames]
    return ds, j2k_multiframe(
        ds, codestreams, rows, columns, sop_class_uid=sop_class_uid or MULTIFRAME_WORD_SC
    )


def _parts(r: Any) -> list[bytes]:
    from tests.web.conftest import split_multipart

    return [body for _, body in split_multipart(r.headers["content-type"], r.content)]


def _server_memory_kib(pid: int, *, reset: bool = False) -> dict[int, tuple[int, int]]:
    """VmHWM (peak RSS) and VmRSS, KiB, of ``pid`` and each of its child processes; ``reset``
    first brings each peak down to the current RSS (``/proc/PID/clear_refs``, Linux >= 4.0), so
    that a later peak measures what happened since, not the start-up."""
    from tests.serve import children_of

    out = {}
    for p in (pid, *children_of(pid)):
        if reset:
            try:
                with open(f"/proc/{p}/clear_refs", "w", encoding="ascii") as fh:
                    fh.write("5")
            except OSError:
                pass  # not permitted: the peak since start-up is the baseline (a weaker bound)
        try:
            with open(f"/proc/{p}/status", encoding="ascii") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        out[p] = (int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0]))
    return out


def _peak_growth_mb(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """How much the peak RSS of the server's processes grew in all, MB."""
    return sum(max(0, hwm - before.get(p, (0, 0))[0]) for p, (hwm, _) in after.items()) / 1024


def _stow(http: Any, *parts: bytes) -> None:
    r = http.post("/dicom-web/studies", content=stow_body(*parts), headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 200, r.content[:300]


def test_decode_budget_books_once_and_refuses_over_either_limit() -> None:
    from pacs.errors import TooLarge

    budget = limits.DecodeLimits(per_instance=100, per_request=150).budget()
    budget.reserve("a", 80)  # booked up front ...
    for _ in range(8):
        budget.spend("a", 10)  # ... and spent frame by frame: not counted twice
    assert budget.total == 80
    budget.reserve("a", 20)  # 80 spent + 20 more = 100: at the limit, allowed
    with pytest.raises(TooLarge, match=r"instance a would decode to 101 bytes.*per instance"):
        budget.spend("a", 21)
    assert budget.total == 100  # a refusal books nothing
    budget.spend("b", 50)
    with pytest.raises(TooLarge, match="per request"):
        budget.reserve("c", 1)
    assert limits.DecodeLimits.from_mb(2, 3) == limits.DecodeLimits(2 * MIB, 3 * MIB)


def test_configured_defaults_are_the_limits_defaults() -> None:
    from pacs.config import HttpSettings

    http = HttpSettings()
    assert http.max_decoded_mb_per_instance * MIB == limits.DECODED_PER_INSTANCE
    assert http.max_decoded_mb_per_request * MIB == limits.DECODED_PER_REQUEST


def test_the_transcoder_refuses_a_multiframe_bomb_before_decoding() -> None:
    """What WADO-RS and C-MOVE / C-GET convert through: refused at once, nothing decoded."""
    from pacs.dicom import pixels
    from pacs.errors import TooLarge
    from pacs.services import transcode
    from tests.robustness.bombs import j2k_bomb

    bomb = j2k_bomb(make_dataset())
    assert len(bomb) < 10_000  # 9 KB that decode to 1.25 GiB
    rss_before = _rss_mb()
    t0 = time.monotonic()
    with pytest.raises(TooLarge, match="1280 MiB of pixel data, over the limit of 1024 MiB per instance"):
        transcode.read_as(io.BytesIO(bomb), EXPLICIT)
    with pytest.raises(TooLarge):
        list(transcode.stream_as(io.BytesIO(bomb), EXPLICIT))
    budget = limits.DecodeBudget()
    transcode.reserve(io.BytesIO(bomb), "1.2.840.10008.1.2.4.90", budget)  # as stored: nothing to decode
    with pytest.raises(TooLarge):
        transcode.reserve(io.BytesIO(bomb), EXPLICIT, budget)
    fh = io.BytesIO(bomb)
    info = pixels.locate(fh)
    small = limits.DecodeLimits(per_instance=16 * MIB).budget()
    with pytest.raises(TooLarge, match="32 MiB"):  # one 4096 x 4096 frame of 16 bits
        pixels.decode_frame(fh, info, 1, small)
    assert time.monotonic() - t0 < 5
    assert _rss_mb() - rss_before < 200


def test_large_legitimate_images_pass_the_default_limits(sqlite_client, sqlite_rt: Runtime) -> None:  # type: ignore[no-untyped-def]
    """A 3000 x 3000 mammogram-sized object of 4 frames (72 MB decoded) and a 512 x 512 CT series
    are retrieved decoded, whole (streamed one frame at a time) and as frames, and rendered."""
    ramp = (np.arange(3000 * 3000, dtype=np.uint32).reshape(3000, 3000) % 4096).astype(np.uint16)
    frames = [ramp, ramp[::-1].copy(), ramp.T.copy(), ramp[:, ::-1].copy()]
    ds, data = _j2k_instance(frames)
    sqlite_rt.archive.store(io.BytesIO(data), ORIGIN)
    r = sqlite_client.get(_url(ds), headers={"Accept": DICOM_EXPLICIT})
    assert r.status_code == 200, r.content[:300]
    [body] = _parts(r)
    got = pydicom.dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT and got.NumberOfFrames == 4
    assert np.array_equal(got.pixel_array, np.stack(frames))
    assert got.PatientName == ds.PatientName
    r = sqlite_client.get(_url(ds) + "/frames/4,2", headers={"Accept": OCTET})
    assert r.status_code == 200, r.content[:300]
    assert _parts(r) == [frames[3].astype("<u2").tobytes(), frames[1].astype("<u2").tobytes()]
    assert sqlite_client.get(_url(ds) + "/frames/3/rendered").status_code == 200

    series = generate_uid()
    study = generate_uid()
    slices = [np.full((512, 512), i * 100, np.uint16) for i in range(5)]
    for s in slices:
        _, data = _j2k_instance([s], study_uid=study, series_uid=series, sop_class_uid=CT)
        sqlite_rt.archive.store(io.BytesIO(data), ORIGIN)
    r = sqlite_client.get(f"/dicom-web/studies/{study}/series/{series}", headers={"Accept": DICOM_EXPLICIT})
    assert r.status_code == 200, r.content[:300]
    got_slices = sorted(int(pydicom.dcmread(io.BytesIO(b)).pixel_array[0, 0]) for b in _parts(r))
    assert got_slices == [0, 100, 200, 300, 400]


CT = "1.2.840.10008.5.1.4.1.1.2"


def test_the_per_request_limit_covers_a_series_of_instances(tmp_path: Path) -> None:
    """Three instances of 8 MiB decoded each: under 16 MiB per instance, over 20 MiB in all."""
    study, series = generate_uid(), generate_uid()
    with _app(tmp_path, max_decoded_mb_per_instance=16, max_decoded_mb_per_request=20) as (rt, client):
        for i in range(3):
            frame = np.full((2048, 2048), i, np.uint16)
            _, data = _j2k_instance([frame], study_uid=study, series_uid=series, sop_class_uid=CT)
            rt.archive.store(io.BytesIO(data), ORIGIN)
        url = f"/dicom-web/studies/{study}/series/{series}"
        r = client.get(url, headers={"Accept": DICOM_EXPLICIT})
        assert r.status_code == 413, r.content[:300]
        assert "over the limit of 20 MiB per request" in r.json()["detail"]
        r = client.get(
            url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
        )
        assert r.status_code == 200 and len(_parts(r)) == 3  # as stored: nothing decoded
        one = rt.archive.instances(study, series)[0]
        r = client.get(f"{url}/instances/{one.sop_instance_uid}", headers={"Accept": DICOM_EXPLICIT})
        assert r.status_code == 200  # one of them is within both limits


def test_a_frame_list_over_the_hard_cap_is_400_and_repeats_are_sent_once(
    sqlite_client, sqlite_rt: Runtime
) -> None:  # type: ignore[no-untyped-def]
    frames = [np.full((64, 64), i, np.uint16) for i in range(3)]
    ds, data = _j2k_instance(frames)
    sqlite_rt.archive.store(io.BytesIO(data), ORIGIN)
    r = sqlite_client.get(_url(ds) + "/frames/" + ",".join(["1"] * 10_001), headers={"Accept": OCTET})
    assert r.status_code == 400 and "at most 10000" in r.json()["detail"]
    r = sqlite_client.get(_url(ds) + "/frames/2," + ",".join(["1"] * 9_998) + ",3", headers={"Accept": OCTET})
    assert r.status_code == 200, r.content[:300]
    assert _parts(r) == [frames[1].tobytes(), frames[0].tobytes(), frames[2].tobytes()]
    assert sqlite_client.get(_url(ds) + "/frames/1,4,1", headers={"Accept": OCTET}).status_code == 404


@contextmanager
def _app(tmp_path: Path, **http: object) -> Iterator[tuple[Runtime, Any]]:
    """An in-process app with these ``[http]`` settings."""
    from starlette.testclient import TestClient

    from pacs import runtime
    from tests.conftest import settings_for

    rt = runtime.build(settings_for(f"sqlite:///{tmp_path / 'index.sqlite'}", tmp_path / "storage", **http))
    try:
        with TestClient(runtime.web_app(rt), raise_server_exceptions=False) as client:
            yield rt, client
    finally:
        rt.close()


def _c_get(port: int, sop: Dataset, syntaxes: list[str]) -> tuple[list[int], Dataset | None, list[Dataset]]:
    """C-GET one instance with pynetdicom, accepting its SOP class only in ``syntaxes``: the
    statuses, the final response (with the Failed SOP Instance UID List) and what arrived."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(sop.SOPClassUID, syntaxes)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="PACS",
        ext_neg=[build_role(sop.SOPClassUID, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID, q.SeriesInstanceUID = sop.StudyInstanceUID, sop.SeriesInstanceUID
    q.SOPInstanceUID = sop.SOPInstanceUID
    statuses, final = [], None
    try:
        for st, ident in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet):
            statuses.append(int(st.Status))
            if st.Status != 0xFF00:  # the final response: counts in the status, failed UIDs in the identifier
                final = st
                if ident is not None and "FailedSOPInstanceUIDList" in ident:
                    final.FailedSOPInstanceUIDList = ident.FailedSOPInstanceUIDList
    finally:
        assoc.release()
        ae.shutdown()
    return statuses, final, received


def test_multiframe_bomb_refused_over_wado_rs_and_c_get_in_bounded_memory(tmp_path: Path) -> None:
    """A real ``pacs serve`` with the default limits: the 9 KB bomb asked for decoded, whole
    (WADO-RS) and as all of its frames, is 413 with the reason; C-GET to a requester accepting
    only Explicit VR Little Endian counts a failed sub-operation; the server's peak memory grows
    by less than 200 MB (it once peaked at 5.9 GB); a legitimate instance is served right after."""
    import httpx

    from tests.robustness.bombs import j2k_bomb
    from tests.serve import serve

    bomb_ds = make_dataset(sop_uid=generate_uid())
    bomb = j2k_bomb(bomb_ds)
    good_ds, good = _j2k_instance([np.full((512, 512), 7, np.uint16)], sop_class_uid=CT)
    bomb_ds.SOPClassUID = pydicom.dcmread(io.BytesIO(bomb), stop_before_pixels=True).SOPClassUID
    with (
        serve(tmp_path, f"sqlite:///{tmp_path / 'index.sqlite'}") as srv,
        httpx.Client(base_url=srv.base_url, timeout=120) as http,
    ):
        _stow(http, bomb, good)

        def legit_is_served() -> None:
            r = http.get(_url(good_ds), headers={"Accept": DICOM_EXPLICIT})
            assert r.status_code == 200, r.content[:300]
            assert pydicom.dcmread(io.BytesIO(_parts(r)[0])).pixel_array[0, 0] == 7
            statuses, _, received = _c_get(srv.dicom_port, good_ds, [EXPLICIT])
            assert statuses[-1] == 0x0000 and len(received) == 1
            assert received[0].file_meta.TransferSyntaxUID == EXPLICIT

        legit_is_served()  # also loads the decoders: the baseline below includes them
        before = _server_memory_kib(srv.process.pid, reset=True)
        t0 = time.monotonic()
        r = http.get(_url(bomb_ds), headers={"Accept": DICOM_EXPLICIT})
        assert r.status_code == 413, r.content[:300]
        assert "1280 MiB of pixel data, over the limit of 1024 MiB per instance" in r.json()["detail"]
        frames = ",".join(str(n) for n in range(1, 41))
        r = http.get(_url(bomb_ds) + f"/frames/{frames}", headers={"Accept": OCTET})
        assert r.status_code == 413, r.content[:300]
        assert "per instance" in r.json()["detail"]
        r = http.get(_url(bomb_ds) + f"/frames/{frames}", headers={"Accept": OCTET_AS_STORED})
        assert r.status_code == 200 and len(_parts(r)) == 40  # as stored: nothing to decode

        statuses, final, received = _c_get(srv.dicom_port, bomb_ds, [EXPLICIT])
        assert not received
        assert final is not None and final.NumberOfFailedSuboperations == 1, statuses
        failed = final.FailedSOPInstanceUIDList
        assert (list(failed) if not isinstance(failed, str) else [failed]) == [bomb_ds.SOPInstanceUID]
        assert statuses[-1] in (0xA702, 0xB000), [hex(s) for s in statuses]
        elapsed = time.monotonic() - t0
        after = _server_memory_kib(srv.process.pid)
        growth = _peak_growth_mb(before, after)
        print(f"bomb refused (WADO-RS, frames, C-GET) in {elapsed:.2f} s; server peak grew {growth:.0f} MB")
        assert growth < 200, (before, after)
        assert elapsed < 10
        assert f"cannot send sop={bomb_ds.SOPInstanceUID}" in srv.log()
        assert "over the limit of 1024 MiB per instance" in srv.log()
        legit_is_served()


def test_rendering_a_bomb_frame_is_refused_under_a_configured_limit(tmp_path: Path) -> None:
    """``[http] max_decoded_mb_per_instance = 16``: one 4096 x 4096 frame of 16 bits (32 MiB) is
    over it. /rendered, frame /rendered, /thumbnail and decoded frames answer 413 with the reason
    in bounded memory; the frame as stored is still sent; a small image still renders."""
    import httpx

    from tests.robustness.bombs import j2k_bomb
    from tests.serve import serve

    bomb_ds = make_dataset(sop_uid=generate_uid())
    good_ds, good = _j2k_instance([np.full((512, 512), 7, np.uint16)], sop_class_uid=CT)
    # tests.serve.write_config has its own [http] table: the limits come through the environment.
    env = {"PACS_HTTP_MAX_DECODED_MB_PER_INSTANCE": "16", "PACS_HTTP_MAX_DECODED_MB_PER_REQUEST": "64"}
    with (
        serve(tmp_path, f"sqlite:///{tmp_path / 'index.sqlite'}", env=env) as srv,
        httpx.Client(base_url=srv.base_url, timeout=120) as http,
    ):
        _stow(http, j2k_bomb(bomb_ds), good)
        r = http.get(_url(good_ds) + "/rendered", headers={"Accept": "image/png"})
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
        before = _server_memory_kib(srv.process.pid, reset=True)
        t0 = time.monotonic()
        for path, accept in (
            ("/rendered", "image/png"),
            ("/frames/20/rendered", "image/jpeg"),
            ("/thumbnail", "image/jpeg"),
            ("/frames/1", OCTET),
        ):
            r = http.get(_url(bomb_ds) + path, headers={"Accept": accept})
            assert r.status_code == 413, (path, r.status_code, r.content[:300])
            assert "32 MiB of pixel data, over the limit of 16 MiB per instance" in r.json()["detail"], path
        r = http.get(_url(bomb_ds) + "/frames/1", headers={"Accept": OCTET_AS_STORED})
        assert r.status_code == 200 and len(_parts(r)[0]) < 1000
        growth = _peak_growth_mb(before, _server_memory_kib(srv.process.pid))
        elapsed = time.monotonic() - t0
        print(f"bomb frame refused for rendering in {elapsed:.2f} s; server peak grew {growth:.0f} MB")
        assert growth < 200 and elapsed < 10
        r = http.get(_url(good_ds) + "/frames/1/rendered", headers={"Accept": "image/png"})
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG"


def test_a_frame_list_of_thousands_of_repeats_streams_each_frame_once(tmp_path: Path) -> None:
    """``frames/3,1,2,1,1,1,...`` (4000 entries, an 8 KB URL) on a 16-frame 512 x 512 JPEG 2000
    object, decoded: once built 4000 decoded frames (2 GB) in memory; now frames 3, 1, 2, each
    once, in the order first listed, quickly and in bounded memory. A plain list still parses."""
    import httpx

    from tests.serve import serve

    frames = [np.full((512, 512), 1000 + i, np.uint16) for i in range(16)]
    frames[0][:8, :8] = 0  # not all constant
    ds, data = _j2k_instance(frames)
    with (
        serve(tmp_path, f"sqlite:///{tmp_path / 'index.sqlite'}") as srv,
        httpx.Client(base_url=srv.base_url, timeout=120) as http,
    ):
        _stow(http, data)
        r = http.get(_url(ds) + "/frames/2,5", headers={"Accept": OCTET})
        assert r.status_code == 200
        assert _parts(r) == [frames[1].tobytes(), frames[4].tobytes()]
        before = _server_memory_kib(srv.process.pid, reset=True)
        listed = "3,1,2," + ",".join(["1"] * 3997)
        assert len(listed.split(",")) == 4000
        t0 = time.monotonic()
        r = http.get(_url(ds) + f"/frames/{listed}", headers={"Accept": OCTET})
        elapsed = time.monotonic() - t0
        assert r.status_code == 200, r.content[:300]
        assert _parts(r) == [frames[2].tobytes(), frames[0].tobytes(), frames[1].tobytes()]
        growth = _peak_growth_mb(before, _server_memory_kib(srv.process.pid))
        print(f"4000-entry frame list: {elapsed:.2f} s, {len(r.content)} bytes; peak grew {growth:.0f} MB")
        assert elapsed < 5 and growth < 200
        r = http.get(_url(ds) + f"/frames/{listed}", headers={"Accept": OCTET_AS_STORED})
        assert r.status_code == 200 and len(_parts(r)) == 3


def test_the_per_request_limit_covers_a_whole_c_get(tmp_path: Path) -> None:
    """C-MOVE / C-GET use the same limits as WADO-RS, the per-request one over the whole retrieve:
    three 512x512 16-bit JPEG 2000 instances (0.5 MiB decoded each) under a 1 MiB per-request
    limit, fetched by a requester that accepts only Explicit VR Little Endian: two arrive, the
    third is a counted failure with the reason in the log."""
    import httpx
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    from tests.serve import serve

    study, series = generate_uid(), generate_uid()
    made = [
        _j2k_instance(
            [np.full((512, 512), k, np.uint16)], sop_class_uid=CT, study_uid=study, series_uid=series
        )
        for k in range(3)
    ]
    env = {"PACS_HTTP_MAX_DECODED_MB_PER_REQUEST": "1"}
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    with (
        serve(tmp_path, f"sqlite:///{tmp_path / 'index.sqlite'}", env=env) as srv,
        httpx.Client(base_url=srv.base_url, timeout=120) as http,
    ):
        _stow(http, *(data for _, data in made))
        ae = AE(ae_title="GETSCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CT, [EXPLICIT])
        assoc = ae.associate(
            "127.0.0.1",
            srv.dicom_port,
            ae_title="PACS",
            ext_neg=[build_role(CT, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )
        assert assoc.is_established
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID, q.SeriesInstanceUID = study, series
        try:
            final = [st for st, _ in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet)][-1]
        finally:
            assoc.release()
            ae.shutdown()
        log = srv.log()
    assert len(received) == 2
    assert final.Status == 0xB000  # sub-operations complete, one or more failures
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert "over the limit of 1 MiB per request" in log
