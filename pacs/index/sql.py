"""The query model -> parameterised SQL (never string-built), and result rows -> attribute values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Select, and_, bindparam, false, or_, select

from pacs.dicom.attributes import Attribute, Match
from pacs.index.schema import TABLES, instances, patients, series, studies, worklist_items
from pacs.model import Level
from pacs.query import AnyOf, Condition, DateTimeRange, Equal, NameMatch, Query, Range, Wildcard

_ESCAPE = "\\"


def like_pattern(dicom_pattern: str) -> str:
    """DICOM wildcard (``*``, ``?``) -> SQL LIKE pattern with ``\\`` as the escape character."""
    out = []
    for ch in dicom_pattern:
        if ch in "%_\\":
            out.append(_ESCAPE + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _literal(text: str) -> str:
    return (
        like_pattern(text.replace("*", "\x00").replace("?", "\x01")).replace("\x00", "*").replace("\x01", "?")
    )


def column_for(attr: Attribute) -> Column[Any]:
    """The SQL column holding ``attr``."""
    return TABLES[attr.level].c[attr.column]


def _from_clause(level: Level) -> Any:
    if level is Level.PATIENT:
        return patients
    if level is Level.WORKLIST:
        return worklist_items
    j = studies.join(patients, studies.c.patient_fk == patients.c.id)
    if level is Level.STUDY:
        return j
    j = series.join(j, series.c.study_fk == studies.c.id)
    if level is Level.SERIES:
        return j
    return instances.join(j, instances.c.series_fk == series.c.id)


def condition_sql(cond: Condition) -> ColumnElement[bool]:
    """The WHERE clause of one condition."""
    attr, m = cond.attribute, cond.matcher
    if attr.keyword == "ModalitiesInStudy":
        return _modalities_in_study(m)
    col = column_for(attr)
    if isinstance(m, DateTimeRange):
        tcol = column_for(m.time_attribute)
        parts = []
        if m.lower:
            d, t = m.lower
            parts.append(or_(col > d, and_(col == d, tcol >= t), and_(col == d, tcol.is_(None))))
        if m.upper:
            d, t = m.upper
            parts.append(or_(col < d, and_(col == d, tcol <= t), and_(col == d, tcol.is_(None))))
        return and_(*parts)
    if isinstance(m, NameMatch):
        key = TABLES[attr.level].c[attr.column + "_key"]
        if m.fuzzy:
            words = [w for w in m.key_pattern.replace("*", " ").replace("?", " ").split() if w]
            if not words:
                return col.is_not(None) | col.is_(None)
            return and_(
                *(
                    or_(
                        key.like(like_pattern(w) + "%", escape=_ESCAPE),
                        key.like("% " + like_pattern(w) + "%", escape=_ESCAPE),
                    )
                    for w in words
                )
            )
        if "*" in m.key_pattern or "?" in m.key_pattern:
            return key.like(like_pattern(m.key_pattern), escape=_ESCAPE)
        return key == m.key_pattern
    if attr.match is Match.MULTI:
        return _multi(col, m)
    if isinstance(m, Equal):
        return col == m.value
    if isinstance(m, AnyOf):
        return col.in_(list(m.values))
    if isinstance(m, Wildcard):
        return col.like(like_pattern(m.pattern), escape=_ESCAPE)
    if isinstance(m, Range):
        parts = []
        if m.lower is not None:
            parts.append(col >= m.lower)
        if m.upper is not None:
            parts.append(col <= m.upper)
        return and_(*parts)
    raise AssertionError(f"unhandled matcher {m!r}")


def _multi(col: Column[Any], m: object) -> ColumnElement[bool]:
    """A multi-valued column (items joined by backslash) matches if any item matches."""
    if isinstance(m, AnyOf):
        return or_(*(_multi(col, Equal(v)) for v in m.values))
    if isinstance(m, Equal):
        v = _literal(str(m.value))
        pattern = v
    elif isinstance(m, Wildcard):
        pattern = like_pattern(m.pattern)
    else:
        return false()
    item = pattern
    return or_(
        col.like(item, escape=_ESCAPE),
        col.like(item + "\\\\%", escape=_ESCAPE),
        col.like("%\\\\" + item, escape=_ESCAPE),
        col.like("%\\\\" + item + "\\\\%", escape=_ESCAPE),
    )


def _modalities_in_study(m: object) -> ColumnElement[bool]:
    """ModalitiesInStudy matches when any series of the study matches (PS3.4 C.6.2.1.2)."""
    s2 = series.alias("s2")
    mod = s2.c.modality
    pred: ColumnElement[bool]
    if isinstance(m, AnyOf):
        pred = mod.in_([str(v) for v in m.values])
    elif isinstance(m, Wildcard):
        pred = mod.like(like_pattern(m.pattern), escape=_ESCAPE)
    elif isinstance(m, Equal):
        pred = mod == str(m.value)
    else:
        return false()
    return select(s2.c.id).where(s2.c.study_fk == studies.c.id, pred).exists()


def _order(level: Level) -> list[Any]:
    if level is Level.WORKLIST:
        w = worklist_items.c
        return [w.scheduled_procedure_step_start_date, w.scheduled_procedure_step_start_time, w.id]
    if level is Level.PATIENT:
        return [patients.c.patient_name_key, patients.c.id]
    if level is Level.STUDY:
        return [studies.c.study_date.desc(), studies.c.study_time.desc(), studies.c.id.desc()]
    if level is Level.SERIES:
        return [studies.c.id.desc(), series.c.series_number, series.c.id]
    return [series.c.id, instances.c.instance_number, instances.c.id]


def build_select(query: Query) -> Select[Any]:
    """SELECT the stored return keys (and the row id) of every match, in a stable order."""
    level = query.level
    table = TABLES[level]
    cols: list[Any] = [table.c.id.label("_id")]
    if level in (Level.SERIES, Level.IMAGE):
        cols.append(studies.c.id.label("_study_id"))
    for attr in query.return_keys:
        if attr.keyword == "ModalitiesInStudy":
            continue
        cols.append(column_for(attr).label(attr.keyword))
    stmt = select(*cols).select_from(_from_clause(level))
    for cond in query.conditions:
        stmt = stmt.where(condition_sql(cond))
    stmt = stmt.order_by(*_order(level))
    if query.offset:
        stmt = stmt.offset(query.offset)
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    return stmt


def run_query(conn: Connection, query: Query) -> list[dict[str, Any]]:
    """Run a query; each result is ``{keyword: value}`` for the return keys (values may be None)."""
    result = conn.execute(build_select(query))
    keys = list(result.keys())
    results = [dict(zip(keys, r, strict=True)) for r in result.all()]
    wants_modalities = any(a.keyword == "ModalitiesInStudy" for a in query.return_keys)
    if wants_modalities and results and query.level is not Level.PATIENT:
        id_key = "_id" if query.level is Level.STUDY else "_study_id"
        mods = modalities_by_study(conn, [r[id_key] for r in results])
        for r in results:
            r["ModalitiesInStudy"] = mods.get(r[id_key], "")
    for r in results:
        r.pop("_id", None)
        r.pop("_study_id", None)
    return results


_MODALITIES = (
    select(series.c.study_fk, series.c.modality)
    .where(series.c.study_fk.in_(bindparam("ids", expanding=True)), series.c.modality.is_not(None))
    .distinct()
)


def modalities_by_study(conn: Connection, study_ids: Sequence[int]) -> dict[int, str]:
    """``{study row id: 'CT\\\\SR'}`` for the given studies, in one query per 500 ids."""
    out: dict[int, list[str]] = {}
    ids = list(dict.fromkeys(study_ids))
    for i in range(0, len(ids), 500):
        for study_fk, modality in conn.execute(_MODALITIES, {"ids": ids[i : i + 500]}):
            out.setdefault(study_fk, []).append(modality)
    return {k: "\\".join(sorted(v)) for k, v in out.items()}
