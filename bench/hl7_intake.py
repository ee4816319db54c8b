"""HL7 v2 order intake: messages/s through MLLP into ``pacs serve``, each ACK sent after commit.

Starts ``pacs serve`` with the HL7 listener (``[hl7] port``) on fresh storage (SQLite under it by
default, or ``--database-url`` for PostgreSQL: every placer number carries a run ID, so an
existing database is fine), then sends ``--messages`` new orders over ``--connections`` MLLP
connections (one message in flight per connection, as an HIS sends them: the next only after
the ACK), alternating ORM^O01 v2.3.1 (one step) and OMI^O23 v2.5 (``--ipc`` IPC segments, one
step each), patients with Vietnamese UTF-8 names. Reports messages/s and steps/s, ACK latency
(median / p95 / max), the ACK codes, the orders found in the database afterwards, and how much
of a message's time is python-hl7 parsing plus building the ACK in this process.

    .venv/bin/python bench/hl7_intake.py                       # 2,000 messages, 1 connection
    .venv/bin/python bench/hl7_intake.py --messages 200 --connections 4
    .venv/bin/python bench/hl7_intake.py --database-url postgresql+psycopg://postgres@127.0.0.1/test

Everything lives under ``--out`` (git-ignored; removed at the end unless ``--keep``). Prints the
command line and the ``pacs serve`` command it runs.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sqlalchemy import func, select

from pacs.hl7.messages import ack, parse
from pacs.index.engine import make_engine
from pacs.index.schema import orders, worklist_items
from tests.hl7 import samples as S
from tests.hl7.client import MllpClient, msa

ROOT = Path(__file__).resolve().parent.parent
FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng"]
GIVEN = ["Văn An", "Thị Bích", "Minh Đức", "Thị Hạnh", "Quang Huy", "Ngọc Lan", "Đức Thắng"]


def messages(run: str, n: int, ipc: int) -> list[tuple[bytes, int]]:
    """``n`` new orders (payload, steps): ORM^O01 and OMI^O23 in turn."""
    out: list[tuple[bytes, int]] = []
    for k in range(n):
        patient = S.pid(f"BN{run}{k % 500:04d}", f"{FAMILY[k % len(FAMILY)]}^{GIVEN[k % len(GIVEN)]}")
        placer = f"O{run}{k:06d}"
        if k % 2 == 0:
            raw = S.orm(control_id=f"M{run}{k:06d}", placer=placer, accession=f"A{k:07d}", patient=patient)
            raw = raw.replace("1.2.840.113619.2.55.3.1001", f"2.25.{uuid.uuid4().int}"[:64])
            out.append((raw.encode(), 1))
        else:
            raw = S.omi(control_id=f"M{run}{k:06d}", placer=placer, steps=ipc)
            raw = raw.replace("ACC2001", f"A{k:07d}").replace(
                "1.2.840.113619.2.55.3.2001", f"2.25.{uuid.uuid4().int}"[:64]
            )
            out.append((raw.encode(), ipc))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(out: Path, url: str, port: int, log_level: str, workers: int) -> subprocess.Popen[str]:
    """``pacs serve`` with the HL7 listener; returns once it printed READY."""
    storage = out / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    cfg = out / "config.toml"
    cfg.write_text(
        f'[dicom]\nae_title = "PACS"\nport = 0\nworkers = {workers}\n[http]\nport = 0\nworkers = 1\n'
        f'[storage]\npath = "{storage}"\n[database]\nurl = "{url}"\n[auth]\nenabled = false\n'
        f'[log]\nlevel = "{log_level}"\n[hl7]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    cmd = [sys.executable, "-m", "pacs.cli", "serve", "--config", str(cfg)]
    print("server:", shlex.join(cmd))
    log = open(out / "serve.log", "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY "):
            print("server:", line.strip())
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"pacs serve did not start; see {out / 'serve.log'}")


def run_clients(
    port: int, batches: list[list[tuple[bytes, int]]]
) -> tuple[list[float], dict[str, int], float]:
    """Send each batch over its own connection; (ACK latencies s, ACK codes, wall time s)."""
    latencies: list[float] = []
    codes: dict[str, int] = {}
    lock = threading.Lock()

    def worker(batch: list[tuple[bytes, int]]) -> None:
        with MllpClient("127.0.0.1", port, timeout=120) as c:
            for payload, _ in batch:
                t = time.perf_counter()
                code, _ = msa(c.call(payload))
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=worker, args=(b,)) for b in batches]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return latencies, codes, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--ipc", type=int, default=3, help="IPC segments (steps) per OMI^O23")
    ap.add_argument("--database-url", default="", help="default: SQLite under the storage")
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="[dicom] workers of pacs serve: listener processes sharing the HL7 port (0: one per core)",
    )
    ap.add_argument("--log-level", default="INFO", help="of pacs serve (INFO logs one line per message)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "hl7")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    print("command:", shlex.join([".venv/bin/python", "bench/hl7_intake.py", *sys.argv[1:]]))
    print("note: 2-core machine shared with other jobs; the clients run on the same cores; figures are noisy")
    out: Path = args.out / f"run-{uuid.uuid4().hex[:8]}"
    out.mkdir(parents=True)
    url = args.database_url or f"sqlite:///{out / 'storage' / 'index.sqlite'}"
    run = uuid.uuid4().hex[:6].upper()
    msgs = messages(run, args.messages, args.ipc)
    steps = sum(s for _, s in msgs)

    # In process: what python-hl7 parsing and the ACK cost per message, without the database.
    sample = msgs[: min(100, len(msgs))]
    t0 = time.perf_counter()
    for payload, _ in sample:
        ack(parse(payload).header, "AA", "created")
    parse_ms = (time.perf_counter() - t0) / len(sample) * 1000

    port = _free_port()
    proc = serve(out, url, port, args.log_level, args.workers)
    try:
        batches = [msgs[k :: args.connections] for k in range(args.connections)]
        latencies, codes, wall = run_clients(port, batches)
    finally:
        proc.terminate()
        proc.wait(30)
    engine = make_engine(url)
    with engine.connect() as conn:
        found = conn.execute(
            select(func.count()).select_from(orders).where(orders.c.order_key.like(f"P:O{run}%"))
        ).scalar()
        items = conn.execute(
            select(func.count())
            .select_from(worklist_items)
            .where(worklist_items.c.placer_order_number_imaging_service_request.like(f"O{run}%"))
        ).scalar()
    engine.dispose()
    db = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    lat = sorted(latencies)
    p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
    print(
        f"\nhl7 intake: {len(msgs)} messages ({steps} scheduled steps)"
        f" over {args.connections} connection(s), {db}"
    )
    print(
        f"  throughput      {len(msgs) / wall:8.1f} messages/s   {steps / wall:8.1f} steps/s   ({wall:.1f} s)"
    )
    print(
        f"  ACK latency ms  median {statistics.median(lat) * 1000:7.1f}   p95 {p95 * 1000:7.1f}"
        f"   max {lat[-1] * 1000:7.1f}"
    )
    print(f"  ACK codes       {codes}")
    print(f"  in the database {found} orders, {items} worklist items (expected {len(msgs)}, {steps})")
    print(f"  python-hl7 parse + ACK in process: {parse_ms:.1f} ms per message (no database)")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
