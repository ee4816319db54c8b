"""The archive service: store, search, open, reindex and verify.

Every edge stores through this service, so the same validation, durability and duplicate
policy apply everywhere. STOW-RS and ``pacs import`` hand a Part-10 stream to :meth:`Archive.store`:
parse and validate the header -> write the Part-10 file (our file meta, the dataset bytes exactly
as received) to a temporary blob -> fsync + atomic rename -> index rows and an event in one
transaction. C-STORE receives straight into the temporary blob (:meth:`Archive.incoming`, our file
meta first) and then :meth:`Archive.store_incoming` does the same checks without a second copy.
The fsync and rename run on a worker thread while the index rows are written; the transaction
commits only after the blob is durable. Success is returned only after all of that; any failure
removes what was written.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from pydicom.dataset import FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from sqlalchemy import Connection
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from pacs import limits
from pacs.blobstore import BlobStore, BlobWriter, CheckedStore
from pacs.dicom.extract import extract, read_header
from pacs.dicom.meta import encode_file_meta
from pacs.dicom.text import is_valid_uid
from pacs.errors import InvalidInstance, NotFound, StorageUnavailable, TooLarge
from pacs.index import repo, uploads
from pacs.index.database import Database, unavailable
from pacs.index.sql import run_query
from pacs.model import (
    InstanceRecord,
    InstanceVersion,
    Level,
    Origin,
    StoredInstance,
    StoreOutcome,
    StoreResult,
)
from pacs.query import Query

log = logging.getLogger("pacs.archive")

_COPY_CHUNK = 1 << 20


class IndexHook(Protocol):
    """Something kept in step with the index inside the store transaction (e.g. appraisal lines)."""

    def instance_indexed(
        self,
        conn: Connection,
        record: InstanceRecord,
        blob: repo.BlobFacts,
        origin: Origin,
        outcome: StoreOutcome,
    ) -> None:
        """Called after an instance row is written, on the same connection and transaction."""

    def index_cleared(self, conn: Connection) -> None:
        """Called when the index is cleared for a reindex, in the same transaction."""


@dataclass
class ReindexReport:
    """What ``reindex`` did."""

    indexed: int = 0
    #: Files indexed as superseded versions of an instance (two or more files, one SOP Instance
    #: UID: the newest by reception time, the file's modification time, is the current one).
    versions: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class VerifyReport:
    """What ``verify`` found; ``ok`` when nothing is missing, corrupt or unindexed."""

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    unindexed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the index and the blobs agree."""
        return not (self.missing or self.corrupt or self.unindexed)


class Archive:
    """Use cases over the index (SQL) and the blob store."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        duplicate_policy: str = "keep-versions",
        max_instance_bytes: int = 0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.duplicate_policy = duplicate_policy
        #: Largest Part-10 file stored (0: no limit): C-STORE stops receiving past it
        #: (pacs.scp.receive), :meth:`store` refuses a longer stream before writing anything.
        self.max_instance_bytes = max_instance_bytes
        self.clock = clock
        #: Hooks run in the store transaction (a few cheap statements each; see IndexHook).
        self.index_hooks: list[IndexHook] = []
        #: fsync + rename of new blobs, overlapped with parsing and indexing (threads: the
        #: syscalls release the GIL).
        self._background = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-sync")

    def check_size(self, size: int) -> None:
        """Raise :class:`TooLarge` for an instance of ``size`` bytes over ``max_instance_bytes``."""
        if self.max_instance_bytes and size > self.max_instance_bytes:
            raise TooLarge(
                f"the instance is over the archive's limit of {self.max_instance_bytes >> 20} MiB"
                " ([storage] max_instance_mb)"
            )

    def close(self) -> None:
        """Stop the blob-sync workers (the database is closed by its owner)."""
        self._background.shutdown(wait=True)

    def read(self) -> AbstractContextManager[Connection]:
        """A read-only transaction (``Database.read``: an unreachable index is StorageUnavailable)."""
        return self.db.read()

    # ------------------------------------------------------------------ store

    def store(
        self,
        stream: BinaryIO,
        origin: Origin,
        *,
        expected_sop_instance_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
    ) -> StoreResult:
        """Store one Part-10 stream (preamble, file meta, dataset) durably and index it.

        ``stream`` must be seekable. For C-STORE, ``expected_*`` are the Affected SOP UIDs of
        the request; a dataset that disagrees is refused.
        Raises :class:`InvalidInstance`, :class:`~pacs.errors.DuplicateInstance` or
        :class:`StorageUnavailable`; nothing is left behind when it does.
        """
        self.check_size(stream.seek(0, 2))
        stream.seek(0)
        meta, offset = _split_part10(stream)
        ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
        if not ts:
            raise InvalidInstance("file meta has no Transfer Syntax UID")
        if not is_valid_uid(ts):
            raise InvalidInstance(f"file meta has an invalid Transfer Syntax UID {ts!r}")
        if ts == limits.DEFLATED:
            limits.check_deflated(stream, offset)
        stream.seek(0)
        header = read_header(stream)
        record = extract(header, ts)
        _check_expected(record, expected_sop_instance_uid, expected_sop_class_uid)
        source_ae = origin.calling_ae or str(getattr(meta, "SourceApplicationEntityTitle", "") or "")
        head = encode_file_meta(record.sop_class_uid, record.sop_instance_uid, ts, source_ae)
        try:
            with self.blobs.writer() as writer:
                whole = hashlib.sha256(head)
                writer.write(head)
                stream.seek(offset)
                while chunk := stream.read(_COPY_CHUNK):
                    writer.write(chunk)
                    whole.update(chunk)
                # The data set's own hash only if this UID is already stored (repo.store_instance).
                facts = dict(size=writer.size, sha256=whole.hexdigest(), dataset_sha256=None)
                return self._commit(writer, record, facts, origin, ts)
        except OSError as exc:
            if unavailable := _unavailable(exc):
                raise unavailable from exc
            raise

    def incoming(self) -> Incoming:
        """Start receiving an instance straight into a new blob (C-STORE); see :class:`Incoming`."""
        try:
            return Incoming(self.blobs.writer())
        except OSError as exc:
            if unavailable := _unavailable(exc):
                raise unavailable from exc
            raise

    def store_incoming(
        self,
        incoming: Incoming,
        origin: Origin,
        *,
        expected_sop_instance_uid: str,
        expected_sop_class_uid: str,
    ) -> StoreResult:
        """Validate, commit and index an instance received through :meth:`incoming`.

        The same checks as :meth:`store`: the header must parse and its UIDs must be the
        request's (which the file meta was built from). Nothing is left behind on failure.
        """
        synced: Future[None] | None = None
        try:
            if incoming.meta is None:
                raise InvalidInstance("the data set did not arrive")
            sop_class, sop_instance, ts = incoming.meta
            path = incoming.flushed_path()
            # Alone, the blob's fsync runs on a worker while we parse and index. When other
            # writers hold the index (several associations), it is made durable inline before
            # queueing for the index: no thread hand-offs, and the CPU is busy anyway.
            inline = self.db.write_lock_busy()
            if not inline:
                synced = self._background.submit(incoming.writer.sync)
            with open(path, "rb") as fh:
                header = read_header(fh, dataset_at=(incoming.dataset_offset, ts))
            record = extract(header, ts)
            _check_expected(record, expected_sop_instance_uid, expected_sop_class_uid)
            if (record.sop_instance_uid, record.sop_class_uid) != (sop_instance, sop_class):
                raise InvalidInstance("the data set's SOP UIDs differ from the request's")
            return self._commit(incoming.writer, record, incoming.facts(), origin, ts, synced, inline=inline)
        except OSError as exc:
            if unavailable := _unavailable(exc):
                raise unavailable from exc
            raise
        finally:
            if synced is not None:
                _settle(synced.result)  # never close the file under a running fsync
            incoming.abort()

    def _commit(
        self,
        writer: BlobWriter,
        record: InstanceRecord,
        facts: dict[str, Any],
        origin: Origin,
        ts: str,
        synced: Future[None] | None = None,
        *,
        inline: bool = False,
    ) -> StoreResult:
        """Make a fully written blob durable, then index it (duplicates are settled in the index
        transaction: an identical resend's new blob is removed again, nothing else changes).

        The fsync and rename run on a worker thread while the index rows are written (``inline``:
        here, first); the transaction commits only once the blob is durable under its key.
        """
        blob = repo.BlobFacts(blob_key=writer.key, received_at=self.clock(), **facts)  # type: ignore[arg-type]
        if inline:
            try:
                writer.commit()
            except BaseException:
                _settle(lambda: self.blobs.delete(writer.key))  # named, maybe, but not durable
                raise
            indexed = self._index(record, blob, origin)
        else:

            def publish() -> str:
                if synced is not None:
                    synced.result()
                return writer.commit()

            published = self._background.submit(publish)
            try:
                indexed = self._index(record, blob, origin, ready=published.result)
            finally:
                _settle(published.result)
        outcome = indexed.outcome
        if indexed.to_delete:
            self.blobs.delete(indexed.to_delete)
        log.info(
            "%s instance sop=%s series=%s study=%s ts=%s bytes=%d from=%s@%s",
            outcome.value,
            record.sop_instance_uid,
            record.series_instance_uid,
            record.study_instance_uid,
            ts,
            blob.size,
            origin.calling_ae,
            origin.address,
        )
        if indexed.version is not None:
            v = indexed.version
            log.info(
                "new version of instance sop=%s kept (serving the %s one): sha256 %s -> %s, bytes %s -> %s,"
                " ts %s -> %s, from %s -> %s",
                record.sop_instance_uid,
                "newly received" if v["served"] == "new" else "previously stored",
                v["old_sha256"][:16],
                v["new_sha256"][:16],
                v["old_size"],
                v["new_size"],
                v["old_transfer_syntax_uid"],
                v["new_transfer_syntax_uid"],
                v["old_calling_ae"] or "-",
                v["new_calling_ae"] or "-",
            )
        return self._result(outcome, record, facts)

    def _index(
        self,
        record: InstanceRecord,
        blob: repo.BlobFacts,
        origin: Origin,
        ready: Callable[[], object] = lambda: None,
    ) -> repo.Indexed:
        """Index a blob in one transaction; ``ready`` returns once the blob is durable (it is
        called before the commit). On failure the blob is removed (after ``ready``)."""

        def drop() -> None:
            _settle(ready)
            self.blobs.delete(blob.blob_key)

        if self.db.write_lock_busy():
            # Others are writing: make the blob durable before queueing for the lock, so that
            # the lock is never held through an fsync (with one writer they overlap instead).
            _settle(ready)

        def job(conn: Connection) -> repo.Indexed:
            indexed = repo.store_instance(
                conn,
                record,
                blob,
                origin,
                policy=self.duplicate_policy,
                dataset_digest=lambda old_key: self._digests(blob.blob_key, old_key, ready),
            )
            for hook in self.index_hooks:
                hook.instance_indexed(conn, record, blob, origin, indexed.outcome)
            ready()  # the blob is durable under its key before anything that names it commits
            return indexed

        for attempt in (1, 2):
            try:
                return self.db.group_write(job)
            except IntegrityError:
                # A concurrent association indexed (or superseded) the same instance first: look again.
                if attempt == 2:
                    drop()
                    raise
            except DataError as exc:  # a value the database refuses: the instance's fault, not ours
                drop()
                raise InvalidInstance(f"a header value cannot be indexed: {exc.orig or exc}") from exc
            except DBAPIError as exc:
                drop()
                raise unavailable(exc) from exc
            except BaseException:
                drop()
                raise
        raise AssertionError("unreachable")

    @staticmethod
    def _result(outcome: StoreOutcome, record: InstanceRecord, facts: dict[str, Any]) -> StoreResult:
        return StoreResult(
            outcome=outcome,
            sop_class_uid=record.sop_class_uid,
            sop_instance_uid=record.sop_instance_uid,
            study_instance_uid=record.study_instance_uid,
            series_instance_uid=record.series_instance_uid,
            size=facts["size"],
            sha256=facts["sha256"],
        )

    def store_bytes(self, data: bytes, origin: Origin) -> StoreResult:
        """Store a Part-10 file held in memory (STOW-RS parts)."""
        return self.store(BytesIO(data), origin)

    def store_file(self, path: Path, origin: Origin) -> StoreResult:
        """Store a Part-10 file from disk (``pacs import``)."""
        with open(path, "rb") as fh:
            return self.store(fh, origin)

    # ------------------------------------------------------------------ read side

    def search(self, query: Query) -> list[dict[str, Any]]:
        """Run a C-FIND / QIDO-RS query: ``{keyword: value}`` per match."""
        with self.db.read() as conn:
            return run_query(conn, query)

    def instances(
        self,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[StoredInstance]:
        """Stored instances under a study, series or single instance; raises NotFound if none."""
        with self.db.read() as conn:
            found = repo.stored_instances(conn, study_instance_uid, series_instance_uid, sop_instance_uid)
        if not found:
            what = sop_instance_uid or series_instance_uid or study_instance_uid or "anything"
            raise NotFound(f"no stored instances for {what}")
        return found

    def open(self, instance: StoredInstance) -> BinaryIO:
        """Open the stored Part-10 bytes of an instance."""
        try:
            return self.blobs.open(instance.blob_key)
        except FileNotFoundError:
            raise NotFound(
                f"the file of instance {instance.sop_instance_uid} is missing from storage"
            ) from None

    def versions(self, sop_instance_uid: str) -> list[InstanceVersion]:
        """Every kept version of an instance, newest first (the current one, which is served, first).

        Raises NotFound for an instance that is not stored.
        """
        with self.db.read() as conn:
            found = repo.versions_of(conn, sop_instance_uid)
        if not found:
            raise NotFound(f"no stored instance {sop_instance_uid}")
        return found

    def open_version(self, sop_instance_uid: str, sha256: str) -> tuple[InstanceVersion, BinaryIO]:
        """One version of an instance, named by the SHA-256 of its Part-10 file, and its bytes
        (the newest of that hash if the same file was received twice). Raises NotFound."""
        wanted = sha256.strip().lower()
        for version in self.versions(sop_instance_uid):
            if version.sha256 == wanted:
                try:
                    return version, self.blobs.open(version.blob_key)
                except FileNotFoundError:
                    raise NotFound(
                        f"the file of version {wanted} of instance {sop_instance_uid} is missing from storage"
                    ) from None
        raise NotFound(f"instance {sop_instance_uid} has no version with SHA-256 {wanted}")

    def path(self, instance: StoredInstance) -> Path | None:
        """The file path of an instance, where the blob store has one."""
        return self.blobs.path(instance.blob_key)

    def count(self, level: Level) -> int:
        """Number of indexed patients, studies, series or instances."""
        with self.db.read() as conn:
            return repo.count(conn, level)

    def record_event(self, kind: str, origin: Origin, **fields: Any) -> None:
        """Append an event (association, query, retrieve) to the event log."""
        with self.db.write() as conn:
            repo.add_event(conn, kind, self.clock(), origin, **fields)

    # ------------------------------------------------------------------ maintenance

    def reindex(self, progress: Callable[[int], None] | None = None) -> ReindexReport:
        """Rebuild the patient/study/series/instance index from the blobs alone.

        Every readable file is indexed: several files of one SOP Instance UID (versions kept
        by ``keep-versions``, whatever the policy is now) become the instance, from the newest
        by reception time, and its superseded versions.
        """
        report = ReindexReport()
        with self.db.write() as conn:
            repo.clear(conn)
            for hook in self.index_hooks:
                hook.index_cleared(conn)
        batch: list[tuple[InstanceRecord, repo.BlobFacts, Origin]] = []
        for key in self.blobs.keys():
            try:
                batch.append(self._facts_from_blob(key))
            except (InvalidInstance, OSError) as exc:
                report.failed.append((key, str(exc)))
                log.warning("reindex: cannot index blob %s: %s", key, exc)
            if len(batch) >= 200:
                report.indexed += self._index_batch(batch, report)
                batch = []
                if progress:
                    progress(report.indexed)
        report.indexed += self._index_batch(batch, report)
        return report

    def _index_batch(
        self, batch: list[tuple[InstanceRecord, repo.BlobFacts, Origin]], report: ReindexReport
    ) -> int:
        done = 0
        with self.db.write() as conn:
            for record, blob, origin in batch:
                try:
                    with conn.begin_nested():
                        outcome = repo.store_instance(
                            conn,
                            record,
                            blob,
                            origin,
                            policy="keep-versions",
                            event=False,
                            keep_identical=True,
                        ).outcome
                        for hook in self.index_hooks:
                            hook.instance_indexed(conn, record, blob, origin, outcome)
                    done += outcome is StoreOutcome.STORED
                    report.versions += outcome is StoreOutcome.VERSIONED
                except Exception as exc:
                    report.failed.append((blob.blob_key, str(exc)))
        return done

    def _digests(self, new_key: str, old_key: str | None, ready: Callable[[], object]) -> tuple[str, str]:
        """SHA-256 of the data sets (after the file meta) of a new blob and of an old one."""
        ready()  # the new blob is readable under its key once published
        return self._dataset_digest(new_key), self._dataset_digest(old_key) if old_key else ""

    def _dataset_digest(self, key: str) -> str:
        with self.blobs.open(key) as fh:
            _meta, offset = _split_part10(fh)
            fh.seek(offset)
            return hashlib.file_digest(fh, "sha256").hexdigest()  # type: ignore[arg-type]  # BinaryIO has readinto

    def _facts_from_blob(self, key: str) -> tuple[InstanceRecord, repo.BlobFacts, Origin]:
        with self.blobs.open(key) as fh:
            meta, offset = _split_part10(fh)
            ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
            fh.seek(0)
            record = extract(read_header(fh), ts, strict_uids=False)  # what is archived stays indexed
            fh.seek(0)
            whole, dataset_hash, size = hashlib.sha256(), hashlib.sha256(), 0
            pos = 0
            while chunk := fh.read(_COPY_CHUNK):
                whole.update(chunk)
                if pos + len(chunk) > offset:
                    dataset_hash.update(chunk[max(0, offset - pos) :])
                pos += len(chunk)
                size += len(chunk)
        path = self.blobs.path(key)
        received = datetime.fromtimestamp(path.stat().st_mtime, UTC) if path else self.clock()
        origin = Origin(
            calling_ae=str(getattr(meta, "SourceApplicationEntityTitle", "") or ""), protocol="reindex"
        )
        blob = repo.BlobFacts(key, size, whole.hexdigest(), dataset_hash.hexdigest(), received)
        return record, blob, origin

    def verify(self, progress: Callable[[int], None] | None = None, *, deep: bool = False) -> VerifyReport:
        """Check every indexed file (instances and their superseded versions) exists with its
        recorded SHA-256, and every blob is indexed. A store that checks its blobs itself (S3:
        size by HEAD) re-hashes remote ones only when ``deep``."""
        report = VerifyReport()
        indexed: set[str] = set()
        with self.db.read() as conn:
            facts = list(uploads.iter_indexed_blobs(conn))
        for sop, key, size, sha in facts:
            indexed.add(key)
            report.checked += 1
            if progress and report.checked % 500 == 0:
                progress(report.checked)
            if isinstance(self.blobs, CheckedStore):
                state = self.blobs.check(key, size, sha, deep=deep)
                if state != "ok":
                    (report.missing if state == "missing" else report.corrupt).append(sop)
                continue
            try:
                with self.blobs.open(key) as fh:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()  # type: ignore[arg-type]  # BinaryIO has readinto
            except FileNotFoundError:
                report.missing.append(sop)
                continue
            if digest != sha:
                report.corrupt.append(sop)
        report.unindexed = [k for k in self.blobs.keys() if k not in indexed]
        return report


def _settle(wait: Callable[[], object]) -> None:
    """Wait for background work whose failure is already being handled (or reported) elsewhere."""
    try:
        wait()
    except Exception:
        pass


def _check_expected(record: InstanceRecord, sop_instance_uid: str | None, sop_class_uid: str | None) -> None:
    """Refuse a data set whose SOP UIDs differ from those its request named."""
    if sop_instance_uid and record.sop_instance_uid != sop_instance_uid.strip():
        raise InvalidInstance(
            f"dataset SOP Instance UID {record.sop_instance_uid} differs from the request's "
            f"{sop_instance_uid}"
        )
    if sop_class_uid and record.sop_class_uid != sop_class_uid.strip():
        raise InvalidInstance(
            f"dataset SOP Class UID {record.sop_class_uid} differs from the request's {sop_class_uid}"
        )


def _unavailable(exc: OSError) -> StorageUnavailable | None:
    """A full or read-only disk is the archive's condition (0xA700 / 503); None for other errors."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return StorageUnavailable(f"cannot write to the archive: {exc.strerror}")
    return None


class Incoming:
    """An instance arriving over the network, written straight into a new blob (one copy).

    The receiver calls :meth:`start` with the request's SOP UIDs and transfer syntax as soon as
    it knows them (our file meta is written from those: :meth:`Archive.store_incoming` then
    checks the data set against them), then :meth:`write` with the data set bytes as they come.
    The file's SHA-256 is computed on the way, so nothing is read twice (the data set's own
    hash only if its UID turns out to be stored already: see ``repo.store_instance``).
    """

    def __init__(self, writer: BlobWriter) -> None:
        self.writer = writer
        path = writer.readable_path()
        if path is None:
            writer.abort()
            raise TypeError("this blob store cannot receive in place")
        self.path: Path = path
        self.meta: tuple[str, str, str] | None = None
        self.dataset_offset = 0
        self._whole = hashlib.sha256()

    def start(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str) -> None:
        """Write the file meta. Raises :class:`InvalidInstance` for UIDs that cannot name a file."""
        uids = (sop_class_uid.strip(), sop_instance_uid.strip(), transfer_syntax.strip())
        if not all(is_valid_uid(u) for u in uids):
            raise InvalidInstance(f"invalid UID in the request: {uids}")
        if uids[2] == limits.DEFLATED:
            raise InvalidInstance("a deflated data set is checked before it is stored, not received in place")
        head = encode_file_meta(*uids, source_ae)
        self.writer.write(head)
        self._whole.update(head)
        self.meta = uids
        self.dataset_offset = len(head)

    def write(self, data: bytes | memoryview) -> None:
        """Append data set bytes."""
        self.writer.write(data)
        self._whole.update(data)

    def flushed_path(self) -> Path:
        """The file being written, with everything written so far readable there."""
        self.writer.readable_path()  # flushes
        return self.path

    def facts(self) -> dict[str, Any]:
        """Size and hashes of what was written."""
        return dict(size=self.writer.size, sha256=self._whole.hexdigest(), dataset_sha256=None)

    def abort(self) -> None:
        """Discard the blob unless it was committed."""
        self.writer.abort()


def _split_part10(stream: BinaryIO) -> tuple[FileMetaDataset, int]:
    """Read the preamble and file meta; returns the meta and the offset of the dataset."""
    stream.seek(0)
    try:
        read_preamble(stream, force=False)  # type: ignore[arg-type]
        meta = _read_file_meta_info(stream)  # type: ignore[arg-type]
        for elem in meta:  # decode now: a bad value or VR fails here, not later (lazily)
            str(elem.value)
    except Exception as exc:
        raise InvalidInstance(f"not a DICOM Part-10 stream: {exc}") from exc
    return meta, stream.tell()
