"""The released OHIF Viewer v3 (``@ohif/app`` 3.12.0, unchanged) against a real ``pacs serve``.

OHIF is served from its own origin (another port), so every DICOMweb request is cross-origin and
only works through our CORS headers. The archive holds the sample studies (Vietnamese names; the
MR is RLE) and a CT study whose three series are JPEG 2000, JPEG-LS and JPEG lossless: Cornerstone
decodes those frames in the browser from the transfer syntax that each multipart part's
Content-Type names (PS3.18 8.7.3.5.3), so a wrong or missing one shows as a blank viewport.

The tests check the requests OHIF makes (QIDO-RS study search with ``limit=101`` and wildcards,
series metadata, one frame per request with ``Accept: multipart/related;
type="application/octet-stream"; transfer-syntax=*``, quoted and unquoted), that each is answered
with a 2xx, and that the viewport canvas and the series thumbnails hold an image.
Screenshots go to ``test-artifacts/ohif/``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from tests.browser import ohif
from tests.conftest import require_peer, require_tool
from tests.serve import Served, serve
from tests.web.conftest import split_multipart

pw = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_dicom"
ARTIFACTS = ROOT / "test-artifacts" / "ohif"
CT_STUDY = "2.25.37791947776283557902640339443700618723"  # sample_dicom/ct_head, JPEG-LS Lossless
MR_STUDY = "2.25.274522239810563157023444190746939846124"  # sample_dicom/mr_brain, RLE Lossless
US_STUDY = "2.25.81377593151429389125606721213513610090"  # sample_dicom/us_abdomen, 30 JPEG frames
#: Series of the compressed CT: (series number, description, transfer syntax).
COMPRESSED = [
    (1, "JPEG 2000", "1.2.840.10008.1.2.4.90"),
    (2, "JPEG-LS", "1.2.840.10008.1.2.4.80"),
    (3, "JPEG lossless", "1.2.840.10008.1.2.4.70"),
    (4, "Explicit VR LE", "1.2.840.10008.1.2.1"),
]
QUOTED = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'
UNQUOTED = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _compressed_ct(folder: Path) -> str:
    """24 slices of the sample CT head again, as a new study with one series per transfer syntax."""
    jls, jpeg = require_tool("dcmcjpls"), require_tool("dcmcjpeg")
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    for number, description, ts in COMPRESSED:
        series = generate_uid()
        for src in sorted((SAMPLES / "ct_head").glob("CT2_*.dcm"))[:24]:
            ds = dcmread(src)
            ds.decompress()  # stored JPEG-LS: the tools below start from native pixels
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.PatientName, ds.PatientID = "Võ^Thị Mai", "BN2025000999"
            ds.AccessionNumber = "CT2025000999"
            ds.StudyDescription = "CT sọ não nén (JPEG 2000, JPEG-LS, JPEG lossless)"
            ds.SeriesNumber, ds.SeriesDescription = number, description
            out = folder / f"S{number}_{src.name}"
            if ts == ExplicitVRLittleEndian:
                ds.save_as(out, enforce_file_format=True)
                continue
            if ts == JPEG2000Lossless:
                ds.compress(JPEG2000Lossless)
                ds.save_as(out, enforce_file_format=True)
                continue
            plain = folder / f"plain_{src.name}"
            ds.save_as(plain, enforce_file_format=True)
            tool = [jls, "--encode-lossless"] if number == 2 else [jpeg, "--encode-lossless-sv1"]
            subprocess.run([*tool, str(plain), str(out)], check=True, capture_output=True)
            plain.unlink()
            assert str(dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID) == ts
    return study


@dataclass
class Stack:
    """OHIF on one origin, ``pacs serve`` on another, and the compressed study's UID."""

    ohif: ohif.OhifServer
    pacs: Served
    compressed_study: str

    @property
    def dicomweb(self) -> str:
        """Our DICOMweb root as OHIF is told it."""
        return f"{self.pacs.base_url}/dicom-web"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The OHIF build (downloaded once, verified) and ``pacs serve`` over the sample studies."""
    try:
        dist = ohif.ohif_dist()
    except ohif.OhifUnavailable as exc:
        require_peer(False, f"OHIF {ohif.VERSION} build: {exc}")
        raise
    tmp = tmp_path_factory.mktemp("ohif")
    compressed = tmp / "compressed"
    study = _compressed_ct(compressed)
    db = f"sqlite:///{tmp / 'index.sqlite'}"
    storage = tmp / "storage"
    cli = [sys.executable, "-m", "pacs.cli", "import", "--strict"]
    out = subprocess.run(
        [*cli, "--storage", str(storage), "--database-url", db, str(SAMPLES), str(compressed)],
        capture_output=True,
        text=True,
        cwd=tmp,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    with ohif.serve_ohif(dist) as viewer:
        cors = json.dumps([viewer.base_url])
        with serve(tmp, db, storage=storage, env={"PACS_HTTP_CORS_ORIGINS": cors}) as srv:
            viewer.config = ohif.app_config(f"{srv.base_url}/dicom-web")
            yield Stack(viewer, srv, study)


@dataclass
class Seen:
    """What the page did: DICOMweb exchanges, requests to third parties, script and console errors."""

    dicomweb: list[Any] = field(default_factory=list)  # playwright Response objects
    failed: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def requests(self, path_part: str) -> list[Any]:
        """Responses whose URL path contains ``path_part``."""
        return [r for r in self.dicomweb if path_part in urlsplit(r.url).path]


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[tuple[Any, Seen]]:
    """A fresh page; a request beyond the two origins, or an error in the page, fails the test."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    # The onboarding tour (a first-visit overlay) counts as seen: it would cover the viewport.
    ctx.add_init_script("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
    seen = Seen()
    origins = (stack.ohif.base_url, stack.pacs.base_url)

    # Watched, not routed: with any route set, Playwright answers CORS preflights itself, and
    # ours must reach the server.
    def foreign(request: Any) -> None:
        if not request.url.startswith((*origins, "data:", "blob:")):
            seen.foreign.append(request.url)

    pg = ctx.new_page()
    pg.on("request", foreign)
    pg.on("pageerror", lambda e: seen.errors.append(str(e)))
    pg.on("console", lambda m: seen.console.append(m.text) if m.type == "error" else None)
    pg.on("response", lambda r: seen.dicomweb.append(r) if "/dicom-web/" in r.url else None)
    # net::ERR_ABORTED is the page cancelling its own request (OHIF drops the frame prefetches
    # of a study it leaves); anything else (reset, empty or invalid response) is ours.
    pg.on(
        "requestfailed",
        lambda r: None if r.failure == "net::ERR_ABORTED" else seen.failed.append(f"{r.url} {r.failure}"),
    )
    pg.set_default_timeout(30_000)
    try:
        yield pg, seen
        bad = [f"{r.status} {r.url}" for r in seen.dicomweb if r.status >= 400]
        assert not bad, f"DICOMweb requests that failed: {bad}"
        assert not seen.failed, f"requests that did not complete: {seen.failed}"
        assert not seen.errors, f"script errors in the page: {seen.errors}"
        assert not seen.console, f"errors in the browser console: {seen.console}"
        assert not seen.foreign, f"OHIF reached beyond its own origin and ours: {seen.foreign}"
    finally:
        ctx.close()


def _shot(pg: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _query(response: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(response.url).query, keep_blank_values=True).items()}


ROW = "[data-cy='study-list-results'] > tr[data-cy^='studyRow-']"


def _rows(pg: Any) -> list[str]:
    return [r.inner_text() for r in pg.locator(ROW).all()]


def _wait_rows(pg: Any, n: int) -> list[str]:
    pg.wait_for_function(f'document.querySelectorAll("{ROW}").length === {n}')
    return _rows(pg)


#: Whether the element at a selector (a canvas, or an img) holds a picture: the standard deviation
#: of its grey levels is above a threshold (a blank or uniform field has none).
_HOLDS_IMAGE_JS = """([selector, threshold]) => {
    const el = document.querySelector(selector);
    if (!el) return false;
    let c = el;
    if (el.tagName === 'IMG') {
        if (!el.complete || !el.naturalWidth) return false;
        c = document.createElement('canvas');
        c.width = el.naturalWidth; c.height = el.naturalHeight;
        c.getContext('2d').drawImage(el, 0, 0);
    }
    if (!c.width || !c.height) return false;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0, s = 0, s2 = 0;
    for (let i = 0; i < d.length; i += 4) {
        const v = (d[i] + d[i + 1] + d[i + 2]) / 3;
        n++; s += v; s2 += v * v;
    }
    const m = s / n;
    return Math.sqrt(Math.max(0, s2 / n - m * m)) > threshold;
}"""


def _wait_image(pg: Any, selector: str, label: str, threshold: float = 8.0) -> None:
    """Wait until the canvas or img at ``selector`` shows a picture, not a blank field."""
    try:
        pg.wait_for_function(_HOLDS_IMAGE_JS, arg=[selector, threshold], polling=250, timeout=30_000)
    except pw.TimeoutError:
        _shot(pg, f"blank-{label.replace(' ', '-')}")
        raise AssertionError(f"{label}: {selector} still blank after 30 s") from None


def _open_viewer(pg: Any, stack: Stack, study: str) -> None:
    pg.goto(f"{stack.ohif.base_url}/viewer?StudyInstanceUIDs={study}")
    pg.wait_for_selector(".cornerstone-canvas")


def _frame_parts(seen: Seen, study: str, accept: str, origin: str) -> dict[str, set[str]]:
    """Series UID -> Content-Types of the frame parts of a study; each frame asked for on its own.

    Call it before the page leaves the study: the browser drops response bodies on navigation.
    """
    frames = [r for r in seen.requests("/frames/") if f"/studies/{study}/" in r.url]
    assert frames, "OHIF fetched no frames"
    out: dict[str, set[str]] = {}
    for r in frames:
        path = urlsplit(r.url).path
        assert path.rsplit("/", 1)[1].isdigit(), f"one frame per request, got {path}"
        assert r.request.headers.get("accept") == accept, r.request.headers.get("accept")
        assert r.status == 200, (r.status, r.url)
        assert r.headers["access-control-allow-origin"] == origin
        parts = split_multipart(r.headers["content-type"], r.body())
        assert len(parts) == 1
        series = path.split("/series/")[1].split("/")[0]
        out.setdefault(series, set()).add(parts[0][0]["content-type"])
    return out


def _series_uids(stack: Stack, study: str) -> dict[str, str]:
    """Series description -> series UID, through our own QIDO-RS."""
    req = urllib.request.Request(
        f"{stack.dicomweb}/studies/{study}/series", headers={"Accept": "application/dicom+json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        rows = json.load(resp)
    return {r["0008103E"]["Value"][0]: r["0020000E"]["Value"][0] for r in rows}


# ---------------------------------------------------------------- study list


def test_study_list_shows_our_studies_across_origins(stack: Stack, page: tuple[Any, Seen]) -> None:
    pg, seen = page
    t0 = time.monotonic()
    pg.goto(f"{stack.ohif.base_url}/")
    rows = _wait_rows(pg, 6)
    shown = time.monotonic() - t0
    text = "\n".join(rows)
    for name in ("Nguyễn, Thị Hồng Nhung", "Trần, Văn Đức", "Lê, Hoàng Phúc", "Võ, Thị Mai"):
        assert name in text, (name, rows)
    assert "CT sọ não không tiêm thuốc cản quang" in text and "BN2025000123" in text
    _shot(pg, "01-study-list")

    (qido,) = seen.requests("/dicom-web/studies")
    assert qido.status == 200 and qido.headers["content-type"].startswith("application/dicom+json")
    q = _query(qido)
    assert q["limit"] == "101" and q["offset"] == "0" and q["fuzzymatching"] == "true"
    assert set(q["includefield"].split(",")) == {"00081030", "00080060"}
    # Cross-origin: the browser only let OHIF read it because of our CORS header.
    assert qido.request.all_headers()["origin"] == stack.ohif.base_url
    assert qido.headers["access-control-allow-origin"] == stack.ohif.base_url
    print(f"OHIF study list: 6 rows {shown:.2f}s after navigation; QIDO {qido.url}")


def test_study_list_search_wildcards_and_date_ranges(stack: Stack, page: tuple[Any, Seen]) -> None:
    pg, seen = page
    pg.goto(f"{stack.ohif.base_url}/")
    _wait_rows(pg, 6)
    # Typing into the Patient Name filter: OHIF asks for *nguyen* (wildcards, fuzzy matching on).
    pg.fill("[data-cy='input-patientName']", "nguyen")
    rows = _wait_rows(pg, 3)  # CT, its prior, MR
    assert all("Nguyễn, Thị Hồng Nhung" in r for r in rows), rows
    searches = [_query(r) for r in seen.requests("/dicom-web/studies") if "PatientName" in r.url]
    assert searches and searches[-1]["PatientName"] == "*nguyen*", searches
    _shot(pg, "02-search-nguyen")

    today = dt.date.today().strftime("%Y%m%d")
    cases = [
        ("mrn=BN2025000789", {"00100020": "*BN2025000789*"}, ["Lê, Hoàng Phúc"]),
        ("startDate=20250312", {"StudyDate": f"20250312-{today}"}, ["Lê, Hoàng Phúc", "Nguyễn"]),
        ("endDate=20250310", {"StudyDate": "19700102-20250310"}, ["Võ, Thị Mai", "Nguyễn", "Nguyễn"]),
        ("modalities=CR", {"ModalitiesInStudy": "CR"}, ["Trần, Văn Đức"]),
    ]
    for params, sent, names in cases:
        before = len(seen.dicomweb)
        pg.goto(f"{stack.ohif.base_url}/?{params}")
        rows = _wait_rows(pg, len(names))
        assert all(any(n in r for r in rows) for n in names), (params, rows)
        asked = [_query(r) for r in seen.dicomweb[before:] if urlsplit(r.url).path.endswith("/studies")]
        assert any(all(q.get(k) == v for k, v in sent.items()) for q in asked), (params, asked)


# ---------------------------------------------------------------- viewer


def test_viewer_shows_ct_and_colour_cine_as_stored(stack: Stack, page: tuple[Any, Seen]) -> None:
    pg, seen = page
    t0 = time.monotonic()
    _open_viewer(pg, stack, CT_STUDY)
    _wait_image(pg, ".cornerstone-canvas", "CT viewport")
    first = time.monotonic() - t0
    _shot(pg, "03-viewer-ct")
    metadata = seen.requests("/metadata")
    assert metadata and all(urlsplit(r.url).path.count("/series/") == 1 for r in metadata), "per series"
    jpeg_ls = {"application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.80"}
    parts = _frame_parts(seen, CT_STUDY, QUOTED, stack.ohif.base_url)
    assert set().union(*parts.values()) == jpeg_ls  # transfer-syntax=*: as stored
    # The quoted Accept is not a CORS-safelisted value: frame requests were preflighted, and passed.
    preflights = re.findall(r"http OPTIONS /dicom-web/studies/\S+/frames/1 status=(\d+)", stack.pacs.log())
    assert preflights and set(preflights) == {"200"}, preflights

    _open_viewer(pg, stack, US_STUDY)
    _wait_image(pg, ".cornerstone-canvas", "US viewport")
    _shot(pg, "04-viewer-us")
    # A multi-frame instance: still one frame per request.
    baseline = {"application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"}
    assert set().union(*_frame_parts(seen, US_STUDY, QUOTED, stack.ohif.base_url).values()) == baseline
    print(f"OHIF CT: first image {first:.2f}s after navigation, {len(seen.requests('/frames/'))} frames")


def test_viewer_decodes_compressed_frames(stack: Stack, page: tuple[Any, Seen]) -> None:
    pg, seen = page
    study = stack.compressed_study
    t0 = time.monotonic()
    _open_viewer(pg, stack, study)
    _wait_image(pg, ".cornerstone-canvas", "JPEG 2000 viewport")
    first = time.monotonic() - t0
    # Thumbnails ('wadors' rendering): the first frame of each series, decoded in the browser too.
    for number, description, _ in COMPRESSED:
        thumb = f"[data-cy='study-browser-thumbnail'][data-series='{number}'] img"
        _wait_image(pg, thumb, f"{description} thumbnail")
    _shot(pg, "05-viewer-jpeg2000")
    for number, description, _ in COMPRESSED[1:]:
        pg.dblclick(f"[data-cy='study-browser-thumbnail'][data-series='{number}']")
        pg.wait_for_function(
            "(d) => document.querySelector(`[data-cy='viewport-overlay-top-left']`)?.innerText.includes(d)",
            arg=description,
        )
        _wait_image(pg, ".cornerstone-canvas", f"{description} viewport")
        _shot(pg, f"05-viewer-{description.replace(' ', '-').lower()}")
    uids = _series_uids(stack, study)
    parts = _frame_parts(seen, study, QUOTED, stack.ohif.base_url)
    for _, description, ts in COMPRESSED:
        assert parts[uids[description]] == {f"application/octet-stream; transfer-syntax={ts}"}, description
    print(f"OHIF compressed CT: first image {first:.2f}s, {len(seen.requests('/frames/'))} frames")


def test_unquoted_accept_and_server_thumbnails(stack: Stack, page: tuple[Any, Seen]) -> None:
    """``omitQuotationForMultipartRequest: true`` and ``thumbnailRendering: 'thumbnail'``."""
    pg, seen = page
    default = stack.ohif.config
    stack.ohif.config = ohif.app_config(stack.dicomweb, omit_quotation=True, thumbnail_rendering="thumbnail")
    try:
        _open_viewer(pg, stack, MR_STUDY)
        _wait_image(pg, ".cornerstone-canvas", "MR (RLE) viewport")
        _wait_image(pg, "[data-cy='study-browser-thumbnail'] img", "MR server thumbnail")
        _shot(pg, "06-viewer-mr-rle-unquoted")
    finally:
        stack.ohif.config = default
    parts = _frame_parts(seen, MR_STUDY, UNQUOTED, stack.ohif.base_url)
    assert set().union(*parts.values()) == {"application/octet-stream; transfer-syntax=1.2.840.10008.1.2.5"}
    thumbs = seen.requests("/thumbnail")
    assert thumbs, "no server thumbnail was asked for"
    for r in thumbs:
        assert _query(r).get("accept") == "image/jpeg", r.url
        assert r.status == 200 and r.headers["content-type"] == "image/jpeg"


def test_download_is_checked_against_the_pinned_integrity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "app.tgz"
    fake.write_bytes(b"not the OHIF build")
    monkeypatch.setenv("PACS_TEST_OHIF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ohif, "TARBALL", fake.as_uri())
    with pytest.raises(ohif.OhifUnavailable, match="integrity"):
        ohif.ohif_dist()
    assert not (tmp_path / "cache" / "dist").exists()
    monkeypatch.setattr(ohif, "TARBALL", (tmp_path / "missing.tgz").as_uri())
    with pytest.raises(ohif.OhifUnavailable, match="cannot download"):
        ohif.ohif_dist()
