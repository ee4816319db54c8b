"""DIMSE status datasets: a status code with its Error Comment (PS3.7 C.4).

The codes, and the map from domain results and errors to them, are the one table
:mod:`pacs.dicom.status`. The names below are re-exported from there for ``pacs.scp.qr``.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from pacs.dicom.status import (
    CANCEL,
    FIND_TOO_MANY_MATCHES,
    PENDING,
    PENDING_WARNING,
    SUCCESS,
    UNABLE_TO_PROCESS,
    answer,
)
from pacs.errors import PacsError

__all__ = [
    "CANCEL",
    "FIND_TOO_MANY_MATCHES",
    "PENDING",
    "PENDING_WARNING",
    "SUCCESS",
    "UNABLE_TO_PROCESS",
    "comment",
    "dataset",
    "for_query_error",
]


def for_query_error(exc: PacsError) -> int:
    """The C-FIND failure status of a domain error (``answer(exc).c_find``; for C-MOVE / C-GET
    the table's ``answer(exc).c_retrieve``)."""
    return answer(exc).c_find


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
