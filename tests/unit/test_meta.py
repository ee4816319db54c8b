"""The hand-packed file meta equals what pydicom writes for the same content, and reads back."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless

from pacs.dicom.meta import PREAMBLE, build_file_meta, encode_file_meta


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
