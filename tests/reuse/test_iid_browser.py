"""The IHE IID viewer link (issue 18) in real headless Chromium against a real ``pacs serve``:
``/viewer?studyUID=...`` opens that study; ``/viewer?patientID=...&issuer=...`` and
``/viewer?identifier=system|value`` list that patient's studies, not another issuer's."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests.reuse.conftest import real_file
from tests.serve import Served, serve

pw = pytest.importorskip("playwright.sync_api")

CT_STUDY = generate_uid()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``pacs serve`` (SQLite) over: 12345@BV01 (CT of 3 images, an MR; CCCD 079080001234) and
    12345@BV02 (a CT)."""
    tmp = tmp_path_factory.mktemp("iid")
    files = tmp / "files"
    files.mkdir()
    series = generate_uid()
    ids = (("079080001234", "", "NI"),)
    for n in (1, 2, 3):
        ds = real_file(
            others=ids, study=CT_STUDY, series=series, InstanceNumber=n, StudyDescription="CT sọ não"
        )
        ds.save_as(files / f"ct{n}.dcm", enforce_file_format=True)
    real_file("MR_small.dcm", others=ids).save_as(files / "mr.dcm", enforce_file_format=True)
    real_file(issuer="BV02", StudyDescription="CT nơi khác").save_as(
        files / "other.dcm", enforce_file_format=True
    )
    db = f"sqlite:///{tmp / 'index.sqlite'}"
    storage = tmp / "storage"
    cmd = [sys.executable, "-m", "pacs.cli", "import", "--strict", "--storage", str(storage)]
    out = subprocess.run(
        [*cmd, "--database-url", db, str(files)], capture_output=True, text=True, cwd=tmp, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    with serve(tmp, db, storage=storage) as srv:
        yield srv


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page; a script error or a console error fails the test."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.set_default_timeout(15_000)
    try:
        yield pg
        assert not errors, errors
    finally:
        ctx.close()


def _listed(pg: Any) -> list[str]:
    shown = "(t => !t.hasAttribute('aria-busy') && t.dataset.for === location.hash)"
    pg.wait_for_function(f"() => {shown}(document.querySelector('#studies'))")
    return [r.inner_text() for r in pg.locator("#studies tbody tr").all()]


def test_viewer_link_opens_the_study(server: Served, page: Any) -> None:
    page.goto(f"{server.base_url}/viewer?studyUID={CT_STUDY}")
    page.wait_for_selector("#study-view:not([hidden])")
    assert page.evaluate("location.hash").startswith(f"#/study/{CT_STUDY}")
    page.wait_for_function(
        "() => (i => !i.hidden && i.dataset.index === '0')(document.querySelector('#image'))"
    )
    assert "Nguyễn" in page.inner_text("#ov-tl")
    assert page.locator("#slider").get_attribute("max") == "2"  # the study's 3 images


def test_viewer_link_by_patient_and_issuer_lists_that_patients_studies(server: Served, page: Any) -> None:
    page.goto(f"{server.base_url}/viewer?patientID=12345&issuer=BV01")
    page.wait_for_selector("#list-view:not([hidden])")
    rows = _listed(page)
    assert len(rows) == 2, rows
    assert all("Nguyễn Thị Hồng Nhung" in r for r in rows) and not any("nơi khác" in r for r in rows)
    page.goto(f"{server.base_url}/viewer?identifier=urn:vn:cccd%7C079080001234")
    rows = _listed(page)
    assert len(rows) == 2 and any("CT sọ não" in r for r in rows)
    page.locator("#studies tbody tr", has_text="CT sọ não").locator("a").click()
    page.wait_for_selector("#study-view:not([hidden])")
    assert page.evaluate("location.hash").startswith(f"#/study/{CT_STUDY}")
