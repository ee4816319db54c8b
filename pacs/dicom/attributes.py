"""THE catalogue of indexed attributes.

Every DICOM attribute the index keeps is declared here once, with its level, SQL column, VR,
matching kind and whether QIDO-RS returns it by default. The SQL schema (``pacs.index.schema``),
header extraction (``pacs.dicom.extract``), the query engine (``pacs.query``) and the C-FIND /
QIDO-RS responses all read this table; a test checks that the schema agrees with it.

Matching kinds follow PS3.4 C.2.2.2: UID (single value or UID list), STR (single value and
wildcard), PN (person name: wildcard, case- and accent-insensitive by default), DA / TM / DT
(single value and range), NUM (single value), MULTI (multi-valued strings, a value matches if any
item matches). Computed attributes (counts, ModalitiesInStudy) have no stored source element.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword

from pacs.model import Level


class Match(enum.StrEnum):
    """How an attribute matches (PS3.4 C.2.2.2)."""

    UID = "uid"
    STR = "str"
    PN = "pn"
    DA = "da"
    TM = "tm"
    DT = "dt"
    NUM = "num"
    MULTI = "multi"


@dataclass(frozen=True)
class Attribute:
    """One indexed attribute."""

    keyword: str
    level: Level
    vr: str
    match: Match
    qido_default: bool = False
    computed: bool = False
    length: int = 64
    #: The sequence whose item holds the attribute in a worklist identifier (PS3.4 K.6.1.2.2:
    #: the Scheduled Procedure Step Sequence), or "" for a top-level attribute.
    sequence: str = ""

    @property
    def tag(self) -> int:
        """The DICOM tag as an int, e.g. ``0x0020000D``."""
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return tag

    @property
    def column(self) -> str:
        """The SQL column name: the snake_case form of the keyword."""
        return snake_case(self.keyword)

    @property
    def is_integer(self) -> bool:
        """True when the column stores an integer."""
        return self.vr in {"US", "UL", "SS", "SL", "IS"} or (self.computed and self.vr != "CS")


@functools.lru_cache(maxsize=1024)
def snake_case(keyword: str) -> str:
    """``StudyInstanceUID`` -> ``study_instance_uid``."""
    s = keyword.replace("IDs", "Ids")
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s)
    return s.lower()


P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

ATTRIBUTES: tuple[Attribute, ...] = (
    # --- PATIENT (PS3.4 C.6.1.1.2 and QIDO-RS study/patient attributes, PS3.18 Table 10.6.3-3)
    Attribute("PatientName", P, "PN", Match.PN, qido_default=True, length=324),
    Attribute("PatientID", P, "LO", Match.STR, qido_default=True),
    Attribute("IssuerOfPatientID", P, "LO", Match.STR),
    Attribute("OtherPatientIDs", P, "LO", Match.MULTI, length=512),
    Attribute("PatientBirthDate", P, "DA", Match.DA, qido_default=True, length=8),
    Attribute("PatientSex", P, "CS", Match.STR, qido_default=True, length=16),
    Attribute("NumberOfPatientRelatedStudies", P, "IS", Match.NUM, computed=True),
    Attribute("NumberOfPatientRelatedSeries", P, "IS", Match.NUM, computed=True),
    Attribute("NumberOfPatientRelatedInstances", P, "IS", Match.NUM, computed=True),
    # --- STUDY
    Attribute("StudyInstanceUID", ST, "UI", Match.UID, qido_default=True),
    Attribute("StudyDate", ST, "DA", Match.DA, qido_default=True, length=8),
    Attribute("StudyTime", ST, "TM", Match.TM, qido_default=True, length=16),
    Attribute("AccessionNumber", ST, "SH", Match.STR, qido_default=True),
    Attribute("StudyID", ST, "SH", Match.STR, qido_default=True),
    Attribute("StudyDescription", ST, "LO", Match.STR, qido_default=True),
    Attribute("ReferringPhysicianName", ST, "PN", Match.PN, qido_default=True, length=324),
    Attribute("NameOfPhysiciansReadingStudy", ST, "PN", Match.PN, length=324),
    Attribute("RequestingPhysician", ST, "PN", Match.PN, length=324),
    Attribute("PatientAge", ST, "AS", Match.STR, length=8),
    Attribute("PatientSize", ST, "DS", Match.STR, length=16),
    Attribute("PatientWeight", ST, "DS", Match.STR, length=16),
    Attribute("RequestedProcedureID", ST, "SH", Match.STR),
    Attribute("ModalitiesInStudy", ST, "CS", Match.MULTI, qido_default=True, computed=True, length=256),
    Attribute("NumberOfStudyRelatedSeries", ST, "IS", Match.NUM, qido_default=True, computed=True),
    Attribute("NumberOfStudyRelatedInstances", ST, "IS", Match.NUM, qido_default=True, computed=True),
    # --- SERIES
    Attribute("SeriesInstanceUID", SE, "UI", Match.UID, qido_default=True),
    Attribute("Modality", SE, "CS", Match.STR, qido_default=True, length=16),
    Attribute("SeriesNumber", SE, "IS", Match.NUM, qido_default=True),
    Attribute("SeriesDescription", SE, "LO", Match.STR, qido_default=True),
    Attribute("SeriesDate", SE, "DA", Match.DA, length=8),
    Attribute("SeriesTime", SE, "TM", Match.TM, length=16),
    Attribute("BodyPartExamined", SE, "CS", Match.STR, length=16),
    Attribute("Laterality", SE, "CS", Match.STR, length=16),
    Attribute("ProtocolName", SE, "LO", Match.STR),
    Attribute("PerformedProcedureStepID", SE, "SH", Match.STR),
    Attribute("PerformedProcedureStepStartDate", SE, "DA", Match.DA, qido_default=True, length=8),
    Attribute("PerformedProcedureStepStartTime", SE, "TM", Match.TM, qido_default=True, length=16),
    Attribute("Manufacturer", SE, "LO", Match.STR),
    Attribute("ManufacturerModelName", SE, "LO", Match.STR),
    Attribute("StationName", SE, "SH", Match.STR),
    Attribute("DeviceSerialNumber", SE, "LO", Match.STR),
    Attribute("SoftwareVersions", SE, "LO", Match.STR, length=256),
    Attribute("InstitutionName", SE, "LO", Match.STR),
    Attribute("OperatorsName", SE, "PN", Match.PN, length=324),
    Attribute("PerformingPhysicianName", SE, "PN", Match.PN, length=324),
    Attribute("NumberOfSeriesRelatedInstances", SE, "IS", Match.NUM, qido_default=True, computed=True),
    # --- IMAGE (instance)
    Attribute("SOPInstanceUID", IM, "UI", Match.UID, qido_default=True),
    Attribute("SOPClassUID", IM, "UI", Match.UID, qido_default=True),
    Attribute("InstanceNumber", IM, "IS", Match.NUM, qido_default=True),
    Attribute("Rows", IM, "US", Match.NUM, qido_default=True),
    Attribute("Columns", IM, "US", Match.NUM, qido_default=True),
    Attribute("BitsAllocated", IM, "US", Match.NUM, qido_default=True),
    Attribute("NumberOfFrames", IM, "IS", Match.NUM, qido_default=True),
    Attribute("PhotometricInterpretation", IM, "CS", Match.STR, length=16),
    Attribute("ImageType", IM, "CS", Match.MULTI, length=128),
    Attribute("AcquisitionDate", IM, "DA", Match.DA, length=8),
    Attribute("AcquisitionTime", IM, "TM", Match.TM, length=16),
    Attribute("AcquisitionDateTime", IM, "DT", Match.DT, length=32),
    Attribute("ContentDate", IM, "DA", Match.DA, length=8),
    Attribute("ContentTime", IM, "TM", Match.TM, length=16),
    Attribute("TimezoneOffsetFromUTC", IM, "SH", Match.STR, length=16),
    Attribute("AcquisitionTimeSynchronized", IM, "CS", Match.STR, length=16),
    Attribute("TimeSource", IM, "SH", Match.STR),
)

BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in ATTRIBUTES}

W, SPS = Level.WORKLIST, "ScheduledProcedureStepSequence"

#: The Modality Worklist catalogue (PS3.4 Table K.6-1): one row per scheduled procedure step,
#: with the requested procedure, imaging service request, visit and patient it belongs to.
#: Matching kinds as for C-FIND; person names match accent- and case-insensitively.
#: Coded entries (Requested Procedure Code, Scheduled Protocol Code) are returned, not matched.
WORKLIST: tuple[Attribute, ...] = (
    # Scheduled Procedure Step (the sequence item)
    Attribute("ScheduledStationAETitle", W, "AE", Match.STR, length=16, sequence=SPS),
    Attribute("ScheduledProcedureStepStartDate", W, "DA", Match.DA, length=8, sequence=SPS),
    Attribute("ScheduledProcedureStepStartTime", W, "TM", Match.TM, length=16, sequence=SPS),
    Attribute("Modality", W, "CS", Match.STR, length=16, sequence=SPS),
    Attribute("ScheduledPerformingPhysicianName", W, "PN", Match.PN, length=324, sequence=SPS),
    Attribute("ScheduledProcedureStepDescription", W, "LO", Match.STR, sequence=SPS),
    Attribute("ScheduledStationName", W, "SH", Match.STR, sequence=SPS),
    Attribute("ScheduledProcedureStepLocation", W, "SH", Match.STR, sequence=SPS),
    Attribute("ScheduledProcedureStepID", W, "SH", Match.STR, sequence=SPS),
    Attribute("ScheduledProcedureStepStatus", W, "CS", Match.STR, length=16, sequence=SPS),
    # Requested Procedure
    Attribute("RequestedProcedureID", W, "SH", Match.STR),
    Attribute("RequestedProcedureDescription", W, "LO", Match.STR),
    Attribute("StudyInstanceUID", W, "UI", Match.UID),
    Attribute("RequestedProcedurePriority", W, "SH", Match.STR, length=16),
    Attribute("ReasonForTheRequestedProcedure", W, "LO", Match.STR),
    # Imaging Service Request
    Attribute("AccessionNumber", W, "SH", Match.STR),
    Attribute("ReferringPhysicianName", W, "PN", Match.PN, length=324),
    Attribute("RequestingPhysician", W, "PN", Match.PN, length=324),
    Attribute("PlacerOrderNumberImagingServiceRequest", W, "LO", Match.STR),
    Attribute("FillerOrderNumberImagingServiceRequest", W, "LO", Match.STR),
    # Visit
    Attribute("AdmissionID", W, "LO", Match.STR),
    Attribute("CurrentPatientLocation", W, "LO", Match.STR),
    # Patient
    Attribute("PatientName", W, "PN", Match.PN, length=324),
    Attribute("PatientID", W, "LO", Match.STR),
    Attribute("IssuerOfPatientID", W, "LO", Match.STR),
    Attribute("PatientBirthDate", W, "DA", Match.DA, length=8),
    Attribute("PatientSex", W, "CS", Match.STR, length=16),
    Attribute("OtherPatientIDs", W, "LO", Match.MULTI, length=512),
)
WORKLIST_BY_TAG: dict[int, Attribute] = {a.tag: a for a in WORKLIST}
WORKLIST_BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in WORKLIST}
BY_TAG: dict[int, Attribute] = {a.tag: a for a in ATTRIBUTES}

#: The unique key of each level (PS3.4 C.6.1.1 / C.6.2.1).
UNIQUE_KEY: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


def at_level(level: Level, *, stored_only: bool = False) -> tuple[Attribute, ...]:
    """The attributes indexed at exactly ``level``."""
    return tuple(a for a in ATTRIBUTES if a.level is level and not (stored_only and a.computed))


def lookup(key: str) -> Attribute | None:
    """Find an attribute by keyword or by 8-hex-digit tag (``0010,0010``, ``00100010``)."""
    if key in BY_KEYWORD:
        return BY_KEYWORD[key]
    digits = key.replace(",", "").replace("(", "").replace(")", "").strip()
    if re.fullmatch(r"[0-9A-Fa-f]{8}", digits):
        return BY_TAG.get(int(digits, 16))
    return None
