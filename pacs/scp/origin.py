"""The :class:`~pacs.model.Origin` of a DIMSE request: peer address and AE titles."""

from __future__ import annotations

from typing import Any

from pynetdicom import evt

from pacs.model import Origin


def origin_of(event: evt.Event, user: str = "") -> Origin:
    """The :class:`Origin` of a DIMSE event (peer address and AE titles)."""
    return assoc_origin(event.assoc, user)


def assoc_origin(assoc: Any, user: str = "") -> Origin:
    """The :class:`Origin` of an association (peer address and AE titles)."""
    return Origin(
        address=str(assoc.requestor.address),
        calling_ae=str(assoc.requestor.ae_title).strip(),
        called_ae=str(assoc.acceptor.ae_title).strip(),
        user=user,
        protocol="dimse",
    )
