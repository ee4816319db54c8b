"""Fixtures for the security tests: an app with authentication on, one user per role."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from pacs import config, runtime

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PASSWORD = "correct horse battery"
ROLES = ("admin", "radiologist", "appraiser", "modality-upload", "orders")


def settings_for(db_url: str, storage: Path, **auth: object) -> config.Settings:
    """Settings with authentication forced on (the app is on loopback in tests)."""
    return config.Settings(
        storage=config.StorageSettings(path=storage, fsync=False),
        database=config.DatabaseSettings(url=db_url),
        auth=config.AuthSettings(**{"enabled": "true", **auth}),  # type: ignore[arg-type]
        http=config.HttpSettings(allowed_hosts=("testserver",)),
    )


@dataclass
class Secured:
    """A runtime with authentication on, its client and a token per role."""

    rt: runtime.Runtime
    client: TestClient
    tokens: dict[str, str]

    def headers(self, role: str) -> dict[str, str]:
        """``Authorization`` for a user of ``role``."""
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def login(self, name: str, password: str = PASSWORD) -> str:
        """A fresh token (asserting the login worked)."""
        r = self.client.post("/api/auth/login", json={"username": name, "password": password})
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])


def make_runtime(db_url: str, storage: Path, **auth: object) -> runtime.Runtime:
    """A runtime with a cheap argon2 hasher (the default costs a second or so per login)."""
    rt = runtime.build(settings_for(db_url, storage, **auth))
    rt.auth.hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    return rt


@pytest.fixture
def secured(db_url: str, tmp_path: Path) -> Iterator[Secured]:
    """Authentication on (SQLite and PostgreSQL), users ``<role>-user`` for every role, logged in."""
    rt = make_runtime(db_url, tmp_path / "storage")
    try:
        for role in ROLES:
            rt.auth.add_user(f"{role}-user", role, PASSWORD)
        with TestClient(runtime.web_app(rt)) as client:
            s = Secured(rt, client, {})
            s.tokens = {role: s.login(f"{role}-user") for role in ROLES}
            yield s
    finally:
        rt.close()
