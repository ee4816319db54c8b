"""Audit completeness and durability (issue 14): C-FIND/C-MOVE/C-GET rows name the query keys,
studies and patients, refused and cancelled requests leave a row, rows written while the
database is away are spooled and replayed in order, the hash chain shows an altered row, TRUNCATE
is refused on PostgreSQL, and rows reach a syslog collector as RFC 5424 messages (UDP, TCP, TLS).

Real peers: pynetdicom SCUs and a pynetdicom storage SCP against the in-process listener,
PostgreSQL behind the TCP proxy the fault tests cut, SQLite locked by an exclusive transaction,
local UDP/TCP/TLS sockets as the syslog collector.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import sqlite3
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import text
from sqlalchemy.engine import make_url

from pacs import config, runtime
from pacs.config import AllowedAE
from pacs.model import Origin
from pacs.scp.listener import DicomServer
from pacs.scp.qr import QueryRetrieveSCP
from pacs.services.audit import EventFilter
from tests.factories import make_dataset, to_bytes
from tests.protocol.test_qr_find import FakeFindEvent
from tests.robustness.proxy import TcpProxy
from tests.robustness.test_faults import _database_down
from tests.security.test_tls import make_pki
from tests.serve import serve

SCU = "AUDITSCU"


def _settings(db_url: str, storage: Path, **dicom: Any) -> config.Settings:
    return config.Settings(
        storage=config.StorageSettings(path=storage, fsync=False),
        database=config.DatabaseSettings(url=db_url, busy_timeout=0.3),
        dicom=config.DicomSettings(port=0, allowed_aes=(AllowedAE(SCU, services=config.SERVICES),), **dicom),
        audit=config.AuditSettings(interval_seconds=0.2, wait_seconds=10.0),
    )


@contextlib.contextmanager
def _listening(rt: runtime.Runtime) -> Iterator[tuple[str, int]]:
    server = DicomServer(rt.settings, rt.archive, extensions=runtime.dimse_extensions(rt), audit=rt.audit)
    host, port = server.start()
    try:
        yield host, port
    finally:
        server.stop()


def _find(assoc: Any, **keys: str) -> tuple[list[Dataset], Dataset]:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    for k, v in keys.items():
        setattr(q, k, v)
    out = list(assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind))
    return [ident for st, ident in out if st.Status in (0xFF00, 0xFF01)], out[-1][0]


def _rows(rt: runtime.Runtime, *kinds: str) -> list[dict[str, Any]]:
    return rt.audit.query(EventFilter(kinds=kinds))


# ------------------------------------------------------------------ who, what, which patient


def test_find_rows_name_the_query_keys_and_the_matches(db_url: str, tmp_path: Path) -> None:
    rt = runtime.build(_settings(db_url, tmp_path / "storage"))
    try:
        a = make_dataset(patient_id="PID-A", patient_name="DOE^JANE", study_date="20250110")
        b = make_dataset(patient_id="PID-B", patient_name="DOE^JOHN", study_date="20250111")
        c = make_dataset(patient_id="PID-C", patient_name="ROE^RICHARD", study_date="20250112")
        for ds in (a, b, c):
            rt.archive.store_bytes(to_bytes(ds), Origin(protocol="test"))
        with _listening(rt) as (host, port):
            ae = AE(ae_title=SCU)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            assoc = ae.associate(host, port, ae_title="PACS")
            assert assoc.is_established
            try:
                found, final = _find(
                    assoc, PatientName="DOE*", StudyDate="20250101-20251231", StudyInstanceUID=""
                )
                assert final.Status == 0x0000 and len(found) == 2
                _, bad = _find(assoc, StudyDate="2025-01-32x")
                assert bad.Status == 0xA900
            finally:
                assoc.release()
        ok, refused = _rows(rt, "query.find")
        # who
        assert (ok["calling_ae"], ok["peer_address"]) == (SCU, "127.0.0.1")
        assert ok["details"]["called_ae"] == "PACS"
        # what: the keys as sent, the level and SOP class, the outcome
        assert ok["details"]["query"]["PatientName"] == "DOE*"
        assert ok["details"]["query"]["StudyDate"] == "20250101-20251231"
        assert ok["details"]["query"]["QueryRetrieveLevel"] == "STUDY"
        assert ok["details"]["sop_class"] == str(StudyRootQueryRetrieveInformationModelFind)
        assert ok["outcome"] == 0 and ok["details"]["matches"] == 2
        # which patients and studies (the patients looked up from the studies: not requested)
        assert sorted(ok["details"]["studies"]) == sorted([a.StudyInstanceUID, b.StudyInstanceUID])
        assert sorted(ok["details"]["patients"]) == ["PID-A", "PID-B"]
        # the refused one: its status, reason and keys
        assert refused["outcome"] == 4
        assert refused["details"]["dimse_status"] == "0xA900"
        assert refused["details"]["reason"]
        assert refused["details"]["query"]["StudyDate"] == "2025-01-32x"
        # PS3.15 A.5 export: both patients and studies as participant objects, the query encoded
        msg = rt.audit.message(ok)
        ids = {o["ParticipantObjectID"]: o for o in msg["ParticipantObjectIdentification"]}
        assert {"PID-A", "PID-B", a.StudyInstanceUID, b.StudyInstanceUID} <= set(ids)
        query = ids[str(StudyRootQueryRetrieveInformationModelFind)]["ParticipantObjectQuery"]
        assert json.loads(base64.b64decode(query))["PatientName"] == "DOE*"
        assert msg["EventIdentification"]["EventOutcomeIndicator"] == "0"
        assert rt.audit.message(refused)["EventIdentification"]["EventOutcomeIndicator"] == "4"
    finally:
        rt.close()


def test_move_and_get_rows_name_studies_and_patients(db_url: str, tmp_path: Path) -> None:
    """Against ``pacs serve`` (an in-process C-GET trips the test clients' reactor patch)."""
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    dest_ae = AE(ae_title="DEST")
    dest_ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    dest = dest_ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    storage = tmp_path / "storage"
    ds = make_dataset(patient_id="PID-MOVE")
    two = make_dataset(patient_id="PID-MOVE", study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID)
    rt = runtime.build(_settings(db_url, storage))
    for d in (ds, two):
        rt.archive.store_bytes(to_bytes(d), Origin(protocol="test"))
    rt.close()
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ds.StudyInstanceUID
    destinations = json.dumps([{"ae_title": "DEST", "host": "127.0.0.1", "port": dest.server_address[1]}])
    got: list[str] = []

    def on_get_store(event: evt.Event) -> int:
        got.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    try:
        with serve(tmp_path, db_url, storage=storage, env={"PACS_DICOM_DESTINATIONS": destinations}) as srv:
            ae = AE(ae_title="TESTSCU")
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            ae.add_requested_context(CTImageStorage)
            assoc = ae.associate(
                "127.0.0.1",
                srv.dicom_port,
                ae_title="PACS",
                ext_neg=[build_role(CTImageStorage, scp_role=True)],
                evt_handlers=[(evt.EVT_C_STORE, on_get_store)],
            )
            assert assoc.is_established
            try:
                moved = list(assoc.send_c_move(q, "DEST", StudyRootQueryRetrieveInformationModelMove))
                assert moved[-1][0].Status == 0x0000
                nowhere = list(assoc.send_c_move(q, "NOWHERE", StudyRootQueryRetrieveInformationModelMove))
                assert nowhere[-1][0].Status == 0xA801
                gets = list(assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet))
                assert gets[-1][0].Status == 0x0000
            finally:
                assoc.release()
    finally:
        dest.shutdown()
    assert len(received) == 2 and len(got) == 2
    rt = runtime.build(_settings(db_url, storage))
    try:
        move, refused = _rows(rt, "retrieve.move")
        (get,) = _rows(rt, "retrieve.get")
        for row in (move, get):
            assert row["study_instance_uid"] == ds.StudyInstanceUID
            assert row["details"]["studies"] == [ds.StudyInstanceUID]
            assert row["details"]["patients"] == ["PID-MOVE"]
            assert row["patient_id"] == "PID-MOVE"
            assert row["details"]["instances"] == 2 and row["details"]["offered"] == 2
            assert row["details"]["query"]["StudyInstanceUID"] == ds.StudyInstanceUID
            assert row["outcome"] == 0 and row["calling_ae"] == "TESTSCU"
        assert move["details"]["destination"] == "DEST"
        assert refused["details"]["destination"] == "NOWHERE"
        assert refused["details"]["dimse_status"] == "0xA801" and refused["outcome"] == 4
        msg = rt.audit.message(move)
        assert msg["EventIdentification"]["EventID"]["csd-code"] == "110104"  # Instances Transferred
        assert any(p["UserID"] == "DEST" for p in msg["ActiveParticipant"])
        assert rt.audit.verify_chain().ok
    finally:
        rt.close()


def test_cancelled_and_cut_finds_leave_a_row(db_url: str, tmp_path: Path) -> None:
    """Over the wire the answers are queued before a C-CANCEL is read (see test_qr_find), so the
    handler is driven directly, with the real audit service behind it."""
    rt = runtime.build(_settings(db_url, tmp_path / "storage"))
    try:
        study = make_dataset(patient_id="PID-CANCEL").StudyInstanceUID
        for i in range(5):
            ds = make_dataset(patient_id="PID-CANCEL", study_uid=study, instance_number=i + 1)
            rt.archive.store_bytes(to_bytes(ds), Origin(protocol="test"))
        scp = QueryRetrieveSCP(rt.archive, rt.settings, rt.audit)
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = study
        q.SOPInstanceUID = ""
        responses = list(scp.handle_find(FakeFindEvent(q, cancel_after=2, calling_ae=SCU)))  # type: ignore[arg-type]
        assert [r[0] for r in responses] == [0xFF00, 0xFF00, 0xFE00]
        cut = scp.handle_find(FakeFindEvent(q, cancel_after=99, calling_ae=SCU))  # type: ignore[arg-type]
        next(cut)
        cut.close()  # the association went away after the first answer
        cancelled, ended = _rows(rt, "query.find")
        assert cancelled["details"]["cancelled"] is True and cancelled["outcome"] == 4
        assert cancelled["details"]["matches"] == 2
        assert cancelled["details"]["query"]["SOPInstanceUID"] == ""
        assert cancelled["patient_id"] == "PID-CANCEL"  # looked up from the one study
        assert "association ended" in ended["details"]["reason"] and ended["details"]["matches"] == 1
    finally:
        rt.close()


# ------------------------------------------------------------------ durable: the spool


def test_rows_of_a_database_outage_are_spooled_then_replayed_in_order(db_url: str, tmp_path: Path) -> None:
    proxy: TcpProxy | None = None
    served = db_url
    if db_url.startswith("postgresql"):
        url = make_url(db_url)
        proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
        served = url.set(port=proxy.start()).render_as_string(hide_password=False)
    storage = tmp_path / "storage"
    rt = runtime.build(_settings(served, storage))
    spool = storage / "audit-spool" / "events.jsonl"
    try:
        rt.archive.store_bytes(to_bytes(make_dataset(patient_id="Q0")), Origin(protocol="test"))
        with _listening(rt) as (host, port):
            ae = AE(ae_title=SCU)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
            assoc = ae.associate(host, port, ae_title="PACS")
            assert assoc.is_established
            try:
                assert _find(assoc, PatientID="Q0")[1].Status == 0x0000
                with _database_down(db_url, tmp_path, proxy):
                    for i in (1, 2, 3):
                        # SQLite: the search reads (WAL) but the audit row cannot be written;
                        # PostgreSQL: the search fails too (0xA700), which is audited as well.
                        assert _find(assoc, PatientID=f"Q{i}")[1].Status in (0x0000, 0xA700)
                    # Each final response came after its row was durable: in the spool.
                    lines = [json.loads(x) for x in spool.read_text().splitlines()]
                    assert [r["details"]["query"]["PatientID"] for r in lines] == ["Q1", "Q2", "Q3"]
                assert _find(assoc, PatientID="Q4")[1].Status == 0x0000
            finally:
                assoc.release()
        rt.audit.sync()
        rows = _rows(rt, "query.find")
        assert [r["details"]["query"]["PatientID"] for r in rows] == ["Q0", "Q1", "Q2", "Q3", "Q4"]
        assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
        assert spool.stat().st_size == 0
        assert rt.audit.verify_chain().ok
    finally:
        rt.close()
        if proxy is not None:
            proxy.stop()


# ------------------------------------------------------------------ tamper evidence


def _tamper(rt: runtime.Runtime, db_url: str, sql: str) -> None:
    """Run ``sql`` with the append-only trigger out of the way (as an attacker with the DB would)."""
    if db_url.startswith("sqlite"):
        path = make_url(db_url).database
        assert path
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            trigger = conn.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'events_no_update'"
            ).fetchone()[0]
            conn.execute("DROP TRIGGER events_no_update")
            conn.execute(sql)
            conn.execute(trigger)
        finally:
            conn.close()
        return
    with rt.engine.begin() as conn:
        conn.execute(text("ALTER TABLE events DISABLE TRIGGER events_append_only"))
        conn.execute(text(sql))
        conn.execute(text("ALTER TABLE events ENABLE TRIGGER events_append_only"))


def test_the_hash_chain_verifies_and_shows_an_altered_row(db_url: str, tmp_path: Path) -> None:
    rt = runtime.build(_settings(db_url, tmp_path / "storage"))
    try:
        rt.archive.store_bytes(to_bytes(make_dataset(patient_id="PID-CHAIN")), Origin(protocol="test"))
        for i in range(6):
            rt.audit.record("http.retrieve", Origin(address=f"10.0.0.{i}", user="ana", protocol="http"))
        rt.archive.record_event("association.open", Origin(address="10.0.0.9", protocol="dimse"))
        report = rt.audit.verify_chain()
        assert report.ok, report
        assert report.unsealed == 0
        with rt.engine.connect() as conn:
            rows = conn.execute(text("SELECT id, seq, prev_hash, row_hash FROM events ORDER BY seq")).all()
            assert report.checked == len(rows) == 8
            assert [r.seq for r in rows] == list(range(1, 9))
            assert rows[0].prev_hash == "0" * 64  # the genesis link
            assert all(rows[i].prev_hash == rows[i - 1].row_hash for i in range(1, len(rows)))
        # The trigger allows a row to be sealed once; a sealed row cannot be re-sealed or changed.
        for stmt in ("UPDATE events SET row_hash = 'x'", "UPDATE events SET seq = seq + 100"):
            with pytest.raises(Exception, match="append-only"), rt.engine.begin() as conn:
                conn.execute(text(stmt))
        victim = rows[4].id
        _tamper(rt, db_url, f"UPDATE events SET peer_address = '10.6.6.6' WHERE id = {victim}")
        broken = rt.audit.verify_chain()
        assert not broken.ok
        assert (broken.broken_id, broken.broken_seq) == (victim, 5)
        assert "altered" in broken.reason and broken.checked == 4
    finally:
        rt.close()


def test_a_removed_row_breaks_the_chain_at_the_next(db_url: str, tmp_path: Path) -> None:
    rt = runtime.build(_settings(db_url, tmp_path / "storage"))
    try:
        for i in range(4):
            rt.audit.record("http.search", Origin(address=f"10.0.1.{i}", protocol="http"))
        assert rt.audit.verify_chain().ok
        with rt.engine.connect() as conn:
            ids = [r.id for r in conn.execute(text("SELECT id FROM events ORDER BY seq"))]
        if db_url.startswith("sqlite"):
            path = make_url(db_url).database
            assert path
            raw = sqlite3.connect(path, isolation_level=None)
            raw.execute("DROP TRIGGER events_no_delete")
            raw.execute(f"DELETE FROM events WHERE id = {ids[1]}")
            raw.close()
        else:
            _tamper(rt, db_url, f"DELETE FROM events WHERE id = {ids[1]}")
        broken = rt.audit.verify_chain()
        assert (broken.ok, broken.broken_id, broken.broken_seq) == (False, ids[2], 3)
        assert "removed" in broken.reason
    finally:
        rt.close()


def test_concurrent_writers_do_not_fork_the_chain(db_url: str, tmp_path: Path) -> None:
    """Two archive processes (two runtimes, two pools) appending and sealing at once."""
    one = runtime.build(_settings(db_url, tmp_path / "storage"))
    two = runtime.build(_settings(db_url, tmp_path / "storage"), run_migrations=False)
    try:

        def write(rt: runtime.Runtime, tag: str) -> None:
            for i in range(40):
                rt.audit.record("http.retrieve", Origin(address=tag, user=f"{tag}-{i}", protocol="http"))
                if i % 10 == 9:
                    rt.audit.sync()

        threads = [threading.Thread(target=write, args=(rt, tag)) for rt, tag in ((one, "a"), (two, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        one.audit.sync()
        two.audit.sync()
        report = one.audit.verify_chain()
        assert report.ok, report
        assert (report.checked, report.unsealed) == (80, 0)
    finally:
        two.close()
        one.close()


@pytest.mark.parametrize(
    "db_url", ["postgresql"], indirect=True
)  # SQLite has no TRUNCATE (DELETE: test_audit.py)
def test_truncate_of_the_event_log_is_refused(db_url: str, tmp_path: Path) -> None:
    rt = runtime.build(_settings(db_url, tmp_path / "storage"))
    try:
        rt.audit.record("http.search", Origin(address="10.0.0.1", protocol="http"))
        rt.audit.flush()
        with pytest.raises(Exception, match="append-only"), rt.engine.begin() as conn:
            conn.execute(text("TRUNCATE events"))
        assert len(_rows(rt, "http.search")) == 1
    finally:
        rt.close()


# ------------------------------------------------------------------ syslog


@dataclass
class _Collector:
    """A syslog collector on a local socket: UDP datagrams, or octet-counted TCP / TLS frames."""

    scheme: str
    sock: socket.socket
    tls: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.sock.getsockname()[1]}"

    def messages(self, n: int, timeout: float = 20.0) -> list[bytes]:
        self.sock.settimeout(timeout)
        if self.scheme == "udp":
            return [self.sock.recv(65535) for _ in range(n)]
        conn, _ = self.sock.accept()
        conn.settimeout(timeout)
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
        out, buf = [], b""
        with conn:
            while len(out) < n:
                while b" " not in buf:
                    buf += conn.recv(65536)
                size, _, rest = buf.partition(b" ")
                while len(rest) < int(size):
                    rest += conn.recv(65536)
                out.append(rest[: int(size)])
                buf = rest[int(size) :]
        return out


_RFC5424 = re.compile(
    rb"<(?P<pri>\d{1,3})>(?P<version>1) (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)) "
    rb"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    rb"(?P<sd>-|(\[[^ \]]+( [^ =\]]+=\"(\\.|[^\"\\])*\")*\])+) (?P<msg>.*)\Z",
    re.S,
)


@pytest.mark.parametrize("scheme", ["udp", "tcp", "tls"])
def test_rows_reach_syslog_as_rfc5424_messages(scheme: str, tmp_path: Path) -> None:
    kind = socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    tls = None
    audit_settings: dict[str, Any] = {}
    if scheme != "udp":
        sock.listen(1)
    if scheme == "tls":
        pki = make_pki(tmp_path)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(pki["server.pem"], pki["server.key"])
        audit_settings["syslog_ca"] = pki["ca.pem"]
    collector = _Collector(scheme, sock, tls)
    base = _settings(f"sqlite:///{tmp_path / 'index.sqlite'}", tmp_path / "storage")
    settings = config.Settings(
        storage=base.storage,
        database=base.database,
        audit=config.AuditSettings(syslog_url=collector.url, interval_seconds=0.2, **audit_settings),
    )
    rt = runtime.build(settings)
    got: list[bytes] = []
    receiver = threading.Thread(target=lambda: got.extend(collector.messages(2)))
    receiver.start()
    try:
        origin = Origin(address="10.1.2.3", calling_ae="WS1", called_ae="PACS", protocol="dimse")
        rt.audit.record("query.find", origin, query={"PatientName": "DOE*"}, outcome=0, durable=True)
        rt.audit.record(
            "retrieve.get", origin, studies=["1.2.3"], outcome=4, reason="cancelled", durable=True
        )
        receiver.join(30)
        assert len(got) == 2
        with rt.engine.connect() as conn:
            hashes = [r.row_hash for r in conn.execute(text("SELECT row_hash FROM events ORDER BY seq"))]
    finally:
        rt.close()
        sock.close()
    for raw, hash_, severity, code in zip(got, hashes, (5, 4), ("110112", "110104"), strict=True):
        m = _RFC5424.match(raw)
        assert m, raw[:200]
        assert int(m["pri"]) == 10 * 8 + severity  # facility authpriv; notice / warning
        assert datetime.fromisoformat(m["ts"].decode().replace("Z", "+00:00")).tzinfo is not None
        assert (m["app"], m["msgid"]) == (b"pacs", b"IHE+RFC-3881")
        assert m["sd"].startswith(b"[pacs@32473 ") and f'hash="{hash_}"'.encode() in m["sd"]
        assert m["msg"].startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: the MSG is Unicode (RFC 5424 6.4)
        xml = ET.fromstring(m["msg"][3:])
        assert xml.tag == "AuditMessage"
        assert xml.find("EventIdentification/EventID").get("csd-code") == code  # type: ignore[union-attr]
        requestor = xml.find("ActiveParticipant[@UserIsRequestor='true']")
        assert requestor is not None and requestor.get("NetworkAccessPointID") == "10.1.2.3"
