"""People and patients as the images and procedure steps name them (PS3.5 6.2 PN, PS3.3 C.7.1.1)."""

from __future__ import annotations

import re
from typing import Any

_CITIZEN_ID = re.compile(r"\d{12}")
_CARD_CODE = re.compile(r"[A-Z]{2}\d{13}")


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


def patient_ids(patient_id: str | None, issuer: str | None, others: str | None) -> dict[str, Any]:
    """PatientID and issuer, and the citizen ID / insurance card code found among the patient's IDs."""
    candidates = [p for p in [patient_id or "", *(others or "").split("\\")] if p.strip()]
    citizen = next((p.strip() for p in candidates if _CITIZEN_ID.fullmatch(p.strip())), None)
    card = next((p.strip() for p in candidates if _CARD_CODE.fullmatch(p.strip())), None)
    return {
        "patient_id": patient_id,
        "issuer_of_patient_id": issuer,
        "citizen_id": citizen,
        "insurance_card_code": card,
    }
