"""The archive on ``backend = "s3"`` (SQLite and PostgreSQL, real SeaweedFS): queue, upload,
read fallback, frames by ranged reads, verify, migration both ways, leases."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from pacs import runtime
from pacs.blobstore.tiered import TieredBlobStore
from pacs.dicom import pixels
from pacs.index import uploads
from pacs.index.schema import blob_uploads
from pacs.model import Origin
from pacs.services import storage_migration
from tests.conftest import settings_for
from tests.factories import make_dataset, to_bytes
from tests.storage.conftest import Seaweed, s3_settings

ORIGIN = Origin(calling_ae="TEST", protocol="test")


def _runtime(db_url: str, tmp: Path, weed: Seaweed, prefix: str, **keys: Any) -> runtime.Runtime:
    base = settings_for(db_url, tmp / "storage")
    storage = dataclasses.replace(base.storage, **s3_settings(weed, prefix, **keys))
    return runtime.build(dataclasses.replace(base, storage=storage), background=False)


@pytest.fixture
def s3rt(db_url: str, tmp_path: Path, seaweed: Seaweed, s3_prefix: str) -> Iterator[runtime.Runtime]:
    """A runtime on ``backend = "s3"`` (no uploader thread: tests run rounds themselves)."""
    rt = _runtime(db_url, tmp_path, seaweed, s3_prefix)
    try:
        yield rt
    finally:
        rt.close()


def _tiered(rt: runtime.Runtime) -> TieredBlobStore:
    assert isinstance(rt.blobs, TieredBlobStore)
    return rt.blobs


def _states(rt: runtime.Runtime) -> dict[str, int]:
    with rt.db.read() as conn:
        return uploads.counts(conn)


def _store(rt: runtime.Runtime, n: int) -> dict[str, bytes]:
    """Store ``n`` new instances; ``{sop: the Part-10 file as stored}`` (our file meta)."""
    stored = {}
    for i in range(n):
        result = rt.archive.store_bytes(to_bytes(make_dataset(instance_number=i + 1)), ORIGIN)
        stored[result.sop_instance_uid] = _read(rt, result.sop_instance_uid)
    return stored


def _drain(rt: runtime.Runtime) -> int:
    uploader = runtime.upload_worker(rt)
    done = 0
    while (r := uploader.run_once()).taken:
        assert r.outage is None and not r.errors, (r.outage, r.errors)
        done += r.uploaded
    return done


def _read(rt: runtime.Runtime, sop: str) -> bytes:
    [inst] = rt.archive.instances(sop_instance_uid=sop)
    with rt.archive.open(inst) as fh:
        return fh.read()


def test_store_queue_upload_read_verify(s3rt: runtime.Runtime) -> None:
    """Stored instances are queued in their transaction, uploaded, verified and removed locally;
    their bytes read back from S3 unchanged; verify (and --deep) is clean."""
    sent = _store(s3rt, 5)
    store = _tiered(s3rt)
    assert _states(s3rt) == {"queued": 5}
    assert all(_read(s3rt, sop) == data for sop, data in sent.items())  # local copies
    assert _drain(s3rt) == 5
    assert _states(s3rt) == {"remote": 5}
    assert list(store.local.keys()) == [], "local copies are removed once uploaded and verified"
    assert all(_read(s3rt, sop) == data for sop, data in sent.items())  # from S3
    with s3rt.db.read() as conn:
        rows = conn.execute(select(blob_uploads.c.size, blob_uploads.c.md5)).all()
    assert all(size and md5 and len(md5) == 32 for size, md5 in rows)
    assert s3rt.archive.verify().ok and s3rt.archive.verify(deep=True).ok
    # An identical resend is a duplicate: nothing new queued; a new object is queued again.
    s3rt.archive.store_bytes(next(iter(sent.values())), ORIGIN)
    assert _states(s3rt) == {"remote": 5}


def test_frames_by_ranged_reads(s3rt: runtime.Runtime) -> None:
    """A frame of a remote multi-frame instance is read with a few small ranged GETs."""
    frames = (np.arange(40 * 256 * 256, dtype=np.int16).reshape(40, 256, 256) % 1000).astype(np.int16)
    ds = make_dataset(rows=256, columns=256, pixels=frames[0])
    ds.NumberOfFrames = 40
    ds.PixelData = frames.astype("<i2").tobytes()
    sop = s3rt.archive.store_bytes(to_bytes(ds), ORIGIN).sop_instance_uid
    data = _read(s3rt, sop)
    _drain(s3rt)
    remote = _tiered(s3rt).remote
    asked: list[int] = []
    real = remote.read_range
    remote.read_range = lambda k, s, n: asked.append(n) or real(k, s, n)  # type: ignore[method-assign]
    [inst] = s3rt.archive.instances(sop_instance_uid=sop)
    with s3rt.archive.open(inst) as fh:
        info = pixels.locate(fh)
        assert pixels.raw_frame(fh, info, 31) == frames[30].astype("<i2").tobytes()
    assert sum(asked) < len(data) // 4, f"{sum(asked)} of {len(data)} bytes fetched for one frame"


def test_verify_finds_missing_and_truncated_objects(s3rt: runtime.Runtime) -> None:
    """A deleted object is missing, a shortened one corrupt (size by HEAD); a same-size object
    with other bytes is found by --deep only; an object nobody indexed is listed."""
    sent = list(_store(s3rt, 4).items())
    _drain(s3rt)
    remote = _tiered(s3rt).remote
    key_of = {sop: s3rt.archive.instances(sop_instance_uid=sop)[0].blob_key for sop, _ in sent}
    (gone, _), (short, data), (swapped, data2), _ = sent
    remote.delete(key_of[gone])
    remote.put_bytes(key_of[short], data[:-100])
    remote.put_bytes(key_of[swapped], data2[:-1] + b"\x00")
    remote.put_bytes("ff/ff/" + "0" * 32, b"stray")
    report = s3rt.archive.verify()
    assert (
        report.missing == [gone] and report.corrupt == [short] and report.unindexed == ["ff/ff/" + "0" * 32]
    )
    deep = s3rt.archive.verify(deep=True)
    assert deep.missing == [gone] and sorted(deep.corrupt) == sorted([short, swapped])


def test_migrate_to_s3_and_back(db_url: str, tmp_path: Path, seaweed: Seaweed, s3_prefix: str) -> None:
    """Blobs stored with backend "file" go to S3 (verified, local copies removed), a second run
    has nothing left to do, and ``--to file`` brings every one back, leaving the prefix empty."""
    rt = _runtime(db_url, tmp_path, seaweed, s3_prefix, backend="file")
    try:
        sent = _store(rt, 6)
        store = _tiered(rt)
        assert _states(rt) == {} and len(list(store.local.keys())) == 6
        seen: list[tuple[int, int]] = []
        report = storage_migration.to_s3(
            rt.db, store, runtime.upload_worker(rt), lambda d, t: seen.append((d, t))
        )
        assert report.complete and report.moved == 6 and seen[-1] == (6, 6)
        assert _states(rt) == {"remote": 6} and list(store.local.keys()) == []
        assert rt.archive.verify(deep=True).ok
        again = storage_migration.to_s3(rt.db, store, runtime.upload_worker(rt), lambda d, t: None)
        assert again.complete and again.moved == 0
        back = storage_migration.to_file(rt.db, store, lambda d, t: None)
        assert back.complete and back.moved == 6
        assert _states(rt) == {} and len(list(store.local.keys())) == 6
        assert list(store.remote.keys()) == []
        assert all(_read(rt, sop) == data for sop, data in sent.items())
        assert rt.archive.verify().ok
    finally:
        rt.close()


def test_migrate_to_file_keeps_an_object_that_is_not_the_indexed_file(s3rt: runtime.Runtime) -> None:
    """Verify before delete: an object whose bytes are not the recorded file stays in S3."""
    [(sop, data)] = _store(s3rt, 1).items()
    _drain(s3rt)
    key = s3rt.archive.instances(sop_instance_uid=sop)[0].blob_key
    _tiered(s3rt).remote.put_bytes(key, data[:-1] + b"\x01")
    report = storage_migration.to_file(s3rt.db, _tiered(s3rt), lambda d, t: None)
    assert not report.complete and len(report.failed) == 1
    assert _tiered(s3rt).remote.exists(key) and _states(s3rt) == {"remote": 1}


def test_lease_keeps_a_row_until_it_runs_out(s3rt: runtime.Runtime) -> None:
    """A row taken by a node is skipped by others while its lease lasts and retaken after (a
    killed node's uploads are done by another within the lease, 30 s by default)."""
    _store(s3rt, 1)
    with s3rt.db.write() as conn:
        now = conn.execute(select(blob_uploads.c.next_attempt_at)).scalar_one()
        assert len(uploads.take_due(conn, "dead-node", now, now + timedelta(seconds=30), 10)) == 1
    with s3rt.db.write() as conn:
        assert (
            uploads.take_due(conn, "other", now + timedelta(seconds=29), now + timedelta(seconds=60), 10)
            == []
        )
    with s3rt.db.write() as conn:
        [row] = uploads.take_due(conn, "other", now + timedelta(seconds=31), now + timedelta(seconds=61), 10)
        assert row["locked_by"] == "other"
        assert not uploads.mark_remote(conn, int(row["id"]), "dead-node", 1, "0" * 32, now)  # not its row now


def test_outage_is_logged_once_per_backoff_step(
    db_url: str, tmp_path: Path, own_seaweed: Seaweed, s3_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With S3 stopped, stores succeed and stay local; a round backs off with one log line (not
    one per row); when S3 is back the queue drains and the local copies go."""
    rt = _runtime(db_url, tmp_path, own_seaweed, s3_prefix)
    try:
        _store(rt, 3)
        own_seaweed.stop()
        sent = _store(rt, 12)
        uploader = runtime.upload_worker(rt)
        with caplog.at_level(logging.WARNING, logger="pacs.uploads"):
            first = uploader.run_once()
        assert first.outage is not None and first.uploaded == 0
        lines = [r for r in caplog.records if "S3 unavailable" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in caplog.records]
        assert "15 upload(s) waiting" in lines[0].getMessage()
        assert all(_read(rt, sop) == data for sop, data in sent.items())  # read locally meanwhile
        own_seaweed.start()
        deadline = time.monotonic() + 30
        while _states(rt) != {"remote": 15} and time.monotonic() < deadline:
            uploader.run_once()
            time.sleep(0.2)
        assert _states(rt) == {"remote": 15}
        assert list(_tiered(rt).local.keys()) == []
        assert rt.archive.verify(deep=True).ok
    finally:
        rt.close()


def test_two_nodes_share_the_queue(s3rt: runtime.Runtime) -> None:
    """Two uploaders (nodes) draining one queue at once upload every blob exactly once
    (``FOR UPDATE SKIP LOCKED`` and leases on PostgreSQL, the write lock on SQLite)."""
    import threading

    from pacs.services.uploads import Uploader

    _store(s3rt, 24)
    store = _tiered(s3rt)
    puts: list[str] = []
    real = store.remote.put_file
    store.remote.put_file = lambda k, *a: puts.append(k) or real(k, *a)  # type: ignore[method-assign]
    nodes = [Uploader(s3rt.db, store, s3rt.settings.storage, node=f"node-{i}") for i in range(2)]

    def drain(u: Uploader) -> None:
        while u.run_once(limit=3).taken:
            pass

    threads = [threading.Thread(target=drain, args=(u,)) for u in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert _states(s3rt) == {"remote": 24}
    assert sorted(puts) == sorted(set(puts)) and len(puts) == 24


def test_heartbeat_keeps_a_slow_upload(db_url: str, tmp_path: Path, seaweed: Seaweed, s3_prefix: str) -> None:
    """An upload that outlasts the lease keeps its row (renewed every third of the lease): no
    other node takes it meanwhile."""
    import threading

    from pacs.services.uploads import Uploader

    rt = _runtime(db_url, tmp_path, seaweed, s3_prefix, s3_lease_seconds=0.6)
    try:
        _store(rt, 1)
        store = _tiered(rt)
        real = store.remote.put_file
        store.remote.put_file = lambda *a: time.sleep(2) or real(*a)  # type: ignore[method-assign]
        slow = Uploader(rt.db, store, rt.settings.storage, node="slow")
        other = Uploader(rt.db, store, rt.settings.storage, node="other")
        t = threading.Thread(target=slow.run_once)
        t.start()
        time.sleep(1.2)  # twice the lease
        assert other.run_once().taken == 0
        t.join(30)
        assert _states(rt) == {"remote": 1}
        slow.stop()
        other.stop()
    finally:
        rt.close()
