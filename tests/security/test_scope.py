"""The appraiser's scope (issue 14): the appraisal API only, never DICOMweb (SQLite and PostgreSQL).

QIDO-RS with ``includefield=all`` used to give an appraiser every patient's demographics; now
every DICOMweb route answers 403 with a reason for that role, while radiologists and admins keep
their access.
"""

from __future__ import annotations

import pytest

from pacs.model import Level, Origin
from pacs.services.audit import EventFilter
from pacs.services.auth import Family, allowed
from tests.factories import make_dataset, to_bytes
from tests.security.conftest import Secured
from tests.security.test_roles import STOW_TYPE, stow_body


@pytest.fixture
def stored(secured: Secured) -> tuple[str, str, str]:
    ds = make_dataset(patient_name="Trần^Thị Mai", patient_id="PID-SCOPE", PatientBirthDate="19700203")
    r = secured.rt.archive.store_bytes(to_bytes(ds), Origin(protocol="internal"))
    return r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid


def _dicomweb_gets(uids: tuple[str, str, str]) -> list[str]:
    st, se, sop = uids
    inst = f"/dicom-web/studies/{st}/series/{se}/instances/{sop}"
    return [
        "/dicom-web/studies?includefield=all",
        "/dicom-web/studies?PatientID=PID-SCOPE",
        "/dicom-web/series?includefield=all",
        "/dicom-web/instances?includefield=all",
        f"/dicom-web/studies/{st}/series",
        f"/dicom-web/studies/{st}/instances",
        f"/dicom-web/studies/{st}/metadata",
        f"/dicom-web/studies/{st}/series/{se}/metadata",
        inst + "/metadata",
        f"/dicom-web/studies/{st}",
        inst,
        inst + "/frames/1",
        inst + "/rendered",
        inst + "/thumbnail",
    ]


def test_appraiser_refused_every_dicomweb_route(secured: Secured, stored: tuple[str, str, str]) -> None:
    h = secured.headers("appraiser")
    for url in _dicomweb_gets(stored):
        r = secured.client.get(url, headers=h)
        assert r.status_code == 403, (url, r.status_code)
        assert r.headers["content-type"] == "application/problem+json", url
        detail = r.json()["detail"]
        assert "appraiser" in detail and "/api/appraisal" in detail, detail
        assert "Trần" not in r.text and "PID-SCOPE" not in r.text and "19700203" not in r.text
    r = secured.client.post(
        "/dicom-web/studies",
        content=stow_body(to_bytes(make_dataset())),
        headers={**h, "Content-Type": STOW_TYPE},
    )
    assert r.status_code == 403
    assert secured.rt.archive.count(Level.IMAGE) == 1  # nothing stored


def test_appraiser_keeps_the_appraisal_api(secured: Secured, stored: tuple[str, str, str]) -> None:
    h = secured.headers("appraiser")
    for url in ("/api/appraisal/v1/records", "/api/appraisal/v1/devices", "/api/appraisal/v1/export.csv"):
        r = secured.client.get(url, headers=h)
        assert r.status_code == 200, (url, r.text)
    assert secured.client.get("/api/auth/me", headers=h).json()["role"] == "appraiser"


@pytest.mark.parametrize("role", ["radiologist", "admin"])
def test_readers_keep_qido_and_metadata(secured: Secured, stored: tuple[str, str, str], role: str) -> None:
    st = stored[0]
    h = secured.headers(role)
    r = secured.client.get("/dicom-web/studies", params={"includefield": "all"}, headers=h)
    assert r.status_code == 200, r.text
    [study] = r.json()
    assert study["00100020"]["Value"] == ["PID-SCOPE"]
    assert secured.client.get(f"/dicom-web/studies/{st}/metadata", headers=h).status_code == 200
    assert secured.client.get("/api/appraisal/v1/records", headers=h).status_code == 200


def test_refusal_is_audited(secured: Secured) -> None:
    assert secured.client.get("/dicom-web/studies", headers=secured.headers("appraiser")).status_code == 403
    rows = secured.rt.audit.query(EventFilter(user="appraiser-user", kinds=("http.search",)))
    assert [r["details"]["status"] for r in rows] == [403]
    assert rows[0]["details"]["reason"] == "forbidden"


def test_permission_table() -> None:
    """The one table: an appraiser has the appraisal API and its session, nothing else."""
    assert {f for f in Family if allowed("appraiser", f)} == {Family.APPRAISAL, Family.SESSION}
    assert allowed("radiologist", Family.SEARCH) and allowed("admin", Family.SEARCH)
