"""``pacs serve`` on ``backend = "s3"`` with real C-STOREs (pynetdicom) and a real SeaweedFS, on
SQLite and PostgreSQL: upload and retrieval, S3 stopped mid-ingest, a hung S3, the CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import _config
from sqlalchemy import create_engine, func, select

from pacs.index.schema import blob_uploads
from tests.factories import make_dataset, to_bytes, write
from tests.protocol.store_util import associate, dataset_part, files_under
from tests.serve import Served, serve
from tests.storage.conftest import HangingServer, Seaweed, s3_settings, storage_env


@pytest.fixture(autouse=True)
def _send_raw_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def _env(keys: dict[str, Any]) -> dict[str, str]:
    return {**storage_env(keys), "PACS_STORAGE_FSYNC": "false"}


def _send(srv: Served, datasets: list[Dataset]) -> list[tuple[int, float]]:
    """C-STORE each dataset on one association: (status, seconds to its response) each."""
    out = []
    with associate(srv.dicom_port, [(CTImageStorage, ExplicitVRLittleEndian)]) as assoc:
        for ds in datasets:
            started = time.monotonic()
            rsp = assoc.send_c_store(ds)
            out.append(
                (int(rsp.Status) if rsp is not None and "Status" in rsp else -1, time.monotonic() - started)
            )
    return out


def _states(db_url: str) -> dict[str, int]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            stmt = select(blob_uploads.c.state, func.count()).group_by(blob_uploads.c.state)
            return {str(s): int(n) for s, n in conn.execute(stmt)}
    finally:
        engine.dispose()


def _wait_remote(db_url: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _states(db_url) != {"remote": n}:
        assert time.monotonic() < deadline, f"queue not drained: {_states(db_url)}"
        time.sleep(0.3)


def _wado(srv: Served, ds: Dataset) -> bytes:
    url = (
        f"{srv.base_url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    r = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=30)
    assert r.status_code == 200, r.text
    return r.content


def _cli(cfg: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "pacs.cli", *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def _series(n: int) -> list[Dataset]:
    first = make_dataset()
    return [
        make_dataset(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID, instance_number=i)
        for i in range(1, n + 1)
    ]


def test_cstore_upload_retrieve_verify(db_url: str, tmp_path: Path, seaweed: Seaweed, s3_prefix: str) -> None:
    """C-STOREs are acknowledged, uploaded by serve's uploader, their local copies removed;
    WADO-RS serves them from S3 byte for byte; ``pacs verify`` (and --deep) says OK."""
    env = _env(s3_settings(seaweed, s3_prefix))
    datasets = _series(5)
    with serve(tmp_path, db_url, env=env) as srv:
        assert [s for s, _ in _send(srv, datasets)] == [0] * 5
        _wait_remote(db_url, 5)
        assert files_under(srv.storage / "blobs") == []
        for ds in datasets:
            assert dataset_part(to_bytes(ds)) in _wado(srv, ds)
    cfg = tmp_path / "config.toml"
    for args in (("verify",), ("verify", "--deep")):
        done = _cli(cfg, env, *args)
        assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr
    status = _cli(cfg, env, "storage", "status")
    assert "0 queued, 5 in S3" in status.stdout, status.stdout + status.stderr
    assert env["PACS_STORAGE_S3_SECRET_KEY"] not in status.stdout + status.stderr + srv.log()


def test_s3_stopped_mid_ingest(db_url: str, tmp_path: Path, own_seaweed: Seaweed, s3_prefix: str) -> None:
    """S3 stops in the middle of an ingest: every C-STORE still succeeds at local speed, the
    outage is logged per backoff step (not per instance), and once S3 is back the queue drains
    by itself, every object verified and every local copy removed."""
    env = _env(s3_settings(own_seaweed, s3_prefix))
    datasets = _series(30)
    with serve(tmp_path, db_url, env=env) as srv:
        first = _send(srv, datasets[:10])
        own_seaweed.stop()
        during = _send(srv, datasets[10:])
        assert [s for s, _ in first + during] == [0] * 30
        assert max(t for _, t in during) < 5, "a C-STORE waited for S3"
        time.sleep(3)  # a few backoff steps (0.2 s doubling, capped at 1 s)
        assert _states(db_url).get("queued", 0) >= 20
        for ds in datasets[25:]:
            assert dataset_part(to_bytes(ds)) in _wado(srv, ds)  # read from the local copies meanwhile
        outage_lines = srv.log().count("S3 unavailable")
        assert 1 <= outage_lines <= 10, outage_lines
        own_seaweed.start()
        _wait_remote(db_url, 30)
        assert "S3 answers again" in srv.log()
        assert files_under(srv.storage / "blobs") == []
        for ds in datasets[::7]:
            assert dataset_part(to_bytes(ds)) in _wado(srv, ds)
    done = _cli(tmp_path / "config.toml", env, "verify", "--deep")
    assert done.returncode == 0 and "checked 30: missing 0, corrupt 0, unindexed 0" in done.stdout, (
        done.stdout
    )


def test_hung_s3_does_not_block_acknowledgements(
    tmp_path: Path, hanging_s3: HangingServer, s3_prefix: str, seaweed: Seaweed
) -> None:
    """An S3 endpoint that accepts connections and never answers: C-STOREs are acknowledged as
    fast as with the file store; the uploader's calls time out and it backs off."""
    keys = s3_settings(seaweed, s3_prefix, s3_connect_timeout=1.0, s3_read_timeout=1.0)
    keys["s3_endpoint"] = hanging_s3.endpoint
    datasets = _series(15)
    with serve(tmp_path, f"sqlite:///{tmp_path / 'index.sqlite'}", env=_env(keys)) as srv:
        results = _send(srv, datasets)
        assert [s for s, _ in results] == [0] * 15
        assert max(t for _, t in results) < 2, results
        deadline = time.monotonic() + 30
        while "S3 unavailable" not in srv.log():
            assert time.monotonic() < deadline, srv.log()[-3000:]
            time.sleep(0.3)
        assert dataset_part(to_bytes(datasets[3])) in _wado(srv, datasets[3])
        assert hanging_s3.accepted, "the uploader never tried"
    assert _states(f"sqlite:///{tmp_path / 'index.sqlite'}") == {"queued": 15}


def test_cli_migrate_to_s3_and_back(db_url: str, tmp_path: Path, seaweed: Seaweed, s3_prefix: str) -> None:
    """``pacs storage migrate --to s3`` moves an archive stored on disk (resumable: a second run
    has nothing left), ``pacs verify --deep`` agrees, ``--to file`` brings it all back."""
    from tests.serve import write_config

    storage = tmp_path / "storage"
    storage.mkdir()
    cfg = write_config(tmp_path / "config.toml", storage, db_url)
    files = [write(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate(_series(8))]
    file_env = _env(s3_settings(seaweed, s3_prefix, backend="file"))
    s3_env = _env(s3_settings(seaweed, s3_prefix))
    assert _cli(cfg, file_env, "import", *map(str, files)).returncode == 0
    assert len(files_under(storage / "blobs")) == 8
    done = _cli(cfg, s3_env, "storage", "migrate", "--to", "s3")
    assert done.returncode == 0 and "DONE" in done.stdout and "moved 8" in done.stderr, (
        done.stdout + done.stderr
    )
    assert files_under(storage / "blobs") == [] and _states(db_url) == {"remote": 8}
    again = _cli(cfg, s3_env, "storage", "migrate", "--to", "s3")
    assert again.returncode == 0 and "moved 0" in again.stderr, again.stderr
    verify = _cli(cfg, s3_env, "verify", "--deep")
    assert verify.returncode == 0 and "OK" in verify.stdout, verify.stdout
    back = _cli(cfg, file_env, "storage", "migrate", "--to", "file")
    assert back.returncode == 0 and "moved 8" in back.stderr, back.stdout + back.stderr
    assert len(files_under(storage / "blobs")) == 8 and _states(db_url) == {}
    assert _cli(cfg, {"PACS_STORAGE_FSYNC": "false"}, "verify").returncode == 0  # no S3 settings at all
