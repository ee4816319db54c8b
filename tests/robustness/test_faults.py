"""Faults (issue 7): the database unavailable, the disk full, two associations sending the same
study at once, a lost or stale index. The promise each time: a sender is told success only for
instances that are durable and indexed; failures are C-STORE 0xA700 (Out of Resources) / STOW-RS
503 with Retry-After; nothing half-written stays; the same instances can be sent again later.

Real peers: ``pacs serve`` (tests.serve), pynetdicom SCUs, httpx, PostgreSQL behind a TCP proxy
the test cuts, SQLite locked by an exclusive transaction held beyond ``busy_timeout``, a tmpfs
that is full.
"""

from __future__ import annotations

import contextlib
import errno
import io
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.engine import make_url

from pacs.errors import StorageUnavailable
from pacs.model import Level
from pacs.services.archive import Archive
from tests.factories import make_dataset, to_bytes
from tests.protocol.store_util import files_under, open_archive
from tests.robustness.conftest import ORIGIN, STOW_TYPE, c_store, stow_body
from tests.robustness.proxy import TcpProxy
from tests.serve import serve, write_config

OUT_OF_RESOURCES = 0xA700


def _study(n: int, size: int = 64) -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    return [
        make_dataset(
            study_uid=study,
            series_uid=series,
            instance_number=i + 1,
            pixels=np.full((size, size), i, np.int16),
        )
        for i in range(n)
    ]


def _stow(base_url: str, datasets: list[Dataset]) -> httpx.Response:
    return httpx.post(
        base_url + "/dicom-web/studies",
        content=stow_body(*(to_bytes(d) for d in datasets)),
        headers={"Content-Type": STOW_TYPE},
        timeout=60,
    )


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``pacs <args>`` (the real CLI entry point, in process to keep the test fast)."""
    from pacs.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["pacs", *args], code, out.out, out.err)


def _consistent(database_url: str, storage: Path, expected: set[str]) -> None:
    """Exactly ``expected`` is indexed, every blob is indexed, hashes agree, no temp leftovers."""
    with open_archive(database_url, storage) as archive:
        assert archive.count(Level.IMAGE) == len(expected)
        for sop in expected:
            assert archive.instances(sop_instance_uid=sop)
        report = archive.verify()
        assert report.ok, report
        assert report.checked == len(expected)
    assert not [p for p in files_under(storage / "tmp") if p.suffix == ".part"]


# ------------------------------------------------------------------ the database goes away


@contextlib.contextmanager
def _database_down(database_url: str, tmp: Path, proxy: TcpProxy | None) -> Iterator[None]:
    """SQLite: an exclusive transaction held by the test; PostgreSQL: the proxy is cut."""
    if proxy is not None:
        proxy.stop()
        try:
            yield
        finally:
            proxy.start()
        return
    path = make_url(database_url).database
    assert path
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_database_unavailable_then_back(db_url: str, tmp_path: Path) -> None:
    proxy: TcpProxy | None = None
    served_url = db_url
    if db_url.startswith("postgresql"):
        url = make_url(db_url)
        proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
        served_url = url.set(port=proxy.start()).render_as_string(hide_password=False)
    storage = tmp_path / "storage"
    first, second = _study(3), _study(3)
    try:
        with serve(tmp_path, served_url, storage=storage, env={"PACS_DATABASE_BUSY_TIMEOUT": "0.2"}) as srv:
            with _database_down(db_url, tmp_path, proxy):
                statuses = c_store(srv.dicom_port, first)
                r = _stow(srv.base_url, second)
                assert httpx.get(srv.base_url + "/dicom-web/studies", timeout=30).status_code in (200, 503)
                # Appraisal reads and audits through the same Database object: 503, never 500.
                records = httpx.get(srv.base_url + "/api/appraisal/v1/records", timeout=30)
            assert records.status_code == 503, records.text
            assert records.headers["content-type"].startswith("application/problem+json")
            assert "index is not available" in records.json()["detail"]
            assert statuses == [OUT_OF_RESOURCES] * 3, [hex(s) for s in statuses]
            assert r.status_code == 503, r.text
            assert r.headers.get("Retry-After")
            assert all(f["00081197"]["Value"] == [OUT_OF_RESOURCES] for f in r.json()["00081198"]["Value"])
            assert "index is not available" in srv.log()
            _consistent(db_url, storage, set())
            # The database is back: the same instances go through.
            assert c_store(srv.dicom_port, first) == [0, 0, 0]
            assert _stow(srv.base_url, second).status_code == 200
            assert httpx.get(srv.base_url + "/api/appraisal/v1/records", timeout=30).status_code == 200
    finally:
        if proxy is not None:
            proxy.stop()
    _consistent(db_url, storage, {d.SOPInstanceUID for d in first + second})


# ------------------------------------------------------------------ the disk is full


class _FullWriter:
    """A blob writer whose disk fills up after ``room`` bytes (ENOSPC, as a real full disk)."""

    def __init__(self, inner, room: int) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.room = inner, room

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def write(self, data: bytes) -> None:
        if self.inner.size + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.inner.write(data)

    def __enter__(self) -> _FullWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.abort()


def test_disk_full_in_process(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    """An injected ENOSPC mid-write: StorageUnavailable, no blob, no row; later the store succeeds."""
    ds = _study(1, size=256)[0]
    data = to_bytes(ds)
    real_writer = archive.blobs.writer
    monkeypatch.setattr(archive.blobs, "writer", lambda: _FullWriter(real_writer(), 4096))
    with pytest.raises(StorageUnavailable, match="No space left"):
        archive.store(io.BytesIO(data), ORIGIN)
    assert archive.count(Level.IMAGE) == 0 and not list(archive.blobs.keys())
    assert not list(archive.blobs.tmp_dir.glob("*.part"))
    monkeypatch.setattr(archive.blobs, "writer", real_writer)
    assert archive.store(io.BytesIO(data), ORIGIN).sop_instance_uid == ds.SOPInstanceUID
    assert archive.verify().ok


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_disk_full_on_a_real_filesystem(tmp_path: Path) -> None:
    """The storage on a 4 MB tmpfs filled up: C-STORE 0xA700 (the association stays up), STOW 503;
    nothing indexed or left behind; after space is freed the same instances are stored."""
    storage = tmp_path / "storage"
    if not _mount_tmpfs(storage, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the in-process ENOSPC test covers the path")
    db = f"sqlite:///{tmp_path / 'index.sqlite'}"
    datasets = _study(4, size=256)  # ~130 kB each
    try:
        with serve(tmp_path, db, storage=storage) as srv:
            filler = storage / "filler"
            with open(filler, "wb") as fh, contextlib.suppress(OSError):
                while True:
                    fh.write(bytes(16384))
                    fh.flush()
            statuses = c_store(srv.dicom_port, datasets[:2])
            assert statuses == [OUT_OF_RESOURCES] * 2, [hex(s) for s in statuses]
            r = _stow(srv.base_url, datasets[2:])
            assert r.status_code == 503, r.text
            assert r.headers.get("Retry-After")
            _consistent(db, storage, set())
            filler.unlink()
            assert c_store(srv.dicom_port, datasets[:2]) == [0, 0]
            assert _stow(srv.base_url, datasets[2:]).status_code == 200
            assert "No space left" in srv.log()
        _consistent(db, storage, {d.SOPInstanceUID for d in datasets})
    finally:
        subprocess.run(["umount", "-l", str(storage)], capture_output=True, timeout=10)


# ------------------------------------------------------------------ two senders, one study


def test_two_associations_send_the_same_study_at_once(db_url: str, tmp_path: Path) -> None:
    datasets = _study(12)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def send(port: int, ae: str) -> None:
        try:
            results.append(c_store(port, datasets, ae_title=ae))
        except BaseException as exc:
            errors.append(exc)

    with serve(tmp_path, db_url) as srv:
        threads = [threading.Thread(target=send, args=(srv.dicom_port, ae)) for ae in ("STORESCU", "TESTSCU")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert results == [[0] * 12, [0] * 12]  # both told success: the instance is safe either way
        _consistent(db_url, srv.storage, {d.SOPInstanceUID for d in datasets})
        with open_archive(db_url, srv.storage) as archive:
            assert archive.count(Level.STUDY) == 1 and archive.count(Level.SERIES) == 1
            assert len(list(archive.blobs.keys())) == 12


# ------------------------------------------------------------------ a lost or stale index


def test_verify_and_reindex_recover_a_lost_or_stale_index(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    cfg = write_config(tmp_path / "config.toml", storage, db_url)
    datasets = _study(5)
    with open_archive(db_url, storage) as archive:
        from pacs.index.engine import migrate

        migrate(archive.db.engine)
        for d in datasets:
            archive.store(io.BytesIO(to_bytes(d)), ORIGIN)
        [gone] = archive.instances(sop_instance_uid=datasets[0].SOPInstanceUID)
        # Stale: a row whose file is lost, and a file without a row (a store cut before indexing).
        Path(archive.path(gone) or "").unlink()
        orphan = make_dataset(study_uid=datasets[0].StudyInstanceUID)
        with archive.blobs.writer() as w:
            w.write(to_bytes(orphan))
            w.commit()
    v = _cli(capsys, "verify", "--config", str(cfg))
    assert v.returncode == 1, v.stdout + v.stderr
    assert "missing 1" in v.stdout and "unindexed 1" in v.stdout
    r = _cli(capsys, "reindex", "--config", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "indexed 5, failed 0" in r.stdout
    v = _cli(capsys, "verify", "--config", str(cfg))
    assert v.returncode == 0 and "OK" in v.stdout, v.stdout + v.stderr
    expected = {d.SOPInstanceUID for d in datasets[1:]} | {orphan.SOPInstanceUID}
    _consistent(db_url, storage, expected)

    # Lost: the whole index is gone (SQLite file deleted / PostgreSQL tables dropped).
    _lose_index(db_url)
    v = _cli(capsys, "verify", "--config", str(cfg))
    assert v.returncode == 1 and "unindexed 5" in v.stdout, v.stdout + v.stderr
    r = _cli(capsys, "reindex", "--config", str(cfg))
    assert r.returncode == 0 and "indexed 5, failed 0" in r.stdout, r.stdout + r.stderr
    v = _cli(capsys, "verify", "--config", str(cfg))
    assert v.returncode == 0, v.stdout
    _consistent(db_url, storage, expected)


def _lose_index(db_url: str) -> None:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{url.database}{suffix}").unlink(missing_ok=True)
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    with engine.begin() as conn:
        schema = conn.execute(text("select current_schema()")).scalar_one()
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
