"""Cheap version stamps of indexed content, for validating derived caches (rendered thumbnails).

A stamp changes whenever what a study, series or instance holds changes: an instance stored
(count and highest row id), replaced (its SHA-256; for a study or series also the latest
``received_at``) or removed (count). One small aggregate query, no listing of instances.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, func, select

from pacs.index.schema import instances, series, studies

_INSTANCE = (
    select(instances.c.sha256)
    .join(series, instances.c.series_fk == series.c.id)
    .join(studies, series.c.study_fk == studies.c.id)
    .where(instances.c.sop_instance_uid == bindparam("_sop"))
    .where(series.c.series_instance_uid == bindparam("_series"))
    .where(studies.c.study_instance_uid == bindparam("_study"))
)

_SHA = select(instances.c.sha256).where(instances.c.sop_instance_uid == bindparam("_sop")).scalar_subquery()

_AGGREGATE = (func.count(instances.c.id), func.max(instances.c.id), func.max(instances.c.received_at))

_STUDY = (
    select(*_AGGREGATE, _SHA)
    .select_from(instances)
    .join(series, instances.c.series_fk == series.c.id)
    .join(studies, series.c.study_fk == studies.c.id)
    .where(studies.c.study_instance_uid == bindparam("_study"))
)

_SERIES = _STUDY.where(series.c.series_instance_uid == bindparam("_series"))


def content_stamp(
    conn: Connection, study: str, series_uid: str | None, sop: str | None, member: str | None = None
) -> tuple[str, str | None] | None:
    """``(stamp, sha256 of member)`` of the instance, series or study, or ``None`` when it holds nothing.

    For an instance the stamp is its SHA-256; for a series or study it is built from the count,
    highest row id and latest reception time of its instances. ``member`` is an instance (the one
    a cached rendering was made from) whose SHA-256 is returned alongside, in the same query.
    """
    if sop is not None:
        sha = conn.execute(_INSTANCE, {"_sop": sop, "_series": series_uid or "", "_study": study}).scalar()
        return None if sha is None else (str(sha), str(sha))
    params = {"_study": study, "_series": series_uid, "_sop": member or ""}
    row = conn.execute(_SERIES if series_uid is not None else _STUDY, params).one()
    count, top, latest, sha = row
    if not count:
        return None
    return f"{count}|{top}|{latest}", (str(sha) if sha is not None else None)
