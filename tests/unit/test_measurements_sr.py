"""The measurement report service (:mod:`pacs.services.measurements`): values computed from the
stored sample images, a TID 1500 Comprehensive SR stored through STOW-RS, and read back."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from pacs.blobstore import FileBlobStore
from pacs.errors import InvalidQuery
from pacs.index.database import Database
from pacs.index.engine import make_engine, migrate
from pacs.model import Origin
from pacs.services.archive import Archive
from pacs.services.dicomweb import DicomWeb
from pacs.services.measurements import (
    COMPREHENSIVE_SR,
    MeasurementReports,
    calibration,
    parse_request,
    read_report,
    region_mask,
)

SAMPLES = Path(__file__).resolve().parents[2] / "sample_dicom"
CT = SAMPLES / "ct_head" / "CT2_039.dcm"  # z = 95 mm: inside the phantom's uniform region
CR = SAMPLES / "cr_chest" / "CR001.dcm"
US = SAMPLES / "us_abdomen" / "US001.dcm"
ORIGIN = Origin(address="127.0.0.1", user="BS Nguyễn An", protocol="http")


@pytest.fixture
def reports(tmp_path: Path) -> Iterator[tuple[MeasurementReports, Archive]]:
    """The service over a SQLite archive holding one CT slice, the CR and the US clip."""
    engine = make_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    migrate(engine)
    db = Database(engine)
    archive = Archive(db, FileBlobStore(tmp_path / "storage"))
    try:
        for f in (CT, CR, US):
            archive.store_file(f, ORIGIN)
        yield MeasurementReports(DicomWeb(archive, tmp_path / "cache")), archive
    finally:
        archive.close()
        db.close()


def _ref(path: Path) -> dict[str, Any]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID, "sop": ds.SOPInstanceUID}


def _uniform_roi() -> list[list[float]]:
    """An ellipse of radius 15 px around the uniform region's centre (x 35, y -15 mm)."""
    ds = pydicom.dcmread(CT, stop_before_pixels=True)
    x0, y0 = float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1])
    col = (35 - x0) / float(ds.PixelSpacing[1]) + 0.5  # pixel coordinates: 0 is the first pixel's edge
    row = (-15 - y0) / float(ds.PixelSpacing[0]) + 0.5
    return [[col - 15, row - 15], [col + 15, row + 15]]


def test_calibration_sources() -> None:
    ct, cr, us = (pydicom.dcmread(p, stop_before_pixels=True) for p in (CT, CR, US))
    assert (calibration(ct).col_mm, calibration(ct).source) == (0.45, "PixelSpacing")
    assert (calibration(cr).col_mm, calibration(cr).source) == (0.175, "ImagerPixelSpacing")
    assert calibration(us).source == "US region" and calibration(us).col_mm == pytest.approx(0.4)
    del ct.PixelSpacing
    assert not calibration(ct).calibrated


def test_region_mask_counts_pixel_centres() -> None:
    assert region_mask("rectangle", [(1, 1), (3, 4)], 10, 10).sum() == 2 * 3
    disc = region_mask("ellipse", [(0, 0), (100, 100)], 100, 100).sum()
    assert disc == pytest.approx(math.pi * 50 * 50, rel=0.01)


def test_report_round_trip(reports: tuple[MeasurementReports, Archive]) -> None:
    svc, archive = reports
    ct, cr, us = _ref(CT), _ref(CR), _ref(US)
    body = {
        "study": ct["study"],
        "measurements": [
            {"kind": "length", "series": ct["series"], "sop": ct["sop"], "points": [[100, 200], [400, 200]]},
            {"kind": "ellipse", "series": ct["series"], "sop": ct["sop"], "points": _uniform_roi()},
            {"kind": "rectangle", "series": ct["series"], "sop": ct["sop"], "points": [[0, 0], [20, 10]]},
            {
                "kind": "angle",
                "series": ct["series"],
                "sop": ct["sop"],
                "points": [[0, 0], [10, 10], [20, 0]],
            },
        ],
    }
    study, items = parse_request(body)
    saved = svc.save(study, items, ORIGIN)
    got = saved["measurements"]
    assert got[0]["values"]["length"] == pytest.approx(300 * 0.45) and got[0]["units"]["length"] == "mm"
    assert got[0]["calibration"] == "PixelSpacing"
    roi = got[1]["values"]
    assert roi["mean"] == pytest.approx(35, abs=1) and roi["sd"] < 1 and got[1]["units"]["mean"] == "HU"
    assert roi["area"] == pytest.approx(math.pi * (15 * 0.45) ** 2) and got[1]["units"]["area"] == "mm2"
    assert got[2]["values"]["mean"] == -1000 and got[2]["values"]["area"] == pytest.approx(20 * 10 * 0.45**2)
    assert got[3]["values"]["angle"] == pytest.approx(90)

    # The stored object: a Comprehensive SR, TID 1500, in the study, readable by pydicom.
    (inst,) = archive.instances(study, saved["series"], saved["sop"])
    with archive.open(inst) as fh:
        sr = pydicom.dcmread(io.BytesIO(fh.read()))
    assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.Modality == "SR"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert sr.PatientName == "Nguyễn^Thị Hồng Nhung" and sr.StudyInstanceUID == study
    nums = [
        (item.ConceptNameCodeSequence[0].CodeValue, float(item.MeasuredValueSequence[0].NumericValue))
        for item in _walk(sr.ContentSequence)
        if item.ValueType == "NUM"
    ]
    assert ("410668003", pytest.approx(135.0)) in nums  # SCT Length, in mm
    assert any(code == "112031" and v == pytest.approx(35, abs=1) for code, v in nums)  # HU mean
    assert [m["kind"] for m in read_report(sr)] == ["length", "ellipse", "rectangle", "angle"]

    # Loaded back: the same measurements on the same images, values and tracking UIDs kept.
    loaded = svc.load(study)
    assert loaded["sop"] == saved["sop"]
    for before, after in zip(got, loaded["measurements"], strict=True):
        assert (
            after["kind"] == before["kind"] and after["sop"] == ct["sop"] and after["series"] == ct["series"]
        )
        assert after["uid"] == before["uid"]
        flat = [v for p in after["points"] for v in p]
        assert flat == pytest.approx([v for p in before["points"] for v in p], abs=1e-3)
        assert after["values"] == pytest.approx(before["values"], rel=1e-5)

    # A second report (one measurement deleted) replaces the first on loading.
    again = svc.save(study, parse_request({**body, "measurements": body["measurements"][:1]})[1], ORIGIN)
    assert again["series"] == saved["series"] and again["sop"] != saved["sop"]
    assert [m["kind"] for m in svc.load(study)["measurements"]] == ["length"]

    # Other images: a CR at the detector (ImagerPixelSpacing), the US region in cm; no report: empty.
    cr_m = svc.save(
        cr["study"],
        parse_request(
            {
                "study": cr["study"],
                "measurements": [
                    {
                        "kind": "length",
                        "series": cr["series"],
                        "sop": cr["sop"],
                        "points": [[0, 0], [0, 1000]],
                    }
                ],
            }
        )[1],
        ORIGIN,
    )
    assert cr_m["measurements"][0]["values"]["length"] == pytest.approx(175.0)
    assert cr_m["measurements"][0]["calibration"] == "ImagerPixelSpacing"
    us_m = svc.save(us["study"], parse_request({"study": us["study"], "measurements": [
        {"kind": "rectangle", "series": us["series"], "sop": us["sop"], "frame": 3,
         "points": [[10, 10], [110, 60]]}]})[1], ORIGIN)  # fmt: skip
    assert us_m["measurements"][0]["values"] == {"area": pytest.approx(100 * 50 * 0.16)}
    assert svc.load("1.2.3.4")["measurements"] == []


def _walk(items: Any) -> Iterator[Any]:
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"study": "x"},
        {"study": "1.2", "measurements": [{"kind": "circle"}]},
        {"study": "1.2", "measurements": [{"kind": "length", "series": "1", "sop": "2", "points": [[0, 0]]}]},
        {
            "study": "1.2",
            "measurements": [{"kind": "length", "series": "1", "sop": "2", "points": [[0, "a"], [1, 1]]}],
        },
    ],
)
def test_invalid_requests(body: Any) -> None:
    with pytest.raises(InvalidQuery):
        parse_request(body)
