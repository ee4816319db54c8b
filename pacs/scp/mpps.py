"""Modality Performed Procedure Step SCP (PS3.4 Annex F): N-CREATE and N-SET.

Thin edge: decode the attribute list, call the appraisal service, map its result or error to the
statuses of PS3.4 F.7.2.1.3 / F.7.2.2.3 (and PS3.7 C.5 for the general N-service codes).
"""

from __future__ import annotations

import logging
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from pacs.dicom import status as codes
from pacs.errors import PacsError, StepNotInProgress
from pacs.scp import status
from pacs.scp.contexts import STORAGE_TRANSFER_SYNTAXES, Extension
from pacs.scp.origin import origin_of
from pacs.services.appraisal import Appraisal

log = logging.getLogger("pacs.dimse.mpps")


def for_error(exc: PacsError, *, create: bool) -> Dataset:
    """The N-CREATE / N-SET failure status dataset of a domain error, with an Error Comment.

    The codes come from the status table (:mod:`pacs.dicom.status`); a step that is no longer
    in progress also carries its Error ID (PS3.4 F.7.2.2.3).
    """
    answers = codes.answer(exc)
    ds = status.dataset(answers.n_create if create else answers.n_set, str(exc))
    if isinstance(exc, StepNotInProgress):
        ds.ErrorID = codes.PPS_NO_LONGER_UPDATABLE_ERROR_ID
    return ds


def extension(appraisal: Appraisal) -> Extension:
    """Presentation context and handlers of the MPPS SCP."""

    def handle_n_create(event: evt.Event) -> tuple[Dataset | int, Dataset | None]:
        """N-CREATE: a procedure step starts (status IN PROGRESS)."""
        req = cast(N_CREATE, event.request)
        origin = origin_of(event)
        if str(req.AffectedSOPClassUID) != ModalityPerformedProcedureStep:
            return codes.NO_SUCH_SOP_CLASS, None
        try:
            uid = appraisal.create_step(str(req.AffectedSOPInstanceUID or ""), event.attribute_list, origin)
        except PacsError as exc:
            reply = for_error(exc, create=True)
            log.warning(
                "N-CREATE refused sop=%s from %s@%s: 0x%04X %s",
                req.AffectedSOPInstanceUID,
                origin.calling_ae,
                origin.address,
                reply.Status,
                exc,
            )
            return reply, None
        out = Dataset()
        if req.AffectedSOPInstanceUID is None:
            out.AffectedSOPInstanceUID = uid
        return codes.SUCCESS, out

    def handle_n_set(event: evt.Event) -> tuple[Dataset | int, Dataset | None]:
        """N-SET: a procedure step is updated, completed or discontinued."""
        req = cast(N_SET, event.request)
        origin = origin_of(event)
        if str(req.RequestedSOPClassUID) != ModalityPerformedProcedureStep:
            return codes.NO_SUCH_SOP_CLASS, None
        try:
            appraisal.update_step(str(req.RequestedSOPInstanceUID or ""), event.modification_list, origin)
        except PacsError as exc:
            reply = for_error(exc, create=False)
            log.warning(
                "N-SET refused sop=%s from %s@%s: 0x%04X %s",
                req.RequestedSOPInstanceUID,
                origin.calling_ae,
                origin.address,
                reply.Status,
                exc,
            )
            return reply, None
        return codes.SUCCESS, Dataset()

    return Extension(
        contexts=[(ModalityPerformedProcedureStep, STORAGE_TRANSFER_SYNTAXES[:3], {})],
        handlers=[(evt.EVT_N_CREATE, handle_n_create), (evt.EVT_N_SET, handle_n_set)],
    )
