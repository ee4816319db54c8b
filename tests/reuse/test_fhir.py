"""FHIR R4 ImagingStudy under /fhir (issue 18): searchset Bundles and reads validated with
``fhir.resources``, OperationOutcome for bad requests, the same access rules as DICOMweb search,
look-ups audited, the IID viewer link (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pacs import runtime
from pacs.services.audit import EventFilter
from pacs.services.fhir import DCM
from pacs.services.identifiers import CCCD
from tests.reuse.conftest import TestClient, real_file, store, validate
from tests.security.conftest import ROLES, Secured, make_runtime

pytestmark = pytest.mark.pg


def _archive_three_studies(rt: runtime.Runtime) -> dict[str, Any]:
    """Patient 12345@BV01 (CCCD 079080001234): a CT study with two series (3 + 1 instances) and
    an MR study; patient 12345@BV02: one CT."""
    study, s1, s2 = "1.2.826.0.1.3680043.99.1", "1.2.826.0.1.3680043.99.1.1", "1.2.826.0.1.3680043.99.1.2"
    ids = (("079080001234", "", "NI"),)
    for n in (1, 2, 3):
        store(
            rt,
            real_file(
                others=ids, study=study, series=s1, InstanceNumber=n, SeriesNumber=1, StudyTime="101500"
            ),
        )
    store(
        rt,
        real_file(others=ids, study=study, series=s2, InstanceNumber=1, SeriesNumber=2, StudyTime="101500"),
    )
    mr = store(rt, real_file("MR_small.dcm", others=ids, StudyDate="20250312"))
    other = store(rt, real_file(issuer="BV02"))
    return {"ct": study, "series": (s1, s2), "mr": mr.study_instance_uid, "other": other.study_instance_uid}


def _search(client: TestClient, **params: str) -> dict[str, Any]:
    r = client.get("/fhir/ImagingStudy", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = r.json()
    bundle = validate(body)
    assert bundle.type == "searchset" and bundle.total == body["total"]
    for entry in body.get("entry", []):
        validate(entry["resource"])
    return body


def test_search_by_patient_identifier_gives_valid_imaging_studies(
    rt: runtime.Runtime, client: TestClient
) -> None:
    uids = _archive_three_studies(rt)
    bundle = _search(client, **{"patient.identifier": f"{CCCD}|079080001234"})
    assert bundle["total"] == 2
    by_id = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    assert set(by_id) == {uids["ct"], uids["mr"]}
    ct = by_id[uids["ct"]]
    assert ct["identifier"][0] == {
        "use": "official",
        "system": "urn:dicom:uid",
        "value": f"urn:oid:{uids['ct']}",
    }
    assert ct["status"] == "available" and ct["subject"] == {"reference": "#patient"}
    assert (ct["numberOfSeries"], ct["numberOfInstances"]) == (2, 4)
    assert ct["modality"] == [{"system": DCM, "code": "CT"}]
    assert ct["started"] == "2004-01-19T10:15:00-05:00"  # the file's TimezoneOffsetFromUTC
    assert [(s["uid"], s["number"], len(s["instance"])) for s in ct["series"]] == [
        (uids["series"][0], 1, 3),
        (uids["series"][1], 2, 1),
    ]
    first = ct["series"][0]["instance"][0]
    assert first["number"] == 1 and first["sopClass"]["code"] == "urn:oid:1.2.840.10008.5.1.4.1.1.2"
    contained = {c["id"]: c for c in ct["contained"]}
    patient = contained["patient"]
    assert {(i.get("system"), i["value"]) for i in patient["identifier"]} == {
        ("urn:vn:issuer:BV01", "12345"),
        (CCCD, "079080001234"),
    }
    assert patient["name"] == [
        {"text": "Nguyễn Thị Hồng Nhung", "family": "Nguyễn", "given": ["Thị Hồng Nhung"]}
    ]
    assert contained["dicomweb"]["connectionType"]["code"] == "dicom-wado-rs"
    assert contained["dicomweb"]["address"] == "http://testserver/dicom-web"
    assert contained["viewer"]["address"] == f"http://testserver/viewer?studyUID={uids['ct']}"
    assert by_id[uids["mr"]]["modality"] == [{"system": DCM, "code": "MR"}]
    # The other issuer's 12345 is a patient of its own.
    other = _search(client, **{"patient.identifier": "urn:vn:issuer:BV02|12345"})
    assert [e["resource"]["id"] for e in other["entry"]] == [uids["other"]]


def test_search_by_study_uid_read_and_paging(rt: runtime.Runtime, client: TestClient) -> None:
    uids = _archive_three_studies(rt)
    for token in (f"urn:dicom:uid|urn:oid:{uids['ct']}", f"urn:oid:{uids['ct']}", uids["ct"]):
        bundle = _search(client, identifier=token)
        assert [e["resource"]["id"] for e in bundle["entry"]] == [uids["ct"]], token
    both = _search(client, identifier=f"urn:oid:{uids['ct']},urn:oid:{uids['mr']}")
    assert both["total"] == 2
    page = _search(client, **{"patient.identifier": f"{CCCD}|079080001234", "_count": "1"})
    assert page["total"] == 2 and len(page["entry"]) == 1
    assert [link["relation"] for link in page["link"]] == ["self", "next"]
    none = _search(client, **{"patient.identifier": f"{CCCD}|079080009999"})
    assert none["total"] == 0 and "entry" not in none

    r = client.get(f"/fhir/ImagingStudy/{uids['mr']}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    study = validate(r.json())
    assert study.id == uids["mr"] and study.numberOfInstances == 1
    cap = client.get("/fhir/metadata")
    assert cap.status_code == 200
    assert validate(cap.json()).fhirVersion == "4.0.1"


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/fhir/ImagingStudy", 400, "a search needs"),
        ("/fhir/ImagingStudy?foo=1", 400, "unknown search parameter"),
        ("/fhir/ImagingStudy?patient=Patient/1", 400, "patient.identifier"),
        ("/fhir/ImagingStudy?patient.identifier=urn:vn:cccd%7C123", 400, "12 digits"),
        ("/fhir/ImagingStudy?patient.identifier=urn:vn:bhyt%7CXX", 400, "BHYT"),
        ("/fhir/ImagingStudy?identifier=urn:oid:1.2.x", 400, "urn:oid"),
        ("/fhir/ImagingStudy?identifier=http://h/acc%7CA1", 400, "urn:dicom:uid"),
        ("/fhir/ImagingStudy?identifier=1.2.3&_count=many", 400, "_count"),
        ("/fhir/ImagingStudy?identifier=1.2.3&identifier=1.2.4", 400, "once"),
        ("/fhir/ImagingStudy?identifier=1.2.3&_format=xml", 406, "JSON"),
        ("/fhir/ImagingStudy/1.2.3.999", 404, "no ImagingStudy"),
        ("/fhir/ImagingStudy/not-a-uid", 404, "no ImagingStudy"),
        ("/fhir/Patient", 404, ""),
    ],
)
def test_bad_requests_get_an_operation_outcome(
    client: TestClient, path: str, status: int, reason: str
) -> None:
    r = client.get(path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    outcome = validate(r.json())
    assert outcome.issue[0].severity == "error"
    assert reason in (outcome.issue[0].diagnostics or "")


def test_lenient_handling_ignores_unknown_parameters(rt: runtime.Runtime, client: TestClient) -> None:
    uids = _archive_three_studies(rt)
    r = client.get(
        "/fhir/ImagingStudy",
        params={"identifier": uids["mr"], "_elements": "id"},
        headers={"Prefer": "handling=lenient"},
    )
    assert r.status_code == 200 and r.json()["total"] == 1


@pytest.fixture
def secured(db_url: str, tmp_path: Path) -> Any:
    """Authentication on, a user per role (as tests/security)."""
    with_auth = make_runtime(db_url, tmp_path / "storage")
    try:
        for role in ROLES:
            with_auth.auth.add_user(f"{role}-user", role, "correct horse battery")
        with TestClient(runtime.web_app(with_auth)) as c:
            s = Secured(with_auth, c, {})
            s.tokens = {role: s.login(f"{role}-user") for role in ROLES}
            yield s
    finally:
        with_auth.close()


def test_same_access_rules_as_dicomweb_search_and_lookups_audited(secured: Secured) -> None:
    uids = _archive_three_studies(secured.rt)
    c = secured.client
    url = f"/fhir/ImagingStudy?patient.identifier={CCCD}%7C079080001234"
    anonymous = c.get(url)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
    assert validate(anonymous.json()).issue[0].code == "login"
    for role in ROLES:
        r = c.get(url, headers=secured.headers(role))
        assert r.status_code == (200 if role in ("admin", "radiologist") else 403), role
        if r.status_code == 403:
            assert validate(r.json()).issue[0].code == "forbidden"
    assert c.get(f"/fhir/ImagingStudy/{uids['ct']}").status_code == 401
    assert c.get("/fhir/metadata").status_code == 200  # the CapabilityStatement is public

    secured.rt.audit.flush()
    rows = secured.rt.audit.query(EventFilter(user="radiologist-user"))
    lookup = next(r for r in rows if r["kind"] == "query.identifier")
    assert lookup["details"]["identifiers"] == [f"{CCCD}|079080001234"]
    assert lookup["details"]["patients"] == ["12345"]
    assert set(lookup["details"]["studies"]) == {uids["ct"], uids["mr"]}
    http = next(r for r in rows if r["kind"] == "http.search")
    assert http["details"]["status"] == 200 and "patient.identifier" in http["details"]["query"]
    refused = [
        r for r in secured.rt.audit.query(EventFilter(user="appraiser-user")) if r["kind"] == "http.search"
    ]
    assert refused and refused[0]["details"]["status"] == 403


@pytest.mark.parametrize(
    ("query", "location"),
    [
        ("studyUID=1.2.3.4", "./#/study/1.2.3.4"),
        ("patientID=12345&issuer=BV01", "./#/?identifier=urn%3Avn%3Aissuer%3ABV01%7C12345"),
        ("patientID=079080001234&issuer=CCCD", "./#/?identifier=urn%3Avn%3Acccd%7C079080001234"),
        ("patientID=12345", "./#/?PatientID=12345"),
        ("identifier=urn:vn:bhyt%7C0123456789", "./#/?identifier=urn%3Avn%3Abhyt%7C0123456789"),
    ],
)
def test_iid_viewer_link_redirects_to_the_viewer(client: TestClient, query: str, location: str) -> None:
    r = client.get(f"/viewer?{query}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == location


def test_iid_viewer_link_refuses_bad_parameters(client: TestClient) -> None:
    assert client.get("/viewer?studyUID=1.2.x", follow_redirects=False).status_code == 400
    assert client.get("/viewer", follow_redirects=False).status_code == 400
