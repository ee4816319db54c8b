"""``pacs storage migrate --to s3 | file``: move every blob between the disk and the bucket.

Both directions are resumable (the state is in ``blob_uploads``, committed blob by blob: run
again to continue) and verify before they delete:

- ``to_s3`` queues every local blob that is not remote yet and drains the queue in the
  foreground with the same :class:`~pacs.services.uploads.Uploader` as ``pacs serve`` (upload with
  Content-MD5, HEAD size + ETag, mark remote, then remove the local copy). A local copy left
  beside a remote object by a crash is removed once the object's size is checked.
- ``to_file`` copies every remote object back under its own key (temporary file, fsync, link),
  checks its SHA-256 against the index (its size for an unindexed blob), forgets the row, and only
  then deletes the object.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pacs.blobstore.s3 import RemoteUnavailable
from pacs.blobstore.tiered import TieredBlobStore
from pacs.index import uploads as repo
from pacs.index.database import Database
from pacs.services.uploads import Uploader

log = logging.getLogger("pacs.uploads")

#: Called with (done, total) as the migration goes.
Progress = Callable[[int, int], None]

_CHUNK = 8 << 20


@dataclass
class MigrationReport:
    """What a migration did; ``complete`` when nothing is left to move."""

    moved: int = 0
    bytes: int = 0
    already: int = 0
    failed: list[str] = field(default_factory=list)
    stopped: str | None = None  # why it stopped before the end (S3 unavailable)

    @property
    def complete(self) -> bool:
        """True when every blob is where it was asked to be."""
        return not self.failed and self.stopped is None


def to_s3(db: Database, store: TieredBlobStore, uploader: Uploader, progress: Progress) -> MigrationReport:
    """Queue and upload every local blob (see the module docstring)."""
    report = MigrationReport()
    batch: list[str] = []

    def flush() -> None:
        with db.write() as conn:
            states = repo.states(conn, batch)
            repo.enqueue(conn, [k for k in batch if states.get(k) != repo.REMOTE], datetime.now(UTC))
        for key in (k for k in batch if states.get(k) == repo.REMOTE):
            _drop_local_copy(store, key)
            report.already += 1
        batch.clear()

    for key in store.local.keys():
        batch.append(key)
        if len(batch) >= 500:
            flush()
    flush()
    with db.write() as conn:
        total = repo.due_now(conn, datetime.now(UTC))
    progress(0, total)
    while True:
        done = uploader.run_once()
        report.moved += done.uploaded
        report.bytes += done.bytes
        report.failed += done.errors
        progress(report.moved + len(report.failed), total)
        if done.outage is not None:
            report.stopped = f"S3 unavailable: {done.outage}"
            break
        if done.taken == 0:
            break
    return report


def _drop_local_copy(store: TieredBlobStore, key: str) -> None:
    """A local copy beside its remote object (a crash after the upload was marked): removed if the
    object has the same size."""
    path = store.path(key)
    if path is None:
        return
    found = store.remote.head(key)
    if found is not None and found[0] == path.stat().st_size:
        store.local.delete(key)


def to_file(db: Database, store: TieredBlobStore, progress: Progress) -> MigrationReport:
    """Copy every remote blob back to the disk, verified, then delete the object."""
    report = MigrationReport()
    with db.read() as conn:
        total = repo.counts(conn).get(repo.REMOTE, 0)
    progress(0, total)
    after = 0
    while True:
        with db.read() as conn:
            rows = repo.remote_rows(conn, after, 100)
        if not rows:
            break
        for row in rows:
            after = int(row["id"])
            key = str(row["blob_key"])
            try:
                report.bytes += _download(db, store, key, int(row["id"]))
                report.moved += 1
            except RemoteUnavailable as exc:
                report.stopped = f"S3 unavailable: {exc}"
                return report
            except FileNotFoundError:
                report.failed.append(f"{key}: neither a local copy nor an object in S3")
            except (OSError, ValueError) as exc:
                report.failed.append(f"{key}: {exc}")
            progress(report.moved + len(report.failed), total)
    return report


def _download(db: Database, store: TieredBlobStore, key: str, row_id: int) -> int:
    """One blob back to the disk; returns the bytes copied (0 if a local copy was there)."""
    with db.read() as conn:
        facts = repo.indexed_blob(conn, key)
    copied = 0
    if store.path(key) is None:
        with store.remote.open(key) as src, store.local.writer(key) as w:
            digest = hashlib.sha256()
            while chunk := src.read(_CHUNK):
                w.write(chunk)
                digest.update(chunk)
            if facts is not None and (w.size, digest.hexdigest()) != facts:
                raise ValueError(f"the object ({w.size} bytes) is not the file the index has; kept in S3")
            w.commit()
            copied = w.size
    with db.write() as conn:
        repo.forget(conn, row_id)
    store.remote.delete(key)
    return copied
