"""Storage Commitment Push Model (PS3.4 Annex J) against a real ``pacs serve``, pynetdicom as SCU.

The report comes on the requester's association while it is open, else on a new association to
its ``[dicom] destinations`` entry (a pynetdicom AE listening in the SCU role); every referenced
instance is checked against the index and its stored file; a commitment accepted before a
SIGKILL is reported once after the restart; a refused N-ACTION leaves nothing behind.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance, Verification
from sqlalchemy import func, select

from pacs.index import commitments as commitments_repo
from pacs.index.database import Database
from pacs.index.engine import make_engine
from pacs.index.schema import commitments
from tests.factories import make_dataset
from tests.protocol.store_util import open_archive
from tests.serve import Served, serve

REQUESTER = "PYNETDICOM"  # granted every service (tests/serve.py), and the destination entry's title


@dataclass
class Received:
    """N-EVENT-REPORTs an AE was sent: (association, event type, event information)."""

    reports: list[tuple[Any, int, Dataset]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self, event: evt.Event) -> tuple[int, None]:
        info = event.event_information
        with self.lock:
            self.reports.append((event.assoc, int(event.event_type), info))
        return 0x0000, None

    def of(self, tx: str) -> list[tuple[Any, int, Dataset]]:
        with self.lock:
            return [r for r in self.reports if str(r[2].TransactionUID) == tx]

    def wait_for(self, tx: str, timeout: float = 30.0) -> tuple[Any, int, Dataset]:
        """The first report of ``tx``, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.of(tx)
            if got:
                return got[0]
            time.sleep(0.05)
        raise AssertionError(f"no N-EVENT-REPORT for {tx} within {timeout} s")


@contextmanager
def listening_scu(received: Received) -> Iterator[int]:
    """A modality's Storage Commitment SCU listening for reports on new associations (it accepts
    the SCP role the archive proposes, PS3.4 J.3.3.1.3); yields its port."""
    ae = AE(ae_title=REQUESTER)
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, received.handler)]
    )
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        ae.shutdown()


def destination_env(port: int, **commitment: float) -> dict[str, str]:
    env = {
        "PACS_DICOM_DESTINATIONS": json.dumps([{"ae_title": REQUESTER, "host": "127.0.0.1", "port": port}]),
        "PACS_COMMITMENT_RETRY_INITIAL_SECONDS": "0.5",
        "PACS_COMMITMENT_POLL_SECONDS": "0.2",
    }
    env.update({f"PACS_COMMITMENT_{k.upper()}": str(v) for k, v in commitment.items()})
    return env


@contextmanager
def requester(srv: Served, received: Received) -> Iterator[Association]:
    """An association as the modality: CT/MR storage and storage commitment (SCU)."""
    ae = AE(ae_title=REQUESTER)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        "127.0.0.1",
        srv.dicom_port,
        ae_title="PACS",
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, received.handler)],
    )
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def store(assoc: Association, n: int) -> list[Dataset]:
    """Store ``n`` new CT instances of one study; returns them."""
    study, series = generate_uid(), generate_uid()
    out = []
    for k in range(n):
        ds = make_dataset(study_uid=study, series_uid=series, instance_number=k + 1)
        st = assoc.send_c_store(ds)
        assert st.Status == 0x0000
        out.append(ds)
    return out


def action(tx: str | None, refs: list[tuple[str, str]]) -> Dataset:
    info = Dataset()
    if tx is not None:
        info.TransactionUID = tx
    items = []
    for cls, uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    info.ReferencedSOPSequence = items
    return info


def commit(assoc: Association, tx: str | None, refs: list[tuple[str, str]]) -> int:
    """N-ACTION Request Storage Commitment; the response status."""
    st, _reply = assoc.send_n_action(
        action(tx, refs), 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
    )
    return int(st.Status)


def refs_of(datasets: list[Dataset]) -> list[tuple[str, str]]:
    return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]


def items(seq: Any, *, reasons: bool = False) -> set[tuple[Any, ...]]:
    """The (class, instance[, reason]) of each item of a report's sequence."""
    return {
        (
            str(i.ReferencedSOPClassUID),
            str(i.ReferencedSOPInstanceUID),
            *((int(i.FailureReason),) if reasons else ()),
        )
        for i in seq
    }


@contextmanager
def index(url: str) -> Iterator[Database]:
    db = Database(make_engine(url))
    try:
        yield db
    finally:
        db.close()


def row(url: str, tx: str) -> dict[str, Any] | None:
    with index(url) as db, db.read() as conn:
        return commitments_repo.get(conn, tx)


def row_count(url: str) -> int:
    with index(url) as db, db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(commitments)).scalar_one())


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


# ---------------------------------------------------------------- (a) same association


def test_report_on_the_same_association(tmp_path: Path, db_url: str) -> None:
    on_new = Received()
    with listening_scu(on_new) as port, serve(tmp_path, db_url, env=destination_env(port)) as srv:
        got = Received()
        with requester(srv, got) as assoc:
            stored = store(assoc, 3)
            tx = generate_uid()
            assert commit(assoc, tx, refs_of(stored)) == 0x0000
            report_assoc, event_type, info = got.wait_for(tx)
            assert report_assoc is assoc  # the requester's own association
            assert event_type == 1
            assert items(info.ReferencedSOPSequence) == set(refs_of(stored))
            assert "FailedSOPSequence" not in info
            assert info.RetrieveAETitle == "PACS"
            wait_until(lambda: (row(db_url, tx) or {}).get("status") == "delivered", what="delivered")
            # The association still works after the report (the reactor was given back).
            assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
        r = row(db_url, tx)
        assert r is not None and r["attempts"] == 1 and r["delivered_at"] is not None
        assert r["calling_ae"] == REQUESTER and r["locked_by"] is None
        assert len(got.of(tx)) == 1 and not on_new.of(tx)
        assert "report delivered to PYNETDICOM (event type 1, 3 committed, 0 failed)" in srv.log()


# ---------------------------------------------------------------- (b) new association


def test_report_on_a_new_association_after_the_requester_left(tmp_path: Path, db_url: str) -> None:
    on_new = Received()
    with listening_scu(on_new) as port:
        env = destination_env(port, report_delay_seconds=1.0)
        with serve(tmp_path, db_url, env=env) as srv:
            got = Received()
            with requester(srv, got) as assoc:
                stored = store(assoc, 2)
                tx = generate_uid()
                assert commit(assoc, tx, refs_of(stored)) == 0x0000
            # Released right after the N-ACTION response, before the report was due.
            report_assoc, event_type, info = on_new.wait_for(tx)
            assert report_assoc is not assoc
            assert report_assoc.requestor.ae_title.strip() == "PACS"  # the archive associated
            assert event_type == 1
            assert items(info.ReferencedSOPSequence) == set(refs_of(stored))
            wait_until(lambda: (row(db_url, tx) or {}).get("status") == "delivered", what="delivered")
            assert not got.of(tx) and len(on_new.of(tx)) == 1
            assert "the requester left" in srv.log()


def test_undeliverable_report_is_retried_then_failed(tmp_path: Path, db_url: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = destination_env(closed, report_delay_seconds=0.3, max_attempts=3, retry_initial_seconds=0.3)
    with serve(tmp_path, db_url, env=env) as srv:
        got = Received()
        with requester(srv, got) as assoc:
            stored = store(assoc, 1)
            tx = generate_uid()
            assert commit(assoc, tx, refs_of(stored)) == 0x0000
        wait_until(lambda: (row(db_url, tx) or {}).get("status") == "failed", what="given up")
        r = row(db_url, tx)
        assert r is not None and r["attempts"] == 3 and r["delivered_at"] is None
        assert "refused or failed" in r["last_error"] and r["locked_by"] is None
        log = srv.log()
        assert "attempt 1 failed" in log and "attempt 2 failed" in log
        assert "report not delivered after 3 attempt(s), giving up" in log
        assert not got.of(tx)


# ---------------------------------------------------------------- (c) verification


def test_corrupt_missing_and_unknown_instances_fail(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url) as srv:
        got = Received()
        with requester(srv, got) as assoc:
            good, corrupt, gone, other_class = stored = store(assoc, 4)
            with open_archive(srv.database_url, srv.storage) as archive:
                paths = {
                    ds.SOPInstanceUID: archive.path(archive.instances(sop_instance_uid=ds.SOPInstanceUID)[0])
                    for ds in stored
                }
            target = paths[corrupt.SOPInstanceUID]
            assert target is not None
            data = bytearray(target.read_bytes())
            data[-64:-32] = bytes(b ^ 0xFF for b in data[-64:-32])  # pixel bytes, same length
            target.write_bytes(bytes(data))
            missing = paths[gone.SOPInstanceUID]
            assert missing is not None
            missing.unlink()
            unknown = (str(CTImageStorage), generate_uid())
            wrong_class = (str(MRImageStorage), str(other_class.SOPInstanceUID))
            tx = generate_uid()
            refs = [*refs_of([good, corrupt, gone]), unknown, wrong_class]
            assert commit(assoc, tx, refs) == 0x0000
            _a, event_type, info = got.wait_for(tx)
        assert event_type == 2
        assert items(info.ReferencedSOPSequence) == set(refs_of([good]))
        assert items(info.FailedSOPSequence, reasons=True) == {
            (str(CTImageStorage), str(corrupt.SOPInstanceUID), 0x0110),  # processing failure: hash
            (str(CTImageStorage), str(gone.SOPInstanceUID), 0x0112),  # no such object: no file
            (*unknown, 0x0112),  # no such object instance
            (*wrong_class, 0x0119),  # class / instance conflict
        }
        r = row(db_url, tx)
        assert r is not None and r["status"] == "delivered"
        assert sorted(map(tuple, r["items"])) == sorted(refs)
        assert {tuple(f) for f in r["result"]["failed"]} == items(info.FailedSOPSequence, reasons=True)
        assert "does not match its SHA-256" in srv.log()


# ---------------------------------------------------------------- (d) SIGKILL, restart, once


def test_pending_report_survives_sigkill_and_is_delivered_once(tmp_path: Path, db_url: str) -> None:
    on_new = Received()
    with listening_scu(on_new) as port:
        env = destination_env(port, report_delay_seconds=3.0, same_association_wait_seconds=1.0)
        with serve(tmp_path, db_url, env=env) as srv:
            got = Received()
            with requester(srv, got) as assoc:
                stored = store(assoc, 2)
                tx = generate_uid()
                assert commit(assoc, tx, refs_of(stored)) == 0x0000
                srv.process.send_signal(signal.SIGKILL)  # between the N-ACTION response and the report
                srv.process.wait(10)
            storage = srv.storage
        assert not got.of(tx) and not on_new.of(tx)
        r = row(db_url, tx)
        assert r is not None and r["status"] == "pending" and r["attempts"] == 0
        assert r["locked_by"], "held for the requester's association when the process died"
        with serve(tmp_path, db_url, env=env, storage=storage) as again:
            _a, event_type, info = on_new.wait_for(tx)
            assert event_type == 1 and items(info.ReferencedSOPSequence) == set(refs_of(stored))
            wait_until(lambda: (row(db_url, tx) or {}).get("status") == "delivered", what="delivered")
            time.sleep(3.0)  # duplicates would come within a few poll intervals (0.2 s)
            assert "held by a stopped process are due again" in again.log()
        assert len(on_new.of(tx)) == 1 and not got.of(tx)
        r = row(db_url, tx)
        assert r is not None and r["status"] == "delivered" and r["attempts"] == 1


# ---------------------------------------------------------------- (e) refused requests


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    ("tx", "refs_kind"),
    [
        ("1.2.3.abc", "good"),  # invalid Transaction UID
        (None, "good"),  # no Transaction UID
        ("fresh", "none"),  # no items
        ("fresh", "bad-uid"),  # an item with an invalid SOP Instance UID
    ],
    ids=["bad-transaction-uid", "no-transaction-uid", "no-items", "bad-item-uid"],
)
def test_refused_requests_leave_no_row(tmp_path: Path, db_url: str, tx: str | None, refs_kind: str) -> None:
    with serve(tmp_path, db_url) as srv:
        got = Received()
        with requester(srv, got) as assoc:
            stored = store(assoc, 1)
            refs = {
                "good": refs_of(stored),
                "none": [],
                "bad-uid": [(str(CTImageStorage), "1.2.840.x")],
            }[refs_kind]
            transaction = generate_uid() if tx == "fresh" else tx
            assert commit(assoc, transaction, refs) == 0x0115  # invalid argument value
            assert assoc.send_c_echo().Status == 0x0000  # the association stays up
        assert row_count(db_url) == 0
        assert "N-ACTION storage commitment refused" in srv.log()


def test_duplicate_transaction_uid_is_refused(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url) as srv:
        got = Received()
        with requester(srv, got) as assoc:
            stored = store(assoc, 2)
            tx = generate_uid()
            assert commit(assoc, tx, refs_of(stored[:1])) == 0x0000
            got.wait_for(tx)
            assert commit(assoc, tx, refs_of(stored)) == 0x0115
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:  # a second report would come at once
                time.sleep(0.1)
        assert row_count(db_url) == 1
        r = row(db_url, tx)
        assert r is not None and [tuple(i) for i in r["items"]] == refs_of(stored[:1])
        assert len(got.of(tx)) == 1
        assert "is already used" in srv.log()
