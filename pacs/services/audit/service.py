"""The audit service: recording accesses durably, sealing them, querying and exporting the log.

Writing (:meth:`Audit.record`): rows are queued to one writer thread that appends them in
batches, so a viewer fetching hundreds of frames does not wait on one transaction per frame. A
DIMSE query or retrieve waits (``[audit] wait_seconds``) until its row is durable before its
final response. When the database does not take a batch, the rows go to the spool
(:mod:`pacs.services.audit.spool`); while it holds rows, new rows follow them there, and the
writer replays it, in order, as soon as the database answers again. A row is never dropped. The
writer seals rows onto the hash chain (:mod:`pacs.index.audit_chain`) and, with ``[audit]
syslog_url``, ships each sealed row (:mod:`pacs.services.audit.syslog`).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from pacs.errors import StorageUnavailable
from pacs.index import auth_repo
from pacs.index.audit_chain import SEAL_BATCH, ChainReport, has_unsealed, seal_events, verify_events
from pacs.index.auth_repo import EventFilter
from pacs.index.database import Database
from pacs.model import Origin
from pacs.services.audit.codes import outcome_of
from pacs.services.audit.messages import _parsed, audit_message, message_xml, messages_json, messages_xml
from pacs.services.audit.spool import MemorySpool, Spool, _spool_line
from pacs.services.audit.syslog import SyslogSender, syslog_message

log = logging.getLogger("pacs.audit")

_STOP = object()


class Audit:
    """Record accesses, keep the chain, query the event log, render audit messages."""

    def __init__(
        self,
        db: Database,
        *,
        source_id: str = "PACS",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        batch: int = 500,
        spool: Spool | None = None,
        syslog: SyslogSender | None = None,
        wait_seconds: float = 5.0,
        interval: float = 1.0,
    ) -> None:
        self.db = db
        self.source_id = source_id
        self.clock = clock
        self.batch = batch
        self.spool: Spool = spool if spool is not None else MemorySpool()
        self.syslog = syslog
        self.wait_seconds = wait_seconds
        self.interval = max(0.05, interval)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._io = threading.RLock()  # one writer of the database, spool and chain per process
        self._retry_at = 0.0  # after a database failure: spool without trying until then
        self._backoff = self.interval

    # ------------------------------------------------------------------ writing

    def record(
        self,
        kind: str,
        origin: Origin,
        *,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        durable: bool = False,
        **details: Any,
    ) -> None:
        """Queue one event row; with ``durable``, wait (up to ``wait_seconds``) until it is in
        the database or the spool.

        Conventional ``details``: ``patient_id`` (one patient), ``patients`` and ``studies``
        (lists: every patient and study the access touched; the patients of the studies are
        looked up when the row is written), ``query`` (the query keys), ``outcome`` (PS3.15
        EventOutcomeIndicator), ``reason``. A single study or patient also fills its column.
        """
        studies = [str(u) for u in details.get("studies") or () if u]
        patients = [str(p) for p in details.get("patients") or () if p]
        pid = details.get("patient_id")
        if not (isinstance(pid, str) and pid and not any(c in pid for c in "*?\\")):
            pid = patients[0] if len(patients) == 1 else None  # a wildcard is a query, not a patient
        extra = {"called_ae": origin.called_ae} if origin.called_ae else {}
        row = {
            "at": self.clock(),
            "kind": kind,
            "study_instance_uid": study_instance_uid or (studies[0] if len(studies) == 1 else None),
            "series_instance_uid": series_instance_uid or None,
            "sop_instance_uid": sop_instance_uid or None,
            "calling_ae": origin.calling_ae or None,
            "peer_address": origin.address or None,
            "user_name": origin.user or None,
            "patient_id": pid[:64] if pid else None,
            "details": {"protocol": origin.protocol, **extra, **details},
        }
        done = threading.Event() if durable and self.wait_seconds > 0 else None
        self._start()
        self._queue.put((row, done))
        if done is not None and not done.wait(self.wait_seconds):
            log.warning("audit row %s not durable after %.1f s; going on", kind, self.wait_seconds)

    def flush(self) -> None:
        """Wait until every queued row is in the database or the spool."""
        self._start()
        self._queue.join()

    def sync(self) -> None:
        """:meth:`flush`, then replay the spool and seal every unsealed row now (errors logged)."""
        self.flush()
        self._round(force=True)

    def close(self) -> None:
        """Flush, stop the writer thread, make a last attempt at the spool and the chain."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(30)
            self._round(force=True)
        if self.syslog is not None:
            self.syslog.close()

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.interval)
            except queue.Empty:
                try:
                    self._round()
                except Exception:  # never let the writer die
                    log.exception("audit writer error")
                continue
            items = [first]
            while len(items) < self.batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            entries = [i for i in items if i is not _STOP]
            try:
                self._write([row for row, _ in entries])
            except Exception:  # never let the writer die: the rows were logged where they failed
                log.exception("audit writer error")
            finally:
                for _, done in entries:
                    if done is not None:
                        done.set()
                for _ in items:
                    self._queue.task_done()
            if len(entries) != len(items):
                return

    def _write(self, rows: list[dict[str, Any]]) -> None:
        """Rows to the database after whatever the spool holds, or to the spool behind it."""
        if not rows:
            return
        with self._io:
            if time.monotonic() < self._retry_at or (self.spool.pending() and not self._replay()):
                self._spool(rows)
                return
            try:
                sealed = self._commit(rows)
            except Exception as exc:
                self._failed(exc)
                self._spool(rows)
                return
            self._ok()
        self._ship(sealed)

    def _round(self, force: bool = False) -> None:
        """Replay the spool and seal what other writers appended (idle rounds, :meth:`sync`)."""
        sealed: list[dict[str, Any]] = []
        with self._io:
            if not force and time.monotonic() < self._retry_at:
                return
            if self.spool.pending() and not self._replay():
                return
            try:
                for _ in range(20):  # a backlog (the log before this version) in batches
                    with self.db.read() as conn:
                        if not has_unsealed(conn):
                            break
                    with self.db.write() as conn:
                        batch = seal_events(conn)
                    sealed += batch
                    if len(batch) < SEAL_BATCH:
                        break
            except Exception as exc:
                self._failed(exc, "audit rows not sealed yet")
        self._ship(sealed)

    def _commit(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append rows (their patients looked up) and seal the chain, in one transaction."""
        with self.db.write() as conn:
            _resolve_patients(conn, rows)
            auth_repo.append_events(conn, rows)
            try:
                with conn.begin_nested():
                    return seal_events(conn)
            except StorageUnavailable:
                raise
            except Exception as exc:  # the rows stay appended, sealed at the next round
                log.warning("audit rows appended but not sealed: %s", exc)
                return []

    def _replay(self) -> bool:
        """Replay the spool; False (rows kept) when the database is still away."""
        try:
            n = self.spool.replay(self._replay_rows)
        except Exception as exc:
            self._failed(exc, "audit spool not replayed yet")
            return False
        self._ok()
        if n:
            log.warning("audit: %d row(s) replayed from the spool into the database", n)
        return True

    def _replay_rows(self, rows: list[dict[str, Any]]) -> None:
        try:
            sealed = self._commit(rows)
        except StorageUnavailable:
            raise
        except Exception:  # some row the database will never take: one at a time, set it aside
            sealed, bad = [], []
            for r in rows:
                try:
                    sealed += self._commit([r])
                except StorageUnavailable:
                    raise
                except Exception as exc:
                    bad.append((r, f"{type(exc).__name__}: {exc}"))
            self.spool.reject(bad)
        self._ship(sealed)

    def _spool(self, rows: list[dict[str, Any]]) -> None:
        try:
            self.spool.append(rows)
        except Exception as exc:  # no database and no disk: the log is the last place left
            for r in rows:
                log.error("AUDIT ROW NOT WRITTEN (%s): %s", exc, _spool_line(r).strip())

    def _failed(self, exc: Exception, what: str = "audit rows spooled") -> None:
        self._retry_at = time.monotonic() + self._backoff
        log.warning("%s (the database did not answer; next try in %.1f s): %s", what, self._backoff, exc)
        self._backoff = min(30.0, self._backoff * 2)

    def _ok(self) -> None:
        self._retry_at, self._backoff = 0.0, self.interval

    def _ship(self, rows: list[dict[str, Any]]) -> None:
        if self.syslog is None or not rows:
            return
        try:
            self.syslog.send([self.syslog_frame(r) for r in rows])
        except Exception as exc:
            log.warning("audit: %d row(s) not sent to %s: %s", len(rows), self.syslog.url, exc)

    def syslog_frame(self, row: Mapping[str, Any]) -> bytes:
        """The RFC 5424 message of a sealed row: the DICOM audit message (XML) as MSG, the chain
        position and hashes as structured data, severity notice (success) or warning."""
        r = _parsed(row)
        body = message_xml(self.message(r))
        sd = {"id": str(r["id"]), "kind": str(r["kind"])}
        if r.get("seq") is not None:
            sd.update(seq=str(r["seq"]), hash=str(r["row_hash"]), prev=str(r["prev_hash"]))
        assert self.syslog is not None
        return syslog_message(
            at=r["at"],
            hostname=self.syslog.hostname,
            app_name=self.syslog.app_name,
            procid=str(os.getpid()),
            msgid="IHE+RFC-3881",
            sd=sd,
            msg=body,
            severity=5 if r["outcome"] == 0 else 4,
        )

    # ------------------------------------------------------------------ reading

    def query(self, flt: EventFilter, limit: int = 1000) -> list[dict[str, Any]]:
        """Events matching ``flt`` (oldest first), each with its ``outcome`` and patient, if known."""
        self.flush()
        if self.spool.pending():
            self._round(force=True)
        with self.db.read() as conn:
            rows = auth_repo.query_events(conn, flt, limit)
            patients = auth_repo.patients_of_studies(conn, (r["study_instance_uid"] for r in rows))
        for r in rows:
            r["outcome"] = outcome_of(r)
            pid = r.get("patient_id") or (r.get("details") or {}).get("patient_id")
            if r["study_instance_uid"] in patients:
                pid, pname = patients[r["study_instance_uid"]]
                r["patient_id"], r["patient_name"] = pid, pname
            else:
                r["patient_id"], r["patient_name"] = pid or None, None
        return rows

    def verify_chain(self) -> ChainReport:
        """Seal what is pending, then walk the hash chain (see :func:`verify_events`)."""
        self.sync()
        with self.db.read() as conn:
            report = verify_events(conn)
        if not report.ok:
            log.error(
                "audit chain broken at event %s (seq %s): %s",
                report.broken_id,
                report.broken_seq,
                report.reason,
            )
        return report

    # ------------------------------------------------------------------ PS3.15 A.5 audit messages

    def message(self, row: dict[str, Any]) -> dict[str, Any]:
        """One DICOM audit message (PS3.15 A.5.1) for an event row, as a JSON-ready dict."""
        return audit_message(row, self.source_id)

    def to_json(self, rows: list[dict[str, Any]]) -> str:
        """A JSON document ``{"AuditMessages": [{"AuditMessage": ...}, ...]}``."""
        return messages_json(rows, self.source_id)

    def to_xml(self, rows: list[dict[str, Any]]) -> bytes:
        """An XML document ``<AuditMessages>`` of ``<AuditMessage>`` elements (PS3.15 A.5.1 schema)."""
        return messages_xml(rows, self.source_id)


def _resolve_patients(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Name the patients of the studies rows touched, as the index knows them now (the row then
    keeps them even if the study is later changed or removed)."""
    wanted: set[str] = set()
    for r in rows:
        d = r.get("details")
        if r.get("study_instance_uid"):
            wanted.add(str(r["study_instance_uid"]))
        if isinstance(d, dict):
            wanted.update(str(u) for u in d.get("studies") or ())
    if not wanted:
        return
    known = auth_repo.patients_of_studies(conn, wanted)
    for r in rows:
        d = r.get("details")
        if not isinstance(d, dict):
            continue
        if d.get("studies"):
            found = (known[u][0] for u in d["studies"] if u in known and known[u][0])
            pats = list(dict.fromkeys([*(d.get("patients") or ()), *found]))
            if pats:
                d["patients"] = pats
            if not r.get("patient_id") and len(pats) == 1:
                r["patient_id"] = str(pats[0])[:64]
        elif not r.get("patient_id") and r.get("study_instance_uid") in known:
            r["patient_id"] = known[r["study_instance_uid"]][0][:64] or None


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 date or date-time (UTC unless an offset is given), or a span back (``30m``, ``7d``)."""
    now = now or datetime.now(UTC)
    m = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now - timedelta(**{unit: int(m.group(1))})
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def event_filter(params: dict[str, str]) -> EventFilter:
    """An :class:`EventFilter` from query parameters (``since``, ``until``, ``user``, ``kind``,
    ``study``, ``address``, ``after``); raises ``ValueError`` with a reason."""
    return EventFilter(
        since=parse_time(params["since"]) if params.get("since") else None,
        until=parse_time(params["until"]) if params.get("until") else None,
        user=params.get("user") or None,
        kinds=tuple(k.strip() for k in params.get("kind", "").split(",") if k.strip()),
        study_instance_uid=params.get("study") or None,
        address=params.get("address") or None,
        after_id=int(params.get("after") or 0),
    )
