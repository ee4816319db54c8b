"""Engine setup for SQLite (the embedded default) and PostgreSQL, and schema migrations.

SQLite: WAL, ``synchronous=FULL`` (a success reported to a modality survives power loss),
``BEGIN IMMEDIATE`` for every transaction (one writer at a time, across processes, without
lock-upgrade deadlocks), a generous busy timeout, and case-sensitive LIKE so that wildcard
matching behaves as on PostgreSQL (PS3.4 matching is case-sensitive except where we fold).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, *, echo: bool = False, busy_timeout: float = 60.0) -> Engine:
    """Create an engine with the per-backend settings described in the module docstring."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"timeout": busy_timeout, "check_same_thread": False, "isolation_level": None},
            pool_size=8,
            max_overflow=16,
        )
        lock = None
        if parsed.database and parsed.database != ":memory:":
            lock = WriteLock(Path(parsed.database + "-pacs.lock"), busy_timeout)
        _sqlite_setup(engine, int(busy_timeout * 1000), lock)
        engine.pacs_write_lock = lock  # type: ignore[attr-defined]  # see write_lock_busy()
        return engine
    return create_engine(url, echo=echo, pool_size=8, max_overflow=16, pool_pre_ping=True)


class WriteLock:
    """Queues SQLite write transactions: threads on a lock, processes on ``flock(2)`` of a side file.

    Without it, writers queue in SQLite's busy handler, which sleeps 1, 2, 5, 10 ... 100 ms
    between retries: with four associations storing at once, a 2 ms transaction waited tens of
    milliseconds. Here a waiting thread takes the lock the moment it is free, and a waiting
    process polls every 0.5 ms. Taken at BEGIN IMMEDIATE, released when the connection goes
    back to the pool (after its COMMIT). Re-entrant per thread. Purely an optimisation: after
    ``timeout`` a writer goes on without it and SQLite's own locking (busy_timeout) applies.
    """

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False (and nothing held) when ``timeout`` passed first."""
        if not self._lock.acquire(timeout=self.timeout):
            log.warning("SQLite write lock not obtained in %.0f s; relying on SQLite's locking", self.timeout)
            return False
        self._depth += 1
        if self._depth > 1:
            return True
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError from None
                    time.sleep(0.0005)
        except (OSError, TimeoutError) as exc:
            log.warning("SQLite write lock %s not obtained (%s); relying on SQLite's locking", self.path, exc)
            self._depth -= 1
            self._lock.release()
            return False

    def busy(self) -> bool:
        """True if another thread or process holds the lock (a snapshot: it may change at once)."""
        if not self._lock.acquire(blocking=False):
            return True
        try:
            if self._depth > 0:  # held by this very thread
                return False
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            return False
        except OSError:
            return False
        finally:
            self._lock.release()

    def release(self) -> None:
        """Release one acquisition (the file lock with the last one)."""
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._lock.release()


def release_write_lock(conn: Connection) -> None:
    """Release the SQLite write lock a connection took at BEGIN IMMEDIATE, if it holds it.

    Normally released when the connection goes back to the pool; a connection kept checked out
    between transactions (``Archive._store_write``) releases it here, after its COMMIT.
    """
    lock: WriteLock | None = getattr(conn.engine, "pacs_write_lock", None)
    if lock is None or conn.invalidated or conn.closed:
        return
    if conn.connection.info.pop("pacs_lock", False):
        lock.release()


def write_lock_busy(engine: Engine) -> bool:
    """True when another writer (thread or process) holds the SQLite write lock right now.

    A writer that will wait anyway can first finish work that need not hold the lock (the blob
    fsync), instead of holding the lock through it while the others wait.
    """
    lock: WriteLock | None = getattr(engine, "pacs_write_lock", None)
    return lock.busy() if lock is not None else False


def _sqlite_setup(engine: Engine, busy_timeout_ms: int = 60000, lock: WriteLock | None = None) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA case_sensitive_like=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("pacs_write", False)
        if write and lock is not None and not conn.info.get("pacs_lock") and lock.acquire():
            # Held until the connection is back in the pool; checked there, whatever happened.
            conn.connection.info["pacs_lock"] = True
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    if lock is not None:

        def _release(record: Any) -> None:
            if record is not None and record.info.pop("pacs_lock", False):
                try:
                    lock.release()
                except RuntimeError:  # returned by another thread (garbage collected): not ours
                    log.warning("SQLite write lock released by a thread that does not hold it")

        @event.listens_for(engine, "checkin")
        def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
            _release(record)

        @event.listens_for(engine, "invalidate")
        def _on_invalidate(_dbapi_conn: Any, record: Any, _exc: Any) -> None:
            _release(record)


def alembic_config(url: str) -> Config:
    """An Alembic configuration pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect().execution_options(pacs_write=True) as conn, conn.begin():
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
