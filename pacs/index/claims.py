"""SQL for reconciling HIS claims with the archive: the service lines of a period, HIS order links,
and the stored reconciliation runs.

Every function takes an open :class:`~sqlalchemy.Connection`; the caller owns the transaction.
The lines of a period are read in three set-based statements (lines by ``line_date``, their
series, their studies) whatever the number of instances: the per-series facts are kept by the
store transaction in ``appraisal_series``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, select

from pacs.index.schema import (
    appraisal_line_members,
    appraisal_lines,
    appraisal_series,
    claim_results,
    claim_runs,
    orders,
    studies,
    worklist_items,
)

L, M, S = appraisal_lines, appraisal_line_members, appraisal_series
_CHUNK = 500
_LINE_COLUMNS = (
    L.c.id,
    L.c.line_key,
    L.c.accession_number,
    L.c.patient_id,
    L.c.other_patient_ids,
    L.c.procedure_code,
    L.c.description,
    L.c.line_date,
    L.c.modalities,
)
_SERIES_COLUMNS = (
    S.c.line_fk,
    S.c.study_instance_uid,
    S.c.modality,
    S.c.manufacturer,
    S.c.manufacturer_model_name,
    S.c.device_serial_number,
    S.c.station_name,
    S.c.series_date,
    S.c.instance_count,
)


def _rows(conn: Connection, stmt: Any) -> list[dict[str, Any]]:
    result = conn.execute(stmt)
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result.fetchall()]


def _gather(conn: Connection, where: ColumnElement[bool]) -> list[dict[str, Any]]:
    """Lines matching ``where`` with ``series`` (device, count) and ``studies`` (uid, date) lists."""
    lines = _rows(conn, select(*_LINE_COLUMNS).where(where).order_by(L.c.id))
    if not lines:
        return []
    ids = select(L.c.id).where(where)
    by_id = {ln["id"]: {**ln, "series": [], "studies": []} for ln in lines}
    for s in _rows(conn, select(*_SERIES_COLUMNS).where(S.c.line_fk.in_(ids)).order_by(S.c.id)):
        by_id[s["line_fk"]]["series"].append(s)
    study_stmt = (
        select(M.c.line_fk, studies.c.study_instance_uid, studies.c.study_date)
        .join(studies, studies.c.study_instance_uid == M.c.uid)
        .where(M.c.kind == "study", M.c.line_fk.in_(ids))
        .order_by(M.c.id)
    )
    for st in _rows(conn, study_stmt):
        by_id[st["line_fk"]]["studies"].append(st)
    return list(by_id.values())


def lines_of_period(conn: Connection, date_from: str, date_to: str) -> list[dict[str, Any]]:
    """Service lines whose date (YYYYMMDD) is in ``[date_from, date_to]``, with series and studies."""
    return _gather(conn, L.c.line_date.between(date_from, date_to))


def lines_by_accession(conn: Connection, accession_numbers: Iterable[str]) -> list[dict[str, Any]]:
    """Service lines carrying any of the Accession Numbers (any date)."""
    acc = sorted({a for a in accession_numbers if a})
    out: list[dict[str, Any]] = []
    for i in range(0, len(acc), _CHUNK):
        out += _gather(conn, L.c.accession_number.in_(acc[i : i + _CHUNK]))
    return out


def lines_of_studies(conn: Connection, study_uids: Iterable[str]) -> list[dict[str, Any]]:
    """Service lines holding any of the studies (any date)."""
    uids = sorted({u for u in study_uids if u})
    out: list[dict[str, Any]] = []
    for i in range(0, len(uids), _CHUNK):
        member = select(M.c.line_fk).where(M.c.kind == "study", M.c.uid.in_(uids[i : i + _CHUNK]))
        out += _gather(conn, L.c.id.in_(member))
    return out


def his_links(conn: Connection, admission_ids: Sequence[str]) -> list[dict[str, Any]]:
    """HIS orders by visit (AdmissionID, the HIS's episode key sent with the order): one row per
    scheduled step with its order's Accession Number, studies, patient and requested procedure."""
    ids = sorted({a for a in admission_ids if a})
    W, OR = worklist_items.c, orders.c
    out: list[dict[str, Any]] = []
    for i in range(0, len(ids), _CHUNK):
        stmt = (
            select(
                W.admission_id,
                W.accession_number.label("step_accession_number"),
                W.study_instance_uid.label("step_study_instance_uid"),
                W.requested_procedure_code,
                W.requested_procedure_description,
                OR.order_key,
                OR.accession_number,
                OR.study_instance_uid,
                OR.linked_study_instance_uid,
                OR.patient_id,
            )
            .join(orders, orders.c.id == W.order_fk)
            .where(W.admission_id.in_(ids[i : i + _CHUNK]))
            .order_by(W.id)
        )
        out += _rows(conn, stmt)
    return out


# ---------------------------------------------------------------------- stored runs


def run_insert(conn: Connection, values: dict[str, Any]) -> int:
    """Insert a reconciliation run; its id."""
    return int(conn.execute(claim_runs.insert().values(**values).returning(claim_runs.c.id)).scalar_one())


def results_insert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert the result rows of a run (in batches)."""
    for i in range(0, len(rows), 5000):
        conn.execute(claim_results.insert(), rows[i : i + 5000])


def run_get(conn: Connection, run_id: int) -> dict[str, Any] | None:
    """One run row."""
    row = conn.execute(select(claim_runs).where(claim_runs.c.id == run_id)).mappings().first()
    return dict(row) if row else None


def results_of(conn: Connection, run_id: int, positions: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The result rows of a run, in order (``positions``: only those)."""
    stmt = select(claim_results).where(claim_results.c.run_fk == run_id)
    if positions is not None:
        stmt = stmt.where(claim_results.c.position.in_(list(positions)[:10000]))
    return _rows(conn, stmt.order_by(claim_results.c.position))


def seen_devices(conn: Connection, date_from: str | None, date_to: str | None) -> list[dict[str, Any]]:
    """Every device named in DICOM series (modality, manufacturer, model, serial number, station
    name) per line date (``day``), with its series and image counts, optionally in a period."""
    keys = (
        S.c.modality,
        S.c.manufacturer,
        S.c.manufacturer_model_name,
        S.c.device_serial_number,
        S.c.station_name,
    )
    stmt = (
        select(
            *keys,
            func.count(S.c.id).label("series"),
            func.coalesce(func.sum(S.c.instance_count), 0).label("images"),
            L.c.line_date.label("day"),
        )
        .join(L, L.c.id == S.c.line_fk)
        .group_by(*keys, L.c.line_date)
        .order_by(*keys, L.c.line_date)
    )
    if date_from:
        stmt = stmt.where(L.c.line_date >= date_from)
    if date_to:
        stmt = stmt.where(L.c.line_date <= date_to)
    return _rows(conn, stmt)
