"""Modality Worklist C-FIND latency: ``pacs serve`` next to Orthanc's sample worklist plugin.

Generates ``--items`` scheduled procedure steps (one order each; patients with one to a few
orders, some with Vietnamese UTF-8 names, some of those typed without accents, most with
plausible names from elsewhere; 10 station AE titles over 5 modalities; start dates over 10
days around today) and gives the same items to both servers:

* **pacs**: through the orders service (``--load service``, the default: ``Orders.apply`` in
  this process on the database the server then opens, one transaction per order as the HL7 and
  REST doors do) or through ``POST /api/orders`` on the running server (``--load rest``);
* **Orthanc** (``/usr/sbin/Orthanc`` 1.10 with ``libModalityWorklists.so``): one ``.wl`` file
  per item in its ``Worklists.Database`` folder, written like DCMTK's ``dump2dcm`` writes the
  plugin's sample files (a DICOM file with a meta header, Explicit VR Little Endian,
  ``SpecificCharacterSet`` ISO_IR 192); the plugin reads and matches every file on every query.

Then, over ONE open pynetdicom association per server (Modality Worklist Information Model -
FIND, TCP_NODELAY on the client; ``TCP_NODELAY=1`` for Orthanc's DCMTK), runs the same mix of
``--repeat`` typical modality queries, round robin over six kinds, each repetition with its
own target: station AE title + today's date, modality + a two-day date range, PatientName
``NGUYEN*`` (which Orthanc matches without accent folding: only names typed without accents),
PatientName ``SMITH*`` (ASCII: like for like), Accession Number, Patient ID. After one warm-up
query of each kind it reports median / p95 / max latency and the mean number of matches per
kind, the pacs / Orthanc ratio of the medians, and whether both answered each query with the
same items (Accession Numbers) and the same values. A DCMTK ``findscu -W`` run against each
server cross-checks that both answer a plain DCMTK client too.

    .venv/bin/python bench/worklist.py                          # 10,000 items, 200 queries
    .venv/bin/python bench/worklist.py --items 500 --repeat 20  # quick check
    .venv/bin/python bench/worklist.py --load rest --no-orthanc

Everything lives under ``--out`` (git-ignored; removed at the end unless ``--keep``). Prints
the command line, each command it runs and the configuration differences that matter.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import free_port, show  # bench/common.py

from pacs import runtime
from pacs.config import load
from pacs.dicom.text import ascii_text
from pacs.model import Origin
from pacs.services.orders.model import Control, OrderMessage, PatientInfo, ScheduledStep

ROOT = Path(__file__).resolve().parent.parent
ORTHANC = "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libModalityWorklists.so"
SCU_AE = "WLBENCH"
#: What dump2dcm writes as MediaStorageSOPClassUID when the data set names no SOP Class (DCMTK's
#: private "generic file" class): what the plugin's sample .wl files carry.
DCMTK_GENERIC_FILE = "1.2.276.0.7230010.3.1.0.1"

# ---------------------------------------------------------------------- data

#: Station AE title -> (modality, station name, location): two stations per modality.
STATIONS = {
    "CT01": ("CT", "CT-1", "KHOA CDHA 1"),
    "CT02": ("CT", "CT-2", "KHOA CDHA 1"),
    "MR01": ("MR", "MRI-1", "KHOA CDHA 2"),
    "MR02": ("MR", "MRI-2", "KHOA CDHA 2"),
    "US01": ("US", "SIEU AM 1", "PHONG 105"),
    "US02": ("US", "SIEU AM 2", "PHONG 106"),
    "DX01": ("DX", "XQ-1", "PHONG 101"),
    "DX02": ("DX", "XQ-2", "PHONG 102"),
    "MG01": ("MG", "NHU ANH 1", "PHONG 110"),
    "MG02": ("MG", "NHU ANH 2", "PHONG 110"),
}
MODALITIES = sorted({m for m, _, _ in STATIONS.values()})
PROCEDURES = {
    "CT": ["CT sọ não không tiêm thuốc", "CT ngực có tiêm thuốc cản quang", "CT bụng chậu"],
    "MR": ["MRI cột sống thắt lưng", "MRI sọ não", "MRI khớp gối"],
    "US": ["Siêu âm bụng tổng quát", "Siêu âm tuyến giáp", "Siêu âm tim"],
    "DX": ["X-quang ngực thẳng", "X-quang cột sống cổ", "X-quang khớp gối"],
    "MG": ["Chụp nhũ ảnh hai bên", "Chụp nhũ ảnh tầm soát"],
}
#: Vietnamese family names, weighted (Nguyễn is the most common by far).
VN_FAMILY = [
    ("Nguyễn", 30),
    ("Trần", 11),
    ("Lê", 9),
    ("Phạm", 7),
    ("Hoàng", 5),
    ("Huỳnh", 5),
    ("Phan", 5),
    ("Vũ", 4),
    ("Võ", 4),
    ("Đặng", 3),
    ("Bùi", 3),
    ("Đỗ", 3),
    ("Hồ", 2),
    ("Ngô", 2),
    ("Dương", 2),
]
VN_MIDDLE = {"M": ["Văn", "Đức", "Minh", "Quốc", "Hữu", "Công"], "F": ["Thị", "Ngọc", "Thu", "Minh", "Hồng"]}
VN_GIVEN = {
    "M": ["An", "Bình", "Dũng", "Hùng", "Long", "Nam", "Phúc", "Quang", "Sơn", "Thắng", "Tuấn", "Việt"],
    "F": ["Anh", "Châu", "Hà", "Hương", "Lan", "Linh", "Mai", "Ngân", "Thảo", "Trang", "Vy", "Yến"],
}
FAMILY = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson", "Anderson", "Taylor",
    "Thomas", "Moore", "Martin", "Jackson", "Thompson", "White", "Harris", "Clark", "Lewis", "Walker",
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Dubois", "Lefèvre", "Moreau", "Laurent", "Girard",
    "García", "Fernández", "López", "Martínez", "Rossi", "Russo", "Kowalski", "Novák", "Tanaka", "Kim",
]  # fmt: skip
GIVEN = {
    "M": ["James", "John", "Robert", "Michael", "David", "Peter", "Thomas", "Daniel", "Paul", "Mark",
          "Hans", "Jürgen", "Pierre", "François", "José", "Luis", "Marco", "Jan", "Hiroshi", "Min-jun"],
    "F": ["Mary", "Anna", "Linda", "Susan", "Karen", "Emma", "Laura", "Julia", "Sarah", "Claire",
          "Ursula", "Hélène", "Sophie", "María", "Lucía", "Giulia", "Ewa", "Jana", "Yuki", "Seo-yeon"],
}  # fmt: skip
PHYSICIANS = ["Trần^Thị Mai", "Lê^Quang Vinh", "Phạm^Minh Đức", "Nguyễn^Thu Hằng", "Brown^Alice"]
PRIORITIES = ["ROUTINE", "ROUTINE", "ROUTINE", "HIGH", "STAT"]


@dataclass(frozen=True)
class Patient:
    """One patient of the generated worklist."""

    patient_id: str
    name: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class Item:
    """One scheduled procedure step (one order), as both servers get it."""

    n: int
    patient: Patient
    accession: str
    placer: str
    study_uid: str
    requested_procedure_id: str
    description: str
    priority: str
    referring: str
    station_ae: str
    modality: str
    station_name: str
    location: str
    date: str  # YYYYMMDD
    time: str  # HHMMSS
    step_id: str
    performer: str


def _patient(rng: random.Random, k: int) -> Patient:
    sex = rng.choice("MF")
    kind = rng.random()
    if kind < 0.20:  # Vietnamese, in UTF-8 as the HIS registered it
        family = rng.choices([f for f, _ in VN_FAMILY], [w for _, w in VN_FAMILY])[0]
        name = f"{family}^{rng.choice(VN_MIDDLE[sex])} {rng.choice(VN_GIVEN[sex])}"
        if kind < 0.04:  # ... or typed without accents (an ASCII-only registration desk)
            name = ascii_text(name)
    else:
        name = f"{rng.choice(FAMILY)}^{rng.choice(GIVEN[sex])}"
    birth = date(1935, 1, 1) + timedelta(days=rng.randrange(365 * 88))
    return Patient(f"PID{k:07d}", name, birth.strftime("%Y%m%d"), sex)


def generate(n_items: int, today: date, seed: int) -> list[Item]:
    """``n_items`` steps for about ``2/3 * n_items`` patients, dates ``today-2 .. today+7``."""
    rng = random.Random(seed)
    patients = [_patient(rng, k + 1) for k in range(max(1, n_items * 2 // 3))]
    stations = list(STATIONS)
    items = []
    for n in range(n_items):
        ae = stations[n % len(stations)]
        modality, station_name, location = STATIONS[ae]
        day = today + timedelta(days=rng.randrange(-2, 8))
        minute = rng.randrange(7 * 60, 18 * 60)
        items.append(
            Item(
                n=n,
                patient=rng.choice(patients),
                accession=f"ACC{n + 1:07d}",
                placer=f"PO{n + 1:07d}",
                study_uid=generate_uid(entropy_srcs=[f"bench/worklist.py {seed} {n}"]),
                requested_procedure_id=f"RP{n + 1:07d}",
                description=rng.choice(PROCEDURES[modality]),
                priority=rng.choice(PRIORITIES),
                referring=rng.choice(PHYSICIANS),
                station_ae=ae,
                modality=modality,
                station_name=station_name,
                location=location,
                date=day.strftime("%Y%m%d"),
                time=f"{minute // 60:02d}{minute % 60:02d}00",
                step_id=f"SPS{n + 1:07d}",
                performer=rng.choice(PHYSICIANS),
            )
        )
    return items


# ---------------------------------------------------------------------- loading


def order_message(item: Item) -> OrderMessage:
    """The item as the orders service's :class:`OrderMessage` (a new order, one step)."""
    p = item.patient
    return OrderMessage(
        control=Control.NEW,
        placer_order_number=item.placer,
        accession_number=item.accession,
        patient=PatientInfo(patient_id=p.patient_id, name=p.name, birth_date=p.birth_date, sex=p.sex),
        requested_procedure_id=item.requested_procedure_id,
        requested_procedure_description=item.description,
        study_instance_uid=item.study_uid,
        steps=(
            ScheduledStep(
                step_id=item.step_id,
                modality=item.modality,
                station_ae_title=item.station_ae,
                station_name=item.station_name,
                location=item.location,
                start=item.date + item.time,
                description=item.description,
                performing_physician=item.performer,
            ),
        ),
        referring_physician=item.referring,
        priority=item.priority,
    )


def order_json(item: Item) -> dict[str, object]:
    """The item as a ``POST /api/orders`` body (the same content as :func:`order_message`)."""
    p = item.patient
    return {
        "control": "NW",
        "placer_order_number": item.placer,
        "accession_number": item.accession,
        "patient": {"patient_id": p.patient_id, "name": p.name, "birth_date": p.birth_date, "sex": p.sex},
        "requested_procedure": {"id": item.requested_procedure_id, "description": item.description},
        "study_instance_uid": item.study_uid,
        "steps": [
            {
                "step_id": item.step_id,
                "modality": item.modality,
                "station_ae_title": item.station_ae,
                "station_name": item.station_name,
                "location": item.location,
                "start": item.date + item.time,
                "description": item.description,
                "performing_physician": item.performer,
            }
        ],
        "referring_physician": item.referring,
        "priority": item.priority,
    }


def load_service(config: Path, items: list[Item]) -> float:
    """``Orders.apply`` for every item, in this process, on the database of ``config``."""
    rt = runtime.build(load(config))
    origin = Origin(protocol="cli", user="bench/worklist.py")
    try:
        t0 = time.perf_counter()
        for item in items:
            rt.orders.apply(order_message(item), origin)
        return time.perf_counter() - t0
    finally:
        rt.close()


def load_rest(http: str, items: list[Item]) -> float:
    """``POST /api/orders`` for every item, over one keep-alive connection."""
    import httpx

    with httpx.Client(base_url=f"http://{http}", timeout=60) as client:
        t0 = time.perf_counter()
        for item in items:
            r = client.post("/api/orders", json=order_json(item))
            if r.status_code != 201:
                raise RuntimeError(f"POST /api/orders {item.placer}: {r.status_code} {r.text[:500]}")
        return time.perf_counter() - t0


def worklist_file(item: Item) -> Dataset:
    """The item as a worklist file's data set, with the same attributes pacs keeps."""
    p = item.patient
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.AccessionNumber = item.accession
    ds.ReferringPhysicianName = item.referring
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    ds.StudyInstanceUID = item.study_uid
    ds.RequestedProcedureID = item.requested_procedure_id
    ds.RequestedProcedureDescription = item.description
    ds.RequestedProcedurePriority = item.priority
    ds.PlacerOrderNumberImagingServiceRequest = item.placer
    sps = Dataset()
    sps.ScheduledStationAETitle = item.station_ae
    sps.ScheduledProcedureStepStartDate = item.date
    sps.ScheduledProcedureStepStartTime = item.time
    sps.Modality = item.modality
    sps.ScheduledPerformingPhysicianName = item.performer
    sps.ScheduledProcedureStepDescription = item.description
    sps.ScheduledStationName = item.station_name
    sps.ScheduledProcedureStepLocation = item.location
    sps.ScheduledProcedureStepID = item.step_id
    sps.ScheduledProcedureStepStatus = "SCHEDULED"
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DCMTK_GENERIC_FILE
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[item.study_uid, "wl"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def write_worklists(folder: Path, items: list[Item]) -> float:
    """One ``.wl`` file per item; returns the seconds it took."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for item in items:
        worklist_file(item).save_as(folder / f"{item.n + 1:07d}.wl", enforce_file_format=True)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------- servers


@dataclass
class Server:
    """A running worklist SCP."""

    name: str
    port: int
    called_ae: str
    http: str = ""


def pacs_config(run: Path, items: int) -> Path:
    """``pacs serve`` configuration on fresh storage (SQLite index under it)."""
    cfg = run / "config.toml"
    cfg.write_text(
        f"""[dicom]
ae_title = "PACS"
host = "127.0.0.1"
port = 0
workers = 1
allowed_aes = [{{ ae_title = "{SCU_AE}", services = ["worklist"] }}]
[worklist]
max_results = {max(2000, items)}
[http]
port = 0
workers = 1
[auth]
enabled = false
[storage]
path = "{run / "storage"}"
[log]
level = "INFO"
""",
        encoding="utf-8",
    )
    return cfg


@contextmanager
def pacs_server(run: Path, cfg: Path) -> Iterator[Server]:
    """``pacs serve`` on ``cfg``; stopped on exit."""
    cmd = [sys.executable, "-m", "pacs.cli", "serve", "--config", str(cfg)]
    show(cmd)
    with open(run / "serve.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"pacs serve did not start: {(run / 'serve.log').read_text()[-2000:]}")
        ready = dict(p.split("=", 1) for p in line.split()[1:])
        yield Server("pacs", int(ready["dicom"].rsplit(":", 1)[1]), "PACS", ready["http"])
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def orthanc_server(run: Path, folder: Path) -> Iterator[Server]:
    """Orthanc with the sample worklist plugin serving ``folder``; stopped on exit."""
    dicom_port, http_port = free_port(), free_port()
    cfg = run / "orthanc.json"
    config = {
        "Name": "bench-worklist",
        "StorageDirectory": str(run / "orthanc-storage"),
        "IndexDirectory": str(run / "orthanc-index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        # 1.10: "DicomAlwaysAllowFind" covers patient/study/series/instance C-FIND only.
        "DicomAlwaysAllowFindWorklist": True,
        # Used to answer C-FIND, worklists included (the files themselves say ISO_IR 192).
        "DefaultEncoding": "Utf8",
        "Plugins": [PLUGIN],
        "Worklists": {"Enable": True, "Database": str(folder)},
    }
    cfg.write_text(json.dumps(config, indent=2), encoding="utf-8")
    env = {"TCP_NODELAY": "1"}
    cmd = [ORTHANC, str(cfg)]
    show(cmd, env)
    with open(run / "orthanc.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (run / "orthanc.log").read_text()[-2000:]
                    raise RuntimeError(f"Orthanc did not start: {tail}") from None
                time.sleep(0.1)
        if "database of worklists will be read" not in (run / "orthanc.log").read_text():
            raise RuntimeError("Orthanc started without its worklist plugin: see orthanc.log")
        yield Server("orthanc", dicom_port, "ORTHANC", f"127.0.0.1:{http_port}")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------- queries

#: Return keys every query asks for (what a modality typically shows and copies into its images).
TOP_KEYS = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedurePriority",
]
SPS_KEYS = [
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "Modality",
    "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription",
    "ScheduledStationName",
    "ScheduledProcedureStepLocation",
    "ScheduledProcedureStepID",
]


def identifier(top: dict[str, str] | None = None, sps: dict[str, str] | None = None) -> Dataset:
    """A worklist query: every return key empty except the matching keys given."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for k in TOP_KEYS:
        setattr(ds, k, (top or {}).get(k, ""))
    item = Dataset()
    for k in SPS_KEYS:
        setattr(item, k, (sps or {}).get(k, ""))
    ds.ScheduledProcedureStepSequence = Sequence([item])
    return ds


def query_kinds(items: list[Item], today: date, seed: int) -> dict[str, Callable[[int], Dataset]]:
    """The measured kinds of query; call with the repetition number for that repetition's target."""
    d0 = today.strftime("%Y%m%d")
    d1 = (today + timedelta(days=1)).strftime("%Y%m%d")
    stations = list(STATIONS)
    rng = random.Random(seed + 1)
    accessions = [rng.choice(items).accession for _ in range(1000)]
    patient_ids = [rng.choice(items).patient.patient_id for _ in range(1000)]
    return {
        "station AE + today": lambda i: identifier(
            sps={
                "ScheduledStationAETitle": stations[i % len(stations)],
                "ScheduledProcedureStepStartDate": d0,
            }
        ),
        "modality + 2-day range": lambda i: identifier(
            sps={"Modality": MODALITIES[i % len(MODALITIES)], "ScheduledProcedureStepStartDate": f"{d0}-{d1}"}
        ),
        "PatientName NGUYEN*": lambda i: identifier({"PatientName": "NGUYEN*"}),
        # Like for like: an ASCII surname, the same however the server treats accents.
        "PatientName SMITH*": lambda i: identifier({"PatientName": "SMITH*"}),
        "AccessionNumber": lambda i: identifier({"AccessionNumber": accessions[i % len(accessions)]}),
        "PatientID": lambda i: identifier({"PatientID": patient_ids[i % len(patient_ids)]}),
    }


@dataclass
class Answer:
    """One query's outcome."""

    ms: float
    status: int
    identifiers: list[Dataset] = field(default_factory=list)


def _value(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def accessions_of(answer: Answer) -> list[str]:
    """The Accession Numbers of an answer's matches, sorted."""
    return sorted(_value(ds, "AccessionNumber") for ds in answer.identifiers)


def flatten(ds: Dataset) -> dict[str, str]:
    """An answer's requested values as text (the sequence item's under ``SPS.``)."""
    out = {k: _value(ds, k) for k in TOP_KEYS}
    seq = ds.get("ScheduledProcedureStepSequence")
    item = seq[0] if seq else Dataset()
    out.update({f"SPS.{k}": _value(item, k) for k in SPS_KEYS})
    return out


def run_queries(
    server: Server, kinds: dict[str, Callable[[int], Dataset]], repeat: int
) -> dict[str, list[Answer]]:
    """One association; a warm-up query of each kind, then ``repeat`` queries round robin."""
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.called_ae)
    if not assoc.is_established:
        raise RuntimeError(f"{server.name}: association refused or aborted")
    # Like any latency-sensitive SCU: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms per request.
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    names = list(kinds)
    out: dict[str, list[Answer]] = {k: [] for k in names}

    def one(query: Dataset) -> Answer:
        found: list[Dataset] = []
        final = -1
        t = time.perf_counter()
        for st, ds in assoc.send_c_find(query, ModalityWorklistInformationFind):
            if not st:  # no response within the timeout, or the association went away
                break
            if st.Status in (0xFF00, 0xFF01):
                found.append(ds)
            else:
                final = int(st.Status)
        return Answer((time.perf_counter() - t) * 1000, final, found)

    try:
        for name in names:
            one(kinds[name](-1))
        for i in range(repeat):
            name = names[i % len(names)]
            rep = i // len(names)
            out[name].append(one(kinds[name](rep)))
    finally:
        assoc.release()
    return out


HANDLER_LINE = re.compile(rf"worklist C-FIND matches=\d+ in ([\d.]+) ms from {SCU_AE}@")


def server_side(log: Path, names: list[str], repeat: int) -> dict[str, list[float]]:
    """The handler time pacs logged for each measured query (after the warm-ups), by kind."""
    times = [float(m.group(1)) for m in HANDLER_LINE.finditer(log.read_text(encoding="utf-8"))]
    measured = times[len(names) : len(names) + repeat]
    out: dict[str, list[float]] = {n: [] for n in names}
    for i, t in enumerate(measured):
        out[names[i % len(names)]].append(t)
    return out if len(measured) == repeat else {}


FINDSCU_PENDING = re.compile(r"Find Response: \d+ \(Pending")
FINDSCU_FINAL = re.compile(r"Received Final Find Response \(([^)]*)\)")


def findscu(server: Server, station: str, day: str) -> tuple[int, float, str]:
    """DCMTK ``findscu -W``: station + date; (pending responses, seconds, final status word)."""
    cmd = ["findscu", "-v", "-W", "-aet", SCU_AE, "-aec", server.called_ae]
    for key in [
        "SpecificCharacterSet=ISO_IR 192",
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "ScheduledProcedureStepSequence[0].Modality",
        f"ScheduledProcedureStepSequence[0].ScheduledStationAETitle={station}",
        f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={day}",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
    ]:
        cmd += ["-k", key]
    cmd += ["127.0.0.1", str(server.port)]
    env = {"TCP_NODELAY": "1"}
    show(cmd, env)
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    seconds = time.perf_counter() - t
    text = done.stdout + done.stderr
    finals = FINDSCU_FINAL.findall(text)
    final = finals[-1] if finals else f"no final response, exit {done.returncode}"
    if done.returncode != 0 or final != "Success":
        print(f"  findscu against {server.name} (exit {done.returncode}): ...{text[-1500:]}")
    return len(FINDSCU_PENDING.findall(text)), seconds, final


# ---------------------------------------------------------------------- report


@dataclass
class Figures:
    """Latency and matches of one kind of query against one server."""

    median: float
    p95: float
    max: float
    matches: float
    failed: int

    @classmethod
    def of(cls, answers: list[Answer]) -> Figures:
        times = sorted(a.ms for a in answers)
        return cls(
            statistics.median(times),
            times[round(0.95 * (len(times) - 1))],
            times[-1],
            statistics.mean(len(a.identifiers) for a in answers),
            sum(1 for a in answers if a.status != 0),
        )

    def cell(self) -> str:
        return f"{self.median:7.1f} / {self.p95:7.1f} / {self.max:7.1f} ({self.matches:6.1f})"


def compare(ours: dict[str, list[Answer]], theirs: dict[str, list[Answer]]) -> list[str]:
    """Where the two servers' answers to the same query differ (matches, then values)."""
    notes = []
    for name in ours:
        differ = [
            (a, b)
            for a, b in zip(ours[name], theirs[name], strict=True)
            if accessions_of(a) != accessions_of(b)
        ]
        if differ:
            a, b = differ[0]
            only_ours = sorted(set(accessions_of(a)) - set(accessions_of(b)))
            only_theirs = sorted(set(accessions_of(b)) - set(accessions_of(a)))
            example = ""
            if only_ours:
                by_acc = {_value(ds, "AccessionNumber"): ds for ds in a.identifiers}
                example = f", e.g. {only_ours[0]} PatientName {_value(by_acc[only_ours[0]], 'PatientName')!r}"
            notes.append(
                f"{name}: different items in {len(differ)} of {len(ours[name])} queries; first: "
                f"{len(only_ours)} only in pacs, {len(only_theirs)} only in Orthanc{example}"
            )
        values: dict[str, tuple[str, str]] = {}
        for a, b in zip(ours[name], theirs[name], strict=True):
            mine = {_value(ds, "AccessionNumber"): flatten(ds) for ds in a.identifiers}
            for ds in b.identifiers:
                other = flatten(ds)
                here = mine.get(other["AccessionNumber"])
                for key, value in (here or {}).items():
                    if value != other[key] and key not in values:
                        values[key] = (value, other[key])
        for key, (mine_v, other_v) in values.items():
            notes.append(f"{name}: {key} differs, e.g. pacs {mine_v!r} vs Orthanc {other_v!r}")
    return notes


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10_000, help="scheduled steps (one order each)")
    ap.add_argument("--repeat", type=int, default=200, help="queries per server, over all kinds")
    ap.add_argument(
        "--load",
        choices=["service", "rest"],
        default="service",
        help="into pacs: Orders.apply in-process (default) or POST /api/orders",
    )
    ap.add_argument(
        "--client",
        choices=("reactor", "pynetdicom"),
        default="reactor",
        help="the SCU: pynetdicom with the archive's wait-on-socket reactor (no 1 ms polling sleeps "
        "between responses, so the servers are measured, not the client's loop), or stock pynetdicom",
    )
    ap.add_argument("--seed", type=int, default=20261204)
    ap.add_argument("--no-orthanc", action="store_true", help="measure pacs only")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    args = ap.parse_args(argv)
    if args.items < 1 or args.repeat < 6:
        ap.error("--items must be at least 1 and --repeat at least 6 (one query of each kind)")
    print("command:", shlex.join([".venv/bin/python", "bench/worklist.py", *(argv or sys.argv[1:])]))
    print(f"host: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.client == "reactor":
        from pacs.scp import pynetdicom_patches

        pynetdicom_patches.apply()  # the SCU's associations wait on the socket (pacs.scp.reactor)
        pynetdicom_patches.set_pdu_dumps(False)
    print(f"client: pynetdicom {'with the wait-on-socket reactor' if args.client == 'reactor' else 'stock'}")
    run = args.out.resolve() / "worklist"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    today = date.today()
    items = generate(args.items, today, args.seed)
    patients = {i.patient.patient_id for i in items}
    families = [i.patient.name.split("^")[0] for i in items]
    accented = {f for f, _ in VN_FAMILY}
    unaccented = {ascii_text(f) for f in accented} - accented
    vietnamese = sum(1 for f in families if f in accented)
    typed = sum(1 for f in families if f in unaccented)
    print(
        f"{len(items)} scheduled steps, {len(patients)} patients; steps with a Vietnamese name: "
        f"{vietnamese} in UTF-8, {typed} typed without accents; {len(STATIONS)} stations, "
        f"{len(MODALITIES)} modalities, "
        f"{(today - timedelta(days=2)):%Y-%m-%d} .. {(today + timedelta(days=7)):%Y-%m-%d}"
    )
    kinds = query_kinds(items, today, args.seed)
    results: dict[str, dict[str, list[Answer]]] = {}
    cross: dict[str, tuple[int, float, str]] = {}
    check_station, check_day = next(iter(STATIONS)), today.strftime("%Y%m%d")
    try:
        print("\n[pacs]")
        cfg = pacs_config(run, args.items)
        if args.load == "service":
            seconds = load_service(cfg, items)
            print(f"  loaded through the orders service in-process (Orders.apply): {seconds:.1f} s")
        with pacs_server(run, cfg) as server:
            if args.load == "rest":
                seconds = load_rest(server.http, items)
                print(f"  loaded through POST /api/orders on the running server: {seconds:.1f} s")
            results["pacs"] = run_queries(server, kinds, args.repeat)
            cross["pacs"] = findscu(server, check_station, check_day)
        handler_ms = server_side(run / "serve.log", list(kinds), args.repeat)
        if not args.no_orthanc:
            print("\n[orthanc]")
            folder = run / "worklists"
            seconds = write_worklists(folder, items)
            print(f"  wrote {len(items)} .wl files in {folder} in {seconds:.1f} s")
            with orthanc_server(run, folder) as server:
                results["orthanc"] = run_queries(server, kinds, args.repeat)
                cross["orthanc"] = findscu(server, check_station, check_day)
    finally:
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)

    figures = {s: {k: Figures.of(a) for k, a in r.items()} for s, r in results.items()}
    print(
        f"\nModality Worklist C-FIND, {args.items} items, {args.repeat} queries per server over one "
        f"association (after one warm-up query of each kind); pacs loaded via "
        f"{'Orders.apply in-process' if args.load == 'service' else 'POST /api/orders'}"
    )
    print("median / p95 / max ms (mean matches)")
    both = "orthanc" in figures
    head = f"  {'query':24} {'n':>3} {'pacs':>36}"
    print(head + (f" {'orthanc':>36} {'ratio':>6}" if both else ""))
    for name in kinds:
        ours = figures["pacs"][name]
        line = f"  {name:24} {len(results['pacs'][name]):3} {ours.cell():>36}"
        if both:
            theirs = figures["orthanc"][name]
            line += f" {theirs.cell():>36} {ours.median / theirs.median:6.2f}"
        print(line)
    if both:
        print("ratio = pacs / Orthanc median (lower is better)")
    every = [a.ms for a in (x for answers in results["pacs"].values() for x in answers)]
    print(f"pacs, all {len(every)} queries: median {statistics.median(every):.1f} ms as the client saw them")
    if handler_ms:
        print(
            "pacs server side (its log: from the identifier handed to the handler to the last pending "
            "response queued for sending), median ms per kind:"
        )
        for name, times in handler_ms.items():
            print(f"  {name:24} {statistics.median(times):7.1f}")
        flat = [t for times in handler_ms.values() for t in times]
        print(f"  {'all kinds':24} {statistics.median(flat):7.1f}")
        print(
            "  (the rest of the client's time is the client's own: pynetdicom decodes every answer "
            "into a pydicom Dataset)"
        )
    for server, figs in figures.items():
        failed = {k: f.failed for k, f in figs.items() if f.failed}
        if failed:
            print(f"{server}: queries without a final Success status: {failed}")
    for server, (count, seconds, final) in cross.items():
        # The first measured "station AE + today" query asked the same (station index 0, today).
        same = len(results[server]["station AE + today"][0].identifiers)
        print(
            f"findscu -W (station {check_station}, {check_day}) against {server}: {count} responses, "
            f"{final}, {seconds * 1000:.0f} ms including process start (pynetdicom, same query: {same})"
        )
    if "orthanc" in results:
        notes = compare(results["pacs"], results["orthanc"])
        print("answers compared (same Accession Numbers, same values):")
        for line in notes or ["identical for every query"]:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
