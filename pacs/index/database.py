"""The one way services reach the index: read and write transactions and group commit.

Every service (archive, appraisal, audit, auth) takes a :class:`Database` instead of an engine,
so connection handling and the mapping of an unreachable database to
:class:`~pacs.errors.StorageUnavailable` (C-STORE/C-FIND 0xA700, HTTP 503) exist once.

- :meth:`Database.read` — a consistent snapshot for the duration of the block.
- :meth:`Database.write` — one write transaction (on SQLite ``BEGIN IMMEDIATE`` behind the
  process-wide write lock, see :mod:`pacs.index.engine`).
- :meth:`Database.group_write` — the store path's transaction: concurrent stores share one
  ``BEGIN ... COMMIT`` (:class:`GroupCommit`) on write connections kept between instances.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from pacs.errors import StorageUnavailable
from pacs.index.engine import release_write_lock, write_lock_busy

T = TypeVar("T")

#: Errors that mean "the database cannot be reached or used now", not "this statement is wrong".
UNAVAILABLE = (OperationalError, InterfaceError)


def unavailable(exc: Exception) -> StorageUnavailable:
    """The domain error for a database that cannot be reached (with the driver's reason)."""
    return StorageUnavailable(f"the index is not available: {getattr(exc, 'orig', None) or exc}")


class Database:
    """Transactions on one engine; the only object services use to reach SQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: Idle write connections of the store path, kept checked out (see _kept_write).
        self._kept: list[Connection] = []
        self._kept_lock = threading.Lock()
        self._group = GroupCommit(self._kept_write)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction; an unreachable database is :class:`StorageUnavailable`."""
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except UNAVAILABLE as exc:
            raise unavailable(exc) from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed at the end of the block (rolled back on error)."""
        try:
            with self.engine.connect().execution_options(pacs_write=True) as conn, conn.begin():
                yield conn
        except UNAVAILABLE as exc:
            raise unavailable(exc) from exc

    def group_write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(conn)`` in a write transaction possibly shared with concurrent callers.

        ``work`` runs in its own savepoint when shared; its exceptions reach only its caller.
        Database errors are raised as SQLAlchemy raised them (the store path tells an
        instance's bad value from an outage); see :class:`GroupCommit`.
        """
        result: T = self._group.run(work)
        return result

    def write_lock_busy(self) -> bool:
        """True when another writer holds the SQLite write lock now (always False elsewhere)."""
        return write_lock_busy(self.engine)

    def close(self) -> None:
        """Close the kept store connections and the engine's pool."""
        with self._kept_lock:
            conns, self._kept = self._kept, []
        for conn in conns:
            conn.close()
        self.engine.dispose()

    @contextmanager
    def _kept_write(self) -> Iterator[Connection]:
        """:meth:`write` on a connection kept between transactions: a pool checkout and checkin
        (with its events, and on PostgreSQL a ping) per instance was a quarter of a C-STORE's
        Python time. A connection that saw an error is closed rather than kept."""
        with self._kept_lock:
            conn = self._kept.pop() if self._kept else None
        if conn is None:
            conn = self.engine.connect().execution_options(pacs_write=True)
        ok = False
        try:
            with conn.begin():
                yield conn
            ok = True
        finally:
            release_write_lock(conn)
            if ok and not conn.invalidated:
                with self._kept_lock:
                    self._kept.append(conn)
            else:
                conn.close()


class _Job:
    __slots__ = ("done", "error", "result", "run")

    def __init__(self, run: Callable[[Connection], Any]) -> None:
        self.run = run
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommit:
    """Index transactions of concurrent stores committed together (leader and followers).

    Each store's statements run in its own savepoint, but the batch waiting at that moment
    shares one BEGIN ... COMMIT: on SQLite one write lock hand-over and one WAL fsync for all of
    them instead of one each, which was the limit with several associations at once (the
    COMMIT's fsync is taken under the write lock). A store's failure rolls back its savepoint
    only; a failed COMMIT fails every store of the batch. A store alone goes through at once.
    """

    def __init__(self, transaction: Callable[[], Any]) -> None:
        self._transaction = transaction  # a context manager factory yielding a Connection
        self._cv = threading.Condition()
        self._queue: list[_Job] = []
        self._leading = False

    def run(self, work: Callable[[Connection], Any]) -> Any:
        """Run ``work(conn)`` in a transaction, possibly shared; its result, or its exception."""
        job = _Job(work)
        with self._cv:
            self._queue.append(job)
            while not job.done and self._leading:
                self._cv.wait()
            if not job.done:
                self._leading = True
        if not job.done:
            try:
                while not job.done:
                    with self._cv:
                        batch, self._queue = self._queue, []
                    self._commit(batch)
                    with self._cv:
                        self._cv.notify_all()
            finally:
                with self._cv:
                    self._leading = False
                    self._cv.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _commit(self, batch: list[_Job]) -> None:
        try:
            with self._transaction() as conn:
                if len(batch) == 1:
                    batch[0].result = batch[0].run(conn)
                else:
                    for job in batch:
                        try:
                            with conn.begin_nested():
                                job.result = job.run(conn)
                        except Exception as exc:
                            job.error = exc
        except BaseException as exc:
            for job in batch:
                if job.error is None:
                    job.error = exc
                    job.result = None
        finally:
            for job in batch:
                job.done = True
