"""Domain exceptions. Edges map them to DICOM statuses (scp/) or HTTP responses (web/)."""

from __future__ import annotations


class PacsError(Exception):
    """Base class of every domain error; ``str(exc)`` is a reason fit for a peer to read."""


class NotFound(PacsError):
    """The requested patient, study, series, instance or frame is not in the archive."""


class InvalidQuery(PacsError):
    """A query key, value or level that the query engine cannot accept."""


class InvalidInstance(PacsError):
    """A dataset that cannot be archived: unparsable, truncated, or with missing or invalid UIDs."""


class MissingAttribute(InvalidInstance):
    """A required attribute is absent or empty (e.g. MPPS type 1 attributes, PS3.4 F.7.2.1)."""


class InvalidOrder(PacsError):
    """An order, patient update or report the scheduled workflow cannot apply (a field missing or
    malformed, a change to an order that does not exist): nothing of it is written."""


class InvalidCommitment(PacsError):
    """A Storage Commitment request that is not taken (PS3.4 J.3.2): no Transaction UID or no
    items, an invalid UID, or a Transaction UID already used. Nothing of it is kept."""


class StepNotInProgress(PacsError):
    """An update to a procedure step that is already COMPLETED or DISCONTINUED (PS3.4 F.7.2.2)."""


class DuplicateInstance(PacsError):
    """A different object arrived under an SOP Instance UID already stored (policy ``reject``;
    under ``keep-versions``, one in another study or series than the stored instance)."""


class StorageUnavailable(PacsError):
    """The blob store or the index cannot take writes now (disk full, database down); retry later."""


class NotAcceptable(PacsError):
    """The stored object cannot be served in any representation the client accepts."""


class NotAuthorized(PacsError):
    """The caller may not do this: a service not granted to its AE title, a procedure step
    another AE created, or a route outside its role."""


class NoPixelData(PacsError):
    """The instance has no pixel data to render or frames to return."""


class TooLarge(PacsError):
    """A request or a decoded object over a configured limit (decompression bombs, huge frame lists)."""
