"""Server-side sessions (issue 14): sign-out revokes the token on the server, and a password
change revokes every token the old password opened (SQLite and PostgreSQL)."""

from __future__ import annotations

from tests.security.conftest import PASSWORD, Secured


def _studies(secured: Secured, token: str) -> int:
    r = secured.client.get("/dicom-web/studies", headers={"Authorization": f"Bearer {token}"})
    return r.status_code


def test_logout_revokes_the_token_on_the_server(secured: Secured) -> None:
    token = secured.login("radiologist-user")
    other = secured.login("radiologist-user")  # a second session of the same user
    assert _studies(secured, token) in (200, 204)
    r = secured.client.post("/api/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 204
    assert _studies(secured, token) == 401  # a copy of the token no longer works
    again = secured.client.post("/api/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert again.status_code == 401
    assert _studies(secured, other) in (200, 204)  # only that session ended
    assert secured.client.post("/api/auth/logout").status_code in (400, 401)


def test_password_change_revokes_every_session(secured: Secured) -> None:
    first, second = secured.login("admin-user"), secured.login("admin-user")
    bystander = secured.login("radiologist-user")
    secured.rt.auth.set_password("admin-user", "a new and longer password")
    assert _studies(secured, first) == 401
    assert _studies(secured, second) == 401
    assert _studies(secured, bystander) in (200, 204)
    r = secured.client.post("/api/auth/login", json={"username": "admin-user", "password": PASSWORD})
    assert r.status_code == 401
    fresh = secured.login("admin-user", "a new and longer password")
    assert _studies(secured, fresh) in (200, 204)
