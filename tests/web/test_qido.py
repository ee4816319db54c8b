"""QIDO-RS (PS3.18 10.6) over the shared query engine, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.uid import generate_uid

from pacs.runtime import Runtime
from tests.factories import make_dataset
from tests.web.conftest import store

JSON = "application/dicom+json"


@pytest.fixture
def corpus(rt: Runtime) -> dict[str, Any]:
    """Two patients, three studies, a CT study with two series."""
    study_a, study_b, study_c = generate_uid(), generate_uid(), generate_uid()
    series_a1, series_a2 = generate_uid(), generate_uid()
    for i in range(3):
        store(rt, make_dataset(study_uid=study_a, series_uid=series_a1, instance_number=i + 1))
    store(rt, make_dataset(study_uid=study_a, series_uid=series_a2, modality="SR", series_number=2))
    store(
        rt,
        make_dataset(
            patient_name="Trần^Thị Mai",
            patient_id="PID002",
            study_uid=study_b,
            study_date="20240301",
            accession="ACC002",
            modality="MR",
        ),
    )
    store(
        rt,
        make_dataset(
            patient_name="Lê^Văn Nguyên",
            patient_id="PID003",
            study_uid=study_c,
            study_date="20231224",
            accession="ACC003",
            modality="CR",
        ),
    )
    return {"a": study_a, "b": study_b, "c": study_c, "a1": series_a1, "a2": series_a2}


def _values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return [r[tag]["Value"][0] if "Value" in r.get(tag, {}) else None for r in results]


def _ohif_study_list_request(client, corpus):
    r = client.get(
        "/dicom-web/studies?limit=101&offset=0&fuzzymatching=false"
        "&includefield=00081030,00080060&PatientName=*nguyen*"
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(JSON)
    results = r.json()
    # "*nguyen*" matches Nguyễn (accent folded) and Lê^Văn Nguyên, not Trần^Thị Mai.
    assert sorted(_values(results, "0020000D")) == sorted([corpus["a"], corpus["c"]])
    first = next(x for x in results if x["0020000D"]["Value"][0] == corpus["a"])
    assert first["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Nguyễn^Văn An"}]}
    assert first["00081030"]["Value"] == ["CT sọ não"]
    assert set(first["00080061"]["Value"]) == {"CT", "SR"}
    assert first["00201208"] == {"vr": "IS", "Value": [4]}
    assert first["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{corpus['a']}")


def _keyword_tag_range_and_uid_list(client, corpus):
    by_tag = client.get("/dicom-web/studies", params={"00100020": "PID002"}).json()
    assert _values(by_tag, "0020000D") == [corpus["b"]]
    rng = client.get("/dicom-web/studies", params={"StudyDate": "20240101-20241231"}).json()
    assert _values(rng, "0020000D") == [corpus["b"]]
    uids = client.get(
        "/dicom-web/studies", params={"StudyInstanceUID": f"{corpus['b']},{corpus['c']}"}
    ).json()
    assert sorted(_values(uids, "0020000D")) == sorted([corpus["b"], corpus["c"]])
    wildcard = client.get("/dicom-web/studies", params={"AccessionNumber": "ACC00?"}).json()
    assert len(wildcard) == 3


def _fuzzy_and_includefield_all(client, corpus):
    fuzzy = client.get("/dicom-web/studies", params={"PatientName": "mai", "fuzzymatching": "true"}).json()
    assert _values(fuzzy, "0020000D") == [corpus["b"]]
    full = client.get("/dicom-web/studies", params={"PatientID": "PID001", "includefield": "all"}).json()
    assert full[0]["00081030"]["Value"] == ["CT sọ não"]
    assert full[0]["00080090"]["Value"] == [{"Alphabetic": "Trần^Thị Bình"}]


def _limit_offset_and_hierarchy(client, corpus):
    r1 = client.get("/dicom-web/studies", params={"limit": 2})
    r2 = client.get("/dicom-web/studies", params={"limit": 2, "offset": 2})
    page1, page2 = r1.json(), r2.json()
    assert len(page1) == 2 and len(page2) == 1
    # PS3.18 8.3.4.4.1: a truncated answer says so; the last page does not.
    assert r1.headers["Warning"].startswith("299 ") and "additional results" in r1.headers["Warning"]
    assert "Warning" not in r2.headers
    assert "Warning" not in client.get("/dicom-web/studies", params={"limit": 3}).headers
    assert set(_values(page1 + page2, "0020000D")) == {corpus["a"], corpus["b"], corpus["c"]}
    series = client.get(f"/dicom-web/studies/{corpus['a']}/series").json()
    assert sorted(_values(series, "00080060")) == ["CT", "SR"]
    ct = next(s for s in series if s["00080060"]["Value"] == ["CT"])
    assert ct["00201209"]["Value"] == [3]
    assert ct["00081190"]["Value"][0].endswith(f"/studies/{corpus['a']}/series/{corpus['a1']}")
    insts = client.get(f"/dicom-web/studies/{corpus['a']}/series/{corpus['a1']}/instances").json()
    assert sorted(_values(insts, "00200013")) == [1, 2, 3]
    assert all(i["00081190"]["Value"][0].split("/instances/")[1] == i["00080018"]["Value"][0] for i in insts)
    study_insts = client.get(f"/dicom-web/studies/{corpus['a']}/instances").json()
    assert len(study_insts) == 4
    all_series = client.get("/dicom-web/series", params={"Modality": "MR"}).json()
    assert _values(all_series, "0020000D") == [corpus["b"]]
    all_insts = client.get("/dicom-web/instances", params={"PatientID": "PID003"}).json()
    assert _values(all_insts, "0020000D") == [corpus["c"]]


def _empty_result_is_an_empty_array(client, corpus):
    r = client.get("/dicom-web/studies", params={"PatientID": "NOBODY"})
    assert r.status_code == 200 and r.json() == []
    r = client.get(f"/dicom-web/studies/{generate_uid()}/series")
    assert r.status_code == 200 and r.json() == []


BAD_QUERIES = [
    ("StudyDate=2024-13-45x", "date"),
    ("limit=-1", "negative"),
    ("limit=abc", "whole number"),
    ("offset=-5", "negative"),
    ("NoSuchAttribute=1", "unknown"),
    ("StudyInstanceUID=1.2.abc", "UID"),
    ("fuzzymatching=maybe", "fuzzymatching"),
    ("includefield=Bogus", "includefield"),
]


def test_bad_parameters_and_paths_are_400_with_a_reason(sqlite_client):
    for query, reason in BAD_QUERIES:
        r = sqlite_client.get(f"/dicom-web/studies?{query}")
        assert r.status_code == 400, query
        assert r.headers["content-type"] == "application/problem+json"
        assert reason.lower() in r.json()["detail"].lower(), (query, r.json())
    r = sqlite_client.get("/dicom-web/studies/not-a-uid/series")
    assert r.status_code == 400 and "UID" in r.json()["detail"]
    r = sqlite_client.get("/dicom-web/studies/..%2F..%2Fetc%2Fpasswd/series")
    assert r.status_code in (400, 404)
    assert "root:" not in r.text


def test_content_negotiation_parameters_are_not_search_keys(sqlite_client):
    """``accept`` and ``charset`` (PS3.18 8.3.3) negotiate the response; they match nothing."""
    r = sqlite_client.get("/dicom-web/studies?accept=application/dicom%2Bjson&charset=utf-8")
    assert r.status_code == 200 and r.json() == []
    r = sqlite_client.get("/dicom-web/studies?accept=application/dicom%2Bxml")
    assert r.status_code == 406 and "dicom+xml" in r.json()["detail"]


def _limit_is_bounded_and_json_is_gzipped(client, corpus):
    r = client.get("/dicom-web/studies", params={"limit": 10**9}, headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and len(r.json()) == 3
    assert r.headers.get("content-encoding") == "gzip"
    r = client.get("/dicom-web/studies", headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 406


def test_study_searches(client, corpus):
    """OHIF's study list request, keys by keyword and tag, ranges, UID lists, fuzzy, includefield."""
    _ohif_study_list_request(client, corpus)
    _keyword_tag_range_and_uid_list(client, corpus)
    _fuzzy_and_includefield_all(client, corpus)
    _limit_is_bounded_and_json_is_gzipped(client, corpus)


def test_paging_hierarchy_and_empty_results(client, corpus):
    """limit/offset, series and instance searches (scoped and not), empty results as []."""
    _limit_offset_and_hierarchy(client, corpus)
    _empty_result_is_an_empty_array(client, corpus)
