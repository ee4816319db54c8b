"""The archive store path: durability, duplicates, validation (SQLite and PostgreSQL)."""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest

from pacs.errors import DuplicateInstance, InvalidInstance
from pacs.model import Level, Origin, StoreOutcome
from pacs.query import from_qido
from pacs.services.archive import Archive
from tests.factories import make_dataset, to_bytes

ORIGIN = Origin(calling_ae="MODALITY1", address="127.0.0.1", protocol="dimse")


def _blob_count(archive: Archive) -> int:
    return sum(1 for _ in archive.blobs.keys())


def test_store_then_find_and_read_back(archive: Archive) -> None:
    ds = make_dataset()
    data = to_bytes(ds)
    result = archive.store_bytes(data, ORIGIN)
    assert result.outcome is StoreOutcome.STORED
    [stored] = archive.instances(sop_instance_uid=ds.SOPInstanceUID)
    with archive.open(stored) as fh:
        back = pydicom.dcmread(fh)
    assert back.file_meta.SourceApplicationEntityTitle == "MODALITY1"
    assert back.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert str(back.PatientName) == "Nguyễn^Văn An"
    assert back.PixelData == ds.PixelData
    # The dataset bytes are kept exactly as received: only the file meta is ours.
    with archive.open(stored) as fh:
        stored_bytes = fh.read()
    assert stored_bytes.endswith(data[len(data) - len(ds.PixelData) - 200 :])
    assert archive.verify().ok


def test_identical_resend_is_a_duplicate_and_writes_nothing(archive: Archive) -> None:
    data = to_bytes(make_dataset())
    assert archive.store_bytes(data, ORIGIN).outcome is StoreOutcome.STORED
    assert archive.store_bytes(data, ORIGIN).outcome is StoreOutcome.DUPLICATE
    assert _blob_count(archive) == 1
    assert archive.count(Level.IMAGE) == 1


def test_same_data_set_from_another_sender_is_a_duplicate(archive: Archive) -> None:
    """The stored files differ (the file meta names the sender) but the data sets do not: the
    data set hashes, computed only now, settle it; the old one is kept for the next resend."""
    data = to_bytes(make_dataset())
    assert archive.store_bytes(data, ORIGIN).outcome is StoreOutcome.STORED
    with archive.read() as conn:
        [(kept,)] = conn.exec_driver_sql("SELECT dataset_sha256 FROM instances").all()
    assert kept is None  # not computed for a first arrival
    other = Origin(calling_ae="WORKSTATION", address="10.0.0.9", protocol="dimse")
    assert archive.store_bytes(data, other).outcome is StoreOutcome.DUPLICATE
    assert archive.store_bytes(data, other).outcome is StoreOutcome.DUPLICATE
    assert _blob_count(archive) == 1
    with archive.read() as conn:
        [(kept,)] = conn.exec_driver_sql("SELECT dataset_sha256 FROM instances").all()
    assert kept is not None and len(kept) == 64
    assert archive.verify().ok


def test_different_object_same_uid_follows_policy(archive: Archive) -> None:
    """``reject`` and ``replace``; the default ``keep-versions`` is tests/unit/test_versions.py."""
    ds = make_dataset()
    archive.store_bytes(to_bytes(ds), ORIGIN)
    ds.StudyDescription = "changed"
    archive.duplicate_policy = "reject"
    with pytest.raises(DuplicateInstance):
        archive.store_bytes(to_bytes(ds), ORIGIN)
    assert _blob_count(archive) == 1
    archive.duplicate_policy = "replace"
    assert archive.store_bytes(to_bytes(ds), ORIGIN).outcome is StoreOutcome.REPLACED
    assert _blob_count(archive) == 1
    assert archive.verify().ok


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda ds: delattr(ds, "StudyInstanceUID"), "missing StudyInstanceUID"),
        (lambda ds: setattr(ds, "SOPInstanceUID", "../../etc/passwd"), "invalid SOPInstanceUID"),
        (lambda ds: setattr(ds, "SeriesInstanceUID", "1." + "2" * 70), "invalid SeriesInstanceUID"),
    ],
)
def test_invalid_instances_leave_nothing_behind(archive: Archive, mutate, reason: str) -> None:
    ds = make_dataset()
    mutate(ds)
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    with pytest.raises(InvalidInstance, match=reason):
        archive.store_bytes(to_bytes(ds), ORIGIN)
    assert _blob_count(archive) == 0
    assert archive.count(Level.IMAGE) == 0
    assert not any(archive.blobs.tmp_dir.iterdir())  # type: ignore[attr-defined]


@pytest.mark.parametrize("junk", [b"", b"hello", b"\0" * 128 + b"DICM" + b"\x02\x00", b"\0" * 200])
def test_junk_is_refused(archive: Archive, junk: bytes) -> None:
    with pytest.raises(InvalidInstance):
        archive.store(BytesIO(junk), ORIGIN)
    assert _blob_count(archive) == 0


def test_truncated_pixel_data_is_refused(archive: Archive) -> None:
    data = to_bytes(make_dataset(rows=64, columns=64))
    with pytest.raises(InvalidInstance, match="truncated"):
        archive.store_bytes(data[:-100], ORIGIN)
    assert _blob_count(archive) == 0


def test_counters_and_modalities(archive: Archive) -> None:
    study = pydicom.uid.generate_uid()
    s1, s2 = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for i in range(3):
        archive.store_bytes(to_bytes(make_dataset(study_uid=study, series_uid=s1, instance_number=i)), ORIGIN)
    archive.store_bytes(to_bytes(make_dataset(study_uid=study, series_uid=s2, modality="SR")), ORIGIN)
    q = from_qido(Level.STUDY, [("StudyInstanceUID", study)], default_limit=10, max_limit=10)
    [row] = archive.search(q)
    assert row["NumberOfStudyRelatedSeries"] == 2
    assert row["NumberOfStudyRelatedInstances"] == 4
    assert row["ModalitiesInStudy"] == "CT\\SR"


def test_reindex_rebuilds_the_index_from_files(archive: Archive) -> None:
    for i in range(5):
        archive.store_bytes(to_bytes(make_dataset(instance_number=i)), ORIGIN)
    before = archive.search(from_qido(Level.IMAGE, [], default_limit=100, max_limit=100))
    with archive.db.write() as conn:
        from pacs.index import repo

        repo.clear(conn)
    assert archive.count(Level.IMAGE) == 0
    assert not archive.verify().ok  # every blob is now unindexed
    report = archive.reindex()
    assert report.indexed == 5 and not report.failed
    after = archive.search(from_qido(Level.IMAGE, [], default_limit=100, max_limit=100))
    assert sorted(r["SOPInstanceUID"] for r in after) == sorted(r["SOPInstanceUID"] for r in before)
    assert archive.verify().ok


def test_concurrent_stores_share_commits_and_fail_alone(archive: Archive) -> None:
    """Group commit (pacs.index.database.GroupCommit): stores from many threads at once all land, and a
    store that fails (a different object under a stored UID, policy ``reject``) fails alone, not its batch."""
    import threading

    archive.duplicate_policy = "reject"
    first = make_dataset(patient_id="CONFLICT")
    archive.store_bytes(to_bytes(first), ORIGIN)
    changed = first.copy()
    changed.StudyDescription = "changed"
    good = [to_bytes(make_dataset(patient_id=f"P{i % 3}", instance_number=i)) for i in range(24)]
    bad = [to_bytes(changed)] * 4
    outcomes: list[object] = []
    lock = threading.Lock()
    start = threading.Barrier(len(good) + len(bad))

    def send(data: bytes) -> None:
        start.wait(10)
        try:
            result: object = archive.store_bytes(data, ORIGIN).outcome
        except DuplicateInstance as exc:
            result = exc
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=send, args=(d,)) for d in good + bad]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(o is StoreOutcome.STORED for o in outcomes) == len(good)
    assert sum(isinstance(o, DuplicateInstance) for o in outcomes) == len(bad)
    assert archive.count(Level.IMAGE) == len(good) + 1
    assert _blob_count(archive) == len(good) + 1
    assert archive.verify().ok


def test_reindex_keeps_instances_an_older_version_archived_with_leading_zero_uids(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New instances with ``1.2.03``-style UIDs are refused (PS3.5 9.1), but one archived before
    that rule must survive ``pacs reindex`` (it re-reads the files with the loose rule)."""
    from pacs.dicom import extract, text
    from pacs.index import repo

    legacy = make_dataset(sop_uid="1.2.826.0.1.03.7")
    with pytest.raises(InvalidInstance, match="leading zero"):
        archive.store_bytes(to_bytes(legacy), ORIGIN)
    with monkeypatch.context() as m:  # as an older version stored it
        m.setattr(extract, "is_valid_uid", lambda uid, strict=True: text.is_valid_uid(uid, strict=False))
        archive.store_bytes(to_bytes(legacy), ORIGIN)
    with archive.db.write() as conn:
        repo.clear(conn)
    report = archive.reindex()
    assert report.indexed == 1 and not report.failed
    assert archive.count(Level.IMAGE) == 1
