"""The hand-packed file meta equals what pydicom writes for the same content, and reads back."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless

from pacs.dicom.meta import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    PREAMBLE,
    encode_file_meta,
    source_ae_title,
)


def build_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> FileMetaDataset:
    """The same file meta, built as a pydicom dataset (the reference)."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ae = source_ae_title(source_ae)
    if ae:
        meta.SourceApplicationEntityTitle = ae
    return meta


def _pydicom_bytes(*args: str) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    buf.write(PREAMBLE)
    write_file_meta_info(buf, build_file_meta(*args), enforce_standard=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "args",
    [
        (CTImageStorage, "1.2.3.4", ExplicitVRLittleEndian, "STORESCU"),  # even-length UID, 8-char AE
        (CTImageStorage, "1.2.3.45", JPEGLSLossless, "CT_SCANNER_01"),  # odd lengths pad
        (CTImageStorage, "1.2." + "9" * 60, ExplicitVRLittleEndian, ""),  # 64-char UID, no AE
        (CTImageStorage, "1.2.3", ExplicitVRLittleEndian, "  A_VERY_LONG_AE_TITLE  "),  # trimmed to 16
    ],
)
def test_encoded_meta_is_what_pydicom_writes(args: tuple[str, str, str, str]) -> None:
    ours = encode_file_meta(*args)
    assert ours == _pydicom_bytes(*args)
    fp = BytesIO(ours)
    read_preamble(fp, False)  # type: ignore[arg-type]
    meta = _read_file_meta_info(fp)  # type: ignore[arg-type]
    assert meta.MediaStorageSOPInstanceUID == args[1]
    assert meta.TransferSyntaxUID == args[2]
    assert fp.tell() == len(ours)
