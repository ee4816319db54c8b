"""Plain domain types shared by the layers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Level(enum.StrEnum):
    """Information model levels (PS3.4 C.3), with the QIDO resource names as aliases."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"
    #: Not a Query/Retrieve level: the Modality Worklist Information Model (PS3.4 K.6), one
    #: entity per scheduled procedure step.
    WORKLIST = "WORKLIST"

    @property
    def depth(self) -> int:
        """0 for PATIENT down to 3 for IMAGE."""
        return _DEPTH[self]


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3, Level.WORKLIST: 0}


@dataclass(frozen=True)
class Origin:
    """Who asked: the peer of an association or an HTTP request."""

    address: str = ""
    calling_ae: str = ""
    called_ae: str = ""
    user: str = ""
    protocol: str = "internal"  # "dimse", "http", "cli", "internal"


class StoreOutcome(enum.StrEnum):
    """What the archive did with an offered instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # identical bytes already stored: nothing written
    REPLACED = "replaced"  # a different object under the same SOP Instance UID replaced the old one
    #: A different object under the same SOP Instance UID, kept beside the old one: the newest
    #: received is the instance served, the others are kept as superseded versions.
    VERSIONED = "versioned"


@dataclass(frozen=True)
class StoreResult:
    """The result of storing one instance."""

    outcome: StoreOutcome
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PatientIdentifier:
    """One identifier of a patient as a source gave it, before classification
    (:mod:`pacs.services.identifiers` turns it into FHIR ``system|value`` rows).

    From DICOM: PatientID or an OtherPatientIDsSequence item's, with IssuerOfPatientID and the
    first IssuerOfPatientIDQualifiersSequence item (PS3.3 C.7.1.1: UniversalEntityID and its
    type, IdentifierTypeCode), and TypeOfPatientID. From HL7 v2: a PID-3 repetition (CX: ID,
    assigning authority HD namespace / universal ID / its type, identifier type code PID-3.5).
    """

    value: str
    issuer: str = ""
    type_code: str = ""  # HL7 table 0203 (MR, NI, HC, ...) or what the source gave
    universal_id: str = ""  # of the issuer (an OID, UUID or URI)
    universal_id_type: str = ""  # ISO, UUID, URI, ...


@dataclass
class InstanceRecord:
    """Everything the index keeps about one instance, extracted from its header plus archive facts.

    ``values`` maps column names of the attribute catalogue (``pacs.dicom.attributes``) to Python
    values (str, int or None); the level of each is in the catalogue.
    """

    values: dict[str, Any] = field(default_factory=dict)
    transfer_syntax_uid: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    #: Every patient identifier the header carries (PatientID first), unclassified.
    identifiers: tuple[PatientIdentifier, ...] = ()


@dataclass(frozen=True)
class StoredInstance:
    """Where a stored instance lives and what it is, as the index says."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str
    received_at: datetime | None = None
    number_of_frames: int | None = None
    instance_number: int | None = None


@dataclass(frozen=True)
class InstanceVersion:
    """One received version of an instance (``[storage] duplicate_policy = "keep-versions"``):
    the current one, which the index row points at and every edge serves, or a superseded one,
    kept as received. ``sha256`` is of the stored Part-10 file and names the version."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sha256: str
    size: int
    transfer_syntax_uid: str
    received_at: datetime | None
    calling_ae: str | None
    peer_address: str | None
    origin_protocol: str | None
    current: bool
    superseded_at: datetime | None  # None for the current version
    blob_key: str  # opaque; never shown to clients
