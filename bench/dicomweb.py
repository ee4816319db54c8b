"""DICOMweb latency and throughput: this PACS side by side with Orthanc + its DICOMweb plugin.

Run: ``.venv/bin/python bench/dicomweb.py [--slices 300] [--repeat 20]`` (not run by the tests).
Both servers get the same data (a CT series of 512x512 slices plus a few small studies), stored
through STOW-RS, on free ports with temporary storage. Figures are wall-clock on this machine and
noisy when other work runs.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ORTHANC = "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ct_slice(study: str, series: str, i: int, name: str = "Nguyễn^Văn An", pid: str = "BENCH1") -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, pid, "19700101", "M"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20250101", "080000", f"A{pid}", "1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, i + 1
    ds.ImagePositionPatient = [0, 0, float(i)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.WindowCenter, ds.WindowWidth = -1024, 1, 40, 400
    yy, xx = np.mgrid[:512, :512]
    img = (np.hypot(yy - 256, xx - 256) < 200 - abs(i - 150) * 0.5) * 1000 + (xx + i) % 200
    ds.PixelData = img.astype("<i2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
        ds.SOPClassUID,
        ds.SOPInstanceUID,
    )
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def stow(base: str, parts: list[bytes]) -> None:
    boundary = "bench-boundary-0123456789"
    for i in range(0, len(parts), 50):
        body = (
            b"".join(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
                for p in parts[i : i + 50]
            )
            + f"--{boundary}--\r\n".encode()
        )
        r = httpx.post(
            f"{base}/studies",
            content=body,
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
            timeout=300,
        )
        r.raise_for_status()


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def start_pacs(tmp: Path, http_workers: int = 0) -> tuple[subprocess.Popen[bytes], str]:
    cfg = tmp / "pacs.toml"
    cfg.write_text(
        '[dicom]\nport = 0\nworkers = 1\nallowed_aes = ["BENCH"]\n'
        f"[http]\nport = 0\nmax_upload_mb = 4096\nworkers = {http_workers}\n"
        f'[storage]\npath = "{tmp / "pacs"}"\n'
        "[auth]\nenabled = false\n",  # loopback benchmark: no sign-in, as Orthanc's defaults
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacs.cli", "serve", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("READY"):
        raise RuntimeError(f"pacs serve did not start: {line!r}")
    http = dict(p.split("=", 1) for p in line.split()[1:])["http"]
    return proc, f"http://{http}/dicom-web"


def start_orthanc(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    (tmp / "orthanc").mkdir()
    cfg = tmp / "orthanc.json"
    cfg.write_text(
        json.dumps(
            {
                "Name": "BENCH",
                "HttpPort": port,
                "DicomPort": free_port(),
                "StorageDirectory": str(tmp / "orthanc"),
                "IndexDirectory": str(tmp / "orthanc"),
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "Plugins": [PLUGIN],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            }
        ),
        encoding="utf-8",
    )
    proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/system", proc)
    return proc, f"http://127.0.0.1:{port}/dicom-web"


def timed(fn: Callable[[], httpx.Response], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        r = fn()
        times.append((time.perf_counter() - t) * 1000)
        if r.status_code >= 400:
            return float("nan"), float("nan")
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))]


def throughput(urls: list[str], clients: int = 8, seconds: float = 5.0) -> float:
    done = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        nonlocal done
        with httpx.Client(timeout=60) as c:
            i = k
            while time.monotonic() < stop:
                c.get(urls[i % len(urls)], headers={"Accept": "image/jpeg"}).raise_for_status()
                i += clients
                with lock:
                    done += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done / seconds


def measure(
    base: str, study: str, series: str, sops: list[str], repeat: int
) -> dict[str, tuple[float, float]]:
    c = httpx.Client(timeout=120)
    inst = f"{base}/studies/{study}/series/{series}/instances"
    out: dict[str, tuple[float, float]] = {}
    # "*" left unescaped, as browsers' encodeURIComponent does: Orthanc 1.10 does not decode %2A in
    # a query string, so httpx's params= made it search for the literal text (0 matches).
    out["qido /studies?PatientName"] = timed(
        lambda: c.get(f"{base}/studies?PatientName=Nguy*", headers={"Accept": "application/dicom+json"}),
        repeat,
    )
    out["series metadata"] = timed(
        lambda: c.get(f"{base}/studies/{study}/series/{series}/metadata"), max(3, repeat // 4)
    )
    cold = iter(sops)
    out["thumbnail cold"] = timed(
        lambda: c.get(
            f"{inst}/{next(cold)}/rendered", params={"viewport": "128,128"}, headers={"Accept": "image/jpeg"}
        ),
        min(repeat, len(sops) // 3),
    )
    warm = f"{inst}/{sops[0]}/rendered"
    out["thumbnail warm"] = timed(
        lambda: c.get(warm, params={"viewport": "128,128"}, headers={"Accept": "image/jpeg"}), repeat
    )
    mid = sops[len(sops) // 2]
    out["rendered 512x512"] = timed(
        lambda: c.get(f"{inst}/{mid}/rendered", headers={"Accept": "image/jpeg"}), repeat
    )
    rps = throughput([f"{inst}/{s}/rendered" for s in sops])
    out["8 clients rendered req/s"] = (rps, rps)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument(
        "--http-workers",
        type=int,
        default=0,
        help="pacs [http] workers (default 0: one web process per CPU core, as Orthanc uses every core)",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    study, series = generate_uid(), generate_uid()
    parts = [ct_slice(study, series, i) for i in range(args.slices)]
    others = [
        ct_slice(generate_uid(), generate_uid(), 0, name=f"Trần^Bệnh Nhân {k}", pid=f"P{k}")
        for k in range(50)
    ]
    from pydicom import dcmread

    sops = [str(dcmread(io.BytesIO(p), stop_before_pixels=True).SOPInstanceUID) for p in parts]
    procs = []
    results: dict[str, dict[str, tuple[float, float]]] = {}
    try:
        pacs, pacs_url = start_pacs(tmp, args.http_workers)
        procs.append(pacs)
        stow(pacs_url, parts + others)
        # Our thumbnail endpoint (cached on disk) for the warm case.
        results["pacs"] = measure(pacs_url, study, series, sops, args.repeat)
        c = httpx.Client()
        thumb = f"{pacs_url}/studies/{study}/series/{series}/instances/{sops[1]}/thumbnail"
        c.get(thumb)
        results["pacs"]["thumbnail warm"] = timed(lambda: c.get(thumb), args.repeat)
        cold_sops = iter(sops[100:])
        results["pacs"]["thumbnail cold"] = timed(
            lambda: c.get(
                f"{pacs_url}/studies/{study}/series/{series}/instances/{next(cold_sops)}/thumbnail"
            ),
            min(args.repeat, len(sops) // 3),
        )
        if shutil.which(ORTHANC) and Path(PLUGIN).exists():
            orthanc, orthanc_url = start_orthanc(tmp)
            procs.append(orthanc)
            stow(orthanc_url, parts + others)
            results["orthanc"] = measure(orthanc_url, study, series, sops, args.repeat)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"command: {' '.join(sys.argv)}  (slices={args.slices}, repeat={args.repeat}, "
        f"http_workers={args.http_workers})"
    )
    print(f"{'measure':28} {'pacs med/p95 ms':>20} {'orthanc med/p95 ms':>22} {'ratio':>8}")
    for key, (med, p95) in results["pacs"].items():
        o = results.get("orthanc", {}).get(key)
        ours = f"{med:8.1f} /{p95:8.1f}"
        theirs = f"{o[0]:8.1f} /{o[1]:8.1f}" if o else "n/a"
        if o and o[0] == o[0] and med:
            ratio = med / o[0]
            rs = f"{ratio:7.2f}x"
        else:
            rs = "-"
        print(f"{key:28} {ours:>20} {theirs:>22} {rs:>8}")
    print("ratio = pacs / orthanc (latency: lower is better; req/s: higher is better)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
