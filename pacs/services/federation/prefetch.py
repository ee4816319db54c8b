"""Prefetch: a patient's prior studies at other facilities fetched into the proxy cache before
the radiologist opens them.

A job is a row of ``reuse_jobs`` (queued by a new order, in the order's own transaction, or by
``POST /api/reuse/prefetch``); :class:`PrefetchWorker` threads on any node take due jobs with a
lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), run them and record the result; a job that
failed is tried again later, up to ``[federation] prefetch_attempts``; a node killed mid-job
leaves it to another once the lease runs out.

Running a job: a federated search for the identifiers, then for the newest
``prefetch_max_studies`` studies not held here (and with a DICOMweb source), what the viewer asks
when it opens a study (:func:`viewer_requests`) is fetched through the proxy into the cache.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pacs.config import FederationSettings
from pacs.index import federation as sql
from pacs.index.database import Database
from pacs.services.federation import matching as m

if TYPE_CHECKING:
    from pacs.services.federation.service import Federation

log = logging.getLogger("pacs.federation")

JSON = "application/dicom+json, application/json"
#: Study attributes the viewer's study view asks for (pacs/web/static/viewer.js INCLUDE).
VIEWER_INCLUDE = (
    "PatientBirthDate,PatientSex,StudyDescription,NumberOfStudyRelatedSeries,"
    "NumberOfStudyRelatedInstances,ModalitiesInStudy"
)
_NON_IMAGE = {"SR", "PR", "KO", "SEG", "RTSTRUCT", "RTPLAN", "DOC"}


def viewer_requests(
    fed: Federation, peer: str, study_uid: str
) -> Iterator[tuple[str, list[tuple[str, str]], str]]:
    """The (path, params, Accept) the viewer sends to open a study and scroll its series: the
    study row, the series list, each series' instances, thumbnail and metadata, each image
    rendered (JPEG, quality 90, the header's window). Series and instances are listed through
    the proxy as they are found."""
    s = f"studies/{study_uid}"
    yield "studies", [("StudyInstanceUID", study_uid), ("includefield", VIEWER_INCLUDE)], JSON
    series = fed.proxy_json(peer, f"{s}/series", [("includefield", "NumberOfSeriesRelatedInstances")])
    for se in series:
        uid, modality = m.first(se, "0020000E"), m.first(se, "00080060")
        if not uid or modality in _NON_IMAGE:
            continue
        base = f"{s}/series/{uid}"
        yield f"{base}/thumbnail", [("viewport", "128,128")], "image/jpeg"
        for inst in fed.proxy_json(
            peer, f"{base}/instances", [("includefield", "PhotometricInterpretation")]
        ):
            sop = m.first(inst, "00080018")
            if not sop:
                continue
            frames = int(m.first(inst, "00280008") or "1") if m.first(inst, "00280008").isdigit() else 1
            if frames > 1:
                for f in range(1, frames + 1):
                    yield f"{base}/instances/{sop}/frames/{f}/rendered", [("quality", "90")], "image/jpeg"
            else:
                yield f"{base}/instances/{sop}/rendered", [("quality", "90")], "image/jpeg"
        yield f"{base}/metadata", [], JSON


class PrefetchWorker:
    """Background threads taking prefetch jobs from the queue (see the module docstring)."""

    def __init__(
        self,
        fed: Federation,
        db: Database,
        settings: FederationSettings,
        *,
        threads: int = 1,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.fed = fed
        self.db = db
        self.settings = settings
        self.threads = threads
        self.clock = clock
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        """Start the threads (idempotent)."""
        if self._workers:
            return
        self._stop.clear()
        for n in range(self.threads):
            t = threading.Thread(target=self._run, name=f"reuse-prefetch-{n}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self) -> None:
        """Stop the threads; a running job finishes its current request first."""
        self._stop.set()
        self._wake.set()
        for t in self._workers:
            t.join(30)
        self._workers.clear()

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_once()
            except Exception:  # the index away, a bug: log, keep the thread
                log.exception("prefetch worker round failed")
                ran = False
            if not ran:
                self._wake.wait(self.settings.prefetch_poll_seconds)
                self._wake.clear()

    def run_once(self) -> bool:
        """Take and run one due job; False when there was none."""
        now = self.clock()
        with self.db.write() as conn:
            job = sql.take_job(
                conn, self.node, now, now + timedelta(seconds=self.settings.prefetch_lease_seconds)
            )
        if job is None:
            return False
        try:
            result = self.fed.run_prefetch(job)
        except Exception as exc:
            retry = job["attempts"] < self.settings.prefetch_attempts
            delay = timedelta(seconds=30 * 2 ** (job["attempts"] - 1))
            with self.db.write() as conn:
                sql.job_finish(
                    conn,
                    job["id"],
                    self.node,
                    status=sql.STATE_PENDING if retry else sql.STATE_FAILED,
                    now=self.clock(),
                    error=str(exc),
                    retry_at=self.clock() + delay if retry else None,
                )
            log.warning("prefetch job %d failed (attempt %d): %s", job["id"], job["attempts"], exc)
            return True
        with self.db.write() as conn:
            sql.job_finish(conn, job["id"], self.node, status=sql.STATE_DONE, now=self.clock(), result=result)
        log.info("prefetch job %d done: %s", job["id"], _summary(result))
        return True


def _summary(result: dict[str, Any]) -> str:
    studies, requests, size = (
        len(result.get("studies", [])),
        result.get("requests", 0),
        result.get("bytes", 0),
    )
    return f"{studies} studies, {requests} requests, {size} bytes"
