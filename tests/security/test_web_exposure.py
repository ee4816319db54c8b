"""What the web side trusts (issue 14), against a real ``pacs serve``: sign-in no longer follows
the bind address (on by default, a first admin made on the first start), only known Host names
are served (DNS rebinding), ``X-Forwarded-For`` is believed only from ``[http] trusted_proxies``,
returned URLs can be pinned to ``[http] public_url``, and patient data stays out of the log."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import httpx

from tests.factories import make_dataset, to_bytes
from tests.robustness.conftest import STOW_TYPE, stow_body
from tests.serve import Served, serve


def _login(srv: Served, password: str) -> dict[str, str]:
    r = httpx.post(
        f"{srv.base_url}/api/auth/login", json={"username": "admin", "password": password}, timeout=30
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _audit_addresses(srv: Served, headers: dict[str, str], marker: str) -> set[str]:
    """Client addresses of the audit rows of QIDO requests carrying ``marker`` (polled: the
    audit is written just after the response)."""
    for _ in range(50):
        r = httpx.get(f"{srv.base_url}/api/audit", params={"kind": "http."}, headers=headers, timeout=30)
        rows = [e for e in r.json()["events"] if marker in json.dumps(e, ensure_ascii=False)]
        if rows:
            return {e["peer_address"] for e in rows}
        time.sleep(0.1)
    return set()


def test_sign_in_is_on_by_default_even_on_loopback(tmp_path: Path) -> None:
    """``auto`` (and no setting at all) used to mean "off on loopback", which a local reverse
    proxy turns into "off for the whole network". Now it is on, and a first start makes ``admin``."""
    env = {"PACS_AUTH_ENABLED": "auto", "PACS_AUTH_LOGIN_ATTEMPTS": "100"}
    with serve(tmp_path, f"sqlite:///{tmp_path / 'i.sqlite'}", env=env) as srv:
        r = httpx.get(f"{srv.base_url}/dicom-web/studies", timeout=30)
        assert r.status_code == 401
        secret = srv.storage / "initial-admin-password"
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
        headers = _login(srv, secret.read_text(encoding="utf-8").strip())
        assert httpx.get(f"{srv.base_url}/dicom-web/studies", headers=headers, timeout=30).status_code in (
            200,
            204,
        )
        assert "first start: created the web user 'admin'" in srv.log()
        assert secret.read_text(encoding="utf-8").strip() not in srv.log()  # the password is not logged

        # X-Forwarded-For from 127.0.0.1 is not believed: no proxy is configured.
        httpx.get(
            f"{srv.base_url}/dicom-web/studies",
            params={"AccessionNumber": "XFF-UNTRUSTED"},
            headers={**headers, "X-Forwarded-For": "203.0.113.9"},
            timeout=30,
        )
        assert _audit_addresses(srv, headers, "XFF-UNTRUSTED") == {"127.0.0.1"}


def test_only_known_hosts_and_trusted_proxies(tmp_path: Path) -> None:
    env = {
        "PACS_HTTP_TRUSTED_PROXIES": '["127.0.0.1"]',
        "PACS_HTTP_ALLOWED_HOSTS": '["pacs.benhvien.example", "127.0.0.1"]',
        "PACS_HTTP_PUBLIC_URL": "https://pacs.benhvien.example",
        "PACS_AUTH_ENABLED": "true",
    }
    with serve(tmp_path, f"sqlite:///{tmp_path / 'i.sqlite'}", env=env) as srv:
        headers = _login(srv, (srv.storage / "initial-admin-password").read_text(encoding="utf-8").strip())
        evil = httpx.get(
            f"{srv.base_url}/dicom-web/studies", headers={**headers, "Host": "attacker.example"}, timeout=30
        )
        assert evil.status_code == 400 and "allowed_hosts" in evil.json()["detail"]
        assert "Host 'attacker.example' is not in [http] allowed_hosts" in srv.log()
        ok = httpx.get(
            f"{srv.base_url}/dicom-web/studies",
            headers={**headers, "Host": "pacs.benhvien.example"},
            timeout=30,
        )
        assert ok.status_code in (200, 204)
        # The proxy is trusted: its X-Forwarded-For is the address the audit keeps.
        httpx.get(
            f"{srv.base_url}/dicom-web/studies",
            params={"AccessionNumber": "XFF-TRUSTED"},
            headers={**headers, "X-Forwarded-For": "203.0.113.9"},
            timeout=30,
        )
        assert _audit_addresses(srv, headers, "XFF-TRUSTED") == {"203.0.113.9"}
        # Returned URLs use public_url, whatever Host the request named.
        ds = make_dataset(PatientName="Phạm^Minh Châu")
        r = httpx.post(
            f"{srv.base_url}/dicom-web/studies",
            content=stow_body(to_bytes(ds)),
            headers={**headers, "Content-Type": STOW_TYPE, "Accept": "application/dicom+json"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        url = r.json()["00081190"]["Value"][0]
        assert url.startswith("https://pacs.benhvien.example/dicom-web/studies/")


def test_patient_data_stays_out_of_the_request_log(tmp_path: Path) -> None:
    with serve(tmp_path, f"sqlite:///{tmp_path / 'i.sqlite'}") as srv:
        r = httpx.get(
            f"{srv.base_url}/dicom-web/studies",
            params={"PatientName": "Nguyễn^Thị*", "PatientID": "CCCD079123456789", "limit": "7"},
            timeout=30,
        )
        assert r.status_code in (200, 204)
        time.sleep(0.2)
        log = srv.log()
        assert "PatientID=…" in log and "limit=7" in log
        assert "CCCD079123456789" not in log
        assert "Nguy" not in log and "%E1%BB%85" not in log
