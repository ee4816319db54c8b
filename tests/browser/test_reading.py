"""Reading in the built-in viewer (issue 21), in headless Chromium against a real ``pacs serve``.

The archive holds the committed samples: a 512x512 CT head (2.5 mm and 5 mm series in one Frame of
Reference, PixelSpacing 0.45 mm, a uniform +35 HU white-matter region), its prior a month earlier
(own Frame of Reference, table 12 mm further), a 2000x2500 CR chest and a 30-frame US clip.
Measurements are checked against the phantom's known geometry and HU values, saved as a DICOM SR
and read back (by the viewer after a reload, and by pydicom); comparison, synchronized scrolling, the
first image on a 2 Mbit/s line and an axe-core audit complete it. Screenshots go to
``test-artifacts/reading/``.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.serve import Served, serve

pw = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_dicom"
ARTIFACTS = ROOT / "test-artifacts" / "reading"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
#: The phantom's uniform region (scripts/make_samples.py UNIFORM_REGION): patient mm, +35 HU.
UNIFORM = {"x": 35.0, "y": -15.0, "hu": 35.0}


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


CT = _header(SAMPLES / "ct_head" / "CT2_001.dcm")  # series 2, 64 slices of 2.5 mm
CT_BONE = _header(SAMPLES / "ct_head" / "CT3_001.dcm")  # series 3, 32 slices of 5 mm, same frame
CT_95 = _header(SAMPLES / "ct_head" / "CT2_039.dcm")  # z = 95 mm, index 38
PRIOR = _header(SAMPLES / "ct_head_prior" / "CT001.dcm")
CR = _header(SAMPLES / "cr_chest" / "CR001.dcm")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``pacs serve`` (SQLite) over the sample studies."""
    tmp = tmp_path_factory.mktemp("reading")
    db = f"sqlite:///{tmp / 'index.sqlite'}"
    storage = tmp / "storage"
    cli = [sys.executable, "-m", "pacs.cli", "import", "--strict", "--storage", str(storage)]
    out = subprocess.run(
        [*cli, "--database-url", db, str(SAMPLES)], capture_output=True, text=True, cwd=tmp, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    with serve(tmp, db, storage=storage) as srv:
        yield srv


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page at 1280x800; a script error or a console error fails the test."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" else None)
    pg.set_default_timeout(20_000)
    try:
        yield pg
        assert not errors, f"errors in the page: {errors}"
    finally:
        ctx.close()


def _shot(pg: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _img(n: int) -> str:
    return "#image" if n == 0 else f"#image-{n + 1}"


def _wait_shown(pg: Any, index: int, n: int = 0) -> None:
    pg.wait_for_function(
        "([sel, i]) => { const img = document.querySelector(sel);"
        " return img && !img.hidden && img.dataset.index === String(i); }",
        arg=[_img(n), index],
    )


def _open(pg: Any, base: str, study: str, series: str | None = None, i: int = 0) -> None:
    q = f"?series={series}&i={i}" if series else ""
    pg.goto(f"{base}/#/study/{study}{q}")
    _wait_shown(pg, i)
    # Metadata (calibration, positions) has arrived.
    pg.wait_for_function("() => PACS.viewports[0].positions && PACS.viewports[0].meta.size > 0")
    pg.wait_for_function("() => document.querySelector('#measure-panel').dataset.loaded !== undefined")


def _screen(pg: Any, col: float, row: float, n: int = 0) -> tuple[float, float]:
    """The page coordinates of image pixel coordinates (col, row) in viewport ``n``."""
    x, y = pg.evaluate(
        """([n, p]) => { const v = PACS.viewports[n]; const r = v.root.getBoundingClientRect();
            const s = v.toScreen(p); return [r.left + s[0], r.top + s[1]]; }""",
        [n, [col, row]],
    )
    return float(x), float(y)


def _drag(pg: Any, a: tuple[float, float], b: tuple[float, float], n: int = 0) -> None:
    pg.mouse.move(*_screen(pg, *a, n=n))
    pg.mouse.down()
    pg.mouse.move(*_screen(pg, *b, n=n), steps=6)
    pg.mouse.up()


def _pixel(ds: pydicom.Dataset, x_mm: float, y_mm: float) -> tuple[float, float]:
    """Image pixel coordinates (0 = the first pixel's outer edge) of a patient point on an axial slice."""
    x0, y0 = float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1])
    return (x_mm - x0) / float(ds.PixelSpacing[1]) + 0.5, (y_mm - y0) / float(ds.PixelSpacing[0]) + 0.5


def _items(pg: Any) -> list[dict[str, Any]]:
    return pg.evaluate("PACS.measure.items()")  # type: ignore[no-any-return]


def _wait_items(pg: Any, n: int) -> list[dict[str, Any]]:
    pg.wait_for_function(f"() => document.querySelectorAll('#measure-list li').length === {n}")
    return _items(pg)


def test_length_in_mm_stays_on_its_image_select_and_delete(server: Served, page: Any) -> None:
    _open(page, server.base_url, CT.StudyInstanceUID)
    assert "Cal: PixelSpacing" in page.inner_text("#ov-br")
    before = len(_items(page))
    page.keyboard.press("l")
    assert page.get_attribute("[data-tool=length]", "aria-pressed") == "true"
    _drag(page, (100, 256), (400, 256))
    items = _wait_items(page, before + 1)
    m = items[-1]
    (c0, r0), (c1, r1) = m["points"]
    expected = ((c1 - c0) ** 2 + (r1 - r0) ** 2) ** 0.5 * 0.45  # PixelSpacing 0.45 mm
    assert m["values"]["length"] == pytest.approx(expected, abs=1e-6)
    assert m["values"]["length"] == pytest.approx(135.0, abs=1.0) and m["units"]["length"] == "mm"
    assert m["calibration"] == "PixelSpacing" and m["sop"] == CT.SOPInstanceUID
    label = page.inner_text("#measure-list li:last-child")
    assert f"{m['values']['length']:.1f} mm" in label and "(PixelSpacing)" in label
    assert page.locator("#viewport svg.marks g[data-kind=length]").count() == 1
    _shot(page, "01-length")

    # On its image only: scrolling away hides it, coming back shows it again.
    page.focus("#viewport")
    page.keyboard.press("ArrowDown")
    _wait_shown(page, 1)
    assert page.locator("#viewport svg.marks g[data-mark]").count() == 0
    page.keyboard.press("ArrowUp")
    _wait_shown(page, 0)
    assert page.locator("#viewport svg.marks g[data-kind=length]").count() == 1

    # Select it by clicking its line (any tool), delete it with the Delete key.
    page.keyboard.press("w")
    page.mouse.click(*_screen(page, 250, 256))
    page.wait_for_function(f"() => PACS.measure.selected === {json.dumps(m['uid'])}")
    assert page.get_attribute("#measure-list li:last-child button", "aria-pressed") == "true"
    assert not page.is_disabled("#measure-delete")
    page.keyboard.press("Delete")
    _wait_items(page, before)
    assert page.locator("#viewport svg.marks g[data-mark]").count() == 0


def test_roi_mean_on_the_uniform_region_in_hu(server: Served, page: Any) -> None:
    _open(page, server.base_url, CT.StudyInstanceUID, CT.SeriesInstanceUID, 38)
    assert page.get_attribute("#image", "data-sop") == CT_95.SOPInstanceUID
    col, row = _pixel(CT_95, UNIFORM["x"], UNIFORM["y"])
    before = len(_items(page))
    frames: list[str] = []
    page.on("request", lambda r: frames.append(r.headers.get("accept", "")) if "/frames/" in r.url else None)
    for key, kind in (("e", "ellipse"), ("b", "rectangle")):
        page.keyboard.press(key)
        _drag(page, (col - 14, row - 14), (col + 14, row + 14))
        before += 1
        _wait_items(page, before)
        page.wait_for_function("() => PACS.measure.items().at(-1).values.mean !== undefined")
        m = _items(page)[-1]
        assert m["kind"] == kind
        assert m["values"]["mean"] == pytest.approx(UNIFORM["hu"], abs=1.0), m
        assert m["values"]["sd"] < 1.0 and m["units"]["mean"] == "HU" and m["units"]["area"] == "mm2"
        assert m["values"]["min"] >= UNIFORM["hu"] - 1 and m["values"]["max"] <= UNIFORM["hu"] + 1
        (c0, r0), (c1, r1) = m["points"]
        area = abs(c1 - c0) * abs(r1 - r0) * 0.45**2 * (3.141592653589793 / 4 if kind == "ellipse" else 1)
        assert m["values"]["area"] == pytest.approx(area, rel=1e-6)
        assert "HU" in (page.text_content("#viewport svg.marks") or "")
    # The stored values came from the frames resource, native (decoded from JPEG-LS by the archive),
    # fetched once for both regions.
    assert len(frames) == 1 and "application/octet-stream" in frames[0], frames
    _shot(page, "02-roi-hu")


def _retrieve(base: str, study: str, series: str, sop: str) -> pydicom.Dataset:
    """WADO-RS retrieve of one instance, parsed by pydicom."""
    req = urllib.request.Request(
        f"{base}/dicom-web/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    with urllib.request.urlopen(req, timeout=30) as res:
        body = res.read()
        boundary = res.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"').encode()
    part = body.split(b"--" + boundary)[1]
    return pydicom.dcmread(io.BytesIO(part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]))


def _walk(items: Any) -> Iterator[Any]:
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def test_sr_round_trip(server: Served, page: Any) -> None:
    _open(page, server.base_url, CT.StudyInstanceUID, CT.SeriesInstanceUID, 38)
    before = len(_items(page))
    page.keyboard.press("l")
    _drag(page, (100, 300), (300, 300))
    col, row = _pixel(CT_95, UNIFORM["x"], UNIFORM["y"])
    page.keyboard.press("e")
    _drag(page, (col - 12, row - 12), (col + 12, row + 12))
    _wait_items(page, before + 2)
    page.wait_for_function("() => PACS.measure.items().at(-1).values.mean !== undefined")
    drawn = _items(page)[-2:]
    assert not page.is_disabled("#measure-save")
    page.click("#measure-save")
    page.wait_for_function("() => document.querySelector('#measure-panel').dataset.saved")
    assert "Saved" in page.inner_text("#measure-status")
    sop = page.get_attribute("#measure-panel", "data-saved")
    _shot(page, "03-saved")

    # Reopened: the measurements come back from the archive, on their image.
    page.reload()
    _wait_shown(page, 38)
    page.wait_for_function("() => document.querySelector('#measure-panel').dataset.loaded")
    back = _wait_items(page, before + 2)[-2:]
    for a, b in zip(drawn, back, strict=True):
        assert (b["kind"], b["sop"], b["uid"]) == (a["kind"], a["sop"], a["uid"])
        for k, v in a["values"].items():
            assert b["values"][k] == pytest.approx(v, abs=0.01), k
    page.wait_for_function("() => document.querySelectorAll('#viewport svg.marks g[data-mark]').length >= 2")
    assert "Cal: PixelSpacing" in page.inner_text("#ov-br")
    _shot(page, "04-reloaded")

    # pydicom reads the stored SR (WADO-RS) and finds the values.
    sr = _retrieve(server.base_url, CT.StudyInstanceUID, _sr_series(page), sop)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.Modality == "SR"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    nums = {}
    for item in _walk(sr.ContentSequence):
        if item.ValueType == "NUM":
            code = item.ConceptNameCodeSequence[0].CodeValue
            unit = item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue
            nums.setdefault(code, []).append((float(item.MeasuredValueSequence[0].NumericValue), unit))
    assert (pytest.approx(drawn[0]["values"]["length"], abs=0.01), "mm") in nums["410668003"]  # SCT Length
    assert any(v == pytest.approx(UNIFORM["hu"], abs=1) and u == "[hnsf'U]" for v, u in nums["112031"])
    refs = {
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for i in _walk(sr.ContentSequence)
        if i.ValueType == "IMAGE"
    }
    assert CT_95.SOPInstanceUID in refs


def _sr_series(pg: Any) -> str:
    return pg.evaluate(  # type: ignore[no-any-return]
        "PACS.current.seriesList.find(s => s.modality === 'SR').uid"
    )


def test_compare_with_prior_side_by_side(server: Served, page: Any) -> None:
    _open(page, server.base_url, CT.StudyInstanceUID, CT.SeriesInstanceUID)
    page.click("#compare")
    _wait_shown(page, 0, n=1)
    assert page.get_attribute("[data-layout='1x2'].layout", "aria-pressed") == "true"
    assert page.get_attribute("#image-2", "data-sop") == PRIOR.SOPInstanceUID
    page.wait_for_function("() => document.querySelector('#ov-tr-2').innerText.includes('Prior')")
    assert "10/02/2025" in page.inner_text("#ov-tr-2") and "10/03/2025" in page.inner_text("#ov-tr")
    assert page.is_visible("#prior-strip") and "10/02/2025" in page.inner_text("#prior-strip")
    assert page.get_attribute("#sync", "aria-pressed") == "true"
    page.wait_for_function("() => document.querySelector('#ov-bl-2').innerText.includes('Loc')")
    # Linked at the first slices (skull base): the prior's table is 12 mm further, 5 mm slices.
    page.click("#viewport")
    page.locator("#slider").fill("38")  # z = 95 mm in the current study
    _wait_shown(page, 38)
    _wait_shown(page, 19, n=1)  # the prior's slice at the same anatomy (z 97.5, position 109.5)
    assert "Loc: 109.5 mm" in page.inner_text("#ov-bl-2")
    _shot(page, "05-compare-with-prior")


def test_layouts_drag_and_synchronized_scroll(server: Served, page: Any) -> None:
    _open(page, server.base_url, CT.StudyInstanceUID, CT.SeriesInstanceUID)
    page.click("[data-layout='1x2'].layout")
    _wait_shown(page, 0, n=1)
    assert page.get_attribute("#image-2", "data-sop") == CT_BONE.SOPInstanceUID  # the next series
    page.wait_for_function("() => document.querySelector('#ov-bl-2').innerText.includes('Loc')")
    page.click("#sync")
    assert page.get_attribute("#sync", "aria-pressed") == "true"
    # Same Frame of Reference: position along the normal, 2.5 mm slices against 5 mm ones.
    page.click("#viewport")
    page.locator("#slider").fill("20")  # z = 50.0
    _wait_shown(page, 20)
    _wait_shown(page, 10, n=1)  # z = 51.25, the nearest 5 mm slice
    page.click("#viewport-2")
    page.keyboard.press("ArrowDown")  # z = 56.25 in the 5 mm series
    _wait_shown(page, 11, n=1)
    page.wait_for_function("() => ['22', '23'].includes(document.querySelector('#image').dataset.index)")
    page.hover("#viewport")
    page.mouse.wheel(0, 100)  # the wheel, on the other viewport, drives both
    page.wait_for_function("() => document.querySelector('#image').dataset.index === '23'")
    _wait_shown(page, 11, n=1)
    _shot(page, "06-sync-1x2")

    # 2x2; a series dragged from the strip into a viewport is shown there.
    page.click("[data-layout='2x2'].layout")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.viewport')].filter(v => !v.hidden).length === 4"
    )
    _wait_shown(page, 0, n=3)
    page.drag_and_drop(f".series[data-series='{CT.SeriesInstanceUID}']", "#viewport-4")
    page.wait_for_function(
        "(sop) => document.querySelector('#image-4').dataset.sop === sop", arg=CT.SOPInstanceUID
    )
    _shot(page, "07-layout-2x2")
    page.click("[data-layout='1x1'].layout")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.viewport')].filter(v => !v.hidden).length === 1"
    )


def test_keyboard_shortcuts_presets_and_help(server: Served, page: Any) -> None:
    _open(page, server.base_url, CT.StudyInstanceUID, CT.SeriesInstanceUID)
    page.focus("#viewport")
    expected = {"1": "40,80", "2": "75,215", "4": "-600,1500", "5": "500,2000", "6": "40,400"}
    for key, window in expected.items():
        page.keyboard.press(key)
        page.wait_for_function(f"() => document.querySelector('#image').dataset.window === '{window}'")
    assert "W: 400 L: 40 Abdomen" in page.inner_text("#ov-br")
    page.keyboard.press("i")
    assert "inverted" in (page.get_attribute("#image", "class") or "")
    page.keyboard.press("r")
    page.wait_for_function("() => document.querySelector('#image').dataset.window === 'header'")
    assert "inverted" not in (page.get_attribute("#image", "class") or "")
    page.keyboard.press("]")  # next series
    page.wait_for_function(
        "(sop) => document.querySelector('#image').dataset.sop === sop", arg=CT_BONE.SOPInstanceUID
    )
    page.keyboard.press("Shift+ArrowUp")  # previous series
    page.wait_for_function(
        "(sop) => document.querySelector('#image').dataset.sop === sop", arg=CT.SOPInstanceUID
    )
    page.keyboard.press("?")
    page.wait_for_selector("#help[open]")
    help_text = page.inner_text("#help")
    for words in ("previous / next series", "subdural", "length, angle", "full screen", "pinch to zoom"):
        assert words in help_text
    _shot(page, "08-help")
    page.keyboard.press("Escape")


def test_touch_pinch_zooms_and_two_fingers_pan(server: Served, browser: Any) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, has_touch=True, locale="en-US")
    try:
        pg = ctx.new_page()
        _open(pg, server.base_url, CT.StudyInstanceUID)
        scale0 = pg.evaluate("PACS.viewports[0].view.scale")
        box = pg.locator("#viewport").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        cdp = ctx.new_cdp_session(pg)

        def touch(kind: str, d: float, dx: float = 0) -> None:
            points = [{"x": cx - d + dx, "y": cy, "id": 1}, {"x": cx + d + dx, "y": cy, "id": 2}]
            cdp.send(
                "Input.dispatchTouchEvent",
                {"type": kind, "touchPoints": [] if kind == "touchEnd" else points},
            )

        touch("touchStart", 50)
        for step in range(1, 11):
            touch("touchMove", 50 + step * 10, dx=step * 3)  # fingers apart, and moving right
        touch("touchEnd", 150)
        view = pg.evaluate("PACS.viewports[0].view")
        assert view["scale"] == pytest.approx(scale0 * 3, rel=0.1), view  # fingers 100 -> 300 px apart
        assert view["tx"] > 10, "two fingers moving right pan the image right"
    finally:
        ctx.close()


def test_throttled_first_image(server: Served, page: Any) -> None:
    """2 Mbit/s, 40 ms: the first image appears quickly, the rest streams in with a progress bar."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    conditions = {"offline": False, "latency": 40, "downloadThroughput": 250_000, "uploadThroughput": 125_000}
    cdp.send("Network.emulateNetworkConditions", conditions)
    page.goto(f"{server.base_url}/#/?PatientID={CT.PatientID}&ModalitiesInStudy=CT", timeout=60_000)
    page.wait_for_selector("#studies tbody tr", timeout=60_000)
    figures = {}
    for name, study, accession in (
        ("CT 512x512", CT, CT.AccessionNumber),
        ("CR 2000x2500", CR, CR.AccessionNumber),
    ):
        page.goto(f"{server.base_url}/#/?AccessionNumber={accession}", timeout=60_000)
        page.wait_for_function(
            "() => document.querySelectorAll('#studies tbody tr').length === 1", timeout=60_000
        )
        t0 = time.monotonic()
        page.locator("#studies tbody a").first.click()
        _wait_shown(page, 0)
        figures[name] = time.monotonic() - t0
        if study is CT:
            # The rest streams in behind it: the counter and the bar show how far it got.
            page.wait_for_function(
                "() => /Loading \\d+\\/64/.test(document.querySelector('#progress').textContent)"
            )
            assert page.is_visible("#viewport .vp-progress")
            _shot(page, "09-throttled-progress")
        page.go_back()
    print("2 Mbit/s first image: " + ", ".join(f"{k} {v:.2f}s" for k, v in figures.items()))
    assert figures["CT 512x512"] < 5 and figures["CR 2000x2500"] < 8, figures


def test_axe_audit_has_no_serious_violations(server: Served, browser: Any) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US", bypass_csp=True)
    try:
        pg = ctx.new_page()
        results = {}
        pg.goto(f"{server.base_url}/#/?PatientID={CT.PatientID}")
        pg.wait_for_selector("#studies tbody tr")
        results["list"] = _axe(pg)
        _open(pg, server.base_url, CT.StudyInstanceUID, CT.SeriesInstanceUID, 38)
        pg.keyboard.press("l")
        _drag(pg, (100, 300), (300, 300))
        _wait_items(pg, len(_items(pg)))
        pg.click("#compare")
        _wait_shown(pg, 0, n=1)
        results["study, compare"] = _axe(pg)
        pg.keyboard.press("?")
        pg.wait_for_selector("#help[open]")
        results["help"] = _axe(pg)
        bad = {
            where: [(v["id"], v["impact"], [n["target"] for n in v["nodes"][:3]]) for v in found]
            for where, found in results.items()
            if found
        }
        assert not bad, bad
    finally:
        ctx.close()


def _axe(pg: Any) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations (WCAG 2 A and AA) of the page as it is."""
    if not pg.evaluate("typeof axe !== 'undefined'"):
        pg.add_script_tag(content=AXE.read_text(encoding="utf-8"))
    found = pg.evaluate(
        "async () => (await axe.run(document,"
        " {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']}})).violations"
    )
    return [v for v in found if v["impact"] in ("serious", "critical")]


def test_vietnamese_labels_for_the_reading_tools(server: Served, browser: Any) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, locale="vi-VN")
    try:
        pg = ctx.new_page()
        _open(pg, server.base_url, CT.StudyInstanceUID)
        assert (
            pg.inner_text("[data-tool=length]") == "Độ dài" and pg.inner_text("#compare") == "So sánh ca cũ"
        )
        assert pg.inner_text("#sync") == "Đồng bộ" and pg.inner_text("#measure-title") == "Số đo"
        assert pg.get_attribute("[data-layout='1x2'].layout", "aria-label") == "2 ảnh cạnh nhau"
        assert pg.get_attribute("#fullscreen", "title") == "Toàn màn hình (Shift+F)"
        assert "Hiệu chuẩn: PixelSpacing" in pg.inner_text("#ov-br")
        assert "5 Xương (W2000 L500)" in pg.locator("#preset option").all_inner_texts()
        pg.keyboard.press("e")
        col, row = _pixel(CT, 0, -40)
        _drag(pg, (col - 10, row - 10), (col + 10, row + 10))
        pg.wait_for_function(
            "() => PACS.measure.items().length && PACS.measure.items().at(-1).values.mean !== undefined"
        )
        pg.wait_for_function(
            "() => document.querySelector('#viewport svg.marks').textContent.includes('Diện tích')"
        )
        assert "TB" in pg.inner_text("#measure-list")
        _shot(pg, "10-vietnamese")
    finally:
        ctx.close()
