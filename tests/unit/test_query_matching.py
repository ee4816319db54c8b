"""C-FIND matching (PS3.4 C.2.2.2) through ``from_identifier`` + ``Archive.search``, on SQLite and PostgreSQL.

One table of cases with hand-checked expectations over a small archive: single value,
universal, wildcards (with SQL metacharacters taken literally), UID lists, DA/TM/DT ranges with
open ends, combined date-time ranges, person names in ISO_IR 192 and ISO_IR 100 matched without
case or accents, multi-valued and computed keys.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import inspect

from pacs.model import Origin
from pacs.query import from_identifier
from pacs.services.archive import Archive
from tests.factories import make_dataset, to_bytes

STUDY = {k: f"1.2.826.0.1.3680043.10.1234.{i}" for i, k in enumerate("ABCDEF", start=1)}

# A: Vietnamese UTF-8, B: same name unaccented upper case, C: Latin-1 (ISO_IR 100),
# D: another Vietnamese name late in the day, E: no study time, F: SQL-looking description.
_ARCHIVE: list[dict[str, Any]] = [
    dict(
        key="A",
        patient_name="Nguyễn^Văn An",
        patient_id="P1",
        accession="ACC%1",
        study_date="20250110",
        study_time="101500",
        modality="CT",
        AcquisitionDateTime="20250110101500",
    ),
    dict(
        key="B",
        patient_name="NGUYEN^VAN BINH",
        patient_id="P_2",
        accession="ACCX1",
        study_date="20250111",
        study_time="083000",
        modality="MR",
        series_number=2,
        AcquisitionDateTime="20250111083000",
    ),
    dict(
        key="C",
        patient_name="Müller^Jürgen",
        patient_id="P'3;",
        accession="ACC_2",
        study_date="20241231",
        study_time="235900",
        modality="CT",
        charset="ISO_IR 100",
        ReferringPhysicianName="Schmidt^Anna",
        StudyDescription="Kopf",
    ),
    dict(
        key="D",
        patient_name="Trần^Thị Bình",
        patient_id="P4",
        accession="ACC4",
        study_date="20250110",
        study_time="235959",
        modality="US",
    ),
    dict(
        key="E",
        patient_name="Lê^Đức",
        patient_id="P5",
        accession="ACC5",
        study_date="20250110",
        modality="SR",
    ),
    dict(
        key="F",
        patient_name="O'Brien^Pat",
        patient_id="P6",
        accession="ACC6",
        study_date="20230101",
        study_time="120000",
        modality="CT",
        StudyDescription="x'; DROP TABLE studies;--",
    ),
]


def _populate(archive: Archive) -> None:
    for spec in _ARCHIVE:
        spec = dict(spec)
        key = spec.pop("key")
        ds = make_dataset(study_uid=STUDY[key], **spec)
        if key == "E":
            del ds.StudyTime
            del ds.AcquisitionTime
        archive.store_bytes(to_bytes(ds), Origin(protocol="test"))


# (level, identifier keys, expected study keys); every case also asks for AccessionNumber.
CASES: list[tuple[str, dict[str, str], set[str]]] = [
    # universal and single value
    ("STUDY", {}, set("ABCDEF")),
    ("STUDY", {"PatientID": ""}, set("ABCDEF")),
    ("STUDY", {"PatientID": "*"}, set("ABCDEF")),
    ("STUDY", {"PatientID": "P1"}, {"A"}),
    ("STUDY", {"PatientID": "p1"}, set()),  # IDs are case-sensitive
    ("STUDY", {"PatientID": "P'3;"}, {"C"}),
    # wildcards; SQL metacharacters are literal
    ("STUDY", {"PatientID": "P_*"}, {"B"}),
    ("STUDY", {"PatientID": "P?"}, {"A", "D", "E", "F"}),
    ("STUDY", {"AccessionNumber": "ACC%*"}, {"A"}),
    ("STUDY", {"AccessionNumber": "ACC_?"}, {"C"}),
    ("STUDY", {"AccessionNumber": "ACC?1"}, {"A", "B"}),
    ("STUDY", {"AccessionNumber": "%"}, set()),
    ("STUDY", {"AccessionNumber": "ACC%1\\ACC4"}, {"A", "D"}),  # value list
    ("STUDY", {"StudyDescription": "x'; DROP*"}, {"F"}),
    ("STUDY", {"StudyDescription": "*;--"}, {"F"}),
    # person names: case- and accent-insensitive, UTF-8 and Latin-1
    ("STUDY", {"PatientName": "nguyen*"}, {"A", "B"}),
    ("STUDY", {"PatientName": "Nguyễn*"}, {"A", "B"}),
    ("STUDY", {"PatientName": "NGUYEN^VAN AN"}, {"A"}),
    ("STUDY", {"PatientName": "nguyễn^văn an"}, {"A"}),
    ("STUDY", {"PatientName": "?guyen*binh"}, {"B"}),
    ("STUDY", {"PatientName": "tran^thi*"}, {"D"}),
    ("STUDY", {"PatientName": "le^duc"}, {"E"}),  # đ folds to d
    ("STUDY", {"PatientName": "muller*"}, {"C"}),
    ("STUDY", {"PatientName": "Müller^Jürgen"}, {"C"}),
    ("STUDY", {"PatientName": "o'brien*"}, {"F"}),
    ("STUDY", {"ReferringPhysicianName": "tran^thi binh"}, {"A", "B", "D", "E", "F"}),
    # UID single value and list
    ("STUDY", {"StudyInstanceUID": STUDY["A"]}, {"A"}),
    ("STUDY", {"StudyInstanceUID": f"{STUDY['A']}\\{STUDY['C']}"}, {"A", "C"}),
    ("STUDY", {"StudyInstanceUID": "1.2.3.4.5"}, set()),
    # DA: single, closed, open ends; TM: closed range (a study without time does not match)
    ("STUDY", {"StudyDate": "20250110"}, {"A", "D", "E"}),
    ("STUDY", {"StudyDate": "20250110-20250111"}, {"A", "B", "D", "E"}),
    ("STUDY", {"StudyDate": "-20241231"}, {"C", "F"}),
    ("STUDY", {"StudyDate": "20250111-"}, {"B"}),
    ("STUDY", {"StudyTime": "080000-110000"}, {"A", "B"}),
    ("STUDY", {"StudyTime": "2359-"}, {"C", "D"}),
    ("STUDY", {"StudyTime": "-0830"}, {"B"}),
    # combined date-time ranges (C.2.2.2.5.1): 2025-01-10 12:00 .. 2025-01-11 09:00
    ("STUDY", {"StudyDate": "20250110-20250111", "StudyTime": "120000-090000"}, {"B", "D", "E"}),
    ("STUDY", {"StudyDate": "20250110-", "StudyTime": "230000-"}, {"B", "D", "E"}),
    ("STUDY", {"StudyDate": "-20250110", "StudyTime": "-110000"}, {"A", "C", "E", "F"}),
    ("STUDY", {"StudyDate": "20250110", "StudyTime": "100000-110000"}, {"A", "E"}),
    # multi-valued and computed
    ("STUDY", {"ModalitiesInStudy": "MR"}, {"B"}),
    ("STUDY", {"ModalitiesInStudy": "CT\\US"}, {"A", "C", "D", "F"}),
    ("STUDY", {"ModalitiesInStudy": "S*"}, {"E"}),
    # lower levels
    ("SERIES", {"Modality": "CT"}, {"A", "C", "F"}),
    ("SERIES", {"SeriesNumber": "2"}, {"B"}),
    ("SERIES", {"StudyInstanceUID": STUDY["D"], "Modality": ""}, {"D"}),
    ("IMAGE", {"AcquisitionDateTime": "20250110100000-20250110110000"}, {"A"}),
    ("IMAGE", {"AcquisitionDateTime": "2025-"}, {"A", "B"}),
    ("IMAGE", {"InstanceNumber": "1", "StudyInstanceUID": STUDY["B"]}, {"B"}),
]


def _identifier(level: str, keys: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    ds.AccessionNumber = ""
    ds.StudyInstanceUID = ""
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def _found(archive: Archive, level: str, keys: dict[str, str], fold: bool = True) -> set[str]:
    query = from_identifier(_identifier(level, keys), patient_root=False, fold_names=fold)
    by_uid = {v: k for k, v in STUDY.items()}
    return {by_uid[row["StudyInstanceUID"]] for row in archive.search(query)}


@pytest.mark.filterwarnings("ignore::UserWarning")  # "S*" is not a valid CS value
def test_matching_table(archive: Archive) -> None:
    _populate(archive)
    wrong = []
    for level, keys, expected in CASES:
        got = _found(archive, level, keys)
        if got != expected:
            wrong.append(f"{level} {keys}: expected {sorted(expected)}, got {sorted(got)}")
    assert not wrong, "\n".join(wrong)
    # The SQL-looking value was taken literally: the table is still there.
    assert "studies" in inspect(archive.db.engine).get_table_names()


def test_names_exact_when_folding_is_off(archive: Archive) -> None:
    _populate(archive)
    assert _found(archive, "STUDY", {"PatientName": "Nguyễn*"}, fold=False) == {"A"}
    assert _found(archive, "STUDY", {"PatientName": "nguyen*"}, fold=False) == set()
    assert _found(archive, "STUDY", {"PatientName": "Müller^Jürgen"}, fold=False) == {"C"}


def test_patient_root_patient_level_counts(archive: Archive) -> None:
    _populate(archive)
    ident = Dataset()
    ident.QueryRetrieveLevel = "PATIENT"
    ident.PatientName = "nguyen*"
    ident.PatientID = ""
    ident.NumberOfPatientRelatedStudies = None
    rows = archive.search(from_identifier(ident, patient_root=True))
    assert sorted(r["PatientID"] for r in rows) == ["P1", "P_2"]
    assert all(r["NumberOfPatientRelatedStudies"] == 1 for r in rows)
