"""STOW-RS (PS3.18 10.5): stored through the C-STORE path, per-instance failures, limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from pacs import runtime
from tests.conftest import settings_for
from tests.factories import make_dataset, to_bytes
from tests.web.conftest import TestClient

B = "stow-test-boundary"
CT = f'multipart/related; type="application/dicom"; boundary={B}'


def body(*parts: bytes, content_type: str = "application/dicom") -> bytes:
    out = b""
    for p in parts:
        out += f"--{B}\r\nContent-Type: {content_type}\r\n\r\n".encode() + p + b"\r\n"
    return out + f"--{B}--\r\n".encode()


def test_store_then_search(client, rt):
    study = generate_uid()
    a, b = make_dataset(study_uid=study), make_dataset(study_uid=study, instance_number=2)
    r = client.post(
        "/dicom-web/studies", content=body(to_bytes(a), to_bytes(b)), headers={"Content-Type": CT}
    )
    assert r.status_code == 200, r.text
    refs = r.json()["00081199"]["Value"]
    assert {x["00081155"]["Value"][0] for x in refs} == {a.SOPInstanceUID, b.SOPInstanceUID}
    assert r.json()["00081190"]["Value"][0].endswith(f"/studies/{study}")
    found = client.get("/dicom-web/studies", params={"StudyInstanceUID": study}).json()
    assert found[0]["00201208"]["Value"] == [2]
    # Same bytes again: idempotent success. Different bytes under the same UID: success by default
    # (keep-versions: a new version, the one served), failure 0x0111 with duplicate_policy = "reject".
    assert (
        client.post("/dicom-web/studies", content=body(to_bytes(a)), headers={"Content-Type": CT}).status_code
        == 200
    )
    changed = make_dataset(
        study_uid=study, series_uid=a.SeriesInstanceUID, sop_uid=a.SOPInstanceUID, accession="OTHER"
    )
    r = client.post("/dicom-web/studies", content=body(to_bytes(changed)), headers={"Content-Type": CT})
    assert r.status_code == 200, r.text
    assert "00081198" not in r.json()
    url = f"/dicom-web/studies/{study}/series/{a.SeriesInstanceUID}/instances/{a.SOPInstanceUID}/metadata"
    assert client.get(url).json()[0]["00080050"]["Value"] == ["OTHER"]  # the newest is served
    assert len(rt.archive.versions(a.SOPInstanceUID)) == 2
    rt.archive.duplicate_policy = "reject"
    again = make_dataset(
        study_uid=study, series_uid=a.SeriesInstanceUID, sop_uid=a.SOPInstanceUID, accession="THIRD"
    )
    r = client.post("/dicom-web/studies", content=body(to_bytes(again)), headers={"Content-Type": CT})
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0111]


def test_partial_failures_and_study_mismatch(sqlite_client):
    study = generate_uid()
    good, other = make_dataset(study_uid=study), make_dataset()
    r = sqlite_client.post(
        f"/dicom-web/studies/{study}",
        content=body(to_bytes(good), to_bytes(other), b"this is not DICOM"),
        headers={"Content-Type": CT},
    )
    assert r.status_code == 202
    failed = r.json()["00081198"]["Value"]
    reasons = sorted(f["00081197"]["Value"][0] for f in failed)
    assert reasons == [0xA900, 0xC000]
    mismatch = next(f for f in failed if f["00081197"]["Value"] == [0xA900])
    assert mismatch["00081155"]["Value"] == [other.SOPInstanceUID]
    r = sqlite_client.post(f"/dicom-web/studies/{study}", content=body(b"junk"), headers={"Content-Type": CT})
    assert r.status_code == 409


def test_bad_requests(sqlite_client):
    ds = to_bytes(make_dataset())
    r = sqlite_client.post("/dicom-web/studies", content=ds, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 415 and r.json()["detail"]
    r = sqlite_client.post(
        "/dicom-web/studies", content=body(ds), headers={"Content-Type": "multipart/related"}
    )
    assert r.status_code == 400 and "boundary" in r.json()["detail"]
    r = sqlite_client.post(
        "/dicom-web/studies", content=b"garbage without parts", headers={"Content-Type": CT}
    )
    assert r.status_code == 400 and "boundary" in r.json()["detail"]
    r = sqlite_client.post("/dicom-web/studies/../x", content=body(ds), headers={"Content-Type": CT})
    assert r.status_code in (400, 404, 405)
    r = sqlite_client.post("/dicom-web/studies/1.2.abc", content=body(ds), headers={"Content-Type": CT})
    assert r.status_code == 400


@pytest.fixture
def small_limit_client(tmp_path: Path) -> Iterator[TestClient]:
    rt = runtime.build(settings_for(f"sqlite:///{tmp_path / 'i.sqlite'}", tmp_path / "s", max_upload_mb=1))
    try:
        with TestClient(runtime.web_app(rt)) as c:
            yield c
    finally:
        rt.close()


def test_oversized_bodies_are_413(small_limit_client):
    big = make_dataset(rows=800, columns=800)  # 1.28 MB of pixels
    payload = body(to_bytes(big))
    r = small_limit_client.post("/dicom-web/studies", content=payload, headers={"Content-Type": CT})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is enforced
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    r = small_limit_client.post("/dicom-web/studies", content=chunks(), headers={"Content-Type": CT})
    assert r.status_code == 413
