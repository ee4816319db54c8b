"""People and patients as the images and procedure steps name them (PS3.5 6.2 PN, PS3.3 C.7.1.1).

An identifier's type is never guessed from its shape: a 12-digit local PatientID is not a citizen
ID (CCCD) and a 15-character one is not an insurance card code. The type comes only from explicit
data, the IssuerOfPatientID (0010,0021) naming the kind of identifier; else it is ``unknown``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from pacs.services.appraisal.registers import fold

#: What an identifier is when nothing explicit says so.
UNKNOWN = "unknown"
#: IssuerOfPatientID values (compared without case or accents) that say what the PatientID is.
ISSUER_TYPES = MappingProxyType(
    {
        fold(issuer): kind
        for kind, issuers in (
            ("citizen_id", ("CCCD", "Căn cước công dân", "Căn cước", "Citizen ID")),
            ("insurance_card_code", ("BHYT", "Thẻ BHYT", "Mã thẻ BHYT", "Bảo hiểm y tế")),
        )
        for issuer in issuers
    }
)


def names(*values: str | None) -> list[str]:
    """Distinct, stripped names of backslash-separated person-name values, in order of appearance."""
    out: list[str] = []
    for v in values:
        if not v:
            continue
        for name in v.split("\\") if "\\" in v else (v,):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return out


def identifier_type(issuer: str | None) -> str:
    """The kind of identifier an IssuerOfPatientID names (``citizen_id``, ...), else ``unknown``."""
    return ISSUER_TYPES.get(fold(issuer), UNKNOWN) if issuer and issuer.strip() else UNKNOWN


def patient_ids(patient_id: str | None, issuer: str | None, others: str | None) -> dict[str, Any]:
    """PatientID, its issuer and type, and the citizen ID / insurance card code it explicitly is.

    ``others`` (OtherPatientIDs, backslash-separated) arrive as bare values, without the issuer or
    type of their OtherPatientIDsSequence item, so their type is unknown and none of them is
    reported as a citizen ID or an insurance card code.
    """
    del others  # untyped: never guessed
    pid = (patient_id or "").strip()
    kind = identifier_type(issuer) if pid else UNKNOWN
    return {
        "patient_id": patient_id,
        "issuer_of_patient_id": issuer,
        "patient_id_type": kind,
        "citizen_id": pid if kind == "citizen_id" else None,
        "insurance_card_code": pid if kind == "insurance_card_code" else None,
    }
