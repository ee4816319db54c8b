"""Ingest benchmark: C-STORE throughput of ``pacs serve`` next to Orthanc, with DCMTK's storescu.

Generates (once, cached) a CT study of 512x512 16-bit slices totalling ``--size-gb`` (default
1 GB), then for each archive and each association count (1 and 4) starts the archive on fresh
storage, sends the whole study with ``storescu`` (env ``TCP_NODELAY=1``), and reports instances/s,
MB/s and the archive's peak resident memory (summed over its processes, sampled from /proc).

    .venv/bin/python bench/ingest.py [--size-gb 1] [--pairs 3] [--workers N] [--no-orthanc] [--out bench/out]

Everything lives under ``--out`` (git-ignored). Prints each exact command it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import free_port, show  # bench/common.py
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parent.parent
SLICE_BYTES = 512 * 512 * 2
PARTS = 4


# ---------------------------------------------------------------------- data


def make_study(data: Path, size_gb: float) -> list[Path]:
    """Write (once) ``size_gb`` of CT slices in ``PARTS`` folders; returns the folders."""
    count = math.ceil(size_gb * 1e9 / SLICE_BYTES)
    parts = [data / f"part{k}" for k in range(PARTS)]
    stamp = data / f"complete-{count}"
    if stamp.exists():
        return parts
    shutil.rmtree(data, ignore_errors=True)
    for p in parts:
        p.mkdir(parents=True)
    rng = np.random.default_rng(1)
    y, x = np.mgrid[-1:1:512j, -1:1:512j]
    body = ((x / 0.8) ** 2 + (y / 0.6) ** 2 <= 1).astype(np.int16)
    base = body * 1064 + rng.normal(0, 20, (512, 512)).astype(np.int16) * body
    study, series = generate_uid(), generate_uid()
    for i in range(count):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.PatientName = "Hoàng^Văn Thử"
        ds.PatientID = "BENCH001"
        ds.StudyDate = "20250301"
        ds.StudyTime = "080000"
        ds.AccessionNumber = "BENCH1"
        ds.StudyDescription = "CT ngực bụng (benchmark)"
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-250, -250, i * 0.625]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = i * 0.625
        ds.PixelSpacing = [0.98, 0.98]
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = np.roll(base, i % 512, axis=0).astype("<i2").tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(parts[i % PARTS] / f"CT{i:05d}.dcm", enforce_file_format=True)
    stamp.touch()
    return parts


# ---------------------------------------------------------------------- memory


class PeakRss:
    """Samples the summed VmRSS of a process and its descendants every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, sum(_rss(p) for p in _tree(self.pid)))


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------------- archives


@dataclass
class Target:
    """A running archive to send to."""

    name: str
    port: int
    called_ae: str
    pid: int


@contextmanager
def pacs_archive(run: Path, workers: int, fsync: bool = True, dicom_extra: str = "") -> Iterator[Target]:
    """``pacs serve`` on fresh storage with a SQLite index (``fsync=False``: to measure its cost)."""
    storage = run / "storage"
    cfg = run / "config.toml"
    cfg.write_text(
        f"""[dicom]
ae_title = "PACS"
host = "127.0.0.1"
port = 0
allowed_aes = [{{ ae_title = "STORESCU" }}, {{ ae_title = "MOVESCU", services = ["find", "move", "get"] }}]
{dicom_extra}
workers = {workers}
max_pdu = 262144
[http]
port = 0
[auth]
enabled = false
[storage]
path = "{storage}"
fsync = {str(fsync).lower()}
[log]
level = "WARNING"
""",
        encoding="utf-8",
    )
    cmd = [sys.executable, "-m", "pacs.cli", "serve", "--config", str(cfg)]
    show(cmd)
    with open(run / "serve.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"pacs serve did not start: {(run / 'serve.log').read_text()[-2000:]}")
        port = int(line.split()[1].rsplit(":", 1)[1])
        yield Target("pacs" if fsync else "pacs-nofsync", port, "PACS", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def orthanc_archive(run: Path, extra: dict[str, object] | None = None) -> Iterator[Target]:
    """Orthanc on fresh storage (its default SQLite index), accepting any store."""
    dicom_port, http_port = free_port(), free_port()
    cfg = run / "orthanc.json"
    cfg.write_text(
        json.dumps(
            {
                "Name": "bench",
                "StorageDirectory": str(run / "orthanc-storage"),
                "IndexDirectory": str(run / "orthanc-index"),
                "DicomAet": "ORTHANC",
                "DicomPort": dicom_port,
                "HttpPort": http_port,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "DicomAlwaysAllowStore": True,
                "DicomCheckCalledAet": False,
                "StorageCompression": False,
                "Plugins": [],
                **(extra or {}),
            }
        ),
        encoding="utf-8",
    )
    env = {"TCP_NODELAY": "1"}
    cmd = ["/usr/sbin/Orthanc", str(cfg)]
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
        yield Target("orthanc", dicom_port, "ORTHANC", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------- measure


@dataclass
class Result:
    """One measured run."""

    archive: str
    associations: int
    instances: int
    megabytes: float
    seconds: float
    peak_rss: int

    @property
    def per_second(self) -> float:
        """Instances per second."""
        return self.instances / self.seconds

    @property
    def mb_per_second(self) -> float:
        """Megabytes (1e6) per second."""
        return self.megabytes / self.seconds


def send(target: Target, parts: list[Path], associations: int) -> tuple[float, int]:
    """Send the study over ``associations`` concurrent storescu runs; returns (seconds, peak RSS)."""
    groups = [parts[k::associations] for k in range(associations)]
    env = {"TCP_NODELAY": "1"}
    cmds = [
        ["storescu", "-aet", "STORESCU", "-aec", target.called_ae, "+sd", "+r", "-R"]
        + ["127.0.0.1", str(target.port)]
        + [str(g) for g in group]
        for group in groups
    ]
    for cmd in cmds:
        show(cmd, env)
    with PeakRss(target.pid) as rss:
        start = time.perf_counter()
        procs = [
            subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for cmd in cmds
        ]
        outputs = [p.communicate()[0] for p in procs]
        seconds = time.perf_counter() - start
    for p, out in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed ({p.returncode}): {out.decode(errors='replace')[-2000:]}")
    return seconds, rss.peak


def settle(files: list[Path]) -> None:
    """The same starting point for every run: dirty pages written out, the page cache emptied
    where we may (root; with ~16 GB of cached earlier runs, page allocation here cost several
    times more kernel time), then the study read back so that storescu reads it from memory."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        print("  (not root: page cache not dropped between runs)")
    for f in files:
        f.read_bytes()


def durable_rate(folder: Path, writers: int, files: int = 400, size: int = 512 * 1024) -> float:
    """Files/s this box makes durable: ``files`` new files of ``size`` bytes over ``writers``
    threads, each written, fsynced, closed, then its directory fsynced (what an archive must do
    per instance at the least, without any DICOM or index work)."""
    shutil.rmtree(folder, ignore_errors=True)
    dirs = [folder / f"w{k}" for k in range(writers)]
    for d in dirs:
        d.mkdir(parents=True)
    payload = os.urandom(size)

    def write(d: Path, n: int) -> None:
        dfd = os.open(d, os.O_RDONLY)
        try:
            for i in range(n):
                fd = os.open(d / f"{i}.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, payload)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.fsync(dfd)
        finally:
            os.close(dfd)

    threads = [threading.Thread(target=write, args=(d, files // writers)) for d in dirs]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = (files // writers) * writers / (time.perf_counter() - start)
    shutil.rmtree(folder, ignore_errors=True)
    return rate


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description="C-STORE ingest benchmark: pacs vs Orthanc")
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of the generated study")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="pacs listener processes")
    parser.add_argument("--associations", default="1,4", help="comma-separated association counts")
    parser.add_argument("--no-orthanc", action="store_true", help="measure pacs only")
    parser.add_argument(
        "--also-no-fsync",
        action="store_true",
        help="also measure pacs with [storage] fsync = false (NOT safe; shows what durability costs)",
    )
    parser.add_argument(
        "--pairs", type=int, default=3, help="pacs/Orthanc pairs per association count (median reported)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args(argv)
    print("command:", " ".join([".venv/bin/python", "bench/ingest.py", *(argv or sys.argv[1:])]))
    out: Path = args.out.resolve()
    t0 = time.perf_counter()
    parts = make_study(out / "data", args.size_gb)
    files = sorted(f for p in parts for f in p.iterdir())
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    took = time.perf_counter() - t0
    print(f"study: {len(files)} instances, {total_mb:.0f} MB in {out / 'data'} (ready in {took:.0f}s)")
    print(f"host: {os.cpu_count()} CPUs; pacs workers={args.workers}")
    archives = [("pacs", lambda run: pacs_archive(run, args.workers))]
    if args.also_no_fsync:
        archives.append(("pacs-nofsync", lambda run: pacs_archive(run, args.workers, fsync=False)))
    if not args.no_orthanc:
        archives.append(("orthanc", orthanc_archive))
    counts = [int(v) for v in args.associations.split(",")]
    durable = {n: durable_rate(out / "durable", n) for n in counts}
    for n, rate in durable.items():
        print(f"box: {rate:.0f} files/s made durable (512 KiB, file + directory fsync) by {n} writer(s)")
    results: list[Result] = []
    finished: list[Path] = []
    for pair, n in ((k, n) for k in range(args.pairs) for n in counts):
        for name, start in archives:
            run = out / f"run-{name}-{n}-{pair}"
            shutil.rmtree(run, ignore_errors=True)
            run.mkdir(parents=True)
            print(f"\n[{name}, {n} association(s), pair {pair + 1} of {args.pairs}]")
            settle(files)
            with start(run) as target:
                seconds, peak = send(target, parts, n)
            results.append(Result(name, n, len(files), total_mb, seconds, peak))
            r = results[-1]
            print(
                f"  {r.per_second:7.1f} instances/s {r.mb_per_second:7.1f} MB/s "
                f"in {r.seconds:.1f}s, peak RSS {r.peak_rss / 2**20:.0f} MiB"
            )
            # Runs are removed at the end, not here: right after a 1 GB delete, ext4 spends much
            # CPU skipping the just-freed inodes when the next run creates files.
            finished.append(run)
    for run in finished:
        shutil.rmtree(run, ignore_errors=True)
    print("\narchive       assoc  instances/s   MB/s  seconds  peak RSS MiB")
    for r in results:
        print(
            f"{r.archive:13} {r.associations:5}  {r.per_second:11.1f} {r.mb_per_second:6.1f} "
            f"{r.seconds:8.1f} {r.peak_rss / 2**20:13.0f}"
        )
    for n in counts:
        ours = [r.per_second for r in results if r.archive == "pacs" and r.associations == n]
        theirs = [r.per_second for r in results if r.archive == "orthanc" and r.associations == n]
        mid = statistics.median(ours)
        share = mid / durable[n]
        print(
            f"pacs over {n} association(s): median {mid:.1f} instances/s = {share:.0%} of the box's "
            f"durable-file rate ({durable[n]:.0f}/s)"
        )
        if theirs:
            ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
            listed = " / ".join(f"{x:.2f}" for x in ratios)
            median = statistics.median(ratios)
            print(f"pacs / orthanc over {n} association(s): {listed}x, median {median:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
