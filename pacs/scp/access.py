"""Which DIMSE services each allowed AE may use (``[dicom] allowed_aes``, ``services = [...]``).

The check is made once, at association negotiation: the presentation contexts of services an AE
was not granted are taken out of what this association supports, so the SCU sees them rejected
(A-ASSOCIATE-AC, result "abstract syntax not supported", PS3.8 9.3.3.2) and no handler runs.
Storage contexts stay for an AE granted ``get`` (C-GET sends its instances back over them), so
C-STORE itself is checked again when a data set arrives (:func:`may_store`).
"""

from __future__ import annotations

from typing import Any

from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacs.config import AllowedAE

#: SOP classes of each grantable service other than storage (every other class but
#: Verification is a storage class).
SERVICE_CLASSES: dict[str, frozenset[str]] = {
    "find": frozenset(
        {str(PatientRootQueryRetrieveInformationModelFind), str(StudyRootQueryRetrieveInformationModelFind)}
    ),
    "move": frozenset(
        {str(PatientRootQueryRetrieveInformationModelMove), str(StudyRootQueryRetrieveInformationModelMove)}
    ),
    "get": frozenset(
        {str(PatientRootQueryRetrieveInformationModelGet), str(StudyRootQueryRetrieveInformationModelGet)}
    ),
    "mpps": frozenset({str(ModalityPerformedProcedureStep)}),
    "worklist": frozenset({str(ModalityWorklistInformationFind)}),
    "commitment": frozenset({str(StorageCommitmentPushModel)}),
}
_NON_STORAGE = frozenset({str(Verification)}).union(*SERVICE_CLASSES.values())


def service_of(sop_class_uid: str) -> str:
    """The service a SOP class belongs to: ``echo``, ``store`` or a key of SERVICE_CLASSES."""
    uid = str(sop_class_uid)
    if uid == Verification:
        return "echo"
    for name, classes in SERVICE_CLASSES.items():
        if uid in classes:
            return name
    return "store"


def granted(entries: list[AllowedAE]) -> frozenset[str]:
    """The services of a calling AE: the union over its matching ``allowed_aes`` entries."""
    return frozenset(s for a in entries for s in a.services)


def restrict(assoc: Any, services: frozenset[str]) -> list[str]:
    """Take the contexts of services not granted out of what ``assoc`` (an acceptor that has not
    answered yet) supports; returns the services taken out, for the log."""
    keep_storage = "store" in services or "get" in services
    kept, removed = [], set()
    for cx in assoc.acceptor.supported_contexts:
        service = service_of(str(cx.abstract_syntax))
        if service == "echo" or service in services or (service == "store" and keep_storage):
            kept.append(cx)
        else:
            removed.add(service)
    if removed:
        assoc.acceptor.supported_contexts = kept
    assoc.services = services  # for may_store
    return sorted(removed)


def may_store(assoc: Any) -> bool:
    """Whether the association's AE was granted C-STORE (True outside our listener's checks)."""
    services = getattr(assoc, "services", None)
    return services is None or "store" in services
