"""Small factories for test DICOM objects (Part-10 bytes or datasets)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def make_dataset(
    *,
    patient_name: str = "Nguyễn^Văn An",
    patient_id: str = "PID001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    modality: str = "CT",
    study_date: str = "20250110",
    study_time: str = "101500",
    accession: str = "ACC001",
    instance_number: int = 1,
    series_number: int = 1,
    rows: int = 16,
    columns: int = 16,
    charset: str = "ISO_IR 192",
    pixels: np.ndarray | None = None,
    sop_class_uid: str = CTImageStorage,
    **extra: Any,
) -> Dataset:
    """A small but valid image dataset (signed 16-bit, CT-like) with file meta."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "M"
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "Trần^Thị Bình"
    ds.StudyDescription = "CT sọ não"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "Axial"
    ds.InstanceNumber = instance_number
    ds.Manufacturer = "ACME"
    ds.StationName = "CT01"
    ds.DeviceSerialNumber = "SN-1234"
    ds.AcquisitionDate = study_date
    ds.AcquisitionTime = study_time
    if pixels is None:
        pixels = (np.arange(rows * columns, dtype=np.int16).reshape(rows, columns) * 4) - 200
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """Encode a dataset with file meta as a Part-10 file."""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write(ds: Dataset, path: Path) -> Path:
    """Write a dataset as a Part-10 file."""
    ds.save_as(path, enforce_file_format=True)
    return path
