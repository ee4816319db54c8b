"""Every service line gathered again from the index and the MPPS table, set-based.

For an index filled before the line tables existed, or by a bulk load. The lines follow the rules
of the store and MPPS transactions (:mod:`pacs.services.appraisal.lines`) in the order the
archive usually sees them: procedure steps (N-CREATE comes before the images), then studies,
then the procedure codes of the steps (an N-SET brings its code after the images).

The index keeps the request facts of an image header (ScheduledProcedureStepID, procedure codes:
:func:`pacs.dicom.extract.request_facts`) on the service lines only; a rebuild reads them from
the lines it replaces, so that a line's record is the same before and after.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from pacs.index import appraisal as sql
from pacs.index.schema import appraisal_lines
from pacs.services.appraisal.lines import (
    CODE_COLUMNS,
    KEY_SOURCES,
    MPPS_CODE_SOURCE,
    line_key,
    merged,
    new_line,
    step_facts,
    step_kind,
    study_facts,
    with_series,
)

_LINE_COLUMNS = tuple(c.name for c in appraisal_lines.c)
#: Lines read at a time while the request facts of their studies are kept.
_KEEP_PAGE = 1000


def rebuild_all(conn: Connection, now: datetime) -> tuple[int, int]:
    """Replace every line, member and series row; returns (lines, series)."""
    kept = _request_facts(conn)
    sql.lines_clear(conn)
    study_rows, series_rows, steps = sql.rebuild_sources(conn)
    lines = _Lines(now)
    members: list[dict[str, Any]] = []
    step_study: dict[str, int] = {}
    step_codes: list[tuple[int, dict[str, Any]]] = []
    for st in steps:
        kind, value = step_kind(st["sop_instance_uid"], st)
        facts = step_facts(st, kind)
        code = {col: facts.pop(col) for col in CODE_COLUMNS}
        lid = lines.add(line_key(kind, value), facts)
        step_codes.append((lid, code))
        members.append({"line_fk": lid, "kind": "mpps", "uid": st["sop_instance_uid"]})
        if st["study_instance_uid"]:
            step_study.setdefault(st["study_instance_uid"], lid)
    study_line: dict[int, int] = {}
    study_uid: dict[int, str] = {}
    for s in study_rows:
        uid = s["study_instance_uid"]
        kind, value, facts = study_facts(uid, {**s, **kept.get(uid, {})})
        if kind == "study" and uid in step_study:  # no order keys: the line of a step naming it
            lid = lines.add(lines.rows[step_study[uid] - 1]["line_key"], facts)
        else:
            lid = lines.add(line_key(kind, value), facts)
        study_line[s["id"]] = lid
        study_uid[s["id"]] = uid
        members.append({"line_fk": lid, "kind": "study", "uid": uid})
    for lid, code in step_codes:
        lines.merge(lid, code)
    series_out = []
    for n, se in enumerate(series_rows, 1):
        lid = study_line[se["study_fk"]]
        row = lines.rows[lid - 1]
        row.update(with_series(row, se["modality"], se["device_serial_number"], se["station_name"]))
        out = {k: se[k] for k in se if k != "study_fk"}
        out.update(id=n, line_fk=lid, study_instance_uid=study_uid[se["study_fk"]])
        series_out.append(out)
    sql.bulk_insert_lines(conn, lines.rows, members, series_out)
    return len(lines.rows), len(series_out)


class _Lines:
    """The rebuilt line rows, by key, with explicit ids (1, 2, ...)."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.rows: list[dict[str, Any]] = []
        self.by_key: dict[str, int] = {}

    def add(self, key: str, facts: dict[str, Any]) -> int:
        """The id of line ``key`` (created when new) with ``facts`` merged in."""
        lid = self.by_key.get(key)
        if lid is None:
            lid = self.by_key[key] = len(self.rows) + 1
            row = dict.fromkeys(_LINE_COLUMNS)
            row.update(id=lid, line_key=key, **new_line(facts["key_source"], self.now))
            self.rows.append(row)
        self.merge(lid, facts)
        return lid

    def merge(self, lid: int, facts: dict[str, Any]) -> None:
        row = self.rows[lid - 1]
        row.update(merged(row, facts))


def _request_facts(conn: Connection) -> dict[str, dict[str, Any]]:
    """Study Instance UID -> the request facts of its images, as the current lines hold them.

    A line's procedure code came from the images unless a procedure step gave it; its SPS ID is
    kept for a study only where it cannot move the study to another line (the line is keyed by
    it, or the study has an accession number or requested procedure of its own).
    """
    kept: dict[str, dict[str, Any]] = {}
    after = 0
    while lines := sql.list_lines(conn, sql.LineFilter(), after, _KEEP_PAGE):
        first, after = lines[0]["id"], lines[-1]["id"]
        holding = {ln["id"]: ln for ln in lines if _holds_request_facts(ln)}
        if not holding:
            continue
        keys = tuple(ln["line_key"] for ln in holding.values())
        rows = sql.page_rows(conn, sql.LineFilter(line_keys=keys), first - 1, after)
        for lid, studies in rows.studies.items():
            line = holding[lid]
            for st in studies:
                facts = _study_request_facts(line, st)
                if facts:
                    kept[st["study_instance_uid"]] = facts
    return kept


def _holds_request_facts(line: dict[str, Any]) -> bool:
    return bool(
        (line["procedure_code"] and line["procedure_code_source"] != MPPS_CODE_SOURCE)
        or line["scheduled_procedure_step_id"]
    )


def _study_request_facts(line: dict[str, Any], study: dict[str, Any]) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    if line["procedure_code"] and line["procedure_code_source"] != MPPS_CODE_SOURCE:
        facts.update(
            procedure_code_value=line["procedure_code"],
            procedure_coding_scheme_designator=line["procedure_coding_scheme"],
            procedure_code_meaning=line["procedure_code_meaning"],
            procedure_code_source=line["procedure_code_source"],
        )
    own_keys = study["accession_number"] or study["requested_procedure_id"]
    if line["scheduled_procedure_step_id"] and (own_keys or line["key_source"] == KEY_SOURCES["sps"]):
        facts["scheduled_procedure_step_id"] = line["scheduled_procedure_step_id"]
    return facts
