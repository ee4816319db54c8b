"""Shared fixtures.

``db_url`` is parametrised over SQLite and PostgreSQL: every test that uses it (directly or
through ``archive``) runs on both. PostgreSQL comes from ``PACS_TEST_PG_URL`` (default: the
local server at 127.0.0.1:5432, database ``test``); each test gets its own schema, dropped
afterwards. Under CI (``CI=true``) a missing peer is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pacs import config, runtime
from pacs.blobstore import FileBlobStore
from pacs.index.database import Database
from pacs.index.engine import make_engine, migrate
from pacs.services.archive import Archive

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _close_pynetdicom_reactor_race() -> None:
    """pynetdicom's SCU loses a response now and then (pydicom/pynetdicom#875): a ``send_*()``
    clears the reactor's checkpoint and goes on as soon as the reactor looks paused, but the
    reactor may be just past its pause, about to take a message off the queue; if the response
    is already there it takes it ("Received unexpected C-FIND service message") and the
    ``send_*()`` waits out its DIMSE timeout. A fast server makes that likelier. The test
    clients' reactor takes nothing while a ``send_*()`` has the checkpoint cleared (the server's
    own reactor, pacs/scp/reactor.py, checks the same)."""
    import threading

    from pynetdicom.dimse import DIMSEServiceProvider

    get_msg = DIMSEServiceProvider.get_msg

    def checked(self: DIMSEServiceProvider, block: bool = False) -> tuple[int | None, object]:
        assoc = self.assoc
        if threading.current_thread() is assoc and not assoc._reactor_checkpoint.is_set():
            return None, None
        return get_msg(self, block)  # type: ignore[return-value]

    DIMSEServiceProvider.get_msg = checked  # type: ignore[method-assign]


_close_pynetdicom_reactor_race()
PG_URL = os.environ.get("PACS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def require_peer(available: bool, why: str) -> None:
    """Skip (outside CI) or fail (in CI) when a real peer the test needs is missing."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"required peer missing in CI: {why}")
    pytest.skip(f"peer missing outside CI: {why}")


def require_tool(name: str) -> str:
    """Path of an executable peer (DCMTK, chromium, ...), or skip/fail per :func:`require_peer`."""
    path = shutil.which(name)
    require_peer(path is not None, f"{name} is not installed (apt-get install dcmtk / chromium)")
    assert path is not None
    return path


def _pg_available() -> bool:
    try:
        eng = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(text("select 1"))
        eng.dispose()
        return True
    except Exception:
        return False


_PG_OK: bool | None = None


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each backend."""
    global _PG_OK
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.sqlite'}"
        return
    if _PG_OK is None:
        _PG_OK = _pg_available()
    require_peer(_PG_OK, f"PostgreSQL not reachable at {PG_URL}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    """An empty archive root."""
    p = tmp_path / "storage"
    p.mkdir()
    return p


@pytest.fixture
def archive(db_url: str, storage_dir: Path) -> Iterator[Archive]:
    """An :class:`Archive` on a migrated index (SQLite and PostgreSQL) and a file blob store."""
    engine = make_engine(db_url)
    migrate(engine)
    db = Database(engine)
    archive = Archive(db, FileBlobStore(storage_dir))
    try:
        yield archive
    finally:
        archive.close()
        db.close()


def settings_for(db_url: str, storage: Path, **http: object) -> config.Settings:
    """Settings for an in-process app under test (no fsync: tests do not need durability).

    Sign-in is explicitly off and every Host is served (starlette's TestClient sends
    ``testserver``); tests/security turns both back on where they are the subject."""
    return config.Settings(
        storage=config.StorageSettings(path=storage, fsync=False),
        database=config.DatabaseSettings(url=db_url),
        http=config.HttpSettings(**{"allowed_hosts": ("*",), **http}),  # type: ignore[arg-type]
        auth=config.AuthSettings(enabled="false"),
    )


@pytest.fixture
def sqlite_rt(tmp_path: Path) -> Iterator[runtime.Runtime]:
    """A runtime on SQLite only (pixel tests, where the index plays no part)."""
    r = runtime.build(settings_for(f"sqlite:///{tmp_path / 'index.sqlite'}", tmp_path / "storage"))
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def rt(db_url: str, tmp_path: Path) -> Iterator[runtime.Runtime]:
    """A whole runtime (archive, services) on SQLite and PostgreSQL."""
    r = runtime.build(settings_for(db_url, tmp_path / "storage"))
    try:
        yield r
    finally:
        r.close()
