"""Benchmark of the appraisal API over a large index (not run by the tests).

Default (issue 16): one month at about 1,000,000 instances (10,005 studies over 24 devices,
:mod:`tests.appraisal.month`, image counts scaled by ``--scale``), bulk-inserted, then timed:
reconciling the month's HIS claim (a GIAMDINHHS envelope, XML1 + XML3, with the deliberate
differences of ``tests/appraisal/test_reconcile.py``) through the service and through
``POST /api/appraisal/v1/reconcile``, and exporting the month (CSV, XLSX with its totals sheet,
totals JSON). Goals: reconcile < 10 s, export < 5 s.

    .venv/bin/python bench/appraisal.py --db sqlite:////tmp/bench-claims.sqlite
    .venv/bin/python bench/appraisal.py --db postgresql+psycopg://postgres@127.0.0.1:5432/test

``--records`` runs the earlier benchmark instead: listing a month of records page by page
(median page latency, with and without filters) and exporting it as CSV and XML, over 4 months x
10,000 studies x 25 instances = 1,000,000 instances. ``--reuse`` skips the generation; ``--limit``
sets the page size (default 1,000).

Measured 25 Nov 2026 on the shared 2-core development machine (other suites running: figures
move by +-30 % from run to run; the month is 9,333 records), pages of 1,000, ``--reuse``:

=====================================  ===============  ===============
                                       SQLite           PostgreSQL
=====================================  ===============  ===============
before (load ~6): median page          341 ms           405 ms
after (load ~2): median page           141 / 159 ms     188 / 172 ms
after (load ~2): HTTP GET /records     194 / 230 ms     163 / 160 ms
after (load 10-15): median page        332 / 241 ms     286 / 252 ms
after: pages of 500, median            75 ms            90 ms
before: export CSV / XML of the month  3.7 / 4.6 s      4.0 / 3.9 s
after: streamed export CSV / XML       1.5-3.4 s        1.6-3.5 s
=====================================  ===============  ===============

Interleaved in one process under the same load (~8), before vs after: SQLite 278 -> 156 ms,
PostgreSQL 332 -> 158 ms per page of 1,000. Of an "after" page: ~10 ms to read the lines,
~40 ms for the studies, series and steps (three statements), ~100-120 ms to build 1,000 record
dicts in Python, ~7 ms to encode the JSON body (orjson), ~3 ms for the audit event.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pacs.config import AppraisalSettings
from pacs.index.database import Database
from pacs.index.engine import make_engine, migrate
from pacs.index.schema import instances, metadata, mpps, patients, series, studies
from pacs.model import Origin
from pacs.services.appraisal import Appraisal
from pacs.services.appraisal.registers import load_registers
from pacs.web.appraisal import routes
from pacs.web.errors import EXCEPTION_HANDLERS

REG = Path(__file__).resolve().parents[1] / "registers"


def generate(engine, months: int, per_month: int, per_study: int) -> None:  # type: ignore[no-untyped-def]
    """Bulk-insert a synthetic index."""
    with engine.begin() as conn:
        tables = (
            "appraisal_series",
            "appraisal_line_members",
            "appraisal_lines",
            "instances",
            "series",
            "mpps",
        )
        for t in (*tables, "studies", "patients"):
            # events are append-only (migration 0003): they are left in place
            conn.execute(text(f"DELETE FROM {t}"))
    now = datetime(2025, 1, 1, tzinfo=UTC)
    n_studies = months * per_month
    batch = 20000
    t0 = time.perf_counter()
    with engine.begin() as conn:
        pats = [
            {
                "id": i,
                "identity": f"P{i}\\",
                "patient_id": f"P{i}",
                "other_patient_ids": f"0791{i:08d}\\HC40{i:011d}",
            }
            for i in range(1, n_studies // 2 + 2)
        ]
        conn.execute(patients.insert(), pats)
        st, se, mp = [], [], []
        for s in range(1, n_studies + 1):
            day = now + timedelta(minutes=(s - 1) * (30 * 24 * 60) // per_month)
            date = day.strftime("%Y%m%d")
            st.append(
                {
                    "id": s,
                    "patient_fk": s // 2 + 1,
                    "created_at": day,
                    "updated_at": day,
                    "study_instance_uid": f"1.2.826.0.1.3680043.10.9.{s}",
                    "study_date": date,
                    "study_time": day.strftime("%H%M%S"),
                    "accession_number": f"ACC{s}",
                    "study_description": "CT sọ não" if s % 2 else "X-quang ngực thẳng",
                    "referring_physician_name": "Trần^Thị Bình",
                    "number_of_study_related_series": 1,
                    "number_of_study_related_instances": per_study,
                }
            )
            se.append(
                {
                    "id": s,
                    "study_fk": s,
                    "series_instance_uid": f"1.2.826.0.1.3680043.10.8.{s}",
                    "modality": "CT" if s % 2 else "DX",
                    "device_serial_number": "SN-1234" if s % 2 else "XR-0001",
                    "station_name": "CT01" if s % 2 else "DR01",
                    "manufacturer": "ACME",
                    "operators_name": "Phạm^Thu",
                    "number_of_series_related_instances": per_study,
                }
            )
            if s % 3 == 0:
                mp.append(
                    {
                        "sop_instance_uid": f"1.2.826.0.1.3680043.10.7.{s}",
                        "status": "COMPLETED",
                        "start_date": date,
                        "start_time": day.strftime("%H%M%S"),
                        "end_date": date,
                        "end_time": (day + timedelta(minutes=10)).strftime("%H%M%S"),
                        "study_instance_uid": f"1.2.826.0.1.3680043.10.9.{s}",
                        "accession_number": f"ACC{s}",
                        "procedure_code": "CT-SN",
                        "attributes": "{}",
                        "created_at": day,
                        "updated_at": day,
                    }
                )
        conn.execute(studies.insert(), st)
        conn.execute(series.insert(), se)
        conn.execute(mpps.insert(), mp)
    print(f"patients/studies/series/mpps: {time.perf_counter() - t0:.1f}s", flush=True)
    rows = []
    iid = 0
    t0 = time.perf_counter()
    with engine.begin() as conn:
        for s in range(1, n_studies + 1):
            day = now + timedelta(minutes=(s - 1) * (30 * 24 * 60) // per_month)
            for k in range(per_study):
                iid += 1
                acq = day + timedelta(seconds=10 * k)
                rows.append(
                    {
                        "id": iid,
                        "series_fk": s,
                        "sop_instance_uid": f"1.2.826.0.1.3680043.10.6.{iid}",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "instance_number": k + 1,
                        "acquisition_date": acq.strftime("%Y%m%d"),
                        "acquisition_time": acq.strftime("%H%M%S"),
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "blob_key": f"k{iid}",
                        "size": 1000,
                        "sha256": "0" * 64,
                        "dataset_sha256": "0" * 64,
                        "received_at": acq - timedelta(hours=7) + timedelta(seconds=5),
                        "calling_ae": "CT01AE",
                    }
                )
                if len(rows) >= batch:
                    conn.execute(instances.insert(), rows)
                    rows = []
        if rows:
            conn.execute(instances.insert(), rows)
        if conn.dialect.name == "postgresql":
            for t in ("patients", "studies", "series", "instances", "mpps"):
                conn.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{t}','id'), (SELECT max(id) FROM {t}))")
                )
    print(f"{iid} instances: {time.perf_counter() - t0:.1f}s", flush=True)


def build_lines(svc: Appraisal, engine) -> None:  # type: ignore[no-untyped-def]
    """Gather the bulk-loaded studies and MPPS steps into service lines (set-based rebuild)."""
    t0 = time.perf_counter()
    n = svc.rebuild_lines()
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    print(f"rebuild_lines: {n} lines in {time.perf_counter() - t0:.1f}s", flush=True)


def claims_main(args: argparse.Namespace) -> None:
    """Reconcile and export one generated month (see the module notes)."""
    import tempfile

    from pacs.index.engine import migrate as _migrate
    from tests.appraisal import month as gen
    from tests.appraisal.conftest import REGISTERS as EXAMPLES

    print("  $ " + " ".join(["python", *sys.argv]), flush=True)
    engine = make_engine(args.db)
    _migrate(engine)
    plan = gen.plan(scale=args.scale)
    folder = Path(tempfile.mkdtemp(prefix="bench-claims-"))
    paths = gen.write_registers(folder)
    regs = load_registers(gen.FACILITY, paths["devices"], paths["services"], EXAMPLES / "staff.csv")
    svc = Appraisal(Database(engine), AppraisalSettings(facility_code=gen.FACILITY), regs)
    if not args.reuse:
        with engine.begin() as conn:
            lines = ("appraisal_series", "appraisal_line_members", "appraisal_lines")
            index = ("instances", "series", "mpps", "studies", "patients")
            for t in ("claim_results", "claim_runs", *lines, *index):
                conn.execute(text(f"DELETE FROM {t}"))
        t0 = time.perf_counter()
        gen.insert(engine, plan)
        t1 = time.perf_counter()
        n = svc.rebuild_lines()
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        print(
            f"generated {len(plan.studies)} studies, {plan.instances} instances over "
            f"{len(gen.DEVICES)} devices ({engine.dialect.name}): inserts {t1 - t0:.1f} s, "
            f"{n} service lines rebuilt in {time.perf_counter() - t1:.1f} s",
            flush=True,
        )
    claim = gen.make_claim(plan)
    origin = Origin(address="127.0.0.1", protocol="bench")
    month = {"from": "2026-11-01", "to": "2026-11-30"}
    print(
        f"claim: {len(claim.expected) + claim.outside} XML3 lines, {len(claim.body) / 1e6:.1f} MB", flush=True
    )
    for attempt in (1, 2):
        t = time.perf_counter()
        doc = svc.claims.reconcile(claim.body, "application/xml", {"month": "2026-11"}, origin)
        print(
            f"reconcile (service) run {attempt}: {time.perf_counter() - t:.2f} s  counts {doc['counts']}",
            flush=True,
        )
    app = Starlette(routes=routes(), exception_handlers=EXCEPTION_HANDLERS)
    app.state.appraisal = svc
    with TestClient(app) as client:
        t = time.perf_counter()
        r = client.post(
            "/api/appraisal/v1/reconcile", params={"month": "2026-11"}, content=claim.body,
            headers={"Content-Type": "application/xml"},
        )  # fmt: skip
        print(
            f"HTTP POST /reconcile: {r.status_code}, {len(r.content) / 1e6:.1f} MB JSON in "
            f"{time.perf_counter() - t:.2f} s",
            flush=True,
        )
        t = time.perf_counter()
        x = client.get(f"/api/appraisal/v1/reconcile/{r.json()['run']}", params={"format": "xlsx"})
        print(
            f"HTTP GET /reconcile/<run>?format=xlsx: {len(x.content) / 1e6:.1f} MB "
            f"in {time.perf_counter() - t:.2f} s"
        )
        for fmt in ("csv", "xlsx"):
            t = time.perf_counter()
            size = 0
            with client.stream("GET", f"/api/appraisal/v1/export.{fmt}", params=month) as resp:
                for chunk in resp.iter_bytes():
                    size += len(chunk)
            print(
                f"HTTP export.{fmt} month: {size / 1e6:.1f} MB in {time.perf_counter() - t:.2f} s", flush=True
            )
        t = time.perf_counter()
        body = client.get("/api/appraisal/v1/totals", params=month).json()
        print(f"HTTP totals month: {body['count']} device-day rows in {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        rows = client.get(
            "/api/appraisal/v1/export.csv", params={**month, "department": "K02"}
        ).content.count(b"\n")
        print(f"HTTP export.csv month, department K02: {rows} lines in {time.perf_counter() - t:.2f} s")
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--records", action="store_true", help="the earlier record-list benchmark")
    ap.add_argument("--scale", type=float, default=12.0, help="image-count factor (12: about 1M instances)")
    ap.add_argument("--months", type=int, default=4)
    ap.add_argument("--per-month", type=int, default=10000)
    ap.add_argument("--per-study", type=int, default=25)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--reuse", action="store_true", help="skip generation (index already filled)")
    args = ap.parse_args()
    if not args.records:
        claims_main(args)
        return
    engine = make_engine(args.db)
    migrate(engine)
    assert metadata is not None
    if not args.reuse:
        generate(engine, args.months, args.per_month, args.per_study)
    settings = AppraisalSettings(facility_code="01001", max_limit=max(1000, args.limit))
    regs = load_registers(
        "01001", REG / "devices.csv", REG / "services.csv", REG / "staff.csv", REG / "reference_times.csv"
    )
    svc = Appraisal(Database(engine), settings, regs)
    if not args.reuse:
        build_lines(svc, engine)
    elif svc.rebuild_lines_if_needed():
        print("service lines rebuilt from the existing index", flush=True)
    origin = Origin(address="127.0.0.1", protocol="bench")
    month = (
        {"from": "2025-02-01", "to": "2025-02-28"}
        if args.months > 1
        else {"from": "2025-01-01", "to": "2025-01-30"}
    )

    def page_through(params: dict[str, str], encode: bool = False) -> tuple[int, list[float]]:
        """Every page of ``params``: (records, latency of each page); ``encode`` adds the JSON body."""
        total, lat, cursor = 0, [], None
        while True:
            t = time.perf_counter()
            page = svc.list_records(params, origin, cursor=cursor, limit=args.limit)
            if encode:
                orjson.dumps({"label": svc.label, "count": len(page.records), "records": page.records})
            lat.append(time.perf_counter() - t)
            total += len(page.records)
            cursor = page.next_cursor
            if not cursor:
                return total, lat

    # a patient with a study in the middle of the measured month
    mid = (args.per_month * 3 // 2 if args.months > 1 else args.per_month // 2) // 2 + 1
    for name, params in (
        ("month", month),
        ("month+modality=CT+device=SN-1234", {**month, "modality": "CT", "device": "SN-1234"}),
        ("month+service_code=18.0001.0001", {**month, "service_code": "18.0001.0001"}),
        ("month+patient_id", {**month, "patient_id": f"HC40{mid:011d}"}),
    ):
        page_through(params)  # warm
        total, lat = page_through(params)
        print(
            f"list {name}: {total} records in {len(lat)} pages of {args.limit}; "
            f"median page {statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms, "
            f"total {sum(lat):.2f} s",
            flush=True,
        )
    total, lat = page_through(month, encode=True)
    print(
        f"list month + JSON body (server side of GET /records): "
        f"median page {statistics.median(lat) * 1000:.0f} ms, "
        f"max {max(lat) * 1000:.0f} ms, total {sum(lat):.2f} s",
        flush=True,
    )
    # the same month through the HTTP route (service + JSON encoding + in-process ASGI client)
    app = Starlette(routes=routes(), exception_handlers=EXCEPTION_HANDLERS)
    app.state.appraisal = svc
    with TestClient(app) as client:
        lat, total, cursor, biggest = [], 0, None, 0
        for _ in range(2):  # warm, then measure
            lat, total, cursor, biggest = [], 0, None, 0
            while True:
                q = {**month, "limit": str(args.limit), **({"cursor": cursor} if cursor else {})}
                t = time.perf_counter()
                r = client.get("/api/appraisal/v1/records", params=q)
                lat.append(time.perf_counter() - t)  # the response received, not yet parsed
                body = r.json()
                biggest = max(biggest, len(r.content))
                total += body["count"]
                cursor = body["next_cursor"]
                if not cursor:
                    break
        print(
            f"HTTP GET /records month: {total} records in {len(lat)} pages of {args.limit} "
            f"(largest body {biggest / 1e6:.1f} MB); median page {statistics.median(lat) * 1000:.0f} ms, "
            f"max {max(lat) * 1000:.0f} ms, total {sum(lat):.2f} s",
            flush=True,
        )
        for fmt in ("csv", "xml"):
            t = time.perf_counter()
            size = 0
            with client.stream("GET", f"/api/appraisal/v1/export.{fmt}", params=month) as resp:
                for chunk in resp.iter_bytes():
                    size += len(chunk)
            print(
                f"HTTP export.{fmt} month (streamed): {size / 1e6:.1f} MB in {time.perf_counter() - t:.2f} s"
            )
    t = time.perf_counter()
    devices = svc.device_clocks({"from": month["from"], "to": month["to"]}, origin)
    print(f"devices month: {devices['count']} devices in {(time.perf_counter() - t) * 1000:.0f} ms")
    t = time.perf_counter()
    out = svc.export_csv(month, origin)  # joined in memory (the service API)
    print(
        f"export CSV month: {out.count(chr(10))} lines, {len(out) / 1e6:.1f} MB "
        f"in {time.perf_counter() - t:.2f} s"
    )
    t = time.perf_counter()
    xml = svc.export_xml(month, origin)
    print(f"export XML month: {len(xml) / 1e6:.1f} MB in {time.perf_counter() - t:.2f} s")
    engine.dispose()


if __name__ == "__main__":
    main()
