"""Start a real ``pacs serve`` process for protocol tests (port 0, polled until READY)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Test AE titles and the services each is granted, as a hospital would set them: a modality
#: (STORESCU: the default services), a query station, two retrieving workstations, a link
#: checker (C-ECHO only) and the test clients (everything).
ALLOWED = {
    "STORESCU": None,
    "FINDSCU": ["find", "worklist"],
    "OLDMWL": ["worklist"],  # an old modality: worklist answers without accents (issue 15)
    "MOVESCU": ["find", "move"],
    "GETSCU": ["find", "get"],
    "ECHOSCU": [],
    "PYNETDICOM": ["all"],
    "TESTSCU": ["all"],
}


@dataclass
class Served:
    """A running archive: ports, paths and the process."""

    dicom_port: int
    http_port: int
    storage: Path
    database_url: str
    process: subprocess.Popen[str]
    log_path: Path
    hl7_port: int = 0  # the HL7 MLLP listener, when [hl7] port is set

    @property
    def base_url(self) -> str:
        """The HTTP root."""
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        """Everything the server logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def write_config(
    path: Path, storage: Path, database_url: str, extra: str = "", dicom_workers: int = 1
) -> Path:
    """A config file for tests: every test AE allowed from loopback."""
    aes = ", ".join(
        f'{{ ae_title = "{a}" }}' if s is None else f'{{ ae_title = "{a}", services = {json.dumps(s)} }}'
        for a, s in ALLOWED.items()
    )
    path.write_text(
        f"""
[dicom]
ae_title = "PACS"
host = "127.0.0.1"
port = 0
allowed_aes = [{aes}]
workers = {dicom_workers}
[http]
host = "127.0.0.1"
port = 0
[auth]
enabled = false
[storage]
path = "{storage}"
[database]
url = "{database_url}"
{extra}
""",
        encoding="utf-8",
    )
    return path


@contextmanager
def serve(
    tmp: Path,
    database_url: str,
    *,
    extra_config: str = "",
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    storage: Path | None = None,
    dicom_workers: int = 1,
) -> Iterator[Served]:
    """Run ``pacs serve`` until the block ends; yields once it prints READY."""
    storage = storage or tmp / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    cfg = write_config(tmp / "config.toml", storage, database_url, extra_config, dicom_workers)
    log_path = tmp / f"serve-{time.monotonic_ns()}.log"
    log_fh = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacs.cli", "serve", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=log_fh,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        ready = _wait_ready(proc, timeout, log_path)
        yield Served(
            dicom_port=ready["dicom"],
            http_port=ready["http"],
            storage=storage,
            database_url=database_url,
            process=proc,
            log_path=log_path,
            hl7_port=ready.get("hl7", 0),
        )
    finally:
        stop(proc)
        log_fh.close()


def _wait_ready(proc: subprocess.Popen[str], timeout: float, log_path: Path) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"pacs serve exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            continue
        if line.startswith("READY "):
            fields = dict(part.split("=", 1) for part in line.split()[1:])
            return {
                "dicom": int(fields["dicom"].rsplit(":", 1)[1]),
                "http": int(fields["http"].rsplit(":", 1)[1]),
                "hl7": int(fields["hl7"].rsplit(":", 1)[1]) if "hl7" in fields else 0,
            }
    raise RuntimeError(f"pacs serve not ready after {timeout}s:\n{log_path.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == pid]


def kill_and_expect_gone(proc: subprocess.Popen[str], children: list[int], within: float = 15) -> None:
    """SIGKILL ``pacs serve`` and assert that its worker processes exit with it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(c) for c in children):
        time.sleep(0.2)
    left = [_cmdline(c) for c in children if _alive(c)]
    assert not left, f"outlived pacs serve: {left}"


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return ""


def _status_total(pid: int, field: str) -> int:
    """The sum of a numeric ``/proc/PID/status`` field over ``pid`` and its children."""
    total = 0
    for p in [pid, *children_of(pid)]:
        try:
            with open(f"/proc/{p}/status", encoding="utf-8") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))
        except (OSError, StopIteration):
            pass
    return total


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident set of ``pid`` and its children, KiB (``RssAnon``: its anonymous part only, without
    the pages of files it maps, which the kernel can drop at will)."""
    return _status_total(pid, field)


class PeakRss:
    """Samples the server's resident set every 20 ms while the block runs."""

    def __init__(self, pid: int, field: str = "VmRSS") -> None:
        self.pid = pid
        self.field = field
        self.before = rss_kib(pid, field)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid, self.field))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def grew_mib(self) -> float:
        return (self.peak - self.before) / 1024


def threads_of(pid: int) -> int:
    """Threads of ``pid`` and its children."""
    return _status_total(pid, "Threads")
