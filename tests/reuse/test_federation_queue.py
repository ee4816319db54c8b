"""The federation's index side (issue 18) on SQLite and PostgreSQL: the prefetch queue taken with
row locks (``FOR UPDATE SKIP LOCKED``) and leases, the orders hook queueing in the order's
transaction, imported studies left out of appraisal lines (store and rebuild), and the pure
parts: the multipart reader, the identifier checks, the disk cache, the peer settings."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from pacs import config, runtime
from pacs.config import PeerMatch
from pacs.index import federation as sql
from pacs.index.schema import appraisal_line_members
from pacs.model import Origin
from pacs.services.federation.cache import DiskCache, cache_key
from pacs.services.federation.importer import REUSE, parts
from pacs.services.federation.matching import check_instance, check_study
from pacs.services.orders.model import Control, OrderMessage, OtherId, PatientInfo, ScheduledStep
from tests.reuse.conftest import real_file
from tests.web.conftest import part10

pytestmark = pytest.mark.pg
NOW = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def test_jobs_are_taken_once_each_and_again_after_a_dead_nodes_lease(rt: runtime.Runtime) -> None:
    with rt.db.write() as conn:
        ids = [
            sql.job_add(
                conn,
                kind="prefetch",
                identifiers=[f"urn:vn:cccd|07908000{n:04d}"],
                trigger="api",
                requested_by="t",
                now=NOW,
            )
            for n in range(8)
        ]
    taken: list[int] = []
    lock = threading.Lock()

    def node(name: str) -> None:
        while True:
            with rt.db.write() as conn:
                job = sql.take_job(conn, name, NOW, NOW + timedelta(minutes=5))
            if job is None:
                return
            with lock:
                taken.append(job["id"])

    threads = [threading.Thread(target=node, args=(f"node{k}",)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(taken) == ids  # every job once, none twice
    with rt.db.write() as conn:
        assert sql.take_job(conn, "late", NOW + timedelta(minutes=1), NOW + timedelta(minutes=6)) is None
        again = sql.take_job(conn, "late", NOW + timedelta(minutes=6), NOW + timedelta(minutes=11))
        assert again is not None and again["attempts"] == 2 and again["locked_by"] == "late"
        # The node whose lease ran out cannot write over the new holder's state.
        assert not sql.job_finish(conn, again["id"], "node0", status=sql.STATE_DONE, now=NOW)
        assert sql.job_finish(
            conn, again["id"], "late", status=sql.STATE_DONE, now=NOW, result={"studies": []}
        )
        assert sql.job_get(conn, again["id"])["status"] == sql.STATE_DONE  # type: ignore[index]


def test_a_new_order_queues_a_prefetch_in_its_transaction(db_url: str, tmp_path: Path) -> None:
    peer = config.PeerSettings(name="bv-b", kind="pacs", url="http://127.0.0.1:9")
    settings = config.Settings(
        storage=config.StorageSettings(path=tmp_path / "s", fsync=False),
        database=config.DatabaseSettings(url=db_url),
        peers=(peer,),
    )
    rt = runtime.build(settings)
    try:
        patient = PatientInfo(
            patient_id="A-1",
            issuer_of_patient_id="79001",
            name="Lê^Văn Tám",
            other_ids=(OtherId("079080001234", "", "NI"),),
        )
        msg = OrderMessage(
            control=Control.NEW,
            placer_order_number="P1",
            patient=patient,
            steps=(ScheduledStep(modality="CT"),),
        )
        rt.orders.apply(msg, Origin(protocol="hl7"))
        (job,) = rt.federation.jobs()
        assert (job["trigger"], job["order_key"], job["status"]) == ("order", "P:P1", "pending")
        assert set(job["identifiers"]) == {"urn:vn:issuer:79001|A-1", "urn:vn:cccd|079080001234"}
    finally:
        rt.close()


def test_imported_studies_never_make_appraisal_lines(rt: runtime.Runtime) -> None:
    ours, theirs, moved = real_file(), real_file(), real_file()
    with rt.db.write() as conn:
        for ds in (theirs, moved):
            sql.import_start(
                conn,
                {
                    "study_instance_uid": ds.StudyInstanceUID,
                    "peer": "bv-b",
                    "method": "wado-rs",
                    "imported_by": "t",
                    "started_at": NOW,
                },
            )
    rt.archive.store_bytes(part10(ours), Origin(protocol="internal"))
    rt.archive.store_bytes(part10(theirs), Origin(protocol=REUSE, user="t"))
    rt.archive.store_bytes(part10(moved), Origin(protocol="dimse", calling_ae="STORESCU"))  # a C-MOVE import

    def lines() -> set[str]:
        with rt.db.read() as conn:
            return {r.uid for r in conn.execute(select(appraisal_line_members.c.uid))}

    assert lines() == {ours.StudyInstanceUID}
    rt.appraisal.rebuild_lines()
    assert lines() == {ours.StudyInstanceUID}
    assert rt.archive.reindex().indexed == 3
    assert lines() == {ours.StudyInstanceUID}


# ---------------------------------------------------------------- pure parts


def test_the_multipart_reader_splits_parts_across_chunks() -> None:
    bodies = [b"A" * 5000, b"", b"\r\n--notb\r\n" + b"B" * 70000]
    boundary = "b0undary"
    raw = (
        b"".join(
            b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + body + b"\r\n"
            for body in bodies
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    for size in (1, 7, 4096, len(raw)):
        chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
        assert [p.read() for p in parts(iter(chunks), boundary)] == bodies, size


def test_a_peer_study_of_another_person_is_dropped() -> None:
    key = ("urn:vn:issuer:79003", "777")
    rule = PeerMatch("urn:vn:issuer:79003", "PatientID", "79003")

    def study(pid: str, issuer: str | None) -> dict[str, object]:
        ds: dict[str, object] = {"00100020": {"vr": "LO", "Value": [pid]}}
        if issuer:
            ds["00100021"] = {"vr": "LO", "Value": [issuer]}
        return ds

    assert check_study(study("777", "79003"), rule, key).keep
    assert not check_study(study("777", "79088"), rule, key).keep  # same number, other issuer
    assert not check_study(study("777", None), rule, key).keep
    cccd = ("urn:vn:cccd", "079080001234")
    other = PeerMatch("urn:vn:cccd", "OtherPatientIDs", "*")
    assert check_study(study("777", None), other, cccd).needs_instance
    assert check_instance({"00101000": {"vr": "LO", "Value": ["X", "079080001234"]}}, other, cccd).keep
    assert not check_instance({"00101000": {"vr": "LO", "Value": ["079080009999"]}}, other, cccd).keep
    bhyt = ("urn:vn:bhyt", "0123456789")
    card = PeerMatch("urn:vn:bhyt", "PatientID", "*")
    assert check_study(study("DN4010123456789", "BHXH"), card, bhyt).keep  # renewed card, same number


def test_the_cache_keeps_the_recently_used_within_its_bound(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", max_bytes=1 << 20)
    keys = [cache_key("p", f"studies/1.2.{n}/rendered", [], "image/jpeg") for n in range(6)]
    for k in keys[:4]:
        w = cache.writer(k, "image/jpeg")
        w.write(b"x" * 300_000)
        w.commit()
        if k == keys[1]:
            first = cache.get(keys[0])  # keys[0] used again: keys[1] is now the oldest
            assert first is not None
            first.body.close()
    assert cache.size <= 1 << 20
    assert cache.get(keys[1]) is None and cache.get(keys[3]) is not None
    half = cache.writer(keys[5], "image/jpeg")
    half.write(b"partial")
    half.abort()  # an answer cut off is never an entry
    assert cache.get(keys[5]) is None
    assert DiskCache(tmp_path / "c", max_bytes=1 << 20).size == cache.size  # a new process sees the same


def test_peer_settings_are_checked_and_secrets_never_shown(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[peers]]\nname = "bv-b"\nkind = "pacs"\nurl = "https://pacs.bvb.vn"\nauth = "bearer"\n'
        'secret_env = "PEER_TOKEN"\n[[peers]]\nname = "orthanc"\nurl = "http://o:8042/dicom-web"\n'
        '[[peers.match]]\nsystem = "urn:vn:cccd"\nattribute = "OtherPatientIDs"\nissuer = "*"\n',
        encoding="utf-8",
    )
    s = config.load(cfg, env={"PEER_TOKEN": "s3cr3t-token"})
    assert s.peers[0].secret == "s3cr3t-token" and "s3cr3t" not in repr(s)
    assert s.peers[1].match == (PeerMatch("urn:vn:cccd", "OtherPatientIDs", "*"),)
    with pytest.raises(config.ConfigError, match="PEER_TOKEN is not set"):
        config.load(cfg, env={})
    bad = cfg.read_text().replace('system = "urn:vn:cccd"', 'system = "urn:vn:issuer:BV03"')
    cfg.write_text(bad, encoding="utf-8")
    with pytest.raises(config.ConfigError, match="only for"):
        config.load(cfg, env={"PEER_TOKEN": "x"})
