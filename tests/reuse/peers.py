"""Real peers of the federation tests (issue 18): Debian's Orthanc 1.10 with its DICOMweb plugin
on free loopback ports, a socket that accepts and never answers (a hung peer), a closed port (a
stopped peer), and the studies each facility holds."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    """A free TCP port on loopback (bound and released; the caller binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_available() -> tuple[bool, str]:
    """Whether Orthanc and its DICOMweb plugin are installed, with the reason if not."""
    if not os.access(ORTHANC, os.X_OK):
        return False, f"{ORTHANC} missing (apt-get install -y orthanc orthanc-dicomweb)"
    if not os.path.exists(DICOMWEB_PLUGIN):
        return False, f"{DICOMWEB_PLUGIN} missing (apt-get install -y orthanc-dicomweb)"
    return True, ""


@dataclass
class Orthanc:
    """A running Orthanc: its ports, AE title and process."""

    http_port: int
    dicom_port: int
    ae_title: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        """The REST root."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root of the plugin."""
        return f"{self.url}/dicom-web"

    def upload(self, data: bytes) -> None:
        """Store one Part-10 file through Orthanc's REST API."""
        req = urllib.request.Request(f"{self.url}/instances", data=data, method="POST")
        with urllib.request.urlopen(req, timeout=30) as res:
            assert res.status == 200, res.status


@contextmanager
def orthanc(
    run: Path, *, ae_title: str = "ORTHANC", modalities: dict[str, tuple[str, str, int]] | None = None
) -> Iterator[Orthanc]:
    """Orthanc 1.10 with the DICOMweb plugin on free ports, answering C-FIND and C-MOVE from any
    AE; ``modalities`` are its C-MOVE destinations (name -> AE title, host, port; more can be
    added with ``PUT /modalities/{name}``). Stopped (and its files removed) on exit."""
    run.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "reuse-test",
        "StorageDirectory": str(run / "storage"),
        "IndexDirectory": str(run / "index"),
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowMove": True,
        "DicomAlwaysAllowStore": True,
        "DefaultEncoding": "Utf8",
        "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "StudiesMetadata": "Full"},
    }
    cfg = run / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2), encoding="utf-8")
    log_path = run / "orthanc.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [ORTHANC, str(cfg)], stdout=log, stderr=log, env={**os.environ, "TCP_NODELAY": "1"}
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start: {log_path.read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield Orthanc(http_port, dicom_port, ae_title, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(run / "storage", ignore_errors=True)


@dataclass
class Hung:
    """A listening socket that accepts connections and never answers (a hung peer)."""

    port: int
    _sock: socket.socket
    _held: list[socket.socket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._held.append(conn)  # read nothing, answer nothing


@contextmanager
def hung_peer() -> Iterator[Hung]:
    """A socket that accepts and never answers; closed on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    hung = Hung(int(sock.getsockname()[1]), sock)
    thread = threading.Thread(target=hung._accept, daemon=True)
    thread.start()
    try:
        yield hung
    finally:
        hung._stop.set()
        thread.join(2)
        for c in hung._held:
            c.close()
        sock.close()


def stopped_port() -> int:
    """A loopback port nothing listens on (a stopped peer: connection refused)."""
    return free_port()


def with_identity(ds: Dataset, patient_id: str, issuer: str | None, others: tuple[str, ...] = ()) -> Dataset:
    """``ds`` with PatientID, IssuerOfPatientID and OtherPatientIDs (0010,1000) set."""
    ds.PatientID = patient_id
    if issuer is None:
        if "IssuerOfPatientID" in ds:
            del ds.IssuerOfPatientID
    else:
        ds.IssuerOfPatientID = issuer
    if others:
        ds.OtherPatientIDs = list(others)
    return ds


def pacs_import(tmp: Path, name: str, datasets: list[Dataset]) -> tuple[Path, str]:
    """Store ``datasets`` into a new archive with ``pacs import`` (the one store path); returns
    its storage directory and database URL (SQLite)."""
    import sys

    files = tmp / f"{name}-files"
    files.mkdir(parents=True, exist_ok=True)
    for n, ds in enumerate(datasets):
        ds.save_as(files / f"{n}.dcm", enforce_file_format=True)
    storage, db = tmp / f"{name}-storage", f"sqlite:///{tmp / f'{name}.sqlite'}"
    cmd = [
        sys.executable,
        "-m",
        "pacs.cli",
        "import",
        "--strict",
        "--storage",
        str(storage),
        "--database-url",
        db,
    ]
    out = subprocess.run([*cmd, str(files)], capture_output=True, text=True, cwd=tmp, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return storage, db


def peers_config(entries: list[dict[str, object]], **federation: object) -> str:
    """``[federation]`` and ``[[peers]]`` (with ``match`` lists) as TOML text."""

    def value(v: object) -> str:
        return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")

    lines = ["[federation]", *(f"{k} = {value(v)}" for k, v in federation.items())]
    for e in entries:
        lines.append("[[peers]]")
        lines += [f"{k} = {value(v)}" for k, v in e.items() if k != "match"]
        for rule in e.get("match", []):  # type: ignore[attr-defined]
            lines.append("[[peers.match]]")
            lines += [f"{k} = {value(v)}" for k, v in rule.items()]
    return "\n".join(lines) + "\n"
