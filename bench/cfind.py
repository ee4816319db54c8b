"""C-FIND latency benchmark (not run by the test suite).

Generates an index directly with SQLAlchemy core bulk inserts (no files: C-FIND never reads
them), starts ``pacs serve`` on it, and measures median / p95 latency of five C-FIND queries
over one open pynetdicom association. Optionally loads the same kind of data into Orthanc
(``--orthanc N``: N studies of one instance each through its REST API) and runs the same
queries against both at that size.

    .venv/bin/python bench/cfind.py --db sqlite --studies 10000 --series 4 --instances 25
    .venv/bin/python bench/cfind.py --db postgresql --studies 10000 --series 4 --instances 25
    .venv/bin/python bench/cfind.py --db sqlite --studies 2000 --series 1 --instances 1 --orthanc 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from sqlalchemy import create_engine, insert, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pacs.dicom.text import name_key
from pacs.index.engine import make_engine, migrate
from pacs.index.schema import instances, patients, series, studies

ROOT = "1.2.826.0.1.3680043.10.999"
FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng"]
GIVEN = ["Văn An", "Thị Bình", "Minh Châu", "Quốc Dũng", "Thu Hà", "Đức Long"]
PG = os.environ.get("PACS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _date(i: int) -> str:
    return f"{2020 + i % 5}{1 + i % 12:02d}{1 + i % 28:02d}"


def generate(url: str, n_studies: int, n_series: int, n_inst: int) -> None:
    """Bulk-insert patients (one per 2 studies), studies, series and instances."""
    engine = make_engine(url)
    migrate(engine)
    now = datetime.now(UTC)
    t0 = time.monotonic()
    batch = 50_000
    with engine.connect().execution_options(pacs_write=True) as conn, conn.begin():
        pats = []
        for p in range(n_studies // 2 + 1):
            name = f"{FAMILY[p % len(FAMILY)]}^{GIVEN[p % len(GIVEN)]} {p}"
            pats.append(
                dict(
                    id=p + 1,
                    identity=f"P{p}\\",
                    patient_id=f"P{p}",
                    patient_name=name,
                    patient_name_key=name_key(name),
                    patient_birth_date="19800101",
                    patient_sex="MF"[p % 2],
                )
            )
        conn.execute(insert(patients), pats)
        conn.execute(
            insert(studies),
            [
                dict(
                    id=s + 1,
                    patient_fk=s // 2 + 1,
                    created_at=now,
                    updated_at=now,
                    study_instance_uid=f"{ROOT}.{s + 1}",
                    study_date=_date(s),
                    study_time=f"{8 + s % 10:02d}{s % 60:02d}00",
                    accession_number=f"ACC{s}",
                    study_description="CT sọ não",
                    number_of_study_related_series=n_series,
                    number_of_study_related_instances=n_series * n_inst,
                )
                for s in range(n_studies)
            ],
        )
        rows = []
        for s in range(n_studies):
            for k in range(n_series):
                sid = s * n_series + k + 1
                rows.append(
                    dict(
                        id=sid,
                        study_fk=s + 1,
                        series_instance_uid=f"{ROOT}.{s + 1}.{k + 1}",
                        modality=["CT", "MR", "SR", "US"][k % 4],
                        series_number=k + 1,
                        number_of_series_related_instances=n_inst,
                    )
                )
        for i in range(0, len(rows), batch):
            conn.execute(insert(series), rows[i : i + batch])
        rows = []
        iid = 0
        for sid in range(1, n_studies * n_series + 1):
            s, k = divmod(sid - 1, n_series)
            for j in range(n_inst):
                iid += 1
                rows.append(
                    dict(
                        id=iid,
                        series_fk=sid,
                        sop_instance_uid=f"{ROOT}.{s + 1}.{k + 1}.{j + 1}",
                        sop_class_uid=CTImageStorage,
                        instance_number=j + 1,
                        transfer_syntax_uid=ExplicitVRLittleEndian,
                        blob_key=f"k{iid}",
                        size=1,
                        sha256="0",
                        dataset_sha256="0",
                        received_at=now,
                    )
                )
                if len(rows) >= batch:
                    conn.execute(insert(instances), rows)
                    rows = []
        if rows:
            conn.execute(insert(instances), rows)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    engine.dispose()
    total = n_studies * n_series * n_inst
    print(
        f"generated {n_studies} studies / {n_studies * n_series} series / {total} instances "
        f"in {time.monotonic() - t0:.1f} s"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_pacs(tmp: Path, url: str, http_extra: str = "") -> tuple[subprocess.Popen[str], int, str]:
    """``pacs serve`` on the index at ``url``; (process, DICOM port, HTTP base URL)."""
    cfg = tmp / "config.toml"
    cfg.write_text(
        f'[dicom]\nae_title = "PACS"\nport = 0\nworkers = 1\n'
        'allowed_aes = [{ ae_title = "PYNETDICOM", services = ["all"] }]\n'
        f'[http]\nport = 0\n{http_extra}\n[storage]\npath = "{tmp / "storage"}"\n[database]\nurl = "{url}"\n'
        '[log]\nlevel = "WARNING"\n[auth]\nenabled = false\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacs.cli", "serve", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("READY "):
            ready = dict(p.split("=", 1) for p in line.split()[1:])
            return proc, int(ready["dicom"].rsplit(":", 1)[1]), f"http://{ready['http']}"
    raise RuntimeError("pacs serve did not start")


def _q(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def _name_prefix(p: int) -> str:
    """Accent-free, lower-case prefix of patient p's name: matches p, p0..p9, p00.. (1-111 patients)."""
    return name_key(f"{FAMILY[p % len(FAMILY)]}^{GIVEN[p % len(GIVEN)]} {p}").replace(" ", "^", 1) + "*"


def queries(n_studies: int) -> dict[str, Callable[[int], Dataset]]:
    """The five measured queries; each call varies its target so caches do not flatter."""
    return {
        "study by PatientID": lambda i: _q(
            "STUDY", PatientID=f"P{(i * 7919) % (n_studies // 2)}", StudyInstanceUID="", StudyDate=""
        ),
        "study by name wildcard": lambda i: _q(
            "STUDY", PatientName=_name_prefix((i * 7919) % (n_studies // 2)), StudyInstanceUID=""
        ),
        "studies in a date range": lambda i: _q(
            "STUDY",
            StudyDate=f"2024{1 + i % 12:02d}01-2024{1 + i % 12:02d}03",
            StudyInstanceUID="",
            PatientName="",
        ),
        "series of a study": lambda i: _q(
            "SERIES",
            StudyInstanceUID=f"{ROOT}.{1 + (i * 7919) % n_studies}",
            SeriesInstanceUID="",
            Modality="",
        ),
        "instances of a series": lambda i: _q(
            "IMAGE",
            StudyInstanceUID=f"{ROOT}.{1 + (i * 7919) % n_studies}",
            SeriesInstanceUID=f"{ROOT}.{1 + (i * 7919) % n_studies}.1",
            SOPInstanceUID="",
        ),
    }


def measure(port: int, called: str, n_studies: int, repeats: int) -> dict[str, tuple[float, float, float]]:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association refused"
    # Like any latency-sensitive SCU: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms per request.
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    out = {}
    try:
        for name, make in queries(n_studies).items():
            times, counts = [], []
            for i in range(repeats):
                t = time.perf_counter()
                n = 0
                for st, _ in assoc.send_c_find(make(i), StudyRootQueryRetrieveInformationModelFind):
                    if st and st.Status in (0xFF00, 0xFF01):
                        n += 1
                times.append((time.perf_counter() - t) * 1000)
                counts.append(n)
            times.sort()
            out[name] = (
                statistics.median(times),
                times[int(0.95 * (len(times) - 1))],
                statistics.mean(counts),
            )
    finally:
        assoc.release()
    return out


def _instance(i: int) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{ROOT}.{i + 1}.1.1"
    ds.StudyInstanceUID = f"{ROOT}.{i + 1}"
    ds.SeriesInstanceUID = f"{ROOT}.{i + 1}.1"
    p = i // 2
    ds.PatientName = f"{FAMILY[p % len(FAMILY)]}^{GIVEN[p % len(GIVEN)]} {p}"
    ds.PatientID = f"P{p}"
    ds.StudyDate, ds.StudyTime = _date(i), "100000"
    ds.AccessionNumber = f"ACC{i}"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = np.zeros((2, 2), np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def serve_orthanc(
    tmp: Path, n: int, plugins: tuple[str, ...] = (), config: dict[str, object] | None = None
) -> tuple[subprocess.Popen[bytes], int, str]:
    """Orthanc on fresh storage loaded with ``n`` one-instance studies; (process, DICOM port, HTTP base).

    ``config`` is merged over the default configuration (e.g. ``{"DefaultEncoding": "Utf8"}``).
    """
    dport, hport = _free_port(), _free_port()
    cfg = {
        "Name": "bench",
        "StorageDirectory": str(tmp / "orthanc"),
        "IndexDirectory": str(tmp / "orthanc"),
        "DicomAet": "ORTHANC",
        "DicomPort": dport,
        "HttpPort": hport,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowFind": True,
        "UnknownSopClassAccepted": True,
        "Plugins": list(plugins),
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        **(config or {}),
    }
    (tmp / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        ["/usr/sbin/Orthanc", str(tmp / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{hport}"
    for _ in range(300):
        try:
            httpx.get(f"{base}/system", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    t0 = time.monotonic()
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(n):
            client.post("/instances", content=_instance(i)).raise_for_status()
    print(f"Orthanc loaded with {n} studies in {time.monotonic() - t0:.1f} s")
    return proc, dport, base


def report(title: str, res: dict[str, tuple[float, float, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'query':28} {'median ms':>10} {'p95 ms':>10} {'matches':>8}")
    for name, (med, p95, n) in res.items():
        print(f"  {name:28} {med:10.2f} {p95:10.2f} {n:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--studies", type=int, default=10_000)
    ap.add_argument("--series", type=int, default=4)
    ap.add_argument("--instances", type=int, default=25, help="per series")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--orthanc", type=int, default=0, help="also load N studies into Orthanc and compare")
    args = ap.parse_args()
    print("command:", shlex.join([".venv/bin/python", "bench/cfind.py", *sys.argv[1:]]))
    print("note: 2-core machine shared with other jobs; figures are noisy")
    with tempfile.TemporaryDirectory(prefix="cfind-bench-") as d:
        tmp = Path(d)
        schema = None
        if args.db == "sqlite":
            url = f"sqlite:///{tmp / 'index.sqlite'}"
        else:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            admin = create_engine(PG, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(text(f'CREATE SCHEMA "{schema}"'))
            url = f"{PG}?options=-csearch_path%3D{schema}"
        procs: list[subprocess.Popen] = []  # type: ignore[type-arg]
        try:
            generate(url, args.studies, args.series, args.instances)
            proc, port, _ = serve_pacs(tmp, url)
            procs.append(proc)
            ours = measure(port, "PACS", args.studies, args.repeats)
            report(
                f"pacs ({args.db}, {args.studies} studies, "
                f"{args.studies * args.series * args.instances} instances)",
                ours,
            )
            if args.orthanc:
                oproc, oport, _ = serve_orthanc(tmp, args.orthanc)
                procs.append(oproc)
                theirs = measure(oport, "ORTHANC", args.orthanc, args.repeats)
                report(f"Orthanc ({args.orthanc} studies)", theirs)
                print(
                    "\n  ratio pacs/Orthanc (median): "
                    + ", ".join(f"{k}: {ours[k][0] / theirs[k][0]:.2f}" for k in ours)
                )
        finally:
            for p in procs:
                p.terminate()
                p.wait(15)
            if schema:
                with admin.connect() as c:
                    c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
