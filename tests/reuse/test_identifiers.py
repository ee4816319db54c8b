"""Patient identifiers (issue 18): classification rules, rows written on store and by HIS orders,
never a link on a bare local ID across issuers, BHYT matched on its social-insurance number,
``pacs reindex`` rebuilding them (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from pacs import runtime
from pacs.errors import InvalidQuery
from pacs.hl7.messages import parse
from pacs.index.schema import patient_identifiers
from pacs.model import Origin, PatientIdentifier
from pacs.services.identifiers import BHYT, CCCD, classify, parse_token
from tests.hl7 import samples as S
from tests.reuse.conftest import VIET_NAME, real_file, store, tokens_of

pytestmark = pytest.mark.pg
HIS = Origin(protocol="hl7", calling_ae="HIS")


# ---------------------------------------------------------------- rules (no database)


def test_national_id_only_when_its_type_or_issuer_says_so() -> None:
    assert classify(PatientIdentifier("079080001234", "BV01", "NI"))[0].token == f"{CCCD}|079080001234"
    assert classify(PatientIdentifier("079 080 001 234", "BCA"))[0].token == f"{CCCD}|079080001234"
    # 12 digits, a hospital's record number: not a CCCD
    assert [i.token for i in classify(PatientIdentifier("079080001234", "BV01"))] == [
        "urn:vn:issuer:BV01|079080001234"
    ]
    assert [i.token for i in classify(PatientIdentifier("079080001234"))] == ["|079080001234"]
    # typed NI but not 12 digits: kept as its issuer's identifier, not a CCCD
    assert classify(PatientIdentifier("12345", "BV01", "NI"))[0].system == "urn:vn:issuer:BV01"


def test_insurance_card_matches_on_its_social_insurance_number() -> None:
    (card,) = classify(PatientIdentifier("DN4010123456789", "BHYT"))
    assert (card.system, card.value, card.full_value, card.type_code) == (
        BHYT,
        "0123456789",
        "DN4010123456789",
        "HC",
    )
    assert parse_token(f"{BHYT}|HC1790123456789") == (BHYT, "0123456789")
    assert parse_token(f"{BHYT}|0123456789") == (BHYT, "0123456789")


def test_issuer_systems_from_universal_ids_and_names() -> None:
    tokens = {
        i.token
        for i in classify(
            PatientIdentifier("A1", "Bệnh viện Bạch Mai", "MR", "1.2.840.99.7", "ISO"),
        )
    }
    assert tokens == {
        "urn:oid:1.2.840.99.7|A1",
        "urn:vn:issuer:B%E1%BB%87nh%20vi%E1%BB%87n%20B%E1%BA%A1ch%20Mai|A1",
    }
    assert (
        classify(PatientIdentifier("A1", "2.16.840.1.113883.3.9"))[0].system
        == "urn:oid:2.16.840.1.113883.3.9"
    )


@pytest.mark.parametrize(
    "token",
    ["", "urn:vn:cccd|", f"{CCCD}|12345", f"{CCCD}|07908000123X", f"{BHYT}|DN40101234", "x|" + "9" * 65],
)
def test_malformed_tokens_are_refused_with_a_reason(token: str) -> None:
    with pytest.raises(InvalidQuery):
        parse_token(token)


# ---------------------------------------------------------------- store, orders, reindex


def test_identifiers_from_real_files(rt: runtime.Runtime) -> None:
    ds = real_file(
        "CT_small.dcm",
        patient_id="BN2025000123",
        issuer="BV01",
        qualifiers={"UniversalEntityID": "1.2.840.99.1", "UniversalEntityIDType": "ISO"},
        others=(("079080001234", "BCA", "NI"), ("DN4010123456789", "", "HC"), ("555", "BV09", "MR")),
    )
    store(rt, ds)
    store(rt, real_file("MR_small.dcm", patient_id="BN2025000123", issuer="BV01", study=ds.StudyInstanceUID))
    (tokens,) = tokens_of(rt, f"{CCCD}|079080001234")
    assert tokens == {
        "urn:vn:issuer:BV01|BN2025000123",
        "urn:oid:1.2.840.99.1|BN2025000123",
        f"{CCCD}|079080001234",
        f"{BHYT}|DN4010123456789",
        "urn:vn:issuer:BV09|555",
    }
    (p,) = rt.identifiers.find_patients(["urn:vn:issuer:BV09|555"], HIS, audit=False)
    assert (p.patient_id, p.issuer_of_patient_id, p.name) == ("BN2025000123", "BV01", VIET_NAME)
    assert rt.identifiers.find_patients(["urn:vn:issuer:BV01|555"], HIS, audit=False) == []


def test_same_local_id_from_two_issuers_stays_two_patients(rt: runtime.Runtime) -> None:
    a = store(rt, real_file(patient_id="12345", issuer="BV01", others=(("079080001234", "", "NI"),)))
    b = store(rt, real_file("MR_small.dcm", patient_id="12345", issuer="BV02"))
    assert (
        rt.identifiers.find_studies(HIS, tokens=["urn:vn:issuer:BV01|12345"])[1][0]["study_instance_uid"]
        == a.study_instance_uid
    )
    total, rows = rt.identifiers.find_studies(HIS, tokens=["urn:vn:issuer:BV02|12345"])
    assert total == 1 and rows[0]["study_instance_uid"] == b.study_instance_uid
    # The national ID of the first does not reach the second.
    total, rows = rt.identifiers.find_studies(HIS, tokens=[f"{CCCD}|079080001234"])
    assert [r["study_instance_uid"] for r in rows] == [a.study_instance_uid]
    # A search by the bare value (any system) answers both, each its own patient.
    patients = rt.identifiers.find_patients(["12345"], HIS, audit=False)
    assert sorted(p.issuer_of_patient_id for p in patients) == ["BV01", "BV02"]


def test_twelve_digit_local_id_without_type_is_not_a_cccd(rt: runtime.Runtime) -> None:
    store(rt, real_file(patient_id="079080001234", issuer="BV01"))
    store(rt, real_file("MR_small.dcm", patient_id="079080001234", issuer=None))
    assert tokens_of(rt, f"{CCCD}|079080001234") == []
    assert len(tokens_of(rt, "|079080001234")) == 1  # the one without an issuer
    assert len(tokens_of(rt, "079080001234")) == 2


def test_bhyt_matches_across_cards_with_other_benefit_codes(rt: runtime.Runtime) -> None:
    a = store(rt, real_file(patient_id="A1", issuer="BV01", others=(("DN4010123456789", "BHYT", ""),)))
    b = store(
        rt, real_file("MR_small.dcm", patient_id="B7", issuer="BV02", others=(("HC1790123456789", "", "HC"),))
    )
    store(rt, real_file(patient_id="C3", issuer="BV01", others=(("DN4019999999999", "BHYT", ""),)))
    for token in (f"{BHYT}|DN4010123456789", f"{BHYT}|HC1790123456789", f"{BHYT}|0123456789"):
        total, rows = rt.identifiers.find_studies(HIS, tokens=[token])
        assert total == 2, token
        assert {r["study_instance_uid"] for r in rows} == {a.study_instance_uid, b.study_instance_uid}
    # Each card is kept whole, on its own patient.
    assert sorted(sorted(t) for t in tokens_of(rt, f"{BHYT}|0123456789")) == [
        [f"{BHYT}|DN4010123456789", "urn:vn:issuer:BV01|A1"],
        [f"{BHYT}|HC1790123456789", "urn:vn:issuer:BV02|B7"],
    ]


def test_identifiers_from_an_hl7_order_link_to_the_images(rt: runtime.Runtime) -> None:
    # PID-3: BN001^^^BV01^MR ~ 079080001234^^^BYT^NI ~ a BHYT card typed HC, without authority
    patient = S.pid(other="~079080001234^^^BYT^NI~DN4010123456789^^^^HC")
    applied = rt.orders.apply(parse(S.orm(patient=patient).encode()).body, HIS)  # type: ignore[arg-type]
    assert applied.detail == "created"
    assert rt.identifiers.find_studies(HIS, tokens=[f"{CCCD}|079080001234"])[0] == 0  # no image yet
    shot = store(rt, real_file(patient_id="BN001", issuer="BV01", AccessionNumber="ACC1001"))
    total, rows = rt.identifiers.find_studies(HIS, tokens=[f"{CCCD}|079080001234"])
    assert total == 1 and rows[0]["study_instance_uid"] == shot.study_instance_uid
    assert rt.identifiers.find_studies(HIS, tokens=[f"{BHYT}|0123456789"])[0] == 1


def test_an_image_without_issuer_takes_its_orders_identifiers_by_accession(rt: runtime.Runtime) -> None:
    rt.orders.apply(parse(S.orm().encode()).body, HIS)  # type: ignore[arg-type]
    linked = store(rt, real_file(patient_id="BN001", issuer=None, AccessionNumber="ACC1001"))
    other = store(rt, real_file(patient_id="BN001", issuer="BV07", AccessionNumber="ACC1001"))
    _total, rows = rt.identifiers.find_studies(HIS, tokens=[f"{CCCD}|079080001234"])
    # The image of another issuer with the same Patient ID is not linked.
    assert [r["study_instance_uid"] for r in rows] == [linked.study_instance_uid]
    assert other.study_instance_uid not in {r["study_instance_uid"] for r in rows}


def test_patient_merge_moves_the_identifiers(rt: runtime.Runtime) -> None:
    store(rt, real_file(patient_id="BN900", issuer="BV01", others=(("079080009999", "", "NI"),)))
    rt.orders.merge_patients(parse(S.adt_a40().encode()).body, HIS)  # type: ignore[arg-type]
    (p,) = rt.identifiers.find_patients([f"{CCCD}|079080009999"], HIS, audit=False)
    assert (p.patient_id, p.issuer_of_patient_id) == ("BN001", "BV01")


def _rows(rt: runtime.Runtime) -> list[tuple[str, ...]]:
    t = patient_identifiers.c
    with rt.db.read() as conn:
        rows = conn.execute(
            select(t.system, t.value, t.full_value, t.type_code, t.patient_identity, t.source)
        )
        return sorted(tuple(r) for r in rows)


def test_reindex_rebuilds_the_identifiers_identically(rt: runtime.Runtime) -> None:
    rt.orders.apply(parse(S.orm().encode()).body, HIS)  # type: ignore[arg-type]
    store(rt, real_file(patient_id="BN001", issuer=None, AccessionNumber="ACC1001"))
    store(rt, real_file(patient_id="12345", issuer="BV01", others=(("079080001234", "BCA", ""),)))
    store(
        rt,
        real_file(
            "MR_small.dcm", patient_id="12345", issuer="BV02", others=(("HC1790123456789", "BHYT", ""),)
        ),
    )
    before = _rows(rt)
    assert {r[5] for r in before} == {"dicom", "order"} and len(before) >= 7
    report = rt.archive.reindex()
    assert report.indexed == 3 and not report.failed
    assert _rows(rt) == before
