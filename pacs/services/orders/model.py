"""Plain types of the scheduled workflow: what an order, a patient update, a merge and a report
say, whichever door (HL7 v2 over MLLP, or the REST API) they came through.

Both edges parse into these; :class:`~pacs.services.orders.service.Orders` applies them. Names
are DICOM person names (``Family^Given^Middle``), dates ``YYYYMMDD``, date-times DICOM DT
(``YYYYMMDDHHMMSS`` with an optional ``+HHMM`` offset, as the HIS sent it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Control(enum.StrEnum):
    """HL7 v2 order control codes (ORC-1) the archive acts on."""

    NEW = "NW"  # new order
    CHANGE = "XO"  # change order
    CANCEL = "CA"  # cancel: the order never happened
    DISCONTINUE = "DC"  # discontinue: stopped after it started
    STATUS = "SC"  # status changed (ORC-5)


class StepStatus(enum.StrEnum):
    """Scheduled procedure step states (PS3.3 C.4.10 ScheduledProcedureStepStatus, plus CANCELED)."""

    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    READY = "READY"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"
    CANCELED = "CANCELED"


#: States in which a step is still on the worklist.
OPEN_STATES = frozenset({StepStatus.SCHEDULED, StepStatus.ARRIVED, StepStatus.READY, StepStatus.IN_PROGRESS})


@dataclass(frozen=True)
class Code:
    """A coded entry: value, coding scheme designator, meaning."""

    value: str
    scheme: str = ""
    meaning: str = ""


@dataclass(frozen=True)
class OtherId:
    """A further identifier of the patient, with who issued it and what kind it is.

    ``type_code`` is the HL7 identifier type (PID-3.5: ``NI`` national ID, ``HC`` health card,
    ``MR`` medical record number, ...); never guessed from the value's shape.
    """

    value: str
    issuer: str = ""
    type_code: str = ""
    universal_id: str = ""  # of the assigning authority (PID-3.4.2, an OID or URI)
    universal_id_type: str = ""  # PID-3.4.3: ISO, UUID, URI, ...


@dataclass(frozen=True)
class PatientInfo:
    """The patient as the HIS knows them. ``id_type`` and ``issuer_universal_id(_type)`` qualify
    the Patient ID as :class:`OtherId` does the others."""

    patient_id: str
    issuer_of_patient_id: str = ""
    name: str = ""
    birth_date: str = ""
    sex: str = ""
    other_ids: tuple[OtherId, ...] = ()
    id_type: str = ""
    issuer_universal_id: str = ""
    issuer_universal_id_type: str = ""


@dataclass(frozen=True)
class ScheduledStep:
    """One scheduled procedure step (an HL7 IPC segment, or the one step of an ORM order)."""

    step_id: str = ""
    modality: str = ""
    station_ae_title: str = ""
    station_name: str = ""
    location: str = ""
    start: str = ""  # DT, local time of the facility when it has no offset
    description: str = ""
    protocol_code: Code | None = None
    performing_physician: str = ""
    #: For the REST API and HL7 IPC: a step given without a Study Instance UID shares the order's.
    study_instance_uid: str = ""
    accession_number: str = ""
    requested_procedure_id: str = ""


@dataclass(frozen=True)
class OrderMessage:
    """A new order, or a change, cancel, discontinue or status change of one.

    The order is identified by ``placer_order_number`` (ORC-2), else ``filler_order_number``
    (ORC-3). ``steps`` may be empty for CA/DC/SC.
    """

    control: Control
    placer_order_number: str = ""
    filler_order_number: str = ""
    accession_number: str = ""
    patient: PatientInfo | None = None
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    requested_procedure_code: Code | None = None
    study_instance_uid: str = ""  # empty: the archive assigns one at order time
    steps: tuple[ScheduledStep, ...] = ()
    referring_physician: str = ""
    requesting_physician: str = ""
    ordered_at: str = ""  # DT: when the doctor ordered it (ORC-9 / ORC-15)
    ordered_at_source: str = ""  # e.g. "HL7 ORC-9", "REST ordered_at"
    priority: str = ""
    order_status: str = ""  # SC: the new status (ORC-5)
    admission_id: str = ""
    patient_location: str = ""
    facility_code: str = ""
    reason: str = ""


@dataclass(frozen=True)
class PatientUpdate:
    """New demographics for a patient the archive may already hold (ADT^A08)."""

    patient: PatientInfo


@dataclass(frozen=True)
class PatientMerge:
    """Two records of one patient become one (ADT^A40): ``prior`` merges into ``surviving``."""

    surviving: PatientInfo
    prior_patient_id: str
    prior_issuer: str = ""


@dataclass(frozen=True)
class Report:
    """The result of an order (ORU^R01): when it was reported and by whom."""

    placer_order_number: str = ""
    filler_order_number: str = ""
    accession_number: str = ""
    reported_at: str = ""  # DT (OBR-22)
    reported_at_source: str = ""
    reporting_doctor: str = ""  # PN or a licence code (OBR-32)
    status: str = "F"  # OBR-25: P preliminary, F final, C correction
    performed_at: str = ""  # DT when the HIS says the service was carried out (OBR-7), if sent
    performed_at_source: str = ""
    text: str = ""


@dataclass(frozen=True)
class MessageId:
    """Identifies one message so that a resend (the HIS timed out waiting for our ACK) is
    acknowledged again without being applied twice."""

    sender: str  # MSH-3^MSH-4, or the REST user
    control_id: str  # MSH-10, or the Idempotency-Key header


@dataclass
class Applied:
    """What applying one message did."""

    kind: str  # "order", "patient", "merge", "report"
    order_keys: list[str] = field(default_factory=list)
    steps: int = 0
    duplicate: bool = False  # the same message was applied before: nothing done again
    detail: str = ""
