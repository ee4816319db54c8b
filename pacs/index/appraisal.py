"""SQL for appraisal acquisition logs: MPPS rows, service lines and their per-series facts.

Every function takes an open :class:`~sqlalchemy.Connection`; the caller owns the transaction.
The store and MPPS transactions maintain ``appraisal_lines`` (one row per service line),
``appraisal_line_members`` (studies and MPPS steps of a line) and ``appraisal_series`` (per-series
acquisition facts, one UPDATE per stored instance). A page of records is then a keyset scan of
``appraisal_lines`` plus three indexed look-ups, whatever the size of the instance table.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, delete, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pacs.index.prepared import Prepared
from pacs.index.schema import (
    appraisal_line_members,
    appraisal_lines,
    appraisal_series,
    instances,
    mpps,
    patients,
    reuse_imports,
    series,
    studies,
)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def mpps_get(conn: Connection, sop_instance_uid: str, *, for_update: bool = False) -> dict[str, Any] | None:
    """One MPPS row by SOP Instance UID."""
    stmt = select(mpps).where(mpps.c.sop_instance_uid == sop_instance_uid)
    if for_update and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).mappings().first()
    return dict(row) if row else None


def mpps_insert(conn: Connection, values: dict[str, Any]) -> None:
    """Insert an MPPS row (a duplicate UID raises IntegrityError)."""
    conn.execute(mpps.insert().values(**values))


def mpps_update(conn: Connection, sop_instance_uid: str, values: dict[str, Any]) -> None:
    """Update an MPPS row."""
    conn.execute(mpps.update().where(mpps.c.sop_instance_uid == sop_instance_uid).values(**values))


# ---------------------------------------------------------------------- service lines (write side)

L, M, S = appraisal_lines, appraisal_line_members, appraisal_series
#: Per-instance min/max columns of ``appraisal_series`` and the direction of each.
_MINMAX = (
    ("min_adt", "adt", "min"),
    ("max_adt", "adt", "max"),
    ("min_ad_at", "ad_at", "min"),
    ("max_ad_at", "ad_at", "max"),
    ("min_cd_ct", "cd_ct", "min"),
    ("max_cd_ct", "cd_ct", "max"),
    ("first_received", "received", "min"),
    ("last_received", "received", "max"),
    ("tz_min", "tz", "min"),
    ("tz_max", "tz", "max"),
    ("sync_min", "sync", "min"),
    ("sync_max", "sync", "max"),
    ("time_source", "time_source", "max"),
    ("ae_min", "ae", "min"),
    ("ae_max", "ae", "max"),
)


def _insert(conn: Connection, table: Any) -> Any:
    return postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)


def _extend(col: Any, name: str, how: str) -> Any:
    """``col`` widened by the bound value ``name`` (NULL-safe min / max)."""
    value = bindparam(name, type_=col.type)
    beyond = value < col if how == "min" else value > col
    return case((col.is_(None), value), (beyond, value), else_=col)


def series_add_instance(
    conn: Connection, series_instance_uid: str, facts: dict[str, Any], *, count: int = 1
) -> bool:
    """Add one instance's facts to its series row; False when the series has no row yet."""
    present = {k: v for k, v in facts.items() if v is not None}
    stmt = _series_update(frozenset(present))
    return stmt.run(conn, {"uid": series_instance_uid, "count": count, **present}) > 0


@functools.lru_cache(maxsize=64)
def _series_update(present: frozenset[str]) -> Prepared:
    """The series UPDATE for one combination of known facts, built (and compiled) once: building
    it per instance, with its ~20 CASE expressions, cost as much as the rest of the store."""
    values: dict[str, Any] = {"instance_count": S.c.instance_count + bindparam("count")}
    for col, key, how in _MINMAX:
        if key in present:
            values[col] = _extend(S.c[col], key, how)
    return Prepared(update(S).where(S.c.series_instance_uid == bindparam("uid")).values(values))


def series_insert(conn: Connection, row: dict[str, Any]) -> bool:
    """Insert a series row (False when a concurrent writer inserted it first)."""
    stmt = _insert(conn, S).on_conflict_do_nothing(index_elements=["series_instance_uid"]).returning(S.c.id)
    return conn.execute(stmt, row).scalar() is not None


def line_of(conn: Connection, kind: str, uid: str) -> int | None:
    """The line a study or MPPS step belongs to, or None."""
    return conn.execute(select(M.c.line_fk).where(M.c.kind == kind, M.c.uid == uid)).scalar()


def lines_of_mpps_for_study(conn: Connection, study_instance_uid: str) -> int | None:
    """The line of an MPPS step that names this study, if any."""
    stmt = (
        select(M.c.line_fk)
        .join(mpps, and_(M.c.kind == "mpps", M.c.uid == mpps.c.sop_instance_uid))
        .where(mpps.c.study_instance_uid == study_instance_uid)
        .order_by(mpps.c.id)
        .limit(1)
    )
    return conn.execute(stmt).scalar()


def line_ensure(conn: Connection, line_key: str, row: dict[str, Any]) -> int:
    """The id of the line ``line_key``, created with ``row`` when new."""
    stmt = _insert(conn, L).on_conflict_do_nothing(index_elements=["line_key"]).returning(L.c.id)
    got = conn.execute(stmt, {"line_key": line_key, **row}).scalar()
    if got is not None:
        return int(got)
    return int(conn.execute(select(L.c.id).where(L.c.line_key == line_key)).scalar_one())


def member_add(conn: Connection, line_id: int, kind: str, uid: str) -> None:
    """Attach a study or MPPS step to a line (once)."""
    stmt = _insert(conn, M).on_conflict_do_nothing(index_elements=["kind", "uid"])
    conn.execute(stmt, {"line_fk": line_id, "kind": kind, "uid": uid})


def line_get(conn: Connection, line_id: int) -> dict[str, Any]:
    """One line row."""
    return dict(conn.execute(select(L).where(L.c.id == line_id)).mappings().one())


def line_update(conn: Connection, line_id: int, values: dict[str, Any]) -> None:
    """Update a line row."""
    if values:
        conn.execute(update(L).where(L.c.id == line_id).values(**values))


def lines_clear(conn: Connection) -> None:
    """Delete every line, member and series row (before a rebuild)."""
    for table in (S, M, L):
        conn.execute(delete(table))


# ---------------------------------------------------------------------- service lines (read side)


@dataclass(frozen=True)
class LineFilter:
    """Filters of the record list; dates are ``YYYYMMDD`` on the line date."""

    date_from: str | None = None
    date_to: str | None = None
    modality: str | None = None
    device: str | None = None  # DeviceSerialNumber or StationName
    accession: str | None = None
    patient_id: str | None = None  # PatientID, citizen ID or insurance card code
    description_keys: tuple[str, ...] | None = None  # folded descriptions from a service-code filter
    procedure_codes: tuple[str, ...] | None = None  # from a service-code filter
    line_keys: tuple[str, ...] = field(default_factory=tuple)
    #: Each group: a device (serial number or station name) of the group is among the line's.
    device_groups: tuple[tuple[str, ...], ...] = ()
    machine_code: str | None = None  # MA_MAY: checked on the built record
    department: str | None = None  # MA_KHOA: checked on the built record


def _member_pattern(value: str) -> str:
    return "%" + _like_escape("\\" + value + "\\") + "%"


#: Line columns a record is built from (not the filter-only columns nor the timestamps).
_LINE_READ = (
    L.c.id,
    L.c.line_key,
    L.c.key_source,
    L.c.accession_number,
    L.c.requested_procedure_id,
    L.c.scheduled_procedure_step_id,
    L.c.patient_id,
    L.c.issuer_of_patient_id,
    L.c.other_patient_ids,
    L.c.procedure_code,
    L.c.procedure_coding_scheme,
    L.c.procedure_code_meaning,
    L.c.procedure_code_source,
    L.c.description,
    L.c.line_date,
)
#: Study + patient columns a record shows.
_STUDY_READ = (
    studies.c.study_instance_uid,
    studies.c.study_date,
    studies.c.study_time,
    studies.c.accession_number,
    studies.c.study_id,
    studies.c.study_description,
    studies.c.requested_procedure_id,
    studies.c.referring_physician_name,
    studies.c.requesting_physician,
    studies.c.name_of_physicians_reading_study,
    studies.c.number_of_study_related_series,
    studies.c.number_of_study_related_instances,
    patients.c.patient_id,
    patients.c.issuer_of_patient_id,
    patients.c.other_patient_ids,
)

#: MPPS columns a record shows.
_STEP_READ = tuple(
    mpps.c[name]
    for name in (
        "sop_instance_uid",
        "status",
        "start_date",
        "start_time",
        "end_date",
        "end_time",
        "performed_station_ae_title",
        "performed_station_name",
        "modality",
        "accession_number",
        "requested_procedure_id",
        "scheduled_procedure_step_id",
        "procedure_code",
        "attributes",
        "calling_ae",
        "created_at",
        "updated_at",
    )
)


def _dicts(result: Any) -> list[dict[str, Any]]:
    """Rows as plain dicts (one ``zip`` per row: cheaper than ``RowMapping`` copies)."""
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result.fetchall()]


def _filtered(stmt: Any, flt: LineFilter) -> Any:
    """``stmt`` (over ``appraisal_lines``) restricted by ``flt``."""
    if flt.line_keys:
        stmt = stmt.where(L.c.line_key.in_(flt.line_keys))
    if flt.date_from:
        stmt = stmt.where(L.c.line_date >= flt.date_from)
    if flt.date_to:
        stmt = stmt.where(L.c.line_date <= flt.date_to)
    if flt.accession:
        stmt = stmt.where(L.c.accession_number == flt.accession)
    if flt.patient_id:
        # Exact: the PatientID, or one whole member of the backslash-separated other IDs.
        pid_match = [L.c.patient_id == flt.patient_id]
        if "\\" not in flt.patient_id:
            others = literal("\\") + L.c.other_patient_ids + literal("\\")
            pid_match.append(others.like(_member_pattern(flt.patient_id), escape="\\"))
        stmt = stmt.where(or_(*pid_match))
    if flt.modality:
        stmt = stmt.where(L.c.modalities.like(_member_pattern(flt.modality), escape="\\"))
    if flt.device:
        stmt = stmt.where(L.c.devices.like(_member_pattern(flt.device), escape="\\"))
    for group in flt.device_groups:
        stmt = stmt.where(or_(*(L.c.devices.like(_member_pattern(d), escape="\\") for d in group)))
    if flt.description_keys is not None or flt.procedure_codes is not None:
        conds = []
        if flt.description_keys:
            conds.append(L.c.description_key.in_(flt.description_keys))
        if flt.procedure_codes:
            conds.append(L.c.procedure_code.in_(flt.procedure_codes))
        stmt = stmt.where(or_(*conds) if conds else L.c.id < 0)
    return stmt


def list_lines(conn: Connection, flt: LineFilter, after_id: int, limit: int) -> list[dict[str, Any]]:
    """Line rows matching ``flt`` with ``id > after_id``, by id, at most ``limit``."""
    stmt = _filtered(select(*_LINE_READ).where(L.c.id > after_id), flt).order_by(L.c.id).limit(limit)
    return _dicts(conn.execute(stmt))


def line_id_of_study(conn: Connection, study_instance_uid: str) -> str | None:
    """The line key of the line holding a study."""
    stmt = (
        select(L.c.line_key)
        .join(M, M.c.line_fk == L.c.id)
        .where(M.c.kind == "study", M.c.uid == study_instance_uid)
    )
    return conn.execute(stmt).scalar()


def _not_indexed(col: Any) -> Any:
    """``col`` as an expression no index serves (SQLite's ``+col``): the page's line ids, not the
    two-valued member kind, must drive the look-up."""
    return col.op("||")("")


@dataclass(frozen=True)
class PageRows:
    """Everything the records of one page are built from, grouped by line id (member order)."""

    studies: dict[int, list[dict[str, Any]]]
    series: dict[int, list[dict[str, Any]]]
    steps: dict[int, list[dict[str, Any]]]


def page_rows(conn: Connection, flt: LineFilter, after_id: int, last_id: int) -> PageRows:
    """Studies, series and MPPS steps of the lines of a page: ``flt`` and ``after_id < id <= last_id``.

    Three set-based statements whatever the page size; the page's lines are named by the same
    filter and id range as :func:`list_lines` (no list of ids is bound), and the id range also
    bounds the member and series index scans.
    """
    page = _filtered(select(L.c.id).where(L.c.id > after_id, L.c.id <= last_id), flt).subquery()
    members = (
        select(M.c.line_fk, M.c.id.label("member_id"), M.c.kind, M.c.uid)
        .join(page, M.c.line_fk == page.c.id)
        .where(M.c.line_fk > after_id, M.c.line_fk <= last_id)
        .subquery()
    )
    study_stmt = (
        select(members.c.line_fk, *_STUDY_READ)
        .join(studies, studies.c.study_instance_uid == members.c.uid)
        .join(patients, studies.c.patient_fk == patients.c.id)
        .where(_not_indexed(members.c.kind) == "study")
        .order_by(members.c.member_id)
    )
    step_stmt = (
        select(members.c.line_fk, *_STEP_READ)
        .join(mpps, mpps.c.sop_instance_uid == members.c.uid)
        .where(_not_indexed(members.c.kind) == "mpps")
        .order_by(members.c.member_id)
    )
    series_stmt = (
        select(S)
        .join(page, S.c.line_fk == page.c.id)
        .where(S.c.line_fk > after_id, S.c.line_fk <= last_id)
        .order_by(S.c.line_fk, S.c.series_number, S.c.id)
    )
    out = PageRows({}, {}, {})
    for stmt, group in ((study_stmt, out.studies), (step_stmt, out.steps), (series_stmt, out.series)):
        for row in _dicts(conn.execute(stmt)):
            group.setdefault(row["line_fk"], []).append(row)
    return out


def device_series(
    conn: Connection, received_from: Any | None, received_to: Any | None
) -> list[dict[str, Any]]:
    """Per-series clock facts of series last received in ``[received_from, received_to)``."""
    stmt = select(
        S.c.modality,
        S.c.manufacturer,
        S.c.manufacturer_model_name,
        S.c.device_serial_number,
        S.c.station_name,
        S.c.ae_min,
        S.c.ae_max,
        S.c.series_date,
        S.c.series_time,
        S.c.min_adt,
        S.c.max_adt,
        S.c.min_ad_at,
        S.c.max_ad_at,
        S.c.min_cd_ct,
        S.c.max_cd_ct,
        S.c.last_received,
        S.c.tz_min,
        S.c.tz_max,
        S.c.sync_min,
        S.c.sync_max,
        S.c.time_source,
    ).order_by(S.c.last_received, S.c.id)
    if received_from is not None:
        stmt = stmt.where(S.c.last_received >= received_from)
    if received_to is not None:
        stmt = stmt.where(S.c.last_received < received_to)
    return _dicts(conn.execute(stmt))


def rebuild_sources(
    conn: Connection,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Everything a rebuild of the lines reads: studies (+patient), per-series aggregates, MPPS rows.
    Studies imported from another facility are left out (no local appraisal record, issue 18)."""
    imported = select(reuse_imports.c.study_instance_uid)
    study_rows = [
        dict(r)
        for r in conn.execute(
            select(
                studies.c.id,
                studies.c.study_instance_uid,
                studies.c.study_date,
                studies.c.accession_number,
                studies.c.requested_procedure_id,
                studies.c.study_description,
                patients.c.patient_id,
                patients.c.issuer_of_patient_id,
                patients.c.other_patient_ids,
            )
            .join(patients, studies.c.patient_fk == patients.c.id)
            .where(studies.c.study_instance_uid.not_in(imported))
            .order_by(studies.c.id)
        ).mappings()
    ]
    i = instances.c
    agg = (
        select(
            series.c.study_fk,
            series.c.series_instance_uid,
            series.c.series_number,
            series.c.modality,
            series.c.series_date,
            series.c.series_time,
            series.c.manufacturer,
            series.c.manufacturer_model_name,
            series.c.device_serial_number,
            series.c.station_name,
            series.c.software_versions,
            series.c.operators_name,
            series.c.performing_physician_name,
            func.count(i.id).label("instance_count"),
            func.min(i.acquisition_date_time).label("min_adt"),
            func.max(i.acquisition_date_time).label("max_adt"),
            func.min(i.acquisition_date + i.acquisition_time).label("min_ad_at"),
            func.max(i.acquisition_date + i.acquisition_time).label("max_ad_at"),
            func.min(i.content_date + i.content_time).label("min_cd_ct"),
            func.max(i.content_date + i.content_time).label("max_cd_ct"),
            func.min(i.received_at).label("first_received"),
            func.max(i.received_at).label("last_received"),
            func.min(i.timezone_offset_from_utc).label("tz_min"),
            func.max(i.timezone_offset_from_utc).label("tz_max"),
            func.min(i.acquisition_time_synchronized).label("sync_min"),
            func.max(i.acquisition_time_synchronized).label("sync_max"),
            func.max(i.time_source).label("time_source"),
            func.min(i.calling_ae).label("ae_min"),
            func.max(i.calling_ae).label("ae_max"),
        )
        .join(instances, instances.c.series_fk == series.c.id)
        .where(
            series.c.study_fk.not_in(select(studies.c.id).where(studies.c.study_instance_uid.in_(imported)))
        )
        .group_by(series.c.id)
        .order_by(series.c.id)
    )
    series_rows = [dict(r) for r in conn.execute(agg).mappings()]
    mpps_rows = [dict(r) for r in conn.execute(select(mpps).order_by(mpps.c.id)).mappings()]
    return study_rows, series_rows, mpps_rows


def bulk_insert_lines(
    conn: Connection,
    lines: list[dict[str, Any]],
    members: list[dict[str, Any]],
    series_rows: list[dict[str, Any]],
) -> None:
    """Insert rebuilt lines, members and series rows (explicit ids; sequences moved past them)."""
    for table, rows in ((L, lines), (M, members), (S, series_rows)):
        for start in range(0, len(rows), 5000):
            conn.execute(table.insert(), rows[start : start + 5000])
        if conn.dialect.name == "postgresql":
            conn.execute(
                select(
                    func.setval(
                        func.pg_get_serial_sequence(table.name, "id"),
                        select(func.coalesce(func.max(table.c.id), 0) + 1).scalar_subquery(),
                        False,
                    )
                )
            )


def lines_missing(conn: Connection) -> bool:
    """True when the index has studies or MPPS steps but no service line yet."""
    if conn.execute(select(L.c.id).limit(1)).first() is not None:
        return False
    has_study = conn.execute(select(studies.c.id).limit(1)).first() is not None
    return has_study or conn.execute(select(mpps.c.id).limit(1)).first() is not None
