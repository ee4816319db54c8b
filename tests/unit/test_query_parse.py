"""C-FIND identifier parsing (PS3.4 C.4.1.2.1, C.2.2.2): levels, return keys, matchers, refusals."""

from __future__ import annotations

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from pacs.errors import InvalidQuery
from pacs.model import Level
from pacs.query import AnyOf, DateTimeRange, Equal, NameMatch, Range, Wildcard, from_identifier, from_qido


def _ident(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def _matchers(ds: Dataset, patient_root: bool = False) -> dict[str, object]:
    q = from_identifier(ds, patient_root=patient_root)
    return {c.attribute.keyword: c.matcher for c in q.conditions}


def test_return_keys_and_unique_key_added() -> None:
    q = from_identifier(_ident("SERIES", Modality="", PatientName=""), patient_root=False)
    assert q.level is Level.SERIES
    assert [a.keyword for a in q.return_keys] == ["Modality", "PatientName", "SeriesInstanceUID"]  # tag order
    assert q.conditions == ()


def test_matcher_kinds() -> None:
    m = _matchers(
        _ident(
            "STUDY",
            PatientID="P1",
            AccessionNumber="A*",
            StudyInstanceUID=["1.2.3", "1.2.4"],
            PatientName="Nguyễn*",
            StudyDate="20250101-",
            ModalitiesInStudy=["CT", "MR"],
        )
    )
    assert m["PatientID"] == Equal("P1")
    assert m["AccessionNumber"] == Wildcard("A*")
    assert m["StudyInstanceUID"] == AnyOf(("1.2.3", "1.2.4"))
    assert m["PatientName"] == NameMatch("nguyen*")
    assert m["StudyDate"] == Range("20250101", None)
    assert m["ModalitiesInStudy"] == AnyOf(("CT", "MR"))


def test_time_and_combined_datetime() -> None:
    m = _matchers(_ident("STUDY", StudyTime="1030"))
    assert m["StudyTime"] == Range("103000", "103059.999999")
    m = _matchers(_ident("STUDY", StudyDate="20250110-20250111", StudyTime="120000-090000"))
    dt = m["StudyDate"]
    assert isinstance(dt, DateTimeRange)
    assert dt.lower == ("20250110", "120000") and dt.upper == ("20250111", "090000.999999")
    assert "StudyTime" not in m


def test_patient_attributes_are_study_keys_in_study_root() -> None:
    q = from_identifier(_ident("STUDY", PatientName="x*"), patient_root=False)
    assert q.conditions and q.conditions[0].attribute.keyword == "PatientName"
    # In the Patient Root model the PATIENT level exists and keeps its unique key.
    q = from_identifier(_ident("PATIENT", PatientName=""), patient_root=True)
    assert [a.keyword for a in q.return_keys] == ["PatientName", "PatientID"]


def test_unsupported_keys_are_remembered() -> None:
    ds = _ident("STUDY", StudyInstanceUID="")
    ds.OtherPatientIDsSequence = []
    ds.add_new(0x00321060, "LO", "")  # RequestedProcedureDescription: not indexed
    q = from_identifier(ds, patient_root=False)
    assert set(q.unsupported_return_keys) == {0x00101002, 0x00321060}


def test_empty_lower_level_keys_are_ignored() -> None:
    q = from_identifier(_ident("STUDY", SeriesInstanceUID="", SOPInstanceUID=""), patient_root=False)
    assert [a.keyword for a in q.return_keys] == ["StudyInstanceUID"]


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        ("STUDY", {"StudyDate": "2025013"}),
        ("STUDY", {"StudyDate": "20250101-20250102-20250103"}),
        ("STUDY", {"StudyDate": "-"}),
        ("STUDY", {"StudyTime": "25h"}),
        ("STUDY", {"StudyTime": "99-"}),
        ("STUDY", {"StudyTime": "1261"}),
        ("STUDY", {"StudyDate": "20251332"}),
        ("STUDY", {"StudyInstanceUID": "1.2.abc"}),
        ("STUDY", {"StudyInstanceUID": "1." + "2" * 70}),
        ("STUDY", {"SeriesInstanceUID": "1.2.3"}),  # below the level
        ("SERIES", {"SOPInstanceUID": "1.2.3"}),
        ("IMAGE", {"AcquisitionDateTime": "yesterday"}),
        ("STUDY", {"NumberOfStudyRelatedInstances": "3"}),  # computed: return only
        ("SERIES_X", {}),
        ("", {}),
        ("PATIENT", {}),  # no PATIENT level in the Study Root model
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the invalid values we set
def test_malformed_identifiers(level: str, keys: dict[str, str]) -> None:
    with pytest.raises(InvalidQuery):
        from_identifier(_ident(level, **keys), patient_root=False)


def test_undecodable_number_is_an_invalid_query() -> None:
    ds = _ident("SERIES")
    ds[0x00200011] = RawDataElement(Tag(0x00200011), "IS", 4, b"two ", 0, False, True)
    with pytest.raises(InvalidQuery, match="SeriesNumber"):
        from_identifier(ds, patient_root=False)


@pytest.mark.parametrize("value", ["9223372036854775808", "-9223372036854775809", "1\\99999999999999999999"])
def test_number_beyond_the_columns_is_an_invalid_query(value: str) -> None:
    """Found by the QIDO fuzzer: PostgreSQL refused the bound value (a 500, not a 400)."""
    with pytest.raises(InvalidQuery, match="out of range"):
        from_qido(Level.IMAGE, [("InstanceNumber", value)], default_limit=100, max_limit=1000)
