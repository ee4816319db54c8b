"""Measurement reports: the viewer's measurements as a DICOM SR, and back (PS3.16 TID 1500).

The viewer posts a JSON description (:func:`parse_request`): for each measurement its kind
(``length``, ``angle``, ``ellipse``, ``rectangle``), the image it was drawn on (series, instance,
frame) and its points in image pixel coordinates (column, row; 0,0 the top left corner of the top
left pixel, as SCOORD GraphicData, PS3.3 C.18.6.1.2). Values are computed here, from the stored
instance, not taken from the client: lengths and areas from Pixel Spacing, Imager Pixel Spacing or
the ultrasound region calibration (:func:`calibration`), ROI statistics from the decoded frame
with the Modality LUT applied (HU for CT).

:class:`MeasurementReports` builds a Comprehensive SR (TID 1500 Measurement Report, one TID 1410
Measurement Group per measurement, each with its SCOORD and the image it was SELECTED FROM), stores
it through the STOW-RS service (the archive's one store path) in one measurement series per study,
and reads the newest report of a study back as the same JSON (:meth:`MeasurementReports.load`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from pacs.dicom import pixels
from pacs.errors import InvalidQuery, NotFound
from pacs.limits import DecodeBudget
from pacs.model import Origin, StoredInstance
from pacs.services.dicomweb import DicomWeb

COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")
KINDS = ("length", "angle", "ellipse", "rectangle")
#: Most measurements in one report, and points in one measurement.
MAX_MEASUREMENTS = 500
_POINTS = {"length": 2, "angle": 3, "ellipse": 2, "rectangle": 2}
SERIES_DESCRIPTION = "Measurements (PACS viewer)"
SERIES_NUMBER = 9901

# Coded concepts (PS3.16): (value, scheme, meaning).
Code = tuple[str, str, str]
REPORT: Code = ("126000", "DCM", "Imaging Measurement Report")
LANGUAGE: Code = ("121049", "DCM", "Language of Content Item and Descendants")
OBSERVER_TYPE: Code = ("121005", "DCM", "Observer Type")
PERSON: Code = ("121006", "DCM", "Person")
OBSERVER_NAME: Code = ("121008", "DCM", "Person Observer Name")
PROCEDURE: Code = ("121058", "DCM", "Procedure reported")
IMAGING_PROCEDURE: Code = ("363679005", "SCT", "Imaging procedure")
IMAGE_LIBRARY: Code = ("111028", "DCM", "Image Library")
IMAGE_LIBRARY_GROUP: Code = ("126200", "DCM", "Image Library Group")
IMAGING_MEASUREMENTS: Code = ("126010", "DCM", "Imaging Measurements")
GROUP: Code = ("125007", "DCM", "Measurement Group")
TRACKING_ID: Code = ("112039", "DCM", "Tracking Identifier")
TRACKING_UID: Code = ("112040", "DCM", "Tracking Unique Identifier")
IMAGE_REGION: Code = ("111030", "DCM", "Image Region")
SOURCE: Code = ("260753009", "SCT", "Source")
FINDING: Code = ("121071", "DCM", "Finding")
DERIVATION: Code = ("121401", "DCM", "Derivation")
CALIBRATION: Code = ("CALSRC", "99PACS", "Calibration source")  # private: what lengths rest on
LENGTH: Code = ("410668003", "SCT", "Length")
ANGLE: Code = ("1483009", "SCT", "Angle")
AREA: Code = ("42798000", "SCT", "Area")
ATTENUATION: Code = ("112031", "DCM", "Attenuation Coefficient")
STATISTICS: dict[str, Code] = {
    "mean": ("373098007", "SCT", "Mean"),
    "sd": ("386136009", "SCT", "Standard Deviation"),
    "min": ("255605001", "SCT", "Minimum"),
    "max": ("56851009", "SCT", "Maximum"),
}
UNITS: dict[str, Code] = {
    "mm": ("mm", "UCUM", "millimeter"),
    "mm2": ("mm2", "UCUM", "square millimeter"),
    "px": ("{pixel}", "UCUM", "pixel"),
    "px2": ("{pixel}2", "UCUM", "square pixel"),
    "deg": ("deg", "UCUM", "degree"),
    "HU": ("[hnsf'U]", "UCUM", "Hounsfield unit"),
    "": ("1", "UCUM", "no units"),
}
_UNIT_OF_CODE = {v[0]: k for k, v in UNITS.items()}
_STAT_OF_CODE = {v[0]: k for k, v in STATISTICS.items()}


@dataclass(frozen=True)
class Calibration:
    """Millimetres per pixel between rows and between columns, and where that came from."""

    row_mm: float | None
    col_mm: float | None
    source: str  # "PixelSpacing", "ImagerPixelSpacing", "US region", or "" (uncalibrated)

    @property
    def calibrated(self) -> bool:
        """Whether lengths are in mm."""
        return self.row_mm is not None and self.col_mm is not None


@dataclass
class Measurement:
    """One measurement on one frame: its geometry, computed values (with units) and tracking UID."""

    kind: str
    series_instance_uid: str
    sop_instance_uid: str
    frame: int
    points: list[tuple[float, float]]
    values: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    calibration: str = ""
    tracking_uid: str = ""
    label: str = ""

    def as_json(self) -> dict[str, Any]:
        """The JSON form the viewer posts and gets back."""
        return {
            "kind": self.kind,
            "series": self.series_instance_uid,
            "sop": self.sop_instance_uid,
            "frame": self.frame,
            "points": [list(p) for p in self.points],
            "values": {k: round(v, 4) for k, v in self.values.items()},
            "units": dict(self.units),
            "calibration": self.calibration,
            "uid": self.tracking_uid,
            "label": self.label,
        }


# ---------------------------------------------------------------- the viewer's JSON


def _uid_text(value: Any, what: str) -> str:
    text = str(value or "")
    if not text or len(text) > 64 or not all(c.isdigit() or c == "." for c in text):
        raise InvalidQuery(f"{what} must be a UID, not {text[:70]!r}")
    return text


def parse_request(body: Any) -> tuple[str, list[Measurement]]:
    """The study and measurements of a ``POST /api/measurements/sr`` body; raises :class:`InvalidQuery`."""
    if not isinstance(body, dict):
        raise InvalidQuery("the body must be a JSON object with 'study' and 'measurements'")
    study = _uid_text(body.get("study"), "study")
    items = body.get("measurements")
    if not isinstance(items, list) or len(items) > MAX_MEASUREMENTS:
        raise InvalidQuery(f"'measurements' must be a list of at most {MAX_MEASUREMENTS}")
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or item.get("kind") not in KINDS:
            raise InvalidQuery(f"measurement {n}: 'kind' must be one of {', '.join(KINDS)}")
        kind = str(item["kind"])
        points = item.get("points")
        if not isinstance(points, list) or len(points) != _POINTS[kind]:
            raise InvalidQuery(f"measurement {n}: a {kind} has {_POINTS[kind]} points")
        try:
            pts = [(float(p[0]), float(p[1])) for p in points]
            frame = int(item.get("frame") or 1)
        except (TypeError, ValueError, IndexError):
            raise InvalidQuery(f"measurement {n}: points are [column, row] numbers") from None
        if not all(math.isfinite(v) and abs(v) < 1e6 for p in pts for v in p) or frame < 1:
            raise InvalidQuery(f"measurement {n}: points out of range")
        tracking = str(item.get("uid") or "")
        out.append(
            Measurement(
                kind=kind,
                series_instance_uid=_uid_text(item.get("series"), f"measurement {n}: series"),
                sop_instance_uid=_uid_text(item.get("sop"), f"measurement {n}: sop"),
                frame=frame,
                points=pts,
                tracking_uid=_uid_text(tracking, "uid") if tracking else str(generate_uid()),
                label=str(item.get("label") or "")[:64],
            )
        )
    return study, out


# ---------------------------------------------------------------- geometry and statistics


def calibration(ds: Dataset) -> Calibration:
    """Pixel size in mm: Pixel Spacing (the patient), else Imager Pixel Spacing (the detector,
    magnification not corrected), else the first ultrasound region in cm (PS3.3 C.8.5.5)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2 and float(value[0]) > 0 and float(value[1]) > 0:
            return Calibration(float(value[0]), float(value[1]), keyword)
    for region in ds.get("SequenceOfUltrasoundRegions") or []:
        units = (region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection"))
        dx, dy = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
        if units == (3, 3) and dx and dy:  # 3: cm
            return Calibration(abs(float(dy)) * 10, abs(float(dx)) * 10, "US region")
    return Calibration(None, None, "")


def geometry(kind: str, points: list[tuple[float, float]], cal: Calibration) -> dict[str, float]:
    """Length (mm or px), angle (degrees) or area (mm² or px²) of a measurement."""
    sx, sy = (cal.col_mm, cal.row_mm) if cal.calibrated else (1.0, 1.0)
    assert sx is not None and sy is not None
    mm = [(c * sx, r * sy) for c, r in points]
    if kind == "length":
        return {"length": math.dist(mm[0], mm[1])}
    if kind == "angle":
        (ax, ay), (bx, by), (cx, cy) = mm
        a1 = math.atan2(ay - by, ax - bx)
        a2 = math.atan2(cy - by, cx - bx)
        deg = abs(math.degrees(a1 - a2)) % 360
        return {"angle": 360 - deg if deg > 180 else deg}
    w = abs(mm[1][0] - mm[0][0])
    h = abs(mm[1][1] - mm[0][1])
    return {"area": math.pi * w * h / 4 if kind == "ellipse" else w * h}


def region_mask(kind: str, points: list[tuple[float, float]], rows: int, cols: int) -> np.ndarray:
    """The pixels whose centres lie inside an ellipse or rectangle given by two opposite corners."""
    (c0, r0), (c1, r1) = points
    cl, cr = sorted((c0, c1))
    rt, rb = sorted((r0, r1))
    cc = np.arange(cols) + 0.5
    rr = np.arange(rows) + 0.5
    if kind == "rectangle":
        return np.asarray(((rr >= rt) & (rr <= rb))[:, None] & ((cc >= cl) & (cc <= cr))[None, :])
    a, b = max((cr - cl) / 2, 1e-6), max((rb - rt) / 2, 1e-6)
    u = ((cc - (cl + cr) / 2) / a) ** 2
    v = ((rr - (rt + rb) / 2) / b) ** 2
    return np.asarray(v[:, None] + u[None, :] <= 1.0)


def modality_values(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Stored values through the Modality LUT's Rescale Slope and Intercept (PS3.3 C.11.1)."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return stored.astype(np.float64) * slope + intercept


def statistics(values: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation (population), minimum and maximum under ``mask``; empty if none."""
    inside = values[mask]
    if not inside.size:
        return {}
    return {
        "mean": float(inside.mean()),
        "sd": float(inside.std()),
        "min": float(inside.min()),
        "max": float(inside.max()),
    }


# ---------------------------------------------------------------- the service


def _code(code: Code) -> Dataset:
    ds = Dataset()
    ds.CodeValue, ds.CodingSchemeDesignator, ds.CodeMeaning = code
    return ds


def _item(relationship: str, value_type: str, name: Code, **values: Any) -> Dataset:
    ds = Dataset()
    ds.RelationshipType = relationship
    ds.ValueType = value_type
    ds.ConceptNameCodeSequence = Sequence([_code(name)])
    for k, v in values.items():
        setattr(ds, k, v)
    return ds


def _code_item(relationship: str, name: Code, value: Code) -> Dataset:
    return _item(relationship, "CODE", name, ConceptCodeSequence=Sequence([_code(value)]))


def _num(name: Code, value: float, unit: str, derivation: Code | None = None) -> Dataset:
    mv = Dataset()
    mv.NumericValue = f"{value:.6g}"[:16]
    mv.MeasurementUnitsCodeSequence = Sequence([_code(UNITS[unit])])
    item = _item("CONTAINS", "NUM", name, MeasuredValueSequence=Sequence([mv]))
    if derivation is not None:
        item.ContentSequence = Sequence([_code_item("HAS CONCEPT MOD", DERIVATION, derivation)])
    return item


def _image_ref(inst: Dataset, frame: int) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = inst.SOPClassUID
    ref.ReferencedSOPInstanceUID = inst.SOPInstanceUID
    if int(inst.get("NumberOfFrames", 1) or 1) > 1:
        ref.ReferencedFrameNumber = frame
    return ref


def _scoord(m: Measurement, inst: Dataset) -> Dataset:
    """The SCOORD of a measurement, SELECTED FROM its image (PS3.3 C.18.6)."""
    (c0, r0), (c1, r1) = m.points[0], m.points[-1]
    if m.kind == "ellipse":
        cx, cy, a, b = (c0 + c1) / 2, (r0 + r1) / 2, abs(c1 - c0) / 2, abs(r1 - r0) / 2
        graphic, data = "ELLIPSE", [cx - a, cy, cx + a, cy, cx, cy - b, cx, cy + b]
    elif m.kind == "rectangle":
        graphic, data = "POLYLINE", [c0, r0, c1, r0, c1, r1, c0, r1, c0, r0]
    else:
        graphic, data = "POLYLINE", [v for p in m.points for v in p]
    image = _item(
        "SELECTED FROM", "IMAGE", SOURCE, ReferencedSOPSequence=Sequence([_image_ref(inst, m.frame)])
    )
    del image.ConceptNameCodeSequence  # an IMAGE by SELECTED FROM has no concept name
    scoord = _item(
        "CONTAINS", "SCOORD", IMAGE_REGION, GraphicType=graphic, GraphicData=[float(v) for v in data]
    )
    scoord.ContentSequence = Sequence([image])
    return scoord


def _from_scoord(graphic: str, data: list[float]) -> tuple[str, list[tuple[float, float]]] | None:
    """A measurement's kind and points back from its SCOORD (the inverse of :func:`_scoord`)."""
    pts = [(float(data[i]), float(data[i + 1])) for i in range(0, len(data) - 1, 2)]
    if graphic == "ELLIPSE" and len(pts) == 4:
        (left, _), (right, _), (_, top), (_, bottom) = pts
        return "ellipse", [(left, top), (right, bottom)]
    if graphic == "POLYLINE" and len(pts) == 5 and pts[0] == pts[4]:
        return "rectangle", [pts[0], pts[2]]
    if graphic == "POLYLINE" and len(pts) in (2, 3):
        return ("length" if len(pts) == 2 else "angle"), pts
    return None


def _series_uid(study: str) -> UID:
    """The measurement series of a study: one UID per study, made from it (PS3.5 B.2)."""
    digest = hashlib.sha256(f"pacs-measurements/{study}".encode()).digest()
    return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")


class MeasurementReports:
    """Build, store and read back TID 1500 measurement reports over the DICOMweb service."""

    def __init__(self, dicomweb: DicomWeb) -> None:
        self.dicomweb = dicomweb

    def _header(self, inst: StoredInstance) -> Dataset:
        with self.dicomweb.archive.open(inst) as fh:
            return pydicom.dcmread(fh, stop_before_pixels=True)

    def _frame_values(self, inst: StoredInstance, ds: Dataset, frame: int) -> np.ndarray:
        with self.dicomweb.archive.open(inst) as fh:
            info = pixels.locate(fh)
            pixels.check_frame_numbers(info, [frame])
            arr = pixels.decode_frame(fh, info, frame, DecodeBudget())
        if arr.ndim != 2:
            raise InvalidQuery("ROI statistics are for greyscale images")
        return modality_values(ds, arr)

    def compute(self, study: str, measurements: list[Measurement]) -> dict[str, Dataset]:
        """Fill in each measurement's values from its stored image; the image headers by SOP UID."""
        headers: dict[str, Dataset] = {}
        for m in measurements:
            if m.sop_instance_uid not in headers:
                (inst,) = self.dicomweb.instances(study, m.series_instance_uid, m.sop_instance_uid)
                headers[m.sop_instance_uid] = self._header(inst)
            ds = headers[m.sop_instance_uid]
            cal = calibration(ds)
            m.calibration = cal.source
            m.values = geometry(m.kind, m.points, cal)
            unit = "mm" if cal.calibrated else "px"
            m.units = {"length": unit, "area": unit + "2", "angle": "deg"}
            if m.kind in ("ellipse", "rectangle") and int(ds.get("SamplesPerPixel", 1)) == 1:
                (inst,) = self.dicomweb.instances(study, m.series_instance_uid, m.sop_instance_uid)
                values = self._frame_values(inst, ds, m.frame)
                mask = region_mask(m.kind, m.points, *values.shape)
                m.values.update(statistics(values, mask))
                stat_unit = "HU" if ds.get("Modality") == "CT" and "RescaleIntercept" in ds else ""
                m.units.update({k: stat_unit for k in STATISTICS})
            m.units = {k: v for k, v in m.units.items() if k in m.values}
        return headers

    def build(self, study: str, measurements: list[Measurement], observer: str = "") -> Dataset:
        """A Comprehensive SR (TID 1500) of computed ``measurements`` on images of ``study``."""
        headers = self.compute(study, measurements)
        first = next(iter(headers.values()), None)
        if first is None:
            (any_inst, *_) = self.dicomweb.instances(study)
            first = self._header(any_inst)
        now = dt.datetime.now()
        sr = Dataset()
        sr.SpecificCharacterSet = "ISO_IR 192"
        sr.SOPClassUID = COMPREHENSIVE_SR
        sr.SOPInstanceUID = generate_uid()
        for kw in (
            "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
            "OtherPatientIDsSequence", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
            "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
        ):  # fmt: skip
            if kw in first:
                sr[kw] = first[kw]
        sr.Modality = "SR"
        sr.SeriesInstanceUID = _series_uid(study)
        sr.SeriesNumber = SERIES_NUMBER
        sr.SeriesDescription = SERIES_DESCRIPTION
        sr.Manufacturer = "pacs"
        sr.InstanceNumber = int(now.strftime("%y%m%d%H%M")) % 2_000_000_000
        sr.ContentDate, sr.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
        sr.InstanceCreationDate, sr.InstanceCreationTime = sr.ContentDate, sr.ContentTime
        sr.ReferencedPerformedProcedureStepSequence = Sequence()
        sr.PerformedProcedureCodeSequence = Sequence()
        sr.CompletionFlag, sr.VerificationFlag = "PARTIAL", "UNVERIFIED"
        # SR Document Content (PS3.3 C.17.3): the root CONTAINER and the template
        sr.ValueType = "CONTAINER"
        sr.ConceptNameCodeSequence = Sequence([_code(REPORT)])
        sr.ContinuityOfContent = "SEPARATE"
        template = Dataset()
        template.MappingResource, template.TemplateIdentifier = "DCMR", "1500"
        sr.ContentTemplateSequence = Sequence([template])
        content = [
            _code_item("HAS CONCEPT MOD", LANGUAGE, ("vi", "RFC5646", "Vietnamese")),
            _code_item("HAS OBS CONTEXT", OBSERVER_TYPE, PERSON),
            _item("HAS OBS CONTEXT", "PNAME", OBSERVER_NAME, PersonName=observer or "Viewer^PACS"),
            _code_item("HAS CONCEPT MOD", PROCEDURE, IMAGING_PROCEDURE),
        ]
        library = _item("CONTAINS", "CONTAINER", IMAGE_LIBRARY, ContinuityOfContent="SEPARATE")
        group = _item("CONTAINS", "CONTAINER", IMAGE_LIBRARY_GROUP, ContinuityOfContent="SEPARATE")
        group.ContentSequence = Sequence(
            [
                _item("CONTAINS", "IMAGE", SOURCE, ReferencedSOPSequence=Sequence([_image_ref(h, 1)]))
                for h in headers.values()
            ]
        )
        for entry in group.ContentSequence:
            del entry.ConceptNameCodeSequence
        library.ContentSequence = Sequence([group])
        content.append(library)
        imaging = _item("CONTAINS", "CONTAINER", IMAGING_MEASUREMENTS, ContinuityOfContent="SEPARATE")
        imaging.ContentSequence = Sequence([self._group(n, m, headers) for n, m in enumerate(measurements)])
        content.append(imaging)
        sr.ContentSequence = Sequence(content)
        evidence = Dataset()  # Current Requested Procedure Evidence (PS3.3 C.17.2.3)
        evidence.StudyInstanceUID = study
        by_series: dict[str, list[Dataset]] = {}
        for h in headers.values():
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = h.SOPClassUID, h.SOPInstanceUID
            by_series.setdefault(str(h.SeriesInstanceUID), []).append(ref)
        series_items = []
        for uid, refs in by_series.items():
            s = Dataset()
            s.SeriesInstanceUID = uid
            s.ReferencedSOPSequence = Sequence(refs)
            series_items.append(s)
        evidence.ReferencedSeriesSequence = Sequence(series_items)
        sr.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence] if series_items else [])
        return sr

    @staticmethod
    def _group(n: int, m: Measurement, headers: dict[str, Dataset]) -> Dataset:
        """A TID 1410 Measurement Group: tracking, finding, the SCOORD, then the NUMs."""
        inst = headers[m.sop_instance_uid]
        group = _item("CONTAINS", "CONTAINER", GROUP, ContinuityOfContent="SEPARATE")
        group.ContentTemplateSequence = Sequence([Dataset()])
        group.ContentTemplateSequence[0].MappingResource = "DCMR"
        group.ContentTemplateSequence[0].TemplateIdentifier = "1410"
        items = [
            _item("HAS OBS CONTEXT", "TEXT", TRACKING_ID, TextValue=m.label or f"{m.kind} {n + 1}"),
            _item("HAS OBS CONTEXT", "UIDREF", TRACKING_UID, UID=m.tracking_uid),
            _scoord(m, inst),
        ]
        if m.calibration:
            items.append(_item("HAS PROPERTIES", "TEXT", CALIBRATION, TextValue=m.calibration))
        for key, name in (("length", LENGTH), ("angle", ANGLE), ("area", AREA)):
            if key in m.values:
                items.append(_num(name, m.values[key], m.units[key]))
        hu = m.units.get("mean") == "HU"
        for key, stat in STATISTICS.items():
            if key in m.values:  # CT: attenuation with its derivation; otherwise the statistic itself
                num = _num(ATTENUATION, m.values[key], "HU", stat) if hu else _num(stat, m.values[key], "")
                items.append(num)
        group.ContentSequence = Sequence(items)
        return group

    def save(self, study: str, measurements: list[Measurement], origin: Origin) -> dict[str, Any]:
        """Build the report and store it through STOW-RS; the stored UIDs and the measurements."""
        sr = self.build(study, measurements, observer=origin.user.replace(" ", "^"))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sr.SOPClassUID
        meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        sr.file_meta = meta
        buf = io.BytesIO()
        sr.save_as(buf, enforce_file_format=True)
        buf.seek(0)
        (outcome,) = self.dicomweb.store_instances(iter([buf]), study, origin)
        if outcome.error is not None:
            raise outcome.error
        return {
            "study": study,
            "series": str(sr.SeriesInstanceUID),
            "sop": str(sr.SOPInstanceUID),
            "measurements": [m.as_json() for m in measurements],
        }

    def load(self, study: str) -> dict[str, Any]:
        """The measurements of the newest measurement report of ``study`` (empty if there is none)."""
        try:
            found = self.dicomweb.instances(study, str(_series_uid(study)))
        except NotFound:
            return {"study": study, "sop": None, "measurements": []}
        newest: tuple[str, Dataset] | None = None
        for inst in found:
            ds = self._header(inst)
            key = f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}"
            if newest is None or key > newest[0]:
                newest = (key, ds)
        assert newest is not None
        ds = newest[1]
        return {"study": study, "sop": str(ds.SOPInstanceUID), "measurements": list(read_report(ds))}


def _walk(items: Any) -> Iterator[Dataset]:
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def _concept(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence") or []
    return str(seq[0].CodeValue) if seq else ""


def read_report(sr: Dataset) -> Iterator[dict[str, Any]]:
    """Each measurement group of a TID 1500 report as the viewer's JSON (kinds it can draw)."""
    series_of = {
        str(ref.ReferencedSOPInstanceUID): str(s.SeriesInstanceUID)
        for ev in sr.get("CurrentRequestedProcedureEvidenceSequence") or []
        for s in ev.get("ReferencedSeriesSequence") or []
        for ref in s.get("ReferencedSOPSequence") or []
    }
    for group in _walk(sr.get("ContentSequence")):
        if group.get("ValueType") != "CONTAINER" or _concept(group) != GROUP[0]:
            continue
        entry: dict[str, Any] = {"values": {}, "units": {}, "calibration": "", "label": "", "uid": ""}
        for item in _walk(group.get("ContentSequence")):
            concept, vt = _concept(item), item.get("ValueType")
            if vt == "SCOORD":
                shape = _from_scoord(str(item.GraphicType), list(item.GraphicData))
                images = [i for i in item.get("ContentSequence") or [] if i.get("ValueType") == "IMAGE"]
                if shape is None or not images:
                    continue
                ref = images[0].ReferencedSOPSequence[0]
                entry["kind"], points = shape
                entry["points"] = [list(p) for p in points]
                entry["sop"] = str(ref.ReferencedSOPInstanceUID)
                entry["series"] = series_of.get(entry["sop"], "")
                entry["frame"] = int(ref.get("ReferencedFrameNumber", 1) or 1)
            elif vt == "NUM" and item.get("MeasuredValueSequence"):
                mv = item.MeasuredValueSequence[0]
                unit = _UNIT_OF_CODE.get(str(mv.MeasurementUnitsCodeSequence[0].CodeValue), "")
                key = {LENGTH[0]: "length", ANGLE[0]: "angle", AREA[0]: "area"}.get(concept)
                mods = [i for i in item.get("ContentSequence") or [] if _concept(i) == DERIVATION[0]]
                if key is None and mods:
                    key = _STAT_OF_CODE.get(str(mods[0].ConceptCodeSequence[0].CodeValue))
                elif key is None:
                    key = _STAT_OF_CODE.get(concept)
                if key:
                    entry["values"][key] = float(mv.NumericValue)
                    entry["units"][key] = unit
            elif vt == "UIDREF" and concept == TRACKING_UID[0]:
                entry["uid"] = str(item.UID)
            elif vt == "TEXT" and concept == TRACKING_ID[0]:
                entry["label"] = str(item.TextValue)
            elif vt == "TEXT" and concept == CALIBRATION[0]:
                entry["calibration"] = str(item.TextValue)
        if "kind" in entry:
            yield entry
