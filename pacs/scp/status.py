"""DIMSE status datasets: a status code with its Error Comment (PS3.7 C.4).

The codes, and the map from domain results and errors to them, are the one table
:mod:`pacs.dicom.status`; this module only builds the datasets pynetdicom sends.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

__all__ = ["comment", "dataset"]


def comment(text: str) -> str:
    """An Error Comment value: no backslash (the LO value delimiter), at most 64 characters."""
    return text.replace("\\", "/")[:64]


def dataset(code: int, text: str = "") -> Dataset:
    """A status dataset with an Error Comment (truncated to the 64 characters LO allows)."""
    ds = Dataset()
    ds.Status = code
    if text:
        ds.ErrorComment = comment(text)
    return ds
