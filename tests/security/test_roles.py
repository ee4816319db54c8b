"""Users and roles on the web side: each role x endpoint family -> 200 / 401 / 403 (SQLite and
PostgreSQL), token expiry, disabled users, login rate limit, public viewer files."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from pacs import runtime
from pacs.model import Origin
from tests.factories import make_dataset, to_bytes
from tests.security.conftest import PASSWORD, ROLES, Secured, make_runtime

BOUNDARY = "SECURITYTESTBOUNDARY"


def stow_body(data: bytes) -> bytes:
    """One application/dicom part (PS3.18 10.5)."""
    return (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'

#: family -> roles allowed (the rest get 403)
EXPECTED = {
    "search": {"admin", "radiologist"},  # not the appraiser: the appraisal API only (issue 14)
    "metadata": {"admin", "radiologist"},
    "retrieve": {"admin", "radiologist"},
    "frames": {"admin", "radiologist"},
    "rendered": {"admin", "radiologist"},
    "thumbnail": {"admin", "radiologist"},
    "store": {"admin", "radiologist", "modality-upload"},
    "appraisal": {"admin", "radiologist", "appraiser"},
    "measurements": {"admin", "radiologist"},  # a reader's saved measurements (issue 21)
    "audit": {"admin"},
    "orders": {"admin", "orders"},  # the HIS's door (issue 15); nothing else for it
    "me": set(ROLES),
}


def _request(s: Secured, family: str, uids: tuple[str, str, str], headers: dict[str, str]) -> int:
    st, se, sop = uids
    inst = f"/dicom-web/studies/{st}/series/{se}/instances/{sop}"
    c = s.client
    if family == "store":
        ds = make_dataset(study_uid=st)
        h = {**headers, "Content-Type": STOW_TYPE, "Accept": "application/dicom+json"}
        return c.post("/dicom-web/studies", content=stow_body(to_bytes(ds)), headers=h).status_code
    url = {
        "search": "/dicom-web/studies?PatientID=PID001",
        "metadata": f"/dicom-web/studies/{st}/metadata",
        "retrieve": inst,
        "frames": inst + "/frames/1",
        "rendered": inst + "/rendered",
        "thumbnail": inst + "/thumbnail",
        "appraisal": "/api/appraisal/v1/records",
        "measurements": f"/api/measurements/{st}",
        "audit": "/api/audit",
        "orders": "/api/orders",
        "me": "/api/auth/me",
    }[family]
    return c.get(url, headers=headers).status_code


@pytest.fixture
def stored(secured: Secured) -> tuple[str, str, str]:
    ds = make_dataset()
    r = secured.rt.archive.store_bytes(to_bytes(ds), Origin(protocol="internal"))
    return r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid


def test_roles_matrix(secured: Secured, stored: tuple[str, str, str]) -> None:
    got: dict[tuple[str, str], int] = {}
    for family, allowed in EXPECTED.items():
        for role in ROLES:
            status = _request(secured, family, stored, secured.headers(role))
            got[(family, role)] = status
            if role in allowed:
                assert status == 200, f"{role} on {family}: {status}"
            else:
                assert status == 403, f"{role} on {family}: {status}"
        if family != "me":
            assert _request(secured, family, stored, {}) == 401, family
    assert len(got) == len(EXPECTED) * len(ROLES)


def test_unauthenticated_gets_bearer_challenge(secured: Secured) -> None:
    r = secured.client.get("/dicom-web/studies")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/problem+json"
    r = secured.client.get("/dicom-web/studies", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    r = secured.client.get("/api/anything-else", headers=secured.headers("radiologist"))
    assert r.status_code == 403  # unknown /api paths are admin-only, never open


def test_public_paths_stay_public(secured: Secured) -> None:
    assert secured.client.get("/healthz").status_code == 200
    r = secured.client.get("/")
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]


def test_login_contract_and_wrong_password(secured: Secured) -> None:
    r = secured.client.post("/api/auth/login", json={"username": "admin-user", "password": PASSWORD})
    body = r.json()
    assert r.status_code == 200
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 480 * 60
    assert len(body["access_token"]) >= 40
    assert r.headers["cache-control"] == "no-store"
    r = secured.client.post("/api/auth/login", data={"username": "admin-user", "password": PASSWORD})
    assert r.status_code == 200  # form fields (OAuth 2.0 password-grant style) work too
    r = secured.client.post("/api/auth/login", json={"username": "admin-user", "password": "wrong password"})
    assert r.status_code == 401
    r = secured.client.post("/api/auth/login", json={"username": "nobody", "password": PASSWORD})
    assert r.status_code == 401
    r = secured.client.post("/api/auth/login", json={"username": "admin-user"})
    assert r.status_code == 400


def test_token_expiry(secured: Secured) -> None:
    h = secured.headers("radiologist")
    assert secured.client.get("/dicom-web/studies", headers=h).status_code == 200
    auth = secured.rt.auth
    real = auth.clock
    auth.clock = lambda: real() + timedelta(minutes=481)
    try:
        r = secured.client.get("/dicom-web/studies", headers=h)
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
    finally:
        auth.clock = real
    assert secured.client.get("/dicom-web/studies", headers=h).status_code == 200


def test_disabled_user_loses_access(secured: Secured) -> None:
    h = secured.headers("radiologist")
    assert secured.client.get("/dicom-web/studies", headers=h).status_code == 200
    secured.rt.auth.set_disabled("radiologist-user")
    assert secured.client.get("/dicom-web/studies", headers=h).status_code == 401
    r = secured.client.post("/api/auth/login", json={"username": "radiologist-user", "password": PASSWORD})
    assert r.status_code == 401
    secured.rt.auth.set_disabled("radiologist-user", False)
    assert secured.login("radiologist-user")


def test_login_rate_limit_per_address(db_url: str, tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    rt = make_runtime(db_url, tmp_path / "storage", login_attempts=3, login_window_seconds=600)
    try:
        rt.auth.add_user("bob", "radiologist", PASSWORD)
        with TestClient(runtime.web_app(rt)) as c:
            statuses = [
                c.post("/api/auth/login", json={"username": "bob", "password": f"guess {i}"}).status_code
                for i in range(3)
            ]
            assert statuses == [401, 401, 401]
            r = c.post("/api/auth/login", json={"username": "bob", "password": PASSWORD})
            assert r.status_code == 429  # even the right password, until the window passes
            assert int(r.headers["retry-after"]) > 0
            # another address is not affected
            with TestClient(runtime.web_app(rt), client=("10.1.2.3", 5000)) as other:
                r = other.post("/api/auth/login", json={"username": "bob", "password": PASSWORD})
                assert r.status_code == 200
    finally:
        rt.close()


def test_user_management_errors(secured: Secured) -> None:
    from pacs.services.auth import AuthError

    with pytest.raises(AuthError, match="already exists"):
        secured.rt.auth.add_user("admin-user", "admin", PASSWORD)
    with pytest.raises(AuthError, match="unknown role"):
        secured.rt.auth.add_user("eve", "superuser", PASSWORD)
    with pytest.raises(AuthError, match="at least 8"):
        secured.rt.auth.add_user("eve", "admin", "short")
    with pytest.raises(AuthError, match="invalid user name"):
        secured.rt.auth.add_user("bad name'; --", "admin", PASSWORD)
    users = {u.name: u for u in secured.rt.auth.list_users()}
    assert set(users) == {f"{r}-user" for r in ROLES}
    assert all(u.password_hash.startswith("$argon2id$") for u in users.values())
    assert PASSWORD not in str(users)
