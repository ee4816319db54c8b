"""Generate the synthetic sample studies in ``sample_dicom/`` (deterministic: fixed UIDs, seeds, codecs).

Run from the repository root::

    .venv/bin/python scripts/make_samples.py [--out sample_dicom]

Five studies for three patients, every header in UTF-8 (``ISO_IR 192``) with Vietnamese names:

* ``ct_head/``  CT head of 10/03/2025, 512x512, PixelSpacing 0.45 mm, JPEG-LS Lossless: series 2,
  64 axial slices of 2.5 mm (brain window), and series 3, 32 slices of 5 mm (bone window) in the
  same Frame of Reference. The phantom (:func:`ct_head_slice`) is in Hounsfield units: air -1000,
  scalp +40, skull +1000 (diploe +650), CSF +5 (ventricles) / +8 (sulci), cortex +42, white matter
  +35, a +65 HU lesion 7 mm in radius; :data:`UNIFORM_REGION` is exactly +35 HU (ROI tests);
* ``ct_head_prior/`` the same patient's CT head of 10/02/2025 (the prior): 32 slices of 5 mm, its own
  Frame of Reference, the table 12 mm further, the lesion 5 mm in radius;
* ``mr_brain/``  MR brain T1, 12 slices 128x128, same patient, RLE Lossless;
* ``cr_chest/``  CR chest PA, 2000x2500, ImagerPixelSpacing 0.175 mm, MONOCHROME1, JPEG-LS Lossless;
* ``us_abdomen/`` US cine, 30 frames 360x480, JPEG Baseline (YBR_FULL_422, lossy as scanners send it),
  with an ultrasound region calibration (0.4 mm a pixel).

The phantoms are noise-free: lossless JPEG-LS keeps them small, and ROI values are exact. UIDs are
derived from fixed strings (``2.25`` + hash, PS3.5 B.2), so re-running produces the same SOP
Instance UIDs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
)

IMPLEMENTATION_CLASS_UID = UID("2.25.121038856505597671843989960980704295441")


def uid(*parts: object) -> UID:
    """A deterministic UID from fixed strings: ``2.25.`` + a 128-bit hash as a decimal (PS3.5 B.2)."""
    digest = hashlib.sha256("/".join(["pacs-sample", *map(str, parts)]).encode()).digest()
    return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")


@dataclass(frozen=True)
class Patient:
    """Who the study belongs to, with Vietnamese identifiers."""

    name: str
    patient_id: str
    birth_date: str
    sex: str
    citizen_id: str  # CCCD: 12 digits
    insurance: str  # BHYT card code: 15 characters


PATIENTS = [
    Patient("Nguyễn^Thị Hồng Nhung", "BN2025000123", "19780412", "F", "001178004512", "DN4010123456789"),
    Patient("Trần^Văn Đức", "BN2025000456", "19520930", "M", "036052001987", "HT2360987654321"),
    Patient("Lê^Hoàng Phúc", "BN2025000789", "19910215", "M", "079091003344", "GD4790112233445"),
]

INSTITUTION = "Bệnh viện Đa khoa tỉnh Hà Nam"


def base(
    patient: Patient,
    *,
    study: str,
    series: str,
    sop_class: str,
    modality: str,
    study_description: str,
    series_description: str,
    accession: str,
    date: str,
    time: str,
    series_number: int,
    instance_number: int,
    station: str,
    manufacturer: str,
    model: str,
    serial: str,
    referring: str,
) -> Dataset:
    """The patient, study, series, equipment and instance modules shared by every sample."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid(study, series, instance_number)
    ds.StudyInstanceUID = uid(study)
    ds.SeriesInstanceUID = uid(study, series)
    ds.FrameOfReferenceUID = uid(study, series, "frame-of-reference")
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    # Patient (PS3.3 C.7.1.1)
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "BVDKHN"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    cccd = Dataset()
    cccd.PatientID = patient.citizen_id
    cccd.IssuerOfPatientID = "CCCD"
    cccd.TypeOfPatientID = "TEXT"
    bhyt = Dataset()
    bhyt.PatientID = patient.insurance
    bhyt.IssuerOfPatientID = "BHYT"
    bhyt.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([cccd, bhyt])
    # General Study (C.7.2.1)
    ds.StudyDate = date
    ds.StudyTime = time
    ds.AccessionNumber = accession
    ds.StudyID = accession[-4:]
    ds.StudyDescription = study_description
    ds.ReferringPhysicianName = referring
    ds.InstitutionName = INSTITUTION
    ds.InstitutionalDepartmentName = "Khoa Chẩn đoán hình ảnh"
    # General Series (C.7.3.1)
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.OperatorsName = "Phạm^Minh Tuấn"
    # General Equipment (C.7.5.1)
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.StationName = station
    ds.DeviceSerialNumber = serial
    ds.SoftwareVersions = "PACS-SAMPLE 1.0"
    # General Image / Acquisition
    ds.InstanceNumber = instance_number
    ds.ContentDate = date
    ds.ContentTime = time
    ds.AcquisitionDate = date
    ds.AcquisitionTime = time
    ds.AcquisitionDateTime = date + time
    ds.BurnedInAnnotation = "NO"
    return ds


def finish(ds: Dataset, path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> None:
    """Add file meta (PS3.10 7.1) and write ``ds`` as a Part-10 file; RLE is encoded here, other
    compressed syntaxes arrive encapsulated already (:func:`_jpegls`, :func:`make_us`)."""
    encapsulated = transfer_syntax not in (ExplicitVRLittleEndian, RLELossless)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax) if encapsulated else ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = "PACS_SAMPLE"
    meta.SourceApplicationEntityTitle = "MAKESAMPLES"
    ds.file_meta = meta
    if transfer_syntax == RLELossless:
        ds.compress(transfer_syntax, encoding_plugin="pydicom", generate_instance_uid=False)
        ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        ds.file_meta.ImplementationVersionName = "PACS_SAMPLE"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# ---------------------------------------------------------------------- phantoms


def small_head_phantom(size: int, z: float, rng: np.random.Generator) -> np.ndarray:
    """The MR's 128-pixel head in HU-like values; ``z`` in [-1, 1] from the skull base to the vertex."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    shrink = np.sqrt(max(0.05, 1 - z * z))
    a, b = 0.72 * shrink, 0.88 * shrink
    r = (x / a) ** 2 + (y / b) ** 2
    hu = np.full((size, size), -1000.0)
    hu[r <= 1.0] = 900.0  # cortical bone
    inner = (x / (a - 0.06)) ** 2 + (y / (b - 0.06)) ** 2
    hu[inner <= 1.0] = 35.0  # brain parenchyma
    grey = (x / (a - 0.1)) ** 2 + (y / (b - 0.1)) ** 2
    hu[(inner <= 1.0) & (grey > 1.0)] = 42.0  # cortex a little denser than white matter
    if -0.3 < z < 0.5:  # lateral ventricles (CSF)
        for cx in (-0.12, 0.12):
            v = ((x - cx) / 0.08) ** 2 + ((y + 0.05) / 0.28) ** 2
            hu[v <= 1.0] = 5.0
    if z > 0.2:  # a small hyperdense lesion, only visible in the brain window
        les = ((x - 0.3) / 0.07) ** 2 + ((y - 0.2) / 0.07) ** 2
        hu[les <= 1.0] = 70.0
    hu += rng.normal(0.0, 4.0, hu.shape) * (hu > -900)
    return hu


# ---------------------------------------------------------------------- CT head (512x512, HU)

CT_SIZE = 512
CT_SPACING = 0.45  # mm: a 230 mm field of view
#: A disc of white matter that is exactly +35 HU on the slices between z_min and z_max of the
#: current CT (the ROI tests draw inside it): centre (x, y) in patient mm (LPS), radius in mm.
UNIFORM_REGION = {"x": 35.0, "y": -15.0, "radius": 10.0, "z_min": 80.0, "z_max": 110.0, "hu": 35}
LESION = {"x": -38.0, "y": 25.0, "z": 95.0}


def _soft(inside: np.ndarray, width: float) -> np.ndarray:
    """0 outside, 1 inside, a smooth edge ``width`` wide (``inside`` is a signed distance-like map)."""
    return 1.0 / (1.0 + np.exp(-np.clip(inside / max(width, 1e-6), -30, 30)))


def ct_head_slice(z_mm: float, *, lesion_mm: float) -> np.ndarray:
    """One axial head slice in HU at height ``z_mm`` (0 = skull base, 160 = vertex), centred on the
    isocentre: columns run to the patient's left (+x), rows to the back (+y)."""
    c = (np.arange(CT_SIZE) - CT_SIZE / 2) * CT_SPACING  # pixel centres, as ImagePositionPatient says
    x, y = np.meshgrid(c, c)
    s = np.sqrt(max(0.05, 1 - ((z_mm - 70.0) / 102.0) ** 2))
    a, b = 74.0 * s, 92.0 * s

    def inside(t: float | np.ndarray) -> np.ndarray:
        """Within the head's outline shrunk by ``t`` mm."""
        return np.asarray((x / np.maximum(a - t, 1)) ** 2 + (y / np.maximum(b - t, 1)) ** 2 <= 1.0)

    theta = np.arctan2(y, x)
    hu = np.full((CT_SIZE, CT_SIZE), -1000.0)
    hu[inside(0)] = 40.0  # scalp
    hu[inside(5)] = 1000.0  # outer table
    hu[inside(7.5)] = 650.0  # diploe
    hu[inside(9.5)] = 1000.0  # inner table
    hu[inside(12)] = 8.0  # subarachnoid CSF
    gyri = 16.5 + 2.2 * np.sin(13 * theta + z_mm / 9.0) + 1.2 * np.sin(29 * theta - z_mm / 5.0)
    hu[inside(13.5)] = 42.0  # cortex
    hu[inside(gyri)] = 35.0  # white matter
    fissure = (np.abs(x) < 1.6) & (np.abs(y) > 38 * s)
    hu[fissure & inside(12)] = 8.0
    hu[(np.abs(x) < 0.7) & fissure & inside(12)] = 60.0  # falx
    if 58 <= z_mm <= 106:  # lateral ventricles
        k = np.sqrt(max(0.0, 1 - ((z_mm - 82) / 24) ** 2))
        for side in (-1, 1):
            body = ((x - side * 11) / (5.5 * k + 1)) ** 2 + ((y + 4) / (27 * k + 2)) ** 2 <= 1
            horn = ((x - side * 17) / (4 * k + 1)) ** 2 + ((y - 24) / (9 * k + 1)) ** 2 <= 1
            hu[body | horn] = 5.0
    if 42 <= z_mm < 58:  # third ventricle
        hu[(np.abs(x) < 2.2) & (np.abs(y) < 12)] = 5.0
    if 8 <= z_mm <= 34:  # sphenoid sinus (air) in the skull base
        hu[((x / 11) ** 2 + ((y + 30) / 8) ** 2) <= 1] = -1000.0
    dz = z_mm - LESION["z"]
    if abs(dz) < lesion_mm:
        r = np.sqrt(lesion_mm**2 - dz**2)
        hu[((x - LESION["x"]) ** 2 + (y - LESION["y"]) ** 2) <= r * r] = 65.0
    return hu


def _jpegls(ds: Dataset, frames: list[np.ndarray]) -> None:
    """Encapsulated JPEG-LS Lossless pixel data (PS3.5 A.4.3), one fragment a frame, SPIFF removed."""
    encoded = []
    for f in frames:
        data = bytes(imagecodecs.jpegls_encode(np.ascontiguousarray(f)))
        if data[2:4] == b"\xff\xe8":  # a SPIFF header: the stream proper starts at the next SOI
            data = data[data.index(b"\xff\xd8", 2) :]
        encoded.append(data)
    ds.PixelData = encapsulate(encoded, has_bot=len(encoded) > 1)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _ct_series(
    out: Path,
    folder: str,
    prefix: str,
    *,
    study: str,
    date: str,
    time: str,
    accession: str,
    series: str,
    series_number: int,
    description: str,
    slices: list[float],
    thickness: float,
    table_offset: float,
    lesion_mm: float,
    window: tuple[list[int], list[int], list[str]],
) -> int:
    """One axial CT head series: ``slices`` are anatomical heights; the table adds ``table_offset``."""
    p = PATIENTS[0]
    for i, z_mm in enumerate(slices):
        ds = base(
            p,
            study=study,
            series=series,
            sop_class=CTImageStorage,
            modality="CT",
            study_description="CT sọ não không tiêm thuốc cản quang",
            series_description=description,
            accession=accession,
            date=date,
            time=time,
            series_number=series_number,
            instance_number=i + 1,
            station="CT-PHONG2",
            manufacturer="GE MEDICAL SYSTEMS",
            model="Revolution EVO",
            serial="CT7412589",
            referring="Võ^Thanh Bình^^BS.",
        )
        ds.FrameOfReferenceUID = uid(study, "frame-of-reference")  # one per study: series align
        ds.PositionReferenceIndicator = "OM"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BodyPartExamined = "HEAD"
        ds.KVP = 120
        ds.ConvolutionKernel = "BONEPLUS" if "xương" in description else "STANDARD"
        _axial_slice(ds, CT_SIZE, CT_SPACING, thickness, z_mm + table_offset)
        ds.AcquisitionNumber = 1
        hu = ct_head_slice(z_mm, lesion_mm=lesion_mm)
        stored = np.clip(np.round(hu + 1024), 0, 4095).astype(np.uint16)
        _mono(ds, stored, bits_stored=16, photometric="MONOCHROME2")
        _jpegls(ds, [stored])
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth, ds.WindowCenterWidthExplanation = window
        finish(ds, out / folder / f"{prefix}{i + 1:03d}.dcm", JPEGLSLossless)
    return len(slices)


BRAIN = ([40, 500], [80, 2000], ["NAO", "XUONG"])
BONE = ([500, 40], [2000, 80], ["XUONG", "NAO"])


def make_ct(out: Path) -> int:
    """The current CT head (two series, one Frame of Reference) and the prior a month earlier."""
    n = _ct_series(
        out, "ct_head", "CT2_", study="ct-head", date="20250310", time="083015", accession="CT2025000123",
        series="axial", series_number=2, description="Sọ não 2.5mm trục",
        slices=[i * 2.5 for i in range(64)], thickness=2.5, table_offset=0.0, lesion_mm=7.0, window=BRAIN,
    )  # fmt: skip
    n += _ct_series(
        out, "ct_head", "CT3_", study="ct-head", date="20250310", time="083015", accession="CT2025000123",
        series="axial-bone", series_number=3, description="Sọ não 5mm cửa sổ xương",
        slices=[1.25 + i * 5.0 for i in range(32)], thickness=5.0, table_offset=0.0,
        lesion_mm=7.0, window=BONE,
    )  # fmt: skip
    n += _ct_series(
        out, "ct_head_prior", "CT", study="ct-head-prior", date="20250210", time="091240",
        accession="CT2025000077", series="axial", series_number=2, description="Sọ não 5mm trục",
        slices=[2.5 + i * 5.0 for i in range(32)], thickness=5.0, table_offset=12.0,
        lesion_mm=5.0, window=BRAIN,
    )  # fmt: skip
    return n


# ---------------------------------------------------------------------- CR chest (2000x2500)

CR_ROWS, CR_COLS, CR_SPACING = 2500, 2000, 0.175  # a 35 x 43.75 cm cassette


def _segment_distance(
    x: np.ndarray, y: np.ndarray, p: tuple[float, float], q: tuple[float, float]
) -> np.ndarray:
    """Distance of each (x, y) to the segment p-q."""
    px, py = p
    dx, dy = q[0] - px, q[1] - py
    t = np.clip(((x - px) * dx + (y - py) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.asarray(np.hypot(x - px - t * dx, y - py - t * dy))


def chest_phantom() -> np.ndarray:
    """A PA chest radiograph as attenuation (high = more tissue, shown white), 12-bit: the patient's
    right on the image's left; soft tissue, lungs with hilar vessels, heart, spine, ribs, clavicles,
    diaphragm and a gastric bubble, all with smooth edges."""
    yy = np.arange(CR_ROWS, dtype=np.float32)[:, None] * CR_SPACING  # mm from the top
    xx = (np.arange(CR_COLS, dtype=np.float32)[None, :] - CR_COLS / 2) * CR_SPACING  # mm from the midline
    x = np.broadcast_to(xx, (CR_ROWS, CR_COLS))
    y = np.broadcast_to(yy, (CR_ROWS, CR_COLS))
    half = np.interp(yy, [0, 45, 110, 300, 440], [58, 62, 166, 158, 150]).astype(np.float32)
    thick = np.sqrt(np.clip(1 - (x / half) ** 2, 0, 1))
    img = 150 + 1700 * thick * _soft(half - np.abs(x), 2.0)
    ax = np.abs(x)
    dome = 318 + 0.0016 * (ax - 20) ** 2 + np.where(x < 0, -12.0, 0.0)  # the right dome is higher
    lungs = np.zeros_like(img)
    for side in (-1, 1):
        u = (side * x - 80) / 62
        v = (y - 215) / 150
        lungs += _soft(1 - (u**2 + v**2) ** 1.6, 0.08) * _soft(dome - y, 3.0)
    img -= 950 * lungs
    heart = _soft(1 - ((x - 22) / 92) ** 2 - ((y - 268) / 70) ** 2, 0.06)
    img += 620 * heart * _soft(dome + 8 - y, 4.0)
    img += 300 * _soft(1 - ((x + 4) / 30) ** 2 - ((y - 150) / 110) ** 2, 0.1)  # mediastinum
    spine = _soft(20 - ax, 1.5)
    img += spine * (330 + 60 * np.cos(2 * np.pi * y / 27.0))  # vertebral bodies and discs
    trachea = _soft(8 - ax, 1.5) * _soft(y - 10, 3) * _soft(185 - y, 5)
    img -= 260 * trachea
    img += 650 * _soft(y - dome, 6.0) * _soft(half - 6 - ax, 6.0) * (y > 250)  # liver and spleen
    img -= 380 * _soft(1 - ((x - 70) / 30) ** 2 - ((y - dome - 22) / 16) ** 2, 0.1)  # gastric bubble
    ribs = np.zeros_like(img)
    for k in range(10):
        for side in (-1, 1):
            centre = 88 + k * 23.5 + 0.0028 * (ax - 22) ** 2  # posterior ribs fall laterally
            band = _soft(4.8 - np.abs(y - centre), 0.8)
            ribs = np.maximum(ribs, band * _soft(side * x - 22, 2) * _soft(half - 10 - ax, 4))
    img += 270 * ribs * (y < 360)
    for side in (-1, 1):
        d = _segment_distance(x, y, (side * 18.0, 104.0), (side * 142.0, 78.0))
        img += 330 * _soft(6.5 - d, 0.8)  # clavicles
    for side in (-1, 1):  # hilar vessels branching into each lung
        hx, hy = side * 48.0, 200.0
        for n in range(9):
            ang = np.deg2rad(-150 + n * 33.0)
            length = 85.0 - 4 * abs(n - 4)
            tip = (hx + side * abs(np.cos(ang)) * length, hy + np.sin(ang) * length)
            d = _segment_distance(x, y, (hx, hy), tip)
            width = 3.2 - 0.2 * abs(n - 4)
            img += 140 * np.exp(-((d / width) ** 2)) * lungs
    return np.asarray(np.clip(np.round(img), 0, 4095), dtype=np.uint16)


def make_cr(out: Path) -> int:
    """CR chest PA, MONOCHROME1 (minimum value displayed white), JPEG-LS Lossless."""
    p = PATIENTS[1]
    ds = base(
        p,
        study="cr-chest",
        series="pa",
        sop_class=ComputedRadiographyImageStorage,
        modality="CR",
        study_description="X-quang ngực thẳng",
        series_description="Ngực thẳng PA",
        accession="XQ2025001877",
        date="20250311",
        time="094522",
        series_number=1,
        instance_number=1,
        station="XQ-PHONG3",
        manufacturer="FUJIFILM Corporation",
        model="FCR PROFECT CS",
        serial="FCR55321",
        referring="Đặng^Quốc Huy^^BS.",
    )
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.KVP = 110
    ds.ExposureInuAs = 3200
    ds.ImagerPixelSpacing = [CR_SPACING, CR_SPACING]
    ds.PatientOrientation = ["L", "F"]
    stored = (4095 - chest_phantom()).astype(np.uint16)
    _mono(ds, stored, bits_stored=16, photometric="MONOCHROME1")
    _jpegls(ds, [stored])
    ds.WindowCenter = 2600
    ds.WindowWidth = 2600
    finish(ds, out / "cr_chest" / "CR001.dcm", JPEGLSLossless)
    return 1


# ---------------------------------------------------------------------- US cine (JPEG baseline)

US_ROWS, US_COLS, US_FRAMES, US_DELTA_CM = 360, 480, 30, 0.04


def us_frames(rng: np.random.Generator) -> list[np.ndarray]:
    """RGB frames of a liver scan: a curvilinear sector of speckle drifting with breathing, an
    anechoic gallbladder, and a portal vein whose colour Doppler alternates with the pulse."""
    rows, cols = US_ROWS, US_COLS
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cx, apex = cols / 2, -60.0
    angle = np.arctan2(x - cx, y - apex)
    radius = np.hypot(x - cx, y - apex)
    sector = (np.abs(angle) < 0.62) & (radius < rows + 40) & (radius > 75)
    # Speckle is longer across the beam than along it: one draw per 2x3 pixels, repeated.
    coarse = rng.rayleigh(1.0, ((rows + 16) // 2, cols // 3)).astype(np.float32)
    base_speckle = np.repeat(np.repeat(coarse, 2, axis=0), 3, axis=1)
    texture = 0.8 + 0.2 * np.sin(x / 17.0) * np.cos(y / 23.0)
    gain = np.clip(1.15 - radius / (rows * 2.2), 0.3, 1.2)
    frames = []
    for t in range(US_FRAMES):
        shift = round(float(6 + 5 * np.sin(2 * np.pi * t / US_FRAMES)))  # breathing
        speckle = base_speckle[shift : shift + rows]
        echo = 70.0 * texture * gain * speckle
        gb = ((x - cx + 90) / 55) ** 2 + ((y - 150 - shift * 0.6) / 30) ** 2 <= 1
        echo[gb] *= 0.06
        echo[gb & (np.abs(y - 150 - shift * 0.6 - 30) < 4)] += 90  # bright posterior wall
        r = 16 + 3 * np.sin(2 * np.pi * t / 10)
        vein = np.hypot(x - cx - 40, y - 230 - shift * 0.6) < r
        echo[vein] *= 0.1
        grey = np.clip(echo, 0, 255) * sector
        rgb = np.stack([grey, grey, grey], axis=-1)
        flow = vein & sector & (np.hypot(x - cx - 40, y - 230 - shift * 0.6) < r * 0.7)
        rgb[flow] = (205, 40, 30) if t % 10 < 5 else (30, 70, 215)
        rgb[6:14, 8:60] = 220  # a marker bar (no burned-in text)
        frames.append(rgb.astype(np.uint8))
    return frames


def make_us(out: Path) -> int:
    """US abdomen cine: 30 frames at 30 frames/s, JPEG Baseline YCbCr 4:2:2 (YBR_FULL_422)."""
    p = PATIENTS[2]
    rng = np.random.default_rng(20250104)
    ds = base(
        p,
        study="us-abdomen",
        series="cine",
        sop_class=UltrasoundMultiFrameImageStorage,
        modality="US",
        study_description="Siêu âm ổ bụng tổng quát",
        series_description="Gan mật - cine",
        accession="SA2025003310",
        date="20250313",
        time="160502",
        series_number=1,
        instance_number=1,
        station="SA-PHONG5",
        manufacturer="Philips",
        model="EPIQ 5",
        serial="US099812",
        referring="Bùi^Thị Lan^^BS.",
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    ds.BodyPartExamined = "ABDOMEN"
    ds.NumberOfFrames = US_FRAMES
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 33.3
    ds.CineRate = 30
    ds.RecommendedDisplayFrameRate = 30
    ds.Rows, ds.Columns = US_ROWS, US_COLS
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    region = Dataset()  # US Region Calibration (PS3.3 C.8.5.5): what a length is in cm
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = US_COLS - 1, US_ROWS - 1
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = US_DELTA_CM
    region.PhysicalDeltaY = US_DELTA_CM
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    encoded = []
    raw = 0
    for frame in us_frames(rng):
        buf = io.BytesIO()
        Image.fromarray(frame, "RGB").save(buf, "JPEG", quality=85, subsampling=1, optimize=True)
        encoded.append(buf.getvalue())
        raw += frame.nbytes
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{raw / sum(map(len, encoded)):.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate(encoded, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    finish(ds, out / "us_abdomen" / "US001.dcm", JPEGBaseline8Bit)
    return 1


# ---------------------------------------------------------------------- MR (unchanged since issue 5)


def _axial_slice(ds: Dataset, size: int, spacing: float, thickness: float, z_mm: float) -> None:
    """Geometry of one axial head slice (patient head first supine, centred on the z axis)."""
    ds.SliceThickness = thickness
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = [-size * spacing / 2, -size * spacing / 2, z_mm]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = z_mm
    ds.PixelSpacing = [spacing, spacing]


def make_mr(out: Path) -> int:
    """MR brain T1 (same patient as the CT), RLE Lossless."""
    p = PATIENTS[0]
    rng = np.random.default_rng(20250102)
    n, size, spacing, thickness = 12, 128, 1.8, 6.0
    for i in range(n):
        z_mm = -40.0 + i * thickness
        ds = base(
            p,
            study="mr-brain",
            series="t1-axial",
            sop_class=MRImageStorage,
            modality="MR",
            study_description="MRI sọ não có tiêm thuốc đối quang từ",
            series_description="T1 trục",
            accession="MR2025000045",
            date="20250312",
            time="141000",
            series_number=3,
            instance_number=i + 1,
            station="MR-PHONG1",
            manufacturer="SIEMENS",
            model="MAGNETOM Amira",
            serial="MR40188",
            referring="Võ^Thanh Bình^^BS.",
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "SP"
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 500.0
        ds.EchoTime = 12.0
        ds.MagneticFieldStrength = 1.5
        _axial_slice(ds, size, spacing, thickness, z_mm)
        hu = small_head_phantom(size, (i - (n - 1) / 2) / ((n - 1) / 2) * 0.9, rng)
        # T1-like contrast: fat/bone marrow bright rim, white matter > grey matter > CSF, air dark.
        sig = np.select([hu < -500, hu > 500, hu < 15, hu > 60], [0, 380, 120, 900], 640.0)
        sig = sig + np.where(sig > 0, rng.normal(0, 12, sig.shape), rng.rayleigh(6, sig.shape))
        stored = np.clip(np.round(sig), 0, 4095).astype(np.uint16)
        _mono(ds, stored, bits_stored=12, photometric="MONOCHROME2")
        ds.WindowCenter = 500
        ds.WindowWidth = 1000
        finish(ds, out / "mr_brain" / f"MR{i + 1:03d}.dcm", RLELossless)
    return n


def _mono(ds: Dataset, stored: np.ndarray, *, bits_stored: int, photometric: str) -> None:
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = stored.astype("<u2").tobytes()


def main(argv: list[str] | None = None) -> int:
    """Write every sample study under ``--out`` (replacing what was there)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "sample_dicom")
    args = parser.parse_args(argv)
    out: Path = args.out
    for sub in ("ct_head", "ct_head_prior", "mr_brain", "cr_chest", "us_abdomen"):
        shutil.rmtree(out / sub, ignore_errors=True)
    counts = {"CT": make_ct(out), "MR": make_mr(out), "CR": make_cr(out), "US": make_us(out)}
    total = sum(f.stat().st_size for f in out.rglob("*.dcm"))
    print(f"wrote {sum(counts.values())} files ({counts}) to {out}, {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
