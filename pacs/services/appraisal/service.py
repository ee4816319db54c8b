"""The appraisal service: MPPS procedure steps in, audited records and exports out, over the index.

Every call reaches the index through :attr:`Appraisal.db` (an unreachable database is
:class:`~pacs.errors.StorageUnavailable`), and every read of records is recorded as an event:
who, from where, which filter, how many records.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from pacs.config import AppraisalSettings
from pacs.dicom.text import is_valid_uid
from pacs.errors import DuplicateInstance, InvalidQuery, NotAuthorized, NotFound
from pacs.index import appraisal as sql
from pacs.index import claims as claims_sql
from pacs.index import orders as order_sql
from pacs.index import repo
from pacs.index.database import Database
from pacs.model import InstanceRecord, Origin, StoreOutcome
from pacs.services.appraisal.clocks import device_clocks
from pacs.services.appraisal.devices import seen_report
from pacs.services.appraisal.evidence import EvidencePacks
from pacs.services.appraisal.exports import (
    Audit,
    csv_chunks,
    decode_cursor,
    encode_cursor,
    header,
    paged,
    xml_chunks,
)
from pacs.services.appraisal.filters import keeps, parse_filter
from pacs.services.appraisal.lines import LINE_KEY, add_instance, add_step, step_updated
from pacs.services.appraisal.pages import render_html
from pacs.services.appraisal.rebuild import rebuild_all
from pacs.services.appraisal.reconcile import Reconciler
from pacs.services.appraisal.records import RecordBuilder
from pacs.services.appraisal.registers import Registers
from pacs.services.appraisal.steps import created_step, requested_status, updated_step
from pacs.services.appraisal.times import VIETNAM, assumed_offset, iso, parse_offset
from pacs.services.appraisal.totals import totals_csv, totals_of
from pacs.services.appraisal.xlsx import xlsx_chunks

log = logging.getLogger("pacs.appraisal")


@dataclass(frozen=True)
class RecordPage:
    """One page of records and the cursor of the next page (None at the end)."""

    records: list[dict[str, Any]]
    next_cursor: str | None


class Appraisal:
    """MPPS procedure steps and acquisition-log records over the index."""

    def __init__(
        self,
        db: Database,
        settings: AppraisalSettings,
        registers: Registers,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.settings = settings
        self.registers = registers
        self.clock = clock
        self.device_tz = parse_offset(settings.device_utc_offset) or VIETNAM
        #: Called with (conn, uid, values, origin, now) in the transaction of every MPPS write
        #: (the orders service moves the scheduled step along).
        self.step_hooks: list[Callable[[Connection, str, dict[str, Any], Origin, datetime], None]] = []
        #: Reconciliation of HIS claims and evidence packs (:mod:`.reconcile`, :mod:`.evidence`).
        self.claims = Reconciler(self)
        self.evidence = EvidencePacks(self)

    @property
    def label(self) -> dict[str, str]:
        """The label every record and export carries."""
        return {"code": self.settings.label_code, "vi": self.settings.label_vi, "en": self.settings.label_en}

    # ------------------------------------------------------------------ MPPS (PS3.4 Annex F)

    def create_step(self, sop_instance_uid: str | None, ds: Dataset, origin: Origin) -> str:
        """N-CREATE of a Modality Performed Procedure Step (PS3.4 F.7.2.1); returns its UID.

        Raises :class:`DuplicateInstance` for an existing UID, :class:`MissingAttribute` or
        :class:`InvalidInstance` for a dataset the standard does not allow.
        """
        uid, values = created_step(sop_instance_uid, ds)
        now = self.clock()
        values.update(
            created_at=now,
            updated_at=now,
            calling_ae=origin.calling_ae[:16] or None,
            peer_address=origin.address[:64] or None,
        )
        try:
            with self.db.write() as conn:
                if sql.mpps_get(conn, uid) is not None:
                    raise DuplicateInstance(f"procedure step {uid} already exists")
                sql.mpps_insert(conn, values)
                add_step(conn, uid, values, now)
                for hook in self.step_hooks:
                    hook(conn, uid, values, origin, now)
                repo.add_event(
                    conn,
                    "mpps.created",
                    now,
                    origin,
                    study_instance_uid=values.get("study_instance_uid"),
                    sop_instance_uid=uid,
                    details={"status": values["status"], "accession_number": values.get("accession_number")},
                )
        except IntegrityError as exc:
            raise DuplicateInstance(f"procedure step {uid} already exists") from exc
        log.info(
            "MPPS created sop=%s status=%s study=%s accession=%s from %s@%s",
            uid,
            values["status"],
            values.get("study_instance_uid"),
            values.get("accession_number"),
            origin.calling_ae,
            origin.address,
        )
        return uid

    def update_step(self, sop_instance_uid: str, ds: Dataset, origin: Origin) -> str:
        """N-SET of a procedure step (PS3.4 F.7.2.2); returns the resulting status.

        Raises :class:`NotFound` for an unknown UID, :class:`NotAuthorized` when another AE
        created the step, :class:`StepNotInProgress` once the step
        is COMPLETED or DISCONTINUED, :class:`InvalidInstance` for a status the standard does not allow.
        """
        uid = (sop_instance_uid or "").strip()
        status = requested_status(ds)
        now = self.clock()
        with self.db.write() as conn:
            row = sql.mpps_get(conn, uid, for_update=True)
            if row is None:
                raise NotFound(f"no procedure step {uid}")
            creator, caller = row["calling_ae"], origin.calling_ae[:16]
            if creator and caller and creator != caller:  # PS3.4 F.7.2.2: the SCU that created it
                raise NotAuthorized(f"created by AE {creator}: only it may update procedure step {uid}")
            values = updated_step(row, ds, status)
            values["updated_at"] = now
            sql.mpps_update(conn, uid, values)
            step_updated(conn, uid, values, now)
            for hook in self.step_hooks:
                hook(conn, uid, {**row, **values}, origin, now)
            repo.add_event(
                conn,
                "mpps.updated",
                now,
                origin,
                study_instance_uid=values.get("study_instance_uid") or row["study_instance_uid"],
                sop_instance_uid=uid,
                details={"status": values["status"], "previous_status": row["status"]},
            )
        log.info(
            "MPPS updated sop=%s status=%s from %s@%s",
            uid,
            values["status"],
            origin.calling_ae,
            origin.address,
        )
        return str(values["status"])

    # ------------------------------------------------------------------ service lines (index hooks)

    def instance_indexed(
        self, conn: Connection, record: InstanceRecord, blob: Any, origin: Origin, outcome: StoreOutcome
    ) -> None:
        """Add a stored instance to its service line, in the store transaction (index hook)."""
        add_instance(conn, record, blob, origin, outcome)

    def index_cleared(self, conn: Connection) -> None:
        """The index was cleared for a reindex: drop the line summaries too (index hook)."""
        sql.lines_clear(conn)

    def rebuild_lines(self) -> int:
        """Rebuild every service line from the index and the MPPS table; returns the line count."""
        now = self.clock()
        with self.db.write() as conn:
            n_lines, n_series = rebuild_all(conn, now)
        log.info("appraisal lines rebuilt: %d lines, %d series", n_lines, n_series)
        return n_lines

    def rebuild_lines_if_needed(self) -> bool:
        """Rebuild the lines when the line table is empty and the index is not (after upgrade)."""
        with self.db.read() as conn:
            needed = sql.lines_missing(conn)
        if needed:
            self.rebuild_lines()
        return needed

    # ------------------------------------------------------------------ records

    def parse_filter(self, params: dict[str, str]) -> tuple[sql.LineFilter, bool]:
        """Query parameters -> filter (:func:`.filters.parse_filter`); the flag is False when
        nothing can match."""
        return parse_filter(params, self.registers, self.settings.facility_code)

    def list_records(
        self, params: dict[str, str], origin: Origin, *, cursor: str | None = None, limit: int | None = None
    ) -> RecordPage:
        """One page of records matching the query parameters (keyset paging by an opaque cursor)."""
        flt, possible = self.parse_filter(params)
        limit = self._limit(limit)
        after = decode_cursor(cursor)
        records, next_cursor = self._page(flt, after, limit) if possible else ([], None)
        self._audit(origin, "records.list", params, len(records))
        return RecordPage(records=records, next_cursor=next_cursor)

    def get_record(self, record_id: str, origin: Origin, *, what: str = "records.get") -> dict[str, Any]:
        """One record by its id (``acc:...``, ``rp:...``, ``sps:...``, ``study:...``, ``mpps:...``).

        A bare Study Instance UID is accepted too and gives the record of the line holding that
        study. Raises NotFound.
        """
        key = record_id.strip()
        if is_valid_uid(key):
            with self.db.read() as conn:
                key = sql.line_id_of_study(conn, key) or ""
        records: list[dict[str, Any]] = []
        if key and LINE_KEY.fullmatch(key):
            records, _ = self._page(sql.LineFilter(line_keys=(key,)), 0, 1)
        self._audit(origin, what, {"id": record_id}, len(records))
        if not records:
            raise NotFound(f"no appraisal record {record_id[:80]!r}")
        return records[0]

    def record_html(self, record_id: str, origin: Origin) -> str:
        """A printable HTML view of one record (no images, no full header)."""
        return render_html(self.get_record(record_id, origin, what="records.html"))

    def _limit(self, limit: int | None) -> int:
        if limit is None:
            return self.settings.default_limit
        if limit < 1:
            raise InvalidQuery("limit must be a positive integer")
        return min(limit, self.settings.max_limit)

    def _builder(self) -> RecordBuilder:
        return RecordBuilder(self.settings, self.registers, self.device_tz, self.label)

    def _page(
        self, flt: sql.LineFilter, after: int, limit: int, builder: RecordBuilder | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        with self.db.read() as conn:
            found = sql.list_lines(conn, flt, after, limit + 1)
            more = len(found) > limit
            found = found[:limit]
            rows = sql.page_rows(conn, flt, found[0]["id"] - 1, found[-1]["id"]) if found else None
            his = (
                order_sql.orders_for_lines(
                    conn,
                    [ln["accession_number"] for ln in found if ln["accession_number"]],
                    [s["study_instance_uid"] for st in rows.studies.values() for s in st],
                )
                if rows is not None
                else []
            )
        if rows is None:
            return [], None
        build = (builder or self._builder()).record
        empty: list[dict[str, Any]] = []
        records = [
            build(
                ln,
                rows.studies.get(ln["id"], empty),
                rows.series.get(ln["id"], empty),
                rows.steps.get(ln["id"], empty),
                his,
            )
            for ln in found
        ]
        keep = keeps(flt)
        if keep is not None:  # MA_MAY / MA_KHOA: the code in force on each record's study date
            records = [r for r in records if keep(r)]
        return records, (encode_cursor(found[-1]["id"]) if more else None)

    def _records(self, flt: sql.LineFilter, possible: bool) -> Iterator[dict[str, Any]]:
        """Every record of ``flt`` (for exports), page by page, built with one builder."""
        if not possible:
            return iter(())
        builder = self._builder()
        return paged(lambda after, limit: self._page(flt, after, limit, builder))

    def _audit(
        self, origin: Origin, what: str, params: dict[str, Any], count: int, *, complete: bool = True
    ) -> None:
        """Record an access event; ``complete=False`` marks an export the client did not take in full."""
        filters = {k: v for k, v in params.items() if v not in (None, "")}
        details: dict[str, Any] = {"request": what, "filters": filters, "count": count}
        if not complete:
            details["complete"] = False
        with self.db.write() as conn:
            repo.add_event(conn, "appraisal.access", self.clock(), origin, details=details)
        log.info(
            "appraisal %s by %s@%s filters=%s count=%d%s",
            what,
            origin.user or "-",
            origin.address,
            json.dumps(filters, ensure_ascii=False),
            count,
            "" if complete else " (incomplete)",
        )

    # ------------------------------------------------------------------ device clocks

    def device_clocks(self, params: dict[str, str], origin: Origin) -> dict[str, Any]:
        """Receive delays per device over a window of receipt dates, and clocks seen ahead of the
        archive where the evidence shows it (facts, no verdict).

        Each series gives one sample (:mod:`pacs.services.appraisal.clocks`); the default
        window is the last 30 days.
        """
        flt, _ = self.parse_filter({k: v for k, v in params.items() if k in ("from", "to")})
        now = self.clock()
        start_day = flt.date_from or (now.astimezone(VIETNAM) - timedelta(days=30)).strftime("%Y%m%d")
        lo = datetime.strptime(start_day, "%Y%m%d").replace(tzinfo=VIETNAM)
        hi = (
            datetime.strptime(flt.date_to, "%Y%m%d").replace(tzinfo=VIETNAM) + timedelta(days=1)
            if flt.date_to
            else None
        )
        with self.db.read() as conn:
            rows = sql.device_series(conn, lo.astimezone(UTC), hi.astimezone(UTC) if hi else None)
        devices = device_clocks(
            rows,
            (params.get("device") or "").strip(),
            self.registers,
            self.device_tz,
            assumed_offset(self.settings),
            self.settings.clock_tolerance_seconds,
        )
        self._audit(origin, "devices.list", params, len(devices))
        return {
            "label": self.label,
            "window": {"received_from": iso(lo), "received_before": iso(hi) if hi else None},
            "count": len(devices),
            "devices": devices,
        }

    def unregistered_devices(self, params: dict[str, str], origin: Origin) -> dict[str, Any]:
        """Devices seen in DICOM (Manufacturer, Model, DeviceSerialNumber, StationName) that the
        device register does not know, and registered ones seen on days no row is in force."""
        flt, _ = self.parse_filter({k: v for k, v in params.items() if k in ("from", "to")})
        with self.db.read() as conn:
            seen = claims_sql.seen_devices(conn, flt.date_from, flt.date_to)
        report = seen_report(seen, self.registers.device_register, self.settings.facility_code)
        self._audit(origin, "devices.unregistered", params, report["count"])
        return {"label": self.label, **report}

    def device_totals(self, params: dict[str, str], origin: Origin) -> dict[str, Any]:
        """Plain counts of studies, series and images per study date and device for the records
        the filters select (as the totals sheet of ``export.xlsx``)."""
        flt, possible = self.parse_filter(params)
        rows = totals_of(self._records(flt, possible))
        self._audit(origin, "totals", params, len(rows))
        return {"label": self.label, "filters": params, "count": len(rows), "totals": rows}

    def totals_csv(self, params: dict[str, str], origin: Origin) -> bytes:
        """:meth:`device_totals` as CSV (BOM, ``#`` header cells)."""
        head = self._header(params, self.clock())
        rows = self.device_totals(params, origin)["totals"]
        return b"".join(totals_csv([f"# {k}: {v}" for k, v in head.items() if k != "truong"], rows))

    # ------------------------------------------------------------------ exports

    def _header(self, params: dict[str, str], now: datetime) -> dict[str, str]:
        return header(self.settings, params, now)

    def export_csv(self, params: dict[str, str], origin: Origin) -> str:
        """XML3-shaped CSV (one row per record), the label and extract notice in ``#`` header lines."""
        return b"".join(self.stream_csv(params, origin)).decode("utf-8")

    def export_xml(self, params: dict[str, str], origin: Origin) -> bytes:
        """XML3-shaped fragment (``CHI_TIET_DVKT`` per record) under a root marked as a PACS extract."""
        return b"".join(self.stream_xml(params, origin))

    def stream_csv(self, params: dict[str, str], origin: Origin) -> Iterator[bytes]:
        """:meth:`export_csv` as UTF-8 chunks written while the records are read.

        The parameters are checked now (InvalidQuery); the first chunk comes after the first page
        of records, so an index failure surfaces before anything is sent. The access is audited
        when the stream ends, with the number of rows sent (and ``complete: false`` if cut short).
        """
        flt, possible = self.parse_filter(params)
        head = self._header(params, self.clock())
        return csv_chunks(head, self._records(flt, possible), self._export_audit("csv", params, origin))

    def stream_xml(self, params: dict[str, str], origin: Origin) -> Iterator[bytes]:
        """:meth:`export_xml` as UTF-8 chunks written while the records are read (as :meth:`stream_csv`)."""
        flt, possible = self.parse_filter(params)
        head = self._header(params, self.clock())
        records = self._records(flt, possible)
        return xml_chunks(head, self.settings, records, self._export_audit("xml", params, origin))

    def export_xlsx(self, params: dict[str, str], origin: Origin) -> bytes:
        """The XLSX extract: a label sheet, then the records with typed columns (see :mod:`.exports`)."""
        return b"".join(self.stream_xlsx(params, origin))

    def stream_xlsx(self, params: dict[str, str], origin: Origin) -> Iterator[bytes]:
        """:meth:`export_xlsx` in chunks: the workbook is written row by row (openpyxl write-only
        mode, temporary files) while the records are read, then sent. The parameters are checked
        now (InvalidQuery); the first chunk comes once the workbook is written, so an index failure
        surfaces before anything is sent. Audited as :meth:`stream_csv`."""
        flt, possible = self.parse_filter(params)
        head = self._header(params, self.clock())
        return xlsx_chunks(head, self._records(flt, possible), self._export_audit("xlsx", params, origin))

    def _export_audit(self, fmt: str, params: dict[str, str], origin: Origin) -> Audit:
        def audit(count: int, complete: bool) -> None:
            self._audit(origin, f"export.{fmt}", params, count, complete=complete)

        return audit
