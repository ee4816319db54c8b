"""The S3 upload queue: blobs stored locally are uploaded, verified, and only then removed locally.

Durability at each step (``[storage] backend = "s3"``):

1. A store is acknowledged after the local fsync and the index commit, as with the file store;
   :class:`UploadQueue` (an index hook) adds the blob's ``blob_uploads`` row in that same
   transaction, so a stored blob is never forgotten by the queue, whatever happens next.
2. :class:`Uploader` (a thread of ``pacs serve``) leases due rows, uploads each object with its
   ``Content-MD5`` (the server refuses a damaged body), then checks it (HEAD: size, and the ETag
   against the MD5), marks the row ``remote`` and commits; only after that commit is the local
   copy removed. A crash anywhere before leaves the local copy (and the row, queued or remote):
   the blob is readable throughout, and at worst uploaded twice.
3. A failed round (S3 down, refusing, timing out) puts the rows back with a backoff (initial,
   doubled each round, capped) and is logged once per step, not per row; the queue drains by
   itself when S3 answers again. A node killed mid-upload loses its leases after
   ``s3_lease_seconds`` (renewed every third of it while it uploads) and another node, or its
   successor, takes the rows; on PostgreSQL they are picked ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from pacs.blobstore.s3 import RemoteUnavailable, content_md5
from pacs.blobstore.tiered import TieredBlobStore
from pacs.config import StorageSettings
from pacs.errors import StorageUnavailable
from pacs.index import uploads as repo
from pacs.index.database import Database
from pacs.index.repo import BlobFacts
from pacs.model import InstanceRecord, Origin, StoreOutcome

log = logging.getLogger("pacs.uploads")

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


class UploadQueue:
    """The index hook that queues every newly kept blob, in its store transaction."""

    def __init__(self, clock: Clock = _now) -> None:
        self.clock = clock

    def instance_indexed(
        self, conn: Connection, record: InstanceRecord, blob: BlobFacts, origin: Origin, outcome: StoreOutcome
    ) -> None:
        """Queue the blob unless it is an identical resend's (removed again at once)."""
        if outcome is not StoreOutcome.DUPLICATE:
            repo.enqueue(conn, [blob.blob_key], self.clock())

    def index_cleared(self, conn: Connection) -> None:
        """Nothing: where blobs live does not depend on the index."""


class UploadProblem(Exception):
    """One blob could not be uploaded for a reason of its own (not an S3 outage)."""


@dataclass
class Round:
    """What one :meth:`Uploader.run_once` did."""

    taken: int = 0
    uploaded: int = 0
    bytes: int = 0
    dropped: int = 0
    failed: int = 0
    #: Why S3 could not be used in this round (the round stopped), else None.
    outage: str | None = None
    errors: list[str] = field(default_factory=list)


class Uploader:
    """Takes due rows of the queue, uploads, verifies, marks remote, removes the local copy."""

    def __init__(
        self,
        db: Database,
        store: TieredBlobStore,
        settings: StorageSettings,
        *,
        node: str | None = None,
        clock: Clock = _now,
        poll_seconds: float = 1.0,
    ) -> None:
        from pacs.services.commitment import node_name

        self.db, self.store, self.settings = db, store, settings
        self.node = node or node_name()
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.lease = timedelta(seconds=settings.s3_lease_seconds)
        self._pool = ThreadPoolExecutor(settings.s3_upload_concurrency, thread_name_prefix="s3-upload")
        self._held: set[int] = set()
        self._held_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Consecutive failed rounds (0: S3 healthy); the backoff step.
        self.step = 0

    # ------------------------------------------------------------------ one round

    def run_once(self, limit: int | None = None) -> Round:
        """Upload the rows due now (up to ``limit``, default four per upload slot)."""
        limit = limit or 4 * self.settings.s3_upload_concurrency
        now = self.clock()
        with self.db.write() as conn:
            rows = repo.take_due(conn, self.node, now, now + self.lease, limit)
        result = Round(taken=len(rows))
        if not rows:
            return result
        with self._held_lock:
            self._held.update(int(r["id"]) for r in rows)
        self._ensure_heartbeat()
        abort = threading.Event()
        try:
            outcomes = list(self._pool.map(lambda r: self._attempt(r, abort), rows))
        finally:
            with self._held_lock:
                self._held.difference_update(int(r["id"]) for r in rows)
        skipped = []
        for row, (what, detail) in zip(rows, outcomes, strict=True):
            if what == "uploaded":
                result.uploaded += 1
                result.bytes += int(detail or 0)
            elif what == "dropped":
                result.dropped += 1
            elif what == "outage":
                result.outage = result.outage or str(detail)
                skipped.append(int(row["id"]))
            elif what == "skipped":
                skipped.append(int(row["id"]))
            else:
                result.failed += 1
                result.errors.append(f"{row['blob_key']}: {detail}")
        self._settle(result, rows, skipped)
        return result

    def _attempt(self, row: dict[str, Any], abort: threading.Event) -> tuple[str, Any]:
        """One row: ("uploaded", bytes) | ("dropped", None) | ("outage"/"failed", why) | ("skipped", None)."""
        if abort.is_set() or self._stop.is_set():
            return "skipped", None
        try:
            return self._upload(row)
        except RemoteUnavailable as exc:
            abort.set()  # the others of this round would only wait out the same timeouts
            return "outage", str(exc)
        except StorageUnavailable as exc:
            abort.set()
            return "outage", f"the index: {exc}"
        except (UploadProblem, OSError) as exc:
            self._row_failed(row, str(exc) or type(exc).__name__)
            return "failed", str(exc)

    def _upload(self, row: dict[str, Any]) -> tuple[str, Any]:
        key, row_id = str(row["blob_key"]), int(row["id"])
        path = self.store.path(key)
        if path is None:
            return self._without_local_copy(key, row_id)
        size, md5 = content_md5(path)
        self.store.remote.put_file(key, path, size, md5)
        found = self.store.remote.head(key)
        if found is None or found[0] != size:
            raise UploadProblem(f"uploaded {size} bytes but S3 has {found[0] if found else 'nothing'}")
        etag = found[1].lower()
        if "-" not in etag and etag != md5:  # a single-part upload's ETag is its MD5
            raise UploadProblem(f"S3 ETag {etag} is not the MD5 {md5} of what was sent")
        with self.db.write() as conn:
            mine = repo.mark_remote(conn, row_id, self.node, size, md5, self.clock())
        if mine:
            self.store.local.delete(key)  # only now: the object is verified and that is committed
        log.debug("uploaded blob %s bytes=%d md5=%s", key, size, md5)
        return "uploaded", size

    def _without_local_copy(self, key: str, row_id: int) -> tuple[str, Any]:
        """No local copy: deleted (replaced) since it was queued, or uploaded by a node that died
        before marking it (S3 has it with the right size)."""
        found = self.store.remote.head(key)
        with self.db.write() as conn:
            facts = repo.indexed_blob(conn, key)
            if facts is None:
                repo.forget(conn, row_id, self.node)
                return "dropped", None
            if found is not None and found[0] == facts[0]:
                etag = found[1] if len(found[1]) == 32 else None  # a multipart ETag is no MD5
                repo.mark_remote(conn, row_id, self.node, found[0], etag, self.clock())
                return "uploaded", 0
        raise UploadProblem(f"no local copy of blob {key}, and S3 has {found[0] if found else 'none'}")

    def _row_failed(self, row: dict[str, Any], why: str) -> None:
        wait = self._backoff(int(row["attempts"]) + 1)
        log.error("upload of blob %s failed (attempt %d): %s", row["blob_key"], int(row["attempts"]) + 1, why)
        try:
            with self.db.write() as conn:
                repo.mark_failed(conn, int(row["id"]), self.node, why, self.clock() + wait)
        except StorageUnavailable:
            pass  # the lease runs out by itself

    def _settle(self, result: Round, rows: list[dict[str, Any]], skipped: list[int]) -> None:
        """Back off after an outage (rows back with the step's wait, one log line), or reset."""
        if result.outage is None:
            if self.step:
                log.warning("S3 answers again after %d failed round(s): uploading", self.step)
            self.step = 0
            if result.uploaded:
                log.info("uploaded %d blob(s) to S3, %d bytes", result.uploaded, result.bytes)
            return
        self.step += 1
        wait = self._backoff(self.step)
        try:
            with self.db.write() as conn:
                repo.release(conn, skipped, self.node, self.clock() + wait)
                waiting = repo.counts(conn).get(repo.QUEUED, 0)
        except StorageUnavailable:
            waiting = -1
        log.warning(
            "S3 unavailable (%s): %s upload(s) waiting, stored blobs stay local; next try in %.1f s",
            result.outage,
            waiting if waiting >= 0 else "?",
            wait.total_seconds(),
        )

    def _backoff(self, step: int) -> timedelta:
        s = self.settings
        seconds = s.s3_retry_initial_seconds * 2 ** min(step - 1, 30)
        return timedelta(seconds=min(s.s3_retry_max_seconds, seconds))

    # ------------------------------------------------------------------ heartbeat and thread

    def _ensure_heartbeat(self) -> None:
        if not any(t.name == "s3-lease" and t.is_alive() for t in self._threads):
            beat = threading.Thread(target=self._heartbeat, name="s3-lease", daemon=True)
            self._threads.append(beat)
            beat.start()

    def _heartbeat(self) -> None:
        """Renew the leases of the rows being uploaded, every third of the lease."""
        while not self._stop.wait(self.lease.total_seconds() / 3):
            with self._held_lock:
                ids = list(self._held)
            if not ids:
                continue
            try:
                with self.db.write() as conn:
                    repo.renew(conn, ids, self.node, self.clock() + self.lease)
            except StorageUnavailable as exc:
                log.warning("cannot renew upload leases: %s", exc)

    def start(self) -> None:
        """Run rounds on a background thread until :meth:`stop` (SQLite: leases cleared first)."""
        if self.db.dialect == "sqlite":
            with self.db.write() as conn:
                repo.release_all(conn)  # this process is the only one that uploads
        worker = threading.Thread(target=self._run, name="s3-uploader", daemon=True)
        self._threads.append(worker)
        worker.start()

    def wake(self) -> None:
        """Look for due rows now."""
        self._wake.set()

    def _run(self) -> None:
        index_down = False
        while not self._stop.is_set():
            try:
                result = self.run_once()
                index_down = False
            except StorageUnavailable as exc:
                if not index_down:
                    log.warning("upload queue: %s", exc)
                index_down = True
                self._pause(self.poll_seconds * 5)
                continue
            except Exception:
                log.exception("upload queue: unexpected error")
                self._pause(self.poll_seconds * 5)
                continue
            if result.outage is not None:
                self._pause(self._backoff(self.step).total_seconds())
            elif result.taken == 0 or result.failed == result.taken:
                self._pause(self.poll_seconds)

    def _pause(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def stop(self) -> None:
        """Stop the thread after its current round."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=self.settings.s3_read_timeout + self.settings.s3_connect_timeout + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)
