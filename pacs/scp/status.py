"""Domain results and errors -> DIMSE status codes (PS3.4 Annex B, C; PS3.7 Annex C)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from pacs.errors import (
    DuplicateInstance,
    InvalidQuery,
    PacsError,
    StorageUnavailable,
)
from pacs.model import StoreOutcome

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_WARNING = 0xFF01  # C-FIND pending: one or more optional keys not supported (PS3.4 C.4.1.1.4)
CANCEL = 0xFE00
OUT_OF_RESOURCES_STORE = 0xA700  # C-STORE Refused: Out of Resources
DATASET_DOES_NOT_MATCH = 0xA900  # C-STORE Error: Data Set does not match SOP Class
CANNOT_UNDERSTAND = 0xC000  # C-STORE Error: Cannot understand
DUPLICATE_SOP_INSTANCE = 0x0111  # Duplicate SOP Instance (PS3.7 C.5.13)
FIND_OUT_OF_RESOURCES = 0xA700
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # C-FIND/MOVE/GET: Identifier does not match SOP Class
UNABLE_TO_PROCESS = 0xC000  # C-FIND: Unable to process
MOVE_DESTINATION_UNKNOWN = 0xA801
SUB_OPERATIONS_WARNING = 0xB000  # sub-operations complete, one or more failures
MOVE_OUT_OF_RESOURCES_SUBOPS = 0xA702
#: C-FIND final status when more matches exist than ``[dicom] max_find_results``: the pending
#: responses already sent hold the first matches; the Error Comment says the list was cut.
FIND_TOO_MANY_MATCHES = FIND_OUT_OF_RESOURCES


def for_store_outcome(outcome: StoreOutcome) -> int:
    """Success for stored, duplicate (already safe) and replaced instances."""
    return SUCCESS


_STORE_ERRORS: dict[type[PacsError], int] = {
    StorageUnavailable: OUT_OF_RESOURCES_STORE,
    DuplicateInstance: DUPLICATE_SOP_INSTANCE,
}
_QUERY_ERRORS: dict[type[PacsError], int] = {
    InvalidQuery: IDENTIFIER_DOES_NOT_MATCH,
    StorageUnavailable: FIND_OUT_OF_RESOURCES,
}


def for_store_error(exc: PacsError) -> int:
    """The C-STORE failure status of a domain error (anything else: 0xC000 Cannot understand)."""
    return _STORE_ERRORS.get(type(exc), CANNOT_UNDERSTAND)


def for_query_error(exc: PacsError) -> int:
    """The C-FIND / C-MOVE / C-GET failure status of a domain error (else 0xC000 Unable to process)."""
    return _QUERY_ERRORS.get(type(exc), UNABLE_TO_PROCESS)


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
