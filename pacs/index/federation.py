"""Repository functions of the federation (issue 18): provenance of imported studies
(``reuse_imports``) and the prefetch queue (``reuse_jobs``).

Every function takes an open :class:`~sqlalchemy.Connection`; the caller owns the transaction.
Queue rows are taken with a lease, as :mod:`pacs.index.commitments` does: :func:`take_job` picks
a pending row that is due and not held and writes this node's name and lease end into it; on
PostgreSQL the pick is ``SELECT ... FOR UPDATE SKIP LOCKED`` (two nodes never take one row), on
SQLite the single writer lock does the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, or_, select, update

from pacs.index.schema import patients, reuse_imports, reuse_jobs, studies

IMP = reuse_imports.c
J = reuse_jobs.c

STATE_IMPORTING = "importing"
STATE_DONE = "done"
STATE_FAILED = "failed"
STATE_PENDING = "pending"
STATE_RUNNING = "running"


# ---------------------------------------------------------------------- provenance


def import_get(conn: Connection, study_uid: str) -> dict[str, Any] | None:
    """The provenance row of a study, or None."""
    row = conn.execute(select(reuse_imports).where(IMP.study_instance_uid == study_uid)).mappings().first()
    return dict(row) if row is not None else None


def is_imported(conn: Connection, study_uid: str) -> bool:
    """Whether a study was (or is being) imported from another facility (store transactions ask)."""
    stmt = select(IMP.id).where(IMP.study_instance_uid == study_uid)
    return conn.execute(stmt).first() is not None


def imported_among(conn: Connection, study_uids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Provenance rows of those of the UIDs that were imported, by Study Instance UID."""
    uids = sorted(set(study_uids))[:1000]
    if not uids:
        return {}
    rows = conn.execute(select(reuse_imports).where(IMP.study_instance_uid.in_(uids))).mappings()
    return {r["study_instance_uid"]: dict(r) for r in rows}


def import_start(conn: Connection, values: dict[str, Any]) -> bool:
    """Record that a study is being imported; False if it has a provenance row already (a failed
    earlier import is started again)."""
    found = import_get(conn, values["study_instance_uid"])
    if found is not None and found["status"] != STATE_FAILED:
        return False
    if found is not None:
        conn.execute(delete(reuse_imports).where(IMP.id == found["id"]))
    conn.execute(reuse_imports.insert().values(status=STATE_IMPORTING, instances=0, **values))
    return True


def import_finish(
    conn: Connection, study_uid: str, status: str, instances: int, detail: str, now: datetime
) -> None:
    """Close an import: done or failed, the instances stored, a note, the patient as the peer's
    images name it."""
    _, patient_id, issuer = study_facts(conn, study_uid)
    conn.execute(
        update(reuse_imports)
        .where(IMP.study_instance_uid == study_uid)
        .values(
            status=status,
            instances=instances,
            detail=detail[:2000] or None,
            finished_at=now,
            patient_id=patient_id[:64] or None,
            issuer_of_patient_id=issuer[:64] or None,
        )
    )


def study_facts(conn: Connection, study_uid: str) -> tuple[int, str, str]:
    """(instances, PatientID, IssuerOfPatientID) of a stored study; (0, "", "") if not stored."""
    stmt = (
        select(
            studies.c.number_of_study_related_instances,
            patients.c.patient_id,
            patients.c.issuer_of_patient_id,
        )
        .select_from(studies.join(patients, studies.c.patient_fk == patients.c.id))
        .where(studies.c.study_instance_uid == study_uid)
    )
    row = conn.execute(stmt).first()
    if row is None:
        return 0, "", ""
    return int(row[0] or 0), str(row[1] or ""), str(row[2] or "")


def imports(conn: Connection, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """The newest provenance rows."""
    stmt = select(reuse_imports).order_by(IMP.started_at.desc(), IMP.id.desc()).limit(limit).offset(offset)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def local_studies(conn: Connection, study_uids: Iterable[str]) -> set[str]:
    """Those of the Study Instance UIDs the index holds."""
    uids = sorted(set(study_uids))[:1000]
    if not uids:
        return set()
    stmt = select(studies.c.study_instance_uid).where(studies.c.study_instance_uid.in_(uids))
    return {str(r[0]) for r in conn.execute(stmt)}


# ---------------------------------------------------------------------- queue


def job_add(
    conn: Connection,
    *,
    kind: str,
    identifiers: Sequence[str],
    trigger: str,
    requested_by: str,
    now: datetime,
    study_uid: str | None = None,
    peer: str | None = None,
    order_key: str | None = None,
) -> int:
    """Queue a job, due now; returns its id."""
    done = conn.execute(
        reuse_jobs.insert().values(
            kind=kind,
            identifiers=json.dumps(list(identifiers)),
            study_instance_uid=study_uid,
            peer=peer,
            trigger=trigger,
            order_key=order_key,
            requested_by=requested_by[:128],
            status=STATE_PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    assert done.inserted_primary_key is not None
    return int(done.inserted_primary_key[0])


def take_job(conn: Connection, node: str, now: datetime, lease_until: datetime) -> dict[str, Any] | None:
    """Lease the oldest due job to ``node`` (pending, or running under a lease that ran out)."""
    stmt = (
        select(J.id)
        .where(
            J.status.in_((STATE_PENDING, STATE_RUNNING)),
            J.next_attempt_at <= now,
            or_(J.locked_until.is_(None), J.locked_until < now),
        )
        .order_by(J.next_attempt_at, J.id)
        .limit(1)
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    found = conn.execute(stmt).first()
    if found is None:
        return None
    conn.execute(
        update(reuse_jobs)
        .where(J.id == found[0])
        .values(status=STATE_RUNNING, locked_by=node, locked_until=lease_until, attempts=J.attempts + 1)
    )
    return job_get(conn, int(found[0]))


def job_get(conn: Connection, job_id: int) -> dict[str, Any] | None:
    """A job row (``identifiers`` and ``result`` decoded), or None."""
    row = conn.execute(select(reuse_jobs).where(J.id == job_id)).mappings().first()
    if row is None:
        return None
    out = dict(row)
    out["identifiers"] = json.loads(out["identifiers"] or "[]")
    out["result"] = json.loads(out["result"]) if out["result"] else None
    return out


def job_finish(
    conn: Connection,
    job_id: int,
    node: str,
    *,
    status: str,
    now: datetime,
    result: dict[str, Any] | None = None,
    error: str = "",
    retry_at: datetime | None = None,
) -> bool:
    """End ``node``'s attempt: done, failed, or pending again at ``retry_at``. False if another
    node holds the job now (this node's lease ran out)."""
    values: dict[str, Any] = {
        "status": status,
        "locked_by": None,
        "locked_until": None,
        "last_error": error[:2000] or None,
        "result": json.dumps(result, default=str) if result is not None else None,
    }
    if status == STATE_PENDING and retry_at is not None:
        values["next_attempt_at"] = retry_at
    else:
        values["finished_at"] = now
    done = conn.execute(update(reuse_jobs).where(J.id == job_id, J.locked_by == node).values(**values))
    return done.rowcount == 1


def jobs(conn: Connection, limit: int = 100) -> list[dict[str, Any]]:
    """The newest jobs."""
    ids = [r[0] for r in conn.execute(select(J.id).order_by(J.id.desc()).limit(limit))]
    return [j for i in ids if (j := job_get(conn, int(i))) is not None]


def job_counts(conn: Connection) -> dict[str, int]:
    """Jobs by status."""
    stmt = select(J.status, func.count()).group_by(J.status)
    return {str(s): int(n) for s, n in conn.execute(stmt)}
