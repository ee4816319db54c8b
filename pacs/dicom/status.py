"""THE table of DIMSE statuses, and the one map from domain results to every edge's answer.

Every status code the archive sends is named here once (PS3.7 Annex C for the general codes,
PS3.4 Annex B for Storage, C for Query/Retrieve, F for Modality Performed Procedure Step, J for
Storage Commitment), and :data:`ANSWERS` says, for each domain error of :mod:`pacs.errors`, what
each edge answers: the C-STORE status (also the STOW-RS FailureReason, PS3.18 10.5.3), the C-FIND
status, the C-MOVE / C-GET status, the N-CREATE and N-SET statuses, the (Storage Commitment)
N-ACTION status, and the HTTP status. Edges look answers up here (:func:`answer`); they never
pick a code of their own. ``tests/unit/test_status.py`` checks that every domain error has an
entry and that each code is one pynetdicom knows for its service.

Pure: stdlib, :mod:`pacs.errors` and :mod:`pacs.model` only (no pydicom, no pynetdicom).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pacs.errors import (
    DuplicateInstance,
    InvalidCommitment,
    InvalidInstance,
    InvalidOrder,
    InvalidQuery,
    MissingAttribute,
    NoPixelData,
    NotAcceptable,
    NotAuthorized,
    NotFound,
    PacsError,
    StepNotInProgress,
    StorageUnavailable,
    TooLarge,
)
from pacs.model import StoreOutcome

# ---------------------------------------------------------------- general (PS3.7 C.1 - C.5)

SUCCESS = 0x0000
CANCEL = 0xFE00  # PS3.7 C.3: the operation was cancelled (C-CANCEL)
PENDING = 0xFF00  # C-FIND: match supplied; C-MOVE / C-GET: sub-operations continuing
INVALID_ATTRIBUTE_VALUE = 0x0106  # PS3.7 C.5.8
PROCESSING_FAILURE = 0x0110  # PS3.7 C.5.10
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.5.11 (C-STORE: PS3.4 B.2.3)
NO_SUCH_OBJECT_INSTANCE = 0x0112  # PS3.7 C.5.12
NO_SUCH_SOP_CLASS = 0x0118  # PS3.7 C.5.18
MISSING_ATTRIBUTE = 0x0120  # PS3.7 C.5.20 (N-CREATE)
MISSING_ATTRIBUTE_VALUE = 0x0121  # PS3.7 C.5.21 (N-SET)
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5.23: Refused: Not authorized
RESOURCE_LIMITATION = 0x0213  # PS3.7 C.5.27

# ---------------------------------------------------------------- Storage, C-STORE (PS3.4 B.2.3)

OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (C-STORE; C-FIND too, PS3.4 C.4.1.1.4)
DATASET_DOES_NOT_MATCH = 0xA900  # Error: Data Set does not match SOP Class
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand
#: Cannot understand, the code pynetdicom itself answers when a handler fails: our handler
#: found no receive spool, or the archive raised something that is not a domain error.
HANDLER_FAILED = 0xC211
ELEMENTS_COERCED = 0xB000  # Warning: Coercion of Data Elements (also STOW-RS WarningReason)

# ---------------------------------------------------------------- Query/Retrieve (PS3.4 C.4)

PENDING_WARNING = 0xFF01  # C-FIND pending: one or more optional keys not supported (C.4.1.1.4)
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # C-FIND / C-MOVE / C-GET: Identifier does not match SOP Class
UNABLE_TO_PROCESS = 0xC000  # C-FIND / C-MOVE / C-GET: Unable to process
#: C-FIND final status when more matches exist than ``[dicom] max_find_results``: the pending
#: responses already sent hold the first matches; the Error Comment says the list was cut.
FIND_TOO_MANY_MATCHES = OUT_OF_RESOURCES
RETRIEVE_OUT_OF_RESOURCES = 0xA701  # C-MOVE / C-GET: Out of resources, unable to calculate matches
RETRIEVE_OUT_OF_RESOURCES_SUBOPS = 0xA702  # C-MOVE / C-GET: unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801  # C-MOVE (C.4.2.1.5)
SUB_OPERATIONS_WARNING = 0xB000  # C-MOVE / C-GET: sub-operations complete, one or more failures

# ---------------------------------------------------------------- MPPS (PS3.4 F.7.2.2.3)

#: Not a status: the Error ID sent with PROCESSING_FAILURE for "Performed Procedure Step Object
#: may no longer be updated".
PPS_NO_LONGER_UPDATABLE_ERROR_ID = 0xA710

# ---------------------------------------------------------------- Storage Commitment (PS3.4 J.3)

#: N-ACTION: the Action Information is not acceptable (no Transaction UID or no items, an
#: invalid UID, a Transaction UID already used), PS3.7 C.5.16.
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_ACTION = 0x0123  # N-ACTION: an Action Type ID other than 1 (PS3.4 J.3.2.1.1)
#: Failure Reason (0008,1197) of a Failed SOP Sequence item (PS3.3 C.14.1.1) besides
#: PROCESSING_FAILURE (the stored file is unreadable or not the one archived: hash mismatch) and
#: NO_SUCH_OBJECT_INSTANCE (not archived, or its file is missing): the instance is archived
#: under another SOP Class than the request names.
CLASS_INSTANCE_CONFLICT = 0x0119

#: The statuses each service answers with, by the name of pynetdicom's status table for it
#: (``pynetdicom.status``); the test checks each code is one that table knows.
SERVICE_CODES: dict[str, tuple[int, ...]] = {
    "VERIFICATION_SERVICE_CLASS_STATUS": (SUCCESS,),
    "STORAGE_SERVICE_CLASS_STATUS": (
        SUCCESS,
        ELEMENTS_COERCED,
        DUPLICATE_SOP_INSTANCE,
        OUT_OF_RESOURCES,
        DATASET_DOES_NOT_MATCH,
        CANNOT_UNDERSTAND,
        HANDLER_FAILED,
        NOT_AUTHORIZED,
    ),
    "QR_FIND_SERVICE_CLASS_STATUS": (
        SUCCESS,
        PENDING,
        PENDING_WARNING,
        CANCEL,
        OUT_OF_RESOURCES,
        FIND_TOO_MANY_MATCHES,
        IDENTIFIER_DOES_NOT_MATCH,
        UNABLE_TO_PROCESS,
        NOT_AUTHORIZED,
    ),
    "QR_MOVE_SERVICE_CLASS_STATUS": (
        SUCCESS,
        PENDING,
        CANCEL,
        RETRIEVE_OUT_OF_RESOURCES,
        RETRIEVE_OUT_OF_RESOURCES_SUBOPS,
        MOVE_DESTINATION_UNKNOWN,
        IDENTIFIER_DOES_NOT_MATCH,
        UNABLE_TO_PROCESS,
        SUB_OPERATIONS_WARNING,
        NOT_AUTHORIZED,
    ),
    "QR_GET_SERVICE_CLASS_STATUS": (
        SUCCESS,
        PENDING,
        CANCEL,
        RETRIEVE_OUT_OF_RESOURCES,
        RETRIEVE_OUT_OF_RESOURCES_SUBOPS,
        IDENTIFIER_DOES_NOT_MATCH,
        UNABLE_TO_PROCESS,
        SUB_OPERATIONS_WARNING,
        NOT_AUTHORIZED,
    ),
    "STORAGE_COMMITMENT_SERVICE_CLASS_STATUS": (
        SUCCESS,
        PROCESSING_FAILURE,
        NO_SUCH_OBJECT_INSTANCE,
        INVALID_ARGUMENT_VALUE,
        NO_SUCH_SOP_CLASS,
        CLASS_INSTANCE_CONFLICT,
        NO_SUCH_ACTION,
        NOT_AUTHORIZED,
        RESOURCE_LIMITATION,
    ),
    "PROCEDURE_STEP_STATUS": (
        SUCCESS,
        INVALID_ATTRIBUTE_VALUE,
        PROCESSING_FAILURE,
        DUPLICATE_SOP_INSTANCE,
        NO_SUCH_OBJECT_INSTANCE,
        NO_SUCH_SOP_CLASS,
        MISSING_ATTRIBUTE,
        MISSING_ATTRIBUTE_VALUE,
        RESOURCE_LIMITATION,
        NOT_AUTHORIZED,
    ),
}

# ---------------------------------------------------------------- HTTP (RFC 9110, PS3.18 10.5.3)

HTTP_OK = 200
HTTP_ACCEPTED = 202  # STOW-RS: some instances stored, some failed
HTTP_CONFLICT = 409  # STOW-RS: none stored
HTTP_CONTENT_TOO_LARGE = 413  # RFC 9110 15.5.14: over a configured size limit (upload, decoded object)
HTTP_SERVICE_UNAVAILABLE = 503  # the archive's own condition: send again later (with Retry-After)
HTTP_INTERNAL_ERROR = 500


@dataclass(frozen=True)
class Answers:
    """What each edge answers for one domain error."""

    c_store: int  # PS3.4 B.2.3; also the STOW-RS FailureReason (0008,1197)
    c_find: int  # PS3.4 C.4.1.1.4
    c_retrieve: int  # C-MOVE and C-GET, PS3.4 C.4.2.1.5 / C.4.3.1.4
    n_create: int  # PS3.4 F.7.2.1.3
    n_set: int  # PS3.4 F.7.2.2.3
    http: int
    n_action: int = PROCESSING_FAILURE  # Storage Commitment N-ACTION, PS3.4 J.3.2.1.3


#: Domain error -> the answer of every edge. A subclass not listed takes its nearest listed base.
ANSWERS: dict[type[PacsError], Answers] = {
    NotFound: Answers(
        CANNOT_UNDERSTAND,
        UNABLE_TO_PROCESS,
        UNABLE_TO_PROCESS,
        NO_SUCH_OBJECT_INSTANCE,
        NO_SUCH_OBJECT_INSTANCE,
        404,
    ),
    InvalidQuery: Answers(
        CANNOT_UNDERSTAND,
        IDENTIFIER_DOES_NOT_MATCH,
        IDENTIFIER_DOES_NOT_MATCH,
        PROCESSING_FAILURE,
        PROCESSING_FAILURE,
        400,
    ),
    InvalidInstance: Answers(
        CANNOT_UNDERSTAND,
        UNABLE_TO_PROCESS,
        UNABLE_TO_PROCESS,
        INVALID_ATTRIBUTE_VALUE,
        INVALID_ATTRIBUTE_VALUE,
        422,
    ),
    InvalidOrder: Answers(  # orders arrive over HL7 and REST only: HL7 answers AE (pacs.hl7)
        CANNOT_UNDERSTAND,
        UNABLE_TO_PROCESS,
        UNABLE_TO_PROCESS,
        PROCESSING_FAILURE,
        PROCESSING_FAILURE,
        422,
    ),
    MissingAttribute: Answers(  # listed before its base InvalidInstance by the MRO walk
        CANNOT_UNDERSTAND,
        UNABLE_TO_PROCESS,
        UNABLE_TO_PROCESS,
        MISSING_ATTRIBUTE,
        MISSING_ATTRIBUTE_VALUE,
        422,
    ),
    StepNotInProgress: Answers(  # N-SET adds the Error ID PPS_NO_LONGER_UPDATABLE_ERROR_ID
        CANNOT_UNDERSTAND,
        UNABLE_TO_PROCESS,
        UNABLE_TO_PROCESS,
        PROCESSING_FAILURE,
        PROCESSING_FAILURE,
        409,
    ),
    DuplicateInstance: Answers(
        DUPLICATE_SOP_INSTANCE,
        UNABLE_TO_PROCESS,
        UNABLE_TO_PROCESS,
        DUPLICATE_SOP_INSTANCE,
        DUPLICATE_SOP_INSTANCE,
        409,
    ),
    StorageUnavailable: Answers(
        OUT_OF_RESOURCES,
        OUT_OF_RESOURCES,
        RETRIEVE_OUT_OF_RESOURCES,
        RESOURCE_LIMITATION,
        RESOURCE_LIMITATION,
        HTTP_SERVICE_UNAVAILABLE,
        n_action=RESOURCE_LIMITATION,
    ),
    NotAuthorized: Answers(
        NOT_AUTHORIZED, NOT_AUTHORIZED, NOT_AUTHORIZED, NOT_AUTHORIZED, NOT_AUTHORIZED, 403, NOT_AUTHORIZED
    ),
    InvalidCommitment: Answers(  # storage commitment arrives over DIMSE N-ACTION only
        CANNOT_UNDERSTAND,
        UNABLE_TO_PROCESS,
        UNABLE_TO_PROCESS,
        PROCESSING_FAILURE,
        PROCESSING_FAILURE,
        422,
        n_action=INVALID_ARGUMENT_VALUE,
    ),
    NotAcceptable: Answers(
        CANNOT_UNDERSTAND, UNABLE_TO_PROCESS, UNABLE_TO_PROCESS, PROCESSING_FAILURE, PROCESSING_FAILURE, 406
    ),
    NoPixelData: Answers(
        CANNOT_UNDERSTAND, UNABLE_TO_PROCESS, UNABLE_TO_PROCESS, PROCESSING_FAILURE, PROCESSING_FAILURE, 404
    ),
    # Over a configured limit (decoded pixel data per instance or request): out of resources on
    # DIMSE (a C-MOVE / C-GET sub-operation is a counted failure instead, see services/retrieve.py).
    TooLarge: Answers(
        OUT_OF_RESOURCES,
        OUT_OF_RESOURCES,
        RETRIEVE_OUT_OF_RESOURCES_SUBOPS,
        RESOURCE_LIMITATION,
        RESOURCE_LIMITATION,
        HTTP_CONTENT_TOO_LARGE,
        n_action=RESOURCE_LIMITATION,
    ),
    # Any other domain error (a service's own subclass of PacsError).
    PacsError: Answers(
        CANNOT_UNDERSTAND,
        UNABLE_TO_PROCESS,
        UNABLE_TO_PROCESS,
        PROCESSING_FAILURE,
        PROCESSING_FAILURE,
        HTTP_INTERNAL_ERROR,
    ),
}


@dataclass(frozen=True)
class StoreAnswers:
    """What the store edges answer for a store outcome."""

    c_store: int  # the C-STORE response status
    stow_warning: int | None  # the STOW-RS WarningReason (0008,1196) of the instance, if any


#: Store outcome -> answers. Stored, identical duplicate (already safe), replaced and kept as a
#: new version (nothing lost, nothing changed in what was sent) are all a C-STORE success;
#: STOW-RS flags a replaced object with a coercion warning.
STORE_OUTCOMES: dict[StoreOutcome, StoreAnswers] = {
    StoreOutcome.STORED: StoreAnswers(SUCCESS, None),
    StoreOutcome.DUPLICATE: StoreAnswers(SUCCESS, None),
    StoreOutcome.REPLACED: StoreAnswers(SUCCESS, ELEMENTS_COERCED),
    StoreOutcome.VERSIONED: StoreAnswers(SUCCESS, None),
}


def answer(exc: PacsError) -> Answers:
    """The answers of every edge to a domain error (its nearest listed class)."""
    for cls in type(exc).__mro__:
        found = ANSWERS.get(cls)
        if found is not None:
            return found
    return ANSWERS[PacsError]


def stow_failure_reason(error: PacsError | None, *, study_mismatch: bool = False) -> int:
    """The STOW-RS FailureReason of a refused instance (PS3.18 10.5.3): its C-STORE status; an
    instance of another study than the request's path is 0xA900 (does not match)."""
    if study_mismatch:
        return DATASET_DOES_NOT_MATCH
    return answer(error).c_store if error is not None else CANNOT_UNDERSTAND


def stow_http_status(stored: int, failures: Sequence[PacsError | None]) -> int:
    """The HTTP status of a STOW-RS response (PS3.18 10.5.3): 200 when everything was stored,
    202 when some was, else 409; 503 when nothing was stored only because of the archive's own
    condition (every failure answers 503: the client should send again later)."""
    if not failures:
        return HTTP_OK
    if stored:
        return HTTP_ACCEPTED
    if all(e is not None and answer(e).http == HTTP_SERVICE_UNAVAILABLE for e in failures):
        return HTTP_SERVICE_UNAVAILABLE
    return HTTP_CONFLICT
