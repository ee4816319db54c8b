"""Load run: storescu senders, web readers and hostile peers at once against one ``pacs serve``, then verify.

Starts ``pacs serve`` on loopback (ports picked by the OS, fresh storage under ``--out``), then for
``--seconds`` runs ``--senders`` threads that each generate a small CT study (``--per-study``
slices of 256x256, Vietnamese names) and send it with DCMTK ``storescu`` (one association per
study), and ``--readers`` threads that loop over QIDO-RS (studies, series, instances), WADO-RS
metadata and a rendered PNG of an instance, and ``--hostile`` threads that each keep one abusive
connection going at a time, in turn: DICOM peers that stay silent, dribble an A-ASSOCIATE-RQ a
byte at a time, announce a 1 GiB A-ASSOCIATE-RQ and stream it, or a P-DATA PDU far over the
negotiated maximum; HTTP clients that dribble headers, stream a 256 MiB sign-in body, ask for a
frame list thousands of frames long, or fetch a decompression bomb (a multi-frame JPEG 2000
object of a few KB that decodes to gigabytes, stored first). Stops by itself; then compares the
SOP Instance UIDs sent with those indexed and runs ``pacs verify``. Prints errors, counts,
latencies, what the hostile peers got, and the server's peak resident memory (all its
processes, sampled every 100 ms).

    .venv/bin/python bench/load.py [--seconds 120] [--senders 8] [--readers 8] [--hostile 50]
                                   [--database-url URL] [--workers N] [--out bench/out/load]

Not run by the test suite. Loopback only; bounded in time and in the number of studies.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parent.parent
MAX_STUDIES_PER_SENDER = 2000
MiB = 1 << 20


@dataclass
class Stats:
    """What the threads observed (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)  # in storescu runs that reported success
    acknowledged_runs: int = 0
    failed_runs: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    hostile: Counter[str] = field(default_factory=Counter)
    peak_rss_kib: int = 0


def make_study(folder: Path, n: int, sender: int, k: int) -> list[str]:
    """Write one study of ``n`` CT slices; returns their SOP Instance UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(sender * 100_000 + k)
    uids = []
    for i in range(n):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName = f"Nguyễn^Văn Tải {sender}-{k}"
        ds.PatientID = f"LOAD{sender:02d}{k:05d}"
        ds.StudyDate, ds.StudyTime = "20250110", f"{10 + sender % 8:02d}{k % 60:02d}00"
        ds.AccessionNumber = f"L{sender}{k}"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, i + 1
        ds.StudyDescription = "CT tải thử"
        ds.Rows = ds.Columns = 256
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = rng.integers(0, 2000, (256, 256), dtype=np.int16).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(folder / f"{i:04d}.dcm", enforce_file_format=True)
        uids.append(str(ds.SOPInstanceUID))
    return uids


def sender(idx: int, port: int, work: Path, per_study: int, deadline: float, stats: Stats) -> None:
    """Generate and send studies with storescu until the deadline."""
    for k in range(MAX_STUDIES_PER_SENDER):
        if time.monotonic() >= deadline:
            return
        folder = work / f"s{idx}" / f"study{k}"
        uids = make_study(folder, per_study, idx, k)
        with stats.lock:
            stats.sent.update(uids)
        cmd = [
            "storescu",
            "-aet",
            "STORESCU",
            "-aec",
            "PACS",
            "+sd",
            "-nh",
            "127.0.0.1",
            str(port),
            str(folder),
        ]
        t0 = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        elapsed = time.monotonic() - t0
        with stats.lock:
            stats.latencies["storescu study"].append(elapsed)
            if done.returncode == 0 and "E:" not in done.stderr:
                stats.acknowledged_runs += 1
                stats.acknowledged.update(uids)
            else:
                stats.failed_runs.append(f"sender {idx} study {k}: rc={done.returncode} {done.stderr[-300:]}")
        shutil.rmtree(folder, ignore_errors=True)


def reader(idx: int, base: str, deadline: float, stats: Stats) -> None:
    """QIDO + metadata + rendered in a loop until the deadline."""
    rnd = random.Random(idx)
    with httpx.Client(base_url=base, timeout=60) as client:

        def get(kind: str, url: str, **kw: object) -> httpx.Response | None:
            t0 = time.monotonic()
            try:
                r = client.get(url, **kw)  # type: ignore[arg-type]
            except httpx.HTTPError as exc:
                with stats.lock:
                    stats.errors.append(f"{kind} {url}: {type(exc).__name__} {exc}")
                return None
            with stats.lock:
                stats.latencies[kind].append(time.monotonic() - t0)
                stats.statuses[f"{kind} {r.status_code}"] += 1
                if r.status_code >= 400:
                    stats.errors.append(f"{kind} {url}: {r.status_code} {r.text[:200]}")
            return r

        while time.monotonic() < deadline:
            r = get("qido studies", "/dicom-web/studies", params={"limit": "50", "PatientName": "nguyen*"})
            if r is None or r.status_code != 200 or not r.json():
                time.sleep(0.2)
                continue
            study = rnd.choice(r.json())["0020000D"]["Value"][0]
            r = get("qido series", f"/dicom-web/studies/{study}/series")
            if r is None or r.status_code != 200 or not r.json():
                continue
            series = r.json()[0]["0020000E"]["Value"][0]
            r = get("qido instances", f"/dicom-web/studies/{study}/series/{series}/instances")
            if r is None or r.status_code != 200 or not r.json():
                continue
            sop = rnd.choice(r.json())["00080018"]["Value"][0]
            get("metadata", f"/dicom-web/studies/{study}/metadata")
            get(
                "rendered",
                f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/rendered",
                headers={"Accept": "image/png"},
            )


def _assoc_rq(calling: str = "STORESCU") -> bytes:
    """A minimal A-ASSOCIATE-RQ for Verification (PS3.8 9.3.2)."""

    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body

    app = item(0x10, b"1.2.840.10008.3.1.1.1")
    pc = item(0x20, b"\x01\x00\x00\x00" + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)))
    body = (
        struct.pack(">HH", 1, 0)
        + b"PACS".ljust(16)
        + calling.encode().ljust(16)
        + bytes(32)
        + app
        + pc
        + user
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _until_closed(sock: socket.socket, deadline: float) -> str:
    """Wait for the server to close ``sock``; "closed" or "still open" at the deadline."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
        try:
            if not sock.recv(65536):
                return "closed"
        except TimeoutError:
            continue
        except OSError:
            return "closed"
    return "still open"


def _stream(sock: socket.socket, first: bytes, total: int, deadline: float) -> str:
    """Send ``first`` then zeros up to ``total`` bytes; "refused after N MiB" once the server cuts it."""
    sent = 0
    chunk = b"\0" * MiB
    try:
        sock.sendall(first)
        while sent < total and time.monotonic() < deadline:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        return f"refused after {sent // MiB // 16 * 16}+ MiB"
    return f"accepted {sent // MiB} MiB"


def hostile(idx: int, dport: int, hport: int, bomb: str, frames: str, deadline: float, stats: Stats) -> None:
    """One abusive connection at a time, cycling through the kinds, until the deadline."""
    kinds = [
        "dicom silent",
        "dicom dribble",
        "dicom 1 GiB A-ASSOCIATE-RQ",
        "dicom P-DATA over max",
        "http dribbled headers",
        "http 256 MiB sign-in body",
        "http frame list",
        "http bomb",
    ]
    k = idx
    source = f"127.0.{(idx + 2) // 250}.{(idx + 2) % 250}"
    while time.monotonic() < deadline:
        kind = kinds[k % len(kinds)]
        k += 1
        port = dport if kind.startswith("dicom") else hport
        end = min(deadline, time.monotonic() + 60)
        try:
            # Each hostile peer is its own host (127.0.0.2, .3, ...): the senders and readers are
            # 127.0.0.1, as modalities and workstations are other machines than an attacker's.
            sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        except OSError as exc:
            outcome = f"connect failed ({type(exc).__name__})"
        else:
            began = time.monotonic()
            try:
                outcome = _abuse(kind, sock, bomb, frames, end)
            except OSError as exc:
                outcome = f"closed ({type(exc).__name__})"
            finally:
                sock.close()
            if outcome == "still open":  # when the run ended: within the server's deadlines, or not?
                age = time.monotonic() - began
                outcome = f"still open at the end, {'over' if age > 40 else 'under'} 40 s old"
        with stats.lock:
            stats.hostile[f"{kind}: {outcome}"] += 1


def _abuse(kind: str, sock: socket.socket, bomb: str, frames: str, end: float) -> str:
    if kind == "dicom silent":
        return _until_closed(sock, end)
    if kind == "dicom dribble":
        for b in _assoc_rq():
            if time.monotonic() > end:
                return "still open"
            sock.sendall(bytes([b]))
            time.sleep(0.5)
        return _until_closed(sock, end)
    if kind == "dicom 1 GiB A-ASSOCIATE-RQ":
        return _stream(sock, struct.pack(">BBI", 0x01, 0, 1 << 30), 1 << 30, end)
    if kind == "dicom P-DATA over max":
        sock.sendall(_assoc_rq())
        if sock.recv(1) != b"\x02":
            return "not accepted"
        return _stream(sock, struct.pack(">BBI", 0x04, 0, 0xFFFFFFF0), 512 * MiB, end)
    if kind == "http dribbled headers":
        for b in b"GET /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200:
            if time.monotonic() > end:
                return "still open"
            sock.sendall(bytes([b]))
            time.sleep(0.5)
        return _until_closed(sock, end)
    if kind == "http 256 MiB sign-in body":
        head = b"POST /api/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        return _http_answer(sock, head, 256 * MiB, end)
    path = bomb if kind == "http bomb" else frames
    if not path:
        return "no target"
    # The bomb is asked for whole and decoded (uncompressed transfer syntax): 1.25 GiB of pixels.
    accept = (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
        if kind == "http bomb"
        else "*/*"
    )
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n".encode()
    )
    sock.settimeout(60)
    data = sock.recv(200)
    first = data.split(b"\r\n", 1)[0].decode(errors="replace")
    while sock.recv(1 << 16):  # read (and drop) whatever body comes
        pass
    return first.split(" ", 2)[1] if first.startswith("HTTP/") else "no answer"


def _http_answer(sock: socket.socket, head: bytes, total: int, end: float) -> str:
    """Send a chunked body of zeros; the status line the server answers with, or how far it got."""
    sock.sendall(head)
    chunk = f"{MiB:x}\r\n".encode() + b"0" * MiB + b"\r\n"
    sent = 0
    sock.setblocking(False)
    try:
        while sent < total and time.monotonic() < end:
            try:
                data = sock.recv(200)
                if data:
                    return data.split(b"\r\n", 1)[0].decode(errors="replace").split(" ", 2)[1]
                return "closed"
            except BlockingIOError:
                pass
            try:
                sock.send(chunk)
                sent += MiB
            except BlockingIOError:
                time.sleep(0.01)
    except OSError:
        return f"refused after {sent // MiB} MiB"
    return f"accepted {sent // MiB} MiB"


def rss_sampler(pid: int, deadline: float, stats: Stats) -> None:
    """The server's resident memory, all its processes, every 100 ms until the deadline."""
    while time.monotonic() < deadline:
        total = 0
        for p in [pid, *_children(pid)]:
            try:
                with open(f"/proc/{p}/status", encoding="utf-8") as fh:
                    total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                pass
        with stats.lock:
            stats.peak_rss_kib = max(stats.peak_rss_kib, total)
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat", encoding="utf-8") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    return out


def store_bomb(hport: int) -> str:
    """STOW the issue-14 decompression bomb (``tests/robustness/bombs.py``: ~9 KB of JPEG 2000,
    40 frames of 4096x4096 when decoded); returns its instance path (or "" if it cannot be made)."""
    sys.path.insert(0, str(ROOT))
    try:
        from tests.factories import make_dataset
        from tests.robustness import bombs

        data = bombs.j2k_bomb(make_dataset(PatientName="Bom^Giải nén"))
    except ImportError as exc:
        print(f"no bomb: {exc}")
        return ""
    finally:
        sys.path.pop(0)
    return _stow(hport, data)


def _stow(hport: int, data: bytes) -> str:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    boundary = "loadbench"
    body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
    body += f"\r\n--{boundary}--\r\n".encode()
    r = httpx.post(
        f"http://127.0.0.1:{hport}/dicom-web/studies",
        content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=60,
    )
    if r.status_code != 200:
        print(f"could not store the bomb: {r.status_code} {r.text[:200]}")
        return ""
    return (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def start_server(run: Path, database_url: str, workers: int) -> tuple[subprocess.Popen[str], int, int, Path]:
    """``pacs serve`` on loopback with fresh storage; returns (process, dicom port, http port, config)."""
    storage = run / "storage"
    storage.mkdir(parents=True)
    cfg = run / "config.toml"
    cfg.write_text(
        f"""
[dicom]
ae_title = "PACS"
host = "127.0.0.1"
port = 0
allowed_aes = ["STORESCU"]
workers = {workers}
[http]
host = "127.0.0.1"
port = 0
[auth]
enabled = false
[storage]
path = "{storage}"
[database]
url = "{database_url}"
""",
        encoding="utf-8",
    )
    cmd = [sys.executable, "-m", "pacs.cli", "serve", "--config", str(cfg)]
    print("$", " ".join(cmd), flush=True)
    log = open(run / "serve.log", "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY "):
            fields = dict(p.split("=", 1) for p in line.split()[1:])
            return proc, int(fields["dicom"].rsplit(":", 1)[1]), int(fields["http"].rsplit(":", 1)[1]), cfg
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"pacs serve did not start; see {run / 'serve.log'}")


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    """Run the load and print the figures; exit 1 if anything was lost or an error occurred."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--hostile", type=int, default=50, help="abusive connections at once")
    ap.add_argument("--per-study", type=int, default=10)
    ap.add_argument("--workers", type=int, default=0, help="DIMSE listener processes (0 = one per core)")
    ap.add_argument("--database-url", default="", help="default: SQLite under the run's storage")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "load")
    args = ap.parse_args(argv)
    if shutil.which("storescu") is None:
        raise SystemExit("storescu (DCMTK) is required")
    print("$", " ".join([Path(sys.executable).name, *sys.argv]), flush=True)
    run = args.out / time.strftime("%Y%m%d-%H%M%S")
    db = args.database_url or f"sqlite:///{run / 'storage' / 'index.sqlite'}"
    proc, dport, hport, cfg = start_server(run, db, args.workers)
    stats = Stats()
    target = store_bomb(hport) if args.hostile else ""
    bomb = target
    frames = f"{target}/frames/" + ",".join(["1"] * 5000) if target else ""
    t_start = time.monotonic()
    deadline = t_start + args.seconds
    threads = (
        [threading.Thread(target=rss_sampler, args=(proc.pid, deadline, stats))]
        + [
            threading.Thread(
                target=hostile, args=(i, dport, hport, bomb, frames, deadline, stats), daemon=True
            )
            for i in range(args.hostile)
        ]
        + [
            threading.Thread(target=sender, args=(i, dport, run / "work", args.per_study, deadline, stats))
            for i in range(args.senders)
        ]
        + [
            threading.Thread(target=reader, args=(i, f"http://127.0.0.1:{hport}", deadline, stats))
            for i in range(args.readers)
        ]
    )
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t_start
    # What the archive holds, compared with what was sent.
    indexed: set[str] = set()
    with httpx.Client(base_url=f"http://127.0.0.1:{hport}", timeout=120) as client:
        offset = 0
        while True:
            r = client.get("/dicom-web/instances", params={"limit": "1000", "offset": str(offset)})
            rows = r.json() if r.status_code == 200 else []
            indexed.update(row["00080018"]["Value"][0] for row in rows)
            if len(rows) < 1000:
                break
            offset += 1000
    proc.terminate()
    proc.wait(30)
    verify_cmd = [sys.executable, "-m", "pacs.cli", "verify", "--config", str(cfg)]
    print("$", " ".join(verify_cmd), flush=True)
    verify = subprocess.run(verify_cmd, capture_output=True, text=True, cwd=ROOT)
    lost = stats.acknowledged - indexed  # acknowledged by the archive, then not found: lost
    refused = stats.sent - stats.acknowledged - indexed  # not acknowledged: the sender keeps them
    print(
        f"\nload run: {wall:.0f} s, {args.senders} storescu senders + {args.readers} web readers, "
        f"database {'PostgreSQL' if db.startswith('postgres') else 'SQLite'}"
    )
    print(
        f"instances sent {len(stats.sent)}, acknowledged {len(stats.acknowledged)}, indexed {len(indexed)}, "
        f"lost (acknowledged, not indexed) {len(lost)}, refused (the sender keeps them) {len(refused)}; "
        f"storescu runs ok {stats.acknowledged_runs}, failed {len(stats.failed_runs)}"
    )
    print(f"store throughput {len(indexed) / wall:.1f} instances/s")
    print(
        f"verify: exit {verify.returncode}: {verify.stdout.strip().splitlines()[0] if verify.stdout else ''} "
        f"{verify.stdout.strip().splitlines()[-1] if verify.stdout else verify.stderr[-200:]}"
    )
    print(f"server peak RSS (all processes): {stats.peak_rss_kib / 1024:.0f} MiB")
    if args.hostile:
        print(f"{args.hostile} hostile connections at a time; what they got:")
        for what, n in sorted(stats.hostile.items()):
            print(f"  {n:6d}  {what}")
    print(f"{'request':18} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for kind, values in sorted(stats.latencies.items()):
        print(
            f"{kind:18} {len(values):6d} {statistics.median(values) * 1000:8.0f} "
            f"{_pct(values, 0.95) * 1000:8.0f} {max(values) * 1000:8.0f}"
        )
    print("HTTP statuses:", dict(sorted(stats.statuses.items())))
    print(f"errors: {len(stats.errors) + len(stats.failed_runs)}")
    for line in (stats.failed_runs + stats.errors)[:20]:
        print("  ", line)
    bad = lost or stats.errors or stats.failed_runs or verify.returncode != 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
