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


class DuplicateInstance(PacsError):
    """A different object arrived under an SOP Instance UID already stored (policy ``reject``)."""


class StorageUnavailable(PacsError):
    """The blob store or the index cannot take writes now (disk full, database down); retry later."""


class NotAcceptable(PacsError):
    """The stored object cannot be served in any representation the client accepts."""


class NoPixelData(PacsError):
    """The instance has no pixel data to render or frames to return."""
