"""The DIMSE side of the federation: C-ECHO, C-FIND and C-MOVE to a ``kind = "dimse"`` peer as a
service user (PS3.4 C.4.1, C.4.2), for :mod:`pacs.services.federation` (which knows no
pynetdicom). Answers come back as DICOM JSON, so the same checks apply to every kind of peer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacs.config import PeerSettings
from pacs.dicom.status import PENDING, PENDING_WARNING, SUB_OPERATIONS_WARNING, SUCCESS
from pacs.services.federation.peers import PeerError

log = logging.getLogger("pacs.federation")
_PENDING = (PENDING, PENDING_WARNING)


class DimseFederation:
    """A :class:`pacs.services.federation.peers.DimseClient` over pynetdicom."""

    def __init__(self, ae_title: str) -> None:
        self.ae_title = ae_title

    def _associate(self, peer: PeerSettings, context: str, timeout: float) -> Any:
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(context)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = max(0.5, timeout)
        ae.connection_timeout = max(0.5, min(timeout, 10.0))
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
        if not assoc.is_established:
            raise PeerError(
                peer.name, f"association with {peer.ae_title}@{peer.host}:{peer.port} refused or failed"
            )
        return assoc

    def echo(self, peer: PeerSettings, timeout: float) -> None:
        assoc = self._associate(peer, Verification, timeout)
        try:
            status = assoc.send_c_echo()
            if not status or status.Status != SUCCESS:
                raise PeerError(peer.name, "C-ECHO failed")
        finally:
            assoc.release()

    def find(
        self, peer: PeerSettings, level: str, keys: dict[str, str], fields: Sequence[str], timeout: float
    ) -> list[dict[str, Any]]:
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        ds.SpecificCharacterSet = "ISO_IR 192"
        for kw in fields:
            if kw != "QueryRetrieveLevel" and tag_for_keyword(kw) is not None:
                setattr(ds, kw, [] if dictionary_VR(kw) == "SQ" else "")
        for kw, value in keys.items():
            setattr(ds, kw, value)
        assoc = self._associate(peer, StudyRootQueryRetrieveInformationModelFind, timeout)
        out: list[dict[str, Any]] = []
        try:
            for status, identifier in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
                if not status:
                    raise PeerError(peer.name, "no C-FIND response within the timeout", timeout=True)
                if status.Status in _PENDING and identifier is not None:
                    out.append(
                        identifier.to_json_dict(
                            bulk_data_threshold=1 << 20, bulk_data_element_handler=_no_bulk
                        )
                    )
                elif status.Status not in _PENDING and status.Status != SUCCESS:
                    raise PeerError(peer.name, f"C-FIND failed with status 0x{status.Status:04X}")
        finally:
            assoc.release()
        return out

    def move(self, peer: PeerSettings, study_uid: str, destination: str, timeout: float) -> tuple[int, int]:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = study_uid
        assoc = self._associate(peer, StudyRootQueryRetrieveInformationModelMove, timeout)
        completed = failed = 0
        try:
            for status, _ in assoc.send_c_move(ds, destination, StudyRootQueryRetrieveInformationModelMove):
                if not status:
                    raise PeerError(peer.name, "no C-MOVE response within the timeout", timeout=True)
                completed = int(getattr(status, "NumberOfCompletedSuboperations", completed) or completed)
                failed = int(getattr(status, "NumberOfFailedSuboperations", failed) or failed)
                if status.Status not in _PENDING and status.Status not in (SUCCESS, SUB_OPERATIONS_WARNING):
                    raise PeerError(peer.name, f"C-MOVE failed with status 0x{status.Status:04X}")
        finally:
            assoc.release()
        log.info(
            "C-MOVE study=%s from %s to %s: %d completed, %d failed",
            study_uid,
            peer.name,
            destination,
            completed,
            failed,
        )
        return completed, failed


def _no_bulk(_elem: Any) -> str:
    return ""
