"""SQL over ``patient_identifiers``: write identifier rows of a local patient, find patients and
their studies by ``system|value``, and read what a FHIR ImagingStudy needs.

Every function takes an open :class:`~sqlalchemy.Connection`; the caller owns the transaction.
The local patient is named by ``patients.identity`` (PatientID + issuer, see
:func:`pacs.index.repo.patient_identity`), so rows can be written before the patient's first image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pacs.index.prepared import Prepared
from pacs.index.schema import instances, patient_identifiers, patients, series, studies

T = patient_identifiers.c

#: The insert of the store path, per dialect (run for each identifier of each stored instance).
_ADD = {
    "sqlite": Prepared(sqlite.insert(patient_identifiers).on_conflict_do_nothing()),
    "postgresql": Prepared(postgresql.insert(patient_identifiers).on_conflict_do_nothing()),
}

#: A match key: (system or None for any system, value).
Key = tuple[str | None, str]


def add(
    conn: Connection,
    identity: str,
    rows: Iterable[tuple[str, str, str, str]],
    source: str,
    now: datetime,
) -> None:
    """Add ``(system, value, full_value, type_code)`` rows for the patient ``identity`` (a row
    already there is left as it is)."""
    stmt = _ADD[conn.dialect.name]
    for system, value, full_value, type_code in rows:
        cursor = stmt.execute(
            conn,
            {
                "system": system,
                "value": value,
                "full_value": full_value,
                "type_code": type_code,
                "patient_identity": identity,
                "source": source,
                "created_at": now,
            },
        )
        cursor.close()


def clear(conn: Connection, source: str) -> None:
    """Delete the rows of one source (``pacs reindex`` rebuilds the "dicom" ones)."""
    conn.execute(delete(patient_identifiers).where(T.source == source))


def rows_of(conn: Connection, identity: str, source: str | None = None) -> list[dict[str, Any]]:
    """The identifier rows of one patient identity (of one source, or all)."""
    stmt = select(T.system, T.value, T.full_value, T.type_code, T.source).where(
        T.patient_identity == identity
    )
    if source is not None:
        stmt = stmt.where(T.source == source)
    return [dict(r) for r in conn.execute(stmt.order_by(T.id)).mappings()]


def move(conn: Connection, prior: str, surviving: str) -> int:
    """Give the rows of patient identity ``prior`` to ``surviving`` (a merge); returns how many.

    Rows the surviving identity already has are dropped instead of duplicated.
    """
    have = {(r["system"], r["full_value"], r["source"]) for r in rows_of(conn, surviving)}
    moved = 0
    for r in conn.execute(select(T.id, T.system, T.full_value, T.source).where(T.patient_identity == prior)):
        if (r.system, r.full_value, r.source) in have:
            conn.execute(delete(patient_identifiers).where(T.id == r.id))
        else:
            conn.execute(update(patient_identifiers).where(T.id == r.id).values(patient_identity=surviving))
            moved += 1
    return moved


def _match(keys: Sequence[Key]) -> Any:
    clauses = []
    for system, value in keys:
        if system is None:  # FHIR token without a system: any system
            clauses.append(or_(T.value == value, T.full_value == value))
        else:
            clauses.append(and_(T.system == system, T.value == value))
    return or_(*clauses)


def find_patients(conn: Connection, keys: Sequence[Key]) -> list[dict[str, Any]]:
    """The local patients (``patients`` rows, with ``identity``) any key matches; patients known
    only from orders (no image yet) have ``id`` None."""
    matched = select(T.patient_identity).where(_match(keys)).distinct().subquery()
    p = patients.c
    stmt = (
        select(
            matched.c.patient_identity.label("identity"),
            p.id,
            p.patient_id,
            p.issuer_of_patient_id,
            p.patient_name,
            p.patient_birth_date,
            p.patient_sex,
        )
        .select_from(matched.outerjoin(patients, p.identity == matched.c.patient_identity))
        .order_by(matched.c.patient_identity)
    )
    return [dict(r) for r in conn.execute(stmt).mappings()]


def identifiers_of(conn: Connection, identities: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Every identifier row (deduplicated over sources) of some patient identities."""
    wanted = sorted(set(identities))
    out: dict[str, list[dict[str, Any]]] = {i: [] for i in wanted}
    if not wanted:
        return out
    stmt = (
        select(T.patient_identity, T.system, T.value, T.full_value, T.type_code)
        .where(T.patient_identity.in_(wanted))
        .distinct()
        .order_by(T.patient_identity, T.system, T.full_value)
    )
    for r in conn.execute(stmt).mappings():
        out[r["patient_identity"]].append(dict(r))
    return out


_STUDY_COLS = (
    studies.c.id,
    studies.c.study_instance_uid,
    studies.c.study_date,
    studies.c.study_time,
    studies.c.accession_number,
    studies.c.study_description,
    studies.c.referring_physician_name,
    studies.c.number_of_study_related_series,
    studies.c.number_of_study_related_instances,
    patients.c.identity,
    patients.c.patient_id,
    patients.c.issuer_of_patient_id,
    patients.c.patient_name,
    patients.c.patient_birth_date,
    patients.c.patient_sex,
)


def studies_matching(
    conn: Connection,
    *,
    keys: Sequence[Key] | None = None,
    study_uids: Sequence[str] | None = None,
    limit: int,
    offset: int = 0,
) -> tuple[int, list[dict[str, Any]]]:
    """Studies of the patients any identifier key matches, and/or with one of ``study_uids``:
    ``(total, a page of rows)``, newest first. A study row carries its patient's columns."""
    base = select(studies.c.id).select_from(studies.join(patients, studies.c.patient_fk == patients.c.id))
    if keys is not None:
        matched = select(T.patient_identity).where(_match(keys))
        base = base.where(patients.c.identity.in_(matched))
    if study_uids is not None:
        base = base.where(studies.c.study_instance_uid.in_(list(study_uids)))
    ids = base.subquery()
    total = int(conn.execute(select(func.count()).select_from(ids)).scalar_one())
    page = (
        select(*_STUDY_COLS)
        .select_from(studies.join(patients, studies.c.patient_fk == patients.c.id))
        .where(studies.c.id.in_(select(ids.c.id)))
        .order_by(studies.c.study_date.desc(), studies.c.study_time.desc(), studies.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return total, [dict(r) for r in conn.execute(page).mappings()]


def series_of(conn: Connection, study_pks: Sequence[int]) -> list[dict[str, Any]]:
    """The series rows of some studies (with ``study_fk``), in series number order."""
    if not study_pks:
        return []
    s = series.c
    stmt = (
        select(
            s.id,
            s.study_fk,
            s.series_instance_uid,
            s.series_number,
            s.modality,
            s.series_description,
            s.series_date,
            s.series_time,
            s.body_part_examined,
            s.number_of_series_related_instances,
        )
        .where(s.study_fk.in_(list(study_pks)))
        .order_by(s.study_fk, s.series_number, s.id)
    )
    return [dict(r) for r in conn.execute(stmt).mappings()]


def instances_of(conn: Connection, series_pks: Sequence[int]) -> list[dict[str, Any]]:
    """The instance rows of some series (UID, SOP class, number, time zone), in number order."""
    if not series_pks:
        return []
    i = instances.c
    stmt = (
        select(
            i.series_fk, i.sop_instance_uid, i.sop_class_uid, i.instance_number, i.timezone_offset_from_utc
        )
        .where(i.series_fk.in_(list(series_pks)))
        .order_by(i.series_fk, i.instance_number, i.id)
    )
    return [dict(r) for r in conn.execute(stmt).mappings()]
