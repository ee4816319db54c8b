"""Storage Commitment Push Model (PS3.4 Annex J): verify, keep the verdict, report it once.

:meth:`Commitment.request` takes an N-ACTION's Transaction UID and references, checks every
referenced instance against the index *and* its stored file (re-hashed and compared with the
SHA-256 recorded when it was stored), and writes the pending commitment with its verdict in one
transaction, before the N-ACTION response: a commitment that was answered Success survives a
crash. The verdict per item (PS3.3 C.14.1.1 Failure Reason):

- not in the index, or its file is missing: ``0x0112`` No such object instance;
- archived under another SOP Class than the request names: ``0x0119`` Class/Instance conflict;
- its file cannot be read or is not the file archived (hash mismatch): ``0x0110`` Processing failure.

Delivery of the N-EVENT-REPORT (Event Type 1: all committed, 2: failures exist) is the edge's
(a ``Send`` callable: it returns once the peer's N-EVENT-REPORT-RSP said Success, else raises);
this service decides who sends what when, and records the outcome right after the response
(its own transaction), so a report is sent again only if the process dies between the peer's
response and that commit:

1. The process that took the N-ACTION holds a lease on the row for the requester's association
   (``report_delay_seconds`` + ``same_association_wait_seconds``) and tries that association
   first (:meth:`Commitment.deliver_on_association`); if it is gone it hands the row over at
   once (:meth:`Commitment.hand_over`).
2. Otherwise any node's :class:`DeliveryWorker` takes due rows (:meth:`Commitment.deliver_due`,
   ``FOR UPDATE SKIP LOCKED`` and a lease, :mod:`pacs.index.commitments`) and sends on a new
   association, with exponential backoff, until ``max_attempts`` (then ``failed``, logged).
3. A node killed mid-way leaves its rows to another when the lease runs out; a node restarted on
   the same host takes back its dead predecessor's rows at once (:meth:`Commitment.release_orphans`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from pacs.blobstore import BlobStore
from pacs.config import CommitmentSettings
from pacs.dicom import status as codes
from pacs.dicom.text import is_valid_uid
from pacs.errors import InvalidCommitment, StorageUnavailable
from pacs.index import commitments as repo
from pacs.index.database import Database
from pacs.index.repo import add_event
from pacs.model import Origin

log = logging.getLogger("pacs.commitment")

#: How much longer than the same-association attempt may take its lease runs (so the delivery
#: worker never takes a row while that attempt can still be answered).
_LEASE_MARGIN = timedelta(seconds=5)
#: The most references one request may carry (a whole large study is a few thousand).
MAX_ITEMS = 50_000


@dataclass(frozen=True)
class Reference:
    """A committed SOP Instance (an item of the Referenced SOP Sequence)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class FailedReference:
    """A SOP Instance not committed, with its Failure Reason (0008,1197)."""

    sop_class_uid: str
    sop_instance_uid: str
    reason: int


@dataclass(frozen=True)
class Report:
    """The N-EVENT-REPORT of one commitment: what to send, and to whom."""

    transaction_uid: str
    requester: str  # the calling AE title of the N-ACTION (its ``[dicom] destinations`` entry)
    success: tuple[Reference, ...]
    failed: tuple[FailedReference, ...]
    attempts: int = 0

    @property
    def event_type_id(self) -> int:
        """1: storage commitment request successful; 2: complete, failures exist (PS3.4 J.3.3)."""
        return 2 if self.failed else 1


class DeliveryError(Exception):
    """A report that was not acknowledged (no destination, refused, timed out, failure status)."""


#: Sends a report and returns once the peer acknowledged it with Success; raises otherwise.
Send = Callable[[Report], None]


def node_name() -> str:
    """This process's name in leases: ``host:pid:random`` (a restarted process is a new node)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


class Commitment:
    """Storage commitment requests and the delivery of their reports."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        settings: CommitmentSettings,
        *,
        node: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.settings = settings
        self.node = node or node_name()
        self.clock = clock
        #: Called when a row becomes due at once (handed over): wakes a delivery worker.
        self.wakeups: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ the request

    def request(
        self,
        transaction_uid: str,
        items: Sequence[tuple[str, str]],
        origin: Origin,
        *,
        hold_for_association: bool = True,
    ) -> Report:
        """Validate, verify every referenced instance and keep the pending commitment.

        Raises :class:`InvalidCommitment` (nothing is kept) for a missing or invalid Transaction
        UID, no items, an invalid UID in an item, or a Transaction UID already used; and
        :class:`StorageUnavailable` when the index cannot be written. ``hold_for_association``:
        this process will try the requester's association first (it holds the row until
        ``report_delay_seconds + same_association_wait_seconds`` have passed).
        """
        tx = (transaction_uid or "").strip()
        refs = self._validated(tx, items)
        with self.db.read() as conn:
            if repo.exists(conn, tx):
                raise InvalidCommitment(f"Transaction UID {tx} is already used")
            facts = repo.instance_facts(conn, (r.sop_instance_uid for r in refs))
        verdicts = self._verify(refs, facts)
        now = self.clock()
        due = now + timedelta(seconds=self.settings.report_delay_seconds)
        hold = hold_for_association and self.settings.same_association_wait_seconds > 0
        lease = due + timedelta(seconds=self.settings.same_association_wait_seconds) + _LEASE_MARGIN
        try:
            with self.db.write() as conn:
                # The files were hashed outside the write transaction; an instance replaced
                # meanwhile (another file under the same UID) is judged again here.
                again = repo.instance_facts(conn, (r.sop_instance_uid for r in refs))
                changed = [r for r in refs if again.get(r.sop_instance_uid) != facts.get(r.sop_instance_uid)]
                if changed:
                    verdicts.update(self._verify(changed, again))
                report = self._report(tx, origin.calling_ae, refs, verdicts)
                repo.insert(
                    conn,
                    transaction_uid=tx,
                    calling_ae=origin.calling_ae,
                    called_ae=origin.called_ae,
                    peer_address=origin.address,
                    items=[(r.sop_class_uid, r.sop_instance_uid) for r in refs],
                    result=_result_json(report),
                    now=now,
                    next_attempt_at=due,
                    locked_by=self.node if hold else None,
                    locked_until=lease if hold else None,
                )
                add_event(
                    conn,
                    "commitment.requested",
                    now,
                    origin,
                    details={
                        "transaction_uid": tx,
                        "items": len(refs),
                        "failed": len(report.failed),
                    },
                )
        except IntegrityError:  # the same Transaction UID committed by a concurrent request
            raise InvalidCommitment(f"Transaction UID {tx} is already used") from None
        log.info(
            "storage commitment %s from %s@%s: %d item(s), %d failed",
            tx,
            origin.calling_ae,
            origin.address,
            len(refs),
            len(report.failed),
        )
        return report

    @staticmethod
    def _validated(tx: str, items: Sequence[tuple[str, str]]) -> list[Reference]:
        if not tx:
            raise InvalidCommitment("no Transaction UID (0008,1195)")
        if not is_valid_uid(tx):
            raise InvalidCommitment(f"invalid Transaction UID {tx!r}")
        if not items:
            raise InvalidCommitment("no Referenced SOP Sequence (0008,1199) items")
        if len(items) > MAX_ITEMS:
            raise InvalidCommitment(f"more than {MAX_ITEMS} references in one request")
        refs = []
        for n, (cls, uid) in enumerate(items, 1):
            cls, uid = (cls or "").strip(), (uid or "").strip()
            if not is_valid_uid(cls) or not is_valid_uid(uid):
                raise InvalidCommitment(f"item {n}: invalid or missing Referenced SOP Class / Instance UID")
            refs.append(Reference(cls, uid))
        return refs

    def _verify(
        self, refs: Sequence[Reference], facts: dict[str, tuple[str, str, str]]
    ) -> dict[Reference, int | None]:
        """The Failure Reason of each reference (None: committed). Each file is hashed once."""
        hashed: dict[str, int | None] = {}
        out: dict[Reference, int | None] = {}
        for ref in refs:
            fact = facts.get(ref.sop_instance_uid)
            if fact is None:
                out[ref] = codes.NO_SUCH_OBJECT_INSTANCE
                continue
            sop_class, key, sha = fact
            if sop_class and sop_class != ref.sop_class_uid:
                out[ref] = codes.CLASS_INSTANCE_CONFLICT
                continue
            if key not in hashed:
                hashed[key] = self._check_file(ref.sop_instance_uid, key, sha)
            out[ref] = hashed[key]
        return out

    def _check_file(self, uid: str, key: str, sha256: str) -> int | None:
        """None when the stored file is there and hashes to the recorded SHA-256."""
        try:
            with self.blobs.open(key) as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()  # type: ignore[arg-type]  # BinaryIO has readinto
        except FileNotFoundError:
            log.error("storage commitment: the file of %s (blob %s) is missing", uid, key)
            return codes.NO_SUCH_OBJECT_INSTANCE
        except OSError as exc:
            log.error("storage commitment: cannot read the file of %s (blob %s): %s", uid, key, exc)
            return codes.PROCESSING_FAILURE
        if digest != sha256:
            log.error("storage commitment: the file of %s (blob %s) does not match its SHA-256", uid, key)
            return codes.PROCESSING_FAILURE
        return None

    @staticmethod
    def _report(
        tx: str, requester: str, refs: Sequence[Reference], verdicts: dict[Reference, int | None]
    ) -> Report:
        success = tuple(r for r in refs if verdicts.get(r) is None)
        failed = tuple(
            FailedReference(r.sop_class_uid, r.sop_instance_uid, int(reason))
            for r in refs
            if (reason := verdicts.get(r)) is not None
        )
        return Report(tx, requester, success, failed)

    # ------------------------------------------------------------------ delivery

    def deliver_on_association(self, transaction_uid: str, send: Send) -> bool:
        """Send a report this process holds for the requester's association (``send`` writes it
        there). True when delivered now; False when the row is no longer this process's (taken
        over, already delivered) or the attempt failed (then it is due at once for any node)."""
        now = self.clock()
        lease = now + timedelta(seconds=self.settings.same_association_wait_seconds) + _LEASE_MARGIN
        with self.db.write() as conn:
            row = repo.renew(conn, transaction_uid, self.node, lease)
        if row is None:
            return False
        return self._attempt(row, send, retry_at=None)

    def hand_over(self, transaction_uid: str) -> None:
        """The requester's association ended before its report: any node may send it now."""
        try:
            with self.db.write() as conn:
                released = repo.release(conn, transaction_uid, self.node, self.clock())
        except StorageUnavailable as exc:  # the lease runs out by itself
            log.warning("storage commitment %s: cannot hand over (%s)", transaction_uid, exc)
            return
        if released:
            for wake in self.wakeups:
                wake()

    def deliver_due(self, send: Send, limit: int = 16) -> int:
        """Send the reports that are due (on new associations); how many were delivered."""
        now = self.clock()
        lease = timedelta(seconds=self.settings.lease_seconds)
        with self.db.write() as conn:
            rows = repo.take_due(conn, self.node, now, now + lease, limit)
        delivered = 0
        for row in rows:
            if row is not rows[0]:  # the lease of a row waiting behind slow peers is renewed
                with self.db.write() as conn:
                    renewed = repo.renew(conn, row["transaction_uid"], self.node, self.clock() + lease)
                if renewed is None:
                    continue
                row = renewed
            delivered += self._attempt(row, send, retry_at=self._backoff(int(row["attempts"])))
        return delivered

    def _backoff(self, attempts: int) -> timedelta:
        """The wait after the ``attempts + 1``-th failed attempt: initial, doubled, capped."""
        s = self.settings
        return timedelta(seconds=min(s.retry_max_seconds, s.retry_initial_seconds * (2 ** min(attempts, 30))))

    def _attempt(self, row: dict[str, Any], send: Send, *, retry_at: timedelta | None) -> bool:
        """One attempt at a leased row; the outcome committed right after the peer's answer."""
        report = _report_of(row)
        tx = report.transaction_uid
        try:
            send(report)
        except Exception as exc:
            why = str(exc) or type(exc).__name__
            attempts = int(row["attempts"]) + 1
            give_up = attempts >= self.settings.max_attempts
            now = self.clock()
            with self.db.write() as conn:
                kept = repo.mark_attempt_failed(
                    conn,
                    int(row["id"]),
                    self.node,
                    why,
                    next_attempt_at=now + (retry_at or timedelta()),
                    give_up=give_up,
                )
                if kept and give_up:
                    add_event(
                        conn,
                        "commitment.failed",
                        now,
                        _origin_of(row),
                        details={"transaction_uid": tx, "attempts": attempts, "error": why[:500]},
                    )
            if kept and not give_up and retry_at is None:
                for wake in self.wakeups:  # due at once, on a new association
                    wake()
            if give_up and kept:
                log.error(
                    "storage commitment %s for %s: report not delivered after %d attempt(s), giving up: %s",
                    tx,
                    report.requester,
                    attempts,
                    why,
                )
            else:
                log.warning(
                    "storage commitment %s for %s: attempt %d failed (%s)%s",
                    tx,
                    report.requester,
                    attempts,
                    why,
                    "" if retry_at is None else f"; next in {retry_at.total_seconds():.0f} s",
                )
            return False
        now = self.clock()
        with self.db.write() as conn:
            mine = repo.mark_delivered(conn, int(row["id"]), self.node, now)
            if mine:
                add_event(
                    conn,
                    "commitment.delivered",
                    now,
                    _origin_of(row),
                    details={"transaction_uid": tx, "event_type_id": report.event_type_id},
                )
        if not mine:
            log.error("storage commitment %s: delivered, but another node had taken the row over", tx)
        else:
            log.info(
                "storage commitment %s: report delivered to %s (event type %d, %d committed, %d failed)",
                tx,
                report.requester,
                report.event_type_id,
                len(report.success),
                len(report.failed),
            )
        return True

    def release_orphans(self) -> int:
        """Take back, at start-up, the rows a dead process on this host still holds (its lease
        would otherwise keep them until it runs out); how many were released."""
        host = socket.gethostname()[:64]
        with self.db.write() as conn:
            held = repo.leases(conn, host + ":")
            dead = [(i, n) for i, n in held if n != self.node and not _alive(n, host)]
            released = repo.break_leases(conn, [i for i, _ in dead], [n for _, n in dead]) if dead else 0
        if released:
            log.warning("storage commitment: %d report(s) held by a stopped process are due again", released)
        return released

    def get(self, transaction_uid: str) -> dict[str, Any] | None:
        """The stored commitment (status, result, attempts...), or None."""
        with self.db.read() as conn:
            return repo.get(conn, transaction_uid)


def _alive(holder: str, host: str) -> bool:
    """Whether the process named in a lease of this host still runs (this very process under an
    earlier name, after a restart with the same pid in a container, is not)."""
    try:
        _host, pid_text, _token = holder.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return True  # not one of our names: leave it to its lease
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _result_json(report: Report) -> dict[str, Any]:
    return {
        "success": [[r.sop_class_uid, r.sop_instance_uid] for r in report.success],
        "failed": [[f.sop_class_uid, f.sop_instance_uid, f.reason] for f in report.failed],
    }


def _report_of(row: dict[str, Any]) -> Report:
    result = row["result"]
    return Report(
        transaction_uid=str(row["transaction_uid"]),
        requester=str(row["calling_ae"] or ""),
        success=tuple(Reference(str(c), str(u)) for c, u in result.get("success", [])),
        failed=tuple(FailedReference(str(c), str(u), int(r)) for c, u, r in result.get("failed", [])),
        attempts=int(row["attempts"]),
    )


def _origin_of(row: dict[str, Any]) -> Origin:
    return Origin(
        address=str(row.get("peer_address") or ""),
        calling_ae=str(row.get("calling_ae") or ""),
        called_ae=str(row.get("called_ae") or ""),
        protocol="dimse",
    )


class DeliveryWorker:
    """The background thread of ``pacs serve`` that sends due reports on new associations."""

    def __init__(self, commitment: Commitment, send: Send) -> None:
        self.commitment = commitment
        self.send = send
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        commitment.wakeups.append(self._wake.set)

    def start(self) -> None:
        """Release dead predecessors' rows and start delivering (pending rows first of all)."""
        try:
            self.commitment.release_orphans()
        except StorageUnavailable as exc:
            log.warning("storage commitment: cannot look for orphaned reports now: %s", exc)
        self._thread = threading.Thread(target=self._run, name="commitment-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the attempt in progress (a report sent is still recorded)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        poll = self.commitment.settings.poll_seconds
        while not self._stop.is_set():
            busy = False
            try:
                busy = self.commitment.deliver_due(self.send) > 0
            except StorageUnavailable as exc:
                log.warning("storage commitment delivery: %s", exc)
            except Exception:
                log.exception("storage commitment delivery failed")
            if not busy:
                self._wake.wait(poll)
                self._wake.clear()


__all__ = [
    "Commitment",
    "DeliveryError",
    "DeliveryWorker",
    "FailedReference",
    "Reference",
    "Report",
    "Send",
    "node_name",
]
