"""``[storage] duplicate_policy = "keep-versions"`` (the default, issue 17): a different object
under a stored SOP Instance UID is answered success, every version is kept, the newest is served;
reindex and verify know the versions; the admin API lists and returns them (SQLite and PostgreSQL).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from sqlalchemy import text

from pacs import runtime
from pacs.errors import DuplicateInstance, NotFound
from pacs.index import repo
from pacs.model import InstanceVersion, Level, Origin, StoreOutcome
from pacs.query import from_qido
from pacs.runtime import Runtime
from pacs.services.archive import Archive
from tests.factories import make_dataset, to_bytes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

CT1 = Origin(calling_ae="CT1", address="10.0.0.5", protocol="dimse")
CT2 = Origin(calling_ae="CT2", address="10.0.0.6", protocol="dimse")
B = "versions-test-boundary"
STOW = f'multipart/related; type="application/dicom"; boundary={B}'


def _blobs(archive: Archive) -> int:
    return sum(1 for _ in archive.blobs.keys())


def _stored(archive: Archive, sop: str) -> Dataset:
    [inst] = archive.instances(sop_instance_uid=sop)
    with archive.open(inst) as fh:
        return pydicom.dcmread(fh)


def _events(archive: Archive, kind: str) -> list[dict[str, object]]:
    with archive.read() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT calling_ae, sop_instance_uid, details FROM events WHERE kind = '{kind}' ORDER BY id"
        ).all()
    return [{"calling_ae": r[0], "sop": r[1], **json.loads(r[2] or "{}")} for r in rows]


def _check_chain(found: list[InstanceVersion]) -> None:
    """Newest first, the current one first; each superseded one superseded when the next arrived."""
    assert found[0].current and not any(v.current for v in found[1:])
    assert found[0].superseded_at is None
    times = [v.received_at for v in found]
    assert times == sorted(times, reverse=True)  # type: ignore[type-var]
    for newer, older in itertools.pairwise(found):
        assert older.superseded_at == newer.received_at


def _corrected(ds: Dataset, **changes: object) -> Dataset:
    out = copy.deepcopy(ds)
    for k, v in changes.items():
        setattr(out, k, v)
    return out


# ---------------------------------------------------------------------- the store path


def test_corrected_resend_is_a_new_version_served_newest(rt: Runtime) -> None:
    archive = rt.archive
    assert archive.duplicate_policy == "keep-versions"  # the default
    first = make_dataset(patient_name="Nguyen^Van An")
    r1 = archive.store_bytes(to_bytes(first), CT1)
    fixed = _corrected(first, PatientName="Nguyễn^Văn An", StudyDescription="CT sọ não (sửa)")
    r2 = archive.store_bytes(to_bytes(fixed), CT2)
    assert r2.outcome is StoreOutcome.VERSIONED and r2.sha256 != r1.sha256

    # The index row points at the newest: what every reader (WADO, C-MOVE/C-GET, rendering) opens.
    [inst] = archive.instances(sop_instance_uid=first.SOPInstanceUID)
    assert inst.sha256 == r2.sha256
    back = _stored(archive, first.SOPInstanceUID)
    assert str(back.PatientName) == "Nguyễn^Văn An" and back.file_meta.SourceApplicationEntityTitle == "CT2"
    assert back.StudyDescription == "CT sọ não (sửa)"
    q = from_qido(Level.STUDY, [("StudyInstanceUID", first.StudyInstanceUID)], default_limit=9, max_limit=9)
    [row] = archive.search(q)
    assert row["NumberOfStudyRelatedInstances"] == 1  # still one instance
    assert archive.count(Level.IMAGE) == 1
    assert _blobs(archive) == 2  # nothing lost

    found = archive.versions(first.SOPInstanceUID)
    assert [(v.sha256, v.calling_ae, v.current) for v in found] == [
        (r2.sha256, "CT2", True),
        (r1.sha256, "CT1", False),
    ]
    assert [v.size for v in found] == [r2.size, r1.size]
    assert {v.study_instance_uid for v in found} == {first.StudyInstanceUID}
    _check_chain(found)
    _version, fh = archive.open_version(first.SOPInstanceUID, r1.sha256.upper())
    with fh:
        assert str(pydicom.dcmread(fh).PatientName) == "Nguyen^Van An"

    [event] = _events(archive, "instance.version_added")
    assert event["sop"] == first.SOPInstanceUID and event["calling_ae"] == "CT2"
    assert (event["old_sha256"], event["new_sha256"]) == (r1.sha256, r2.sha256)
    assert (event["old_size"], event["new_size"]) == (r1.size, r2.size)
    assert (event["old_calling_ae"], event["new_calling_ae"], event["served"]) == ("CT1", "CT2", "new")
    assert event["old_transfer_syntax_uid"] == event["new_transfer_syntax_uid"] == "1.2.840.10008.1.2.1"

    # The same corrected object again: a no-op duplicate, as before.
    assert archive.store_bytes(to_bytes(fixed), CT2).outcome is StoreOutcome.DUPLICATE
    assert _blobs(archive) == 2 and len(archive.versions(first.SOPInstanceUID)) == 2
    report = archive.verify()
    assert report.ok and report.checked == 2


def test_another_transfer_syntax_is_kept_as_a_version(rt: Runtime) -> None:
    archive = rt.archive
    explicit = make_dataset()
    r1 = archive.store_bytes(to_bytes(explicit), CT1)
    implicit = _corrected(explicit)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    r2 = archive.store_bytes(to_bytes(implicit), CT1)
    assert r2.outcome is StoreOutcome.VERSIONED
    [inst] = archive.instances(sop_instance_uid=explicit.SOPInstanceUID)
    assert inst.transfer_syntax_uid == ImplicitVRLittleEndian
    found = archive.versions(explicit.SOPInstanceUID)
    assert [(v.sha256, v.transfer_syntax_uid) for v in found] == [
        (r2.sha256, ImplicitVRLittleEndian),
        (r1.sha256, "1.2.840.10008.1.2.1"),
    ]
    [event] = _events(archive, "instance.version_added")
    assert event["new_transfer_syntax_uid"] == ImplicitVRLittleEndian
    assert _stored(archive, explicit.SOPInstanceUID).PixelData == explicit.PixelData
    assert archive.verify().ok


def test_reject_and_replace_stay_as_they_were(rt: Runtime) -> None:
    archive = rt.archive
    ds = make_dataset()
    archive.store_bytes(to_bytes(ds), CT1)
    changed = _corrected(ds, StudyDescription="changed")
    archive.duplicate_policy = "reject"
    with pytest.raises(DuplicateInstance):
        archive.store_bytes(to_bytes(changed), CT1)
    assert _blobs(archive) == 1
    archive.duplicate_policy = "replace"
    assert archive.store_bytes(to_bytes(changed), CT1).outcome is StoreOutcome.REPLACED
    assert _blobs(archive) == 1  # the old file is deleted
    assert len(archive.versions(ds.SOPInstanceUID)) == 1
    assert not _events(archive, "instance.version_added")
    assert archive.verify().ok


def test_a_version_must_keep_study_and_series(rt: Runtime) -> None:
    archive = rt.archive
    ds = make_dataset()
    archive.store_bytes(to_bytes(ds), CT1)
    moved = _corrected(ds, SeriesInstanceUID=generate_uid())
    with pytest.raises(DuplicateInstance, match="another series or study"):
        archive.store_bytes(to_bytes(moved), CT1)
    assert _blobs(archive) == 1 and archive.count(Level.SERIES) == 1
    assert len(archive.versions(ds.SOPInstanceUID)) == 1


def test_unknown_instance_or_version_is_not_found(rt: Runtime) -> None:
    ds = make_dataset()
    rt.archive.store_bytes(to_bytes(ds), CT1)
    with pytest.raises(NotFound):
        rt.archive.versions(generate_uid())
    with pytest.raises(NotFound):
        rt.archive.open_version(ds.SOPInstanceUID, "0" * 64)


def test_concurrent_versions_all_kept_newest_current(rt: Runtime) -> None:
    """Several corrections of one instance at once (group commit; on PostgreSQL the unique blob
    key of a version makes a store that superseded the same file as another look again)."""
    archive = rt.archive
    ds = make_dataset()
    archive.store_bytes(to_bytes(ds), CT1)
    bodies = [to_bytes(_corrected(ds, StudyDescription=f"take {i}")) for i in range(6)]
    outcomes: list[object] = []
    start = threading.Barrier(len(bodies))
    lock = threading.Lock()

    def send(data: bytes) -> None:
        start.wait(10)
        try:
            result: object = archive.store_bytes(data, CT2).outcome
        except Exception as exc:  # pragma: no cover - reported below
            result = exc
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes == [StoreOutcome.VERSIONED] * len(bodies), outcomes
    found = archive.versions(ds.SOPInstanceUID)
    assert len(found) == len(bodies) + 1 == _blobs(archive)
    _check_chain(found)
    [inst] = archive.instances(sop_instance_uid=ds.SOPInstanceUID)
    assert inst.sha256 == found[0].sha256
    assert archive.count(Level.IMAGE) == 1
    assert archive.verify().ok


# ---------------------------------------------------------------------- reindex and verify


@pytest.mark.parametrize("order", ["as-stored", "reversed"])
def test_reindex_rebuilds_versions_newest_by_reception(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """Files of one SOP Instance UID met in any order: the newest by reception time (the file's
    time) is the instance again, the others its versions; nothing fails, verify agrees."""
    archive = rt.archive
    ds = make_dataset()
    other = make_dataset(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID, instance_number=2)
    results = [archive.store_bytes(to_bytes(_corrected(ds, StudyDescription=f"v{i}")), CT1) for i in range(3)]
    archive.store_bytes(to_bytes(other), CT1)
    # Identical data set again in a file of its own (as an interrupted duplicate would leave it).
    with archive.blobs.writer() as w:
        w.write(to_bytes(_corrected(ds, StudyDescription="v0")))
        stray = w.commit()
    base = datetime(2025, 1, 10, 8, 0, tzinfo=UTC).timestamp()
    found = archive.versions(ds.SOPInstanceUID)
    by_sha = {v.sha256: v.blob_key for v in found}
    times = {by_sha[r.sha256]: base + 60 * i for i, r in enumerate(results)}
    times[stray] = base - 60  # the oldest of all
    for key, t in times.items():
        os.utime(archive.blobs.path(key) or "", (t, t))
    keys = sorted(archive.blobs.keys())
    monkeypatch.setattr(archive.blobs, "keys", lambda: iter(keys if order == "as-stored" else keys[::-1]))
    with archive.db.write() as conn:
        repo.clear(conn)
    assert not archive.verify().ok

    report = archive.reindex()
    assert not report.failed, report.failed
    assert (report.indexed, report.versions) == (2, 3)
    assert archive.count(Level.IMAGE) == 2
    rebuilt = archive.versions(ds.SOPInstanceUID)
    assert [v.sha256 for v in rebuilt[:3]] == [r.sha256 for r in reversed(results)]
    assert rebuilt[3].blob_key == stray and len(rebuilt) == 4
    assert [v.received_at for v in rebuilt] == [
        datetime.fromtimestamp(t, UTC) for t in (base + 120, base + 60, base, base - 60)
    ]
    _check_chain(rebuilt)
    assert str(_stored(archive, ds.SOPInstanceUID).StudyDescription) == "v2"
    report2 = archive.verify()
    assert report2.ok and report2.checked == 5


def test_verify_reports_a_lost_or_changed_version(rt: Runtime) -> None:
    archive = rt.archive
    ds = make_dataset()
    archive.store_bytes(to_bytes(ds), CT1)
    archive.store_bytes(to_bytes(_corrected(ds, StudyDescription="v1")), CT1)
    archive.store_bytes(to_bytes(_corrected(ds, StudyDescription="v2")), CT1)
    _current, newer, older = archive.versions(ds.SOPInstanceUID)
    Path(archive.blobs.path(older.blob_key) or "").unlink()
    with open(archive.blobs.path(newer.blob_key) or "", "ab") as fh:
        fh.write(b"\0\0")
    report = archive.verify()
    assert not report.ok
    assert report.missing == [f"{ds.SOPInstanceUID} (superseded version {older.sha256[:16]})"]
    assert report.corrupt == [f"{ds.SOPInstanceUID} (superseded version {newer.sha256[:16]})"]


# ---------------------------------------------------------------------- edges


def _body(*parts: bytes) -> bytes:
    out = b"".join(f"--{B}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return out + f"--{B}--\r\n".encode()


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(runtime.web_app(rt)) as c:
        yield c


def test_stow_correction_is_200_and_wado_serves_the_newest(client: TestClient, rt: Runtime) -> None:
    ds = make_dataset(accession="WRONG")
    assert (
        client.post(
            "/dicom-web/studies", content=_body(to_bytes(ds)), headers={"Content-Type": STOW}
        ).status_code
        == 200
    )
    fixed = _corrected(ds, AccessionNumber="RIGHT")
    r = client.post("/dicom-web/studies", content=_body(to_bytes(fixed)), headers={"Content-Type": STOW})
    assert r.status_code == 200, r.text
    assert "00081198" not in r.json()
    [ref] = r.json()["00081199"]["Value"]
    assert "00081196" not in ref  # no warning: nothing was coerced
    url = (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    got = client.get(
        url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    )
    assert got.status_code == 200
    assert b"RIGHT" in got.content and b"WRONG" not in got.content
    meta = client.get(url + "/metadata").json()
    assert meta[0]["00080050"]["Value"] == ["RIGHT"]


def test_versions_api(client: TestClient, rt: Runtime) -> None:
    ds = make_dataset()
    r1 = rt.archive.store_bytes(to_bytes(ds), CT1)
    r2 = rt.archive.store_bytes(to_bytes(_corrected(ds, StudyDescription="fixed")), CT2)
    r = client.get(f"/api/instances/{ds.SOPInstanceUID}/versions")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert (body["sop_instance_uid"], body["study_instance_uid"]) == (ds.SOPInstanceUID, ds.StudyInstanceUID)
    got = body["versions"]
    assert [(v["sha256"], v["current"], v["calling_ae"]) for v in got] == [
        (r2.sha256, True, "CT2"),
        (r1.sha256, False, "CT1"),
    ]
    assert got[0]["superseded_at"] is None and got[1]["superseded_at"] == got[0]["received_at"]
    assert [v["size"] for v in got] == [r2.size, r1.size]
    assert {v["transfer_syntax_uid"] for v in got} == {"1.2.840.10008.1.2.1"}
    assert "blob_key" not in json.dumps(body) and got[0]["peer_address"] == "10.0.0.6"
    for v in got:
        one = client.get(v["url"])
        assert one.status_code == 200 and one.headers["content-type"] == "application/dicom"
        assert hashlib.sha256(one.content).hexdigest() == v["sha256"]
    old = pydicom.dcmread(BytesIO(client.get(got[1]["url"]).content))
    assert old.StudyDescription == ds.StudyDescription
    assert client.get(f"/api/instances/{ds.SOPInstanceUID}/versions/{'0' * 64}").status_code == 404
    missing = client.get(f"/api/instances/{generate_uid()}/versions")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


def test_versions_api_is_for_admins_only(db_url: str, tmp_path: Path) -> None:
    from tests.security.conftest import PASSWORD, make_runtime

    rt = make_runtime(db_url, tmp_path / "storage")
    try:
        ds = make_dataset()
        rt.archive.store_bytes(to_bytes(ds), CT1)
        for role in ("admin", "radiologist", "modality-upload"):
            rt.auth.add_user(f"{role}-user", role, PASSWORD)
        url = f"/api/instances/{ds.SOPInstanceUID}/versions"
        with TestClient(runtime.web_app(rt)) as c:
            assert c.get(url).status_code == 401
            for role, want in (("admin", 200), ("radiologist", 403), ("modality-upload", 403)):
                login = c.post("/api/auth/login", json={"username": f"{role}-user", "password": PASSWORD})
                token = login.json()["access_token"]
                assert c.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == want, role
        with rt.archive.read() as conn:
            audited = conn.execute(
                text("SELECT count(*) FROM events WHERE kind = 'http.admin' AND details LIKE :p"),
                {"p": "%/versions%"},
            ).scalar_one()
        assert audited >= 1
    finally:
        rt.close()


def test_policy_setting(tmp_path: Path) -> None:
    from pacs.config import ConfigError, load

    cfg = tmp_path / "c.toml"
    cfg.write_text("[storage]\nduplicate_policy = 'keep-versions'\n")
    assert load(cfg, env={}).storage.duplicate_policy == "keep-versions"
    cfg.write_text("")
    assert load(cfg, env={}).storage.duplicate_policy == "keep-versions"
    assert load(cfg, env={"PACS_STORAGE_DUPLICATE_POLICY": "reject"}).storage.duplicate_policy == "reject"
    cfg.write_text("[storage]\nduplicate_policy = 'keep-first'\n")
    with pytest.raises(ConfigError, match="keep-versions"):
        load(cfg, env={})
