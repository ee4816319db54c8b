"""Repository functions over the index: the store transaction, look-ups, maintenance.

Every function takes an open :class:`~sqlalchemy.Connection`; the caller owns the transaction.
Upserts use ``INSERT ... ON CONFLICT DO NOTHING`` so that concurrent associations storing into
the same new study or series are safe on PostgreSQL as well as SQLite.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Table, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pacs.dicom.attributes import at_level
from pacs.errors import DuplicateInstance, InvalidInstance
from pacs.index.prepared import Prepared
from pacs.index.schema import events, instance_versions, instances, patients, series, studies
from pacs.model import InstanceRecord, InstanceVersion, Level, Origin, StoredInstance, StoreOutcome


@dataclass(frozen=True)
class BlobFacts:
    """What the archive knows about the bytes of an instance it is indexing."""

    blob_key: str
    size: int
    sha256: str
    dataset_sha256: str | None  # None: not computed (see store_instance's ``dataset_digest``)
    received_at: datetime


class Indexed(NamedTuple):
    """What :func:`store_instance` did."""

    outcome: StoreOutcome
    #: A blob key the caller must delete after the transaction commits (the new one for an
    #: identical resend, the old one for a replacement), or None.
    to_delete: str | None = None
    #: For a new version (policy ``keep-versions``): the details of its ``instance.version_added``
    #: event (old and new SHA-256, sizes, transfer syntaxes, senders, which one is served).
    version: dict[str, Any] | None = None


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _level_values(record: InstanceRecord, level: Level) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in at_level(level, stored_only=True):
        out[attr.column] = record.values.get(attr.column)
        if attr.vr == "PN":
            out[attr.column + "_key"] = record.values.get(attr.column + "_key")
    return out


def patient_identity(values: dict[str, Any]) -> str:
    """One row per PatientID + issuer; patients without an ID are kept apart by name."""
    pid = values.get("patient_id") or ""
    issuer = values.get("issuer_of_patient_id") or ""
    if pid:
        return f"{pid}\\{issuer}"
    return f"\\{issuer}\\{values.get('patient_name') or ''}"


def existing_instance(conn: Connection, sop_instance_uid: str) -> dict[str, Any] | None:
    """The index row facts of an instance (id, blob key, hashes, parent UIDs), or None."""
    row = _EXISTING_Q.first(conn, {"_uid": sop_instance_uid})
    return dict(zip(_EXISTING_KEYS, row, strict=True)) if row else None


def store_instance(
    conn: Connection,
    record: InstanceRecord,
    blob: BlobFacts,
    origin: Origin,
    *,
    policy: str,
    event: bool = True,
    dataset_digest: Callable[[str | None], tuple[str, str]] | None = None,
    keep_identical: bool = False,
) -> Indexed:
    """Index one instance whose blob is already committed.

    An identical resend is told from a different object by the SHA-256 of the data sets (the
    file meta differs with the sender). Where a hash is not known, ``dataset_digest(old blob
    key)`` returns ``(new digest, old digest)`` computed from the files; the old one is kept.
    A different object follows ``policy``: ``keep-versions`` (see :func:`_add_version`),
    ``replace`` or ``reject``. ``keep_identical`` (``pacs reindex``, which must index every
    file) keeps an identical data set in another file as a version too.
    """
    existing = existing_instance(conn, record.sop_instance_uid)
    if existing is not None:
        new_digest, old_digest = blob.dataset_sha256, existing["dataset_sha256"]
        if (new_digest is None or old_digest is None) and dataset_digest is not None:
            new_digest, old_digest = dataset_digest(None if old_digest else existing["blob_key"])
            new_digest = blob.dataset_sha256 or new_digest
            old_digest = existing["dataset_sha256"] or old_digest
            if not existing["dataset_sha256"]:
                # Kept: the next resend of this UID is settled without reading the old file again.
                keep = update(instances).where(instances.c.id == existing["id"])
                conn.execute(keep.values(dataset_sha256=old_digest))
        identical = new_digest is not None and new_digest == old_digest
        if identical and not keep_identical:
            if event:
                _event(conn, "instance.duplicate", record, origin, blob.received_at, {})
            return Indexed(StoreOutcome.DUPLICATE, blob.blob_key)
        if policy == "keep-versions" or keep_identical:
            return _add_version(conn, existing, record, blob, origin, new_digest, old_digest, event=event)
        if policy != "replace":
            raise DuplicateInstance(
                f"SOP Instance UID {record.sop_instance_uid} is already stored with different content"
            )
        if (
            existing["series_instance_uid"] != record.series_instance_uid
            or existing["study_instance_uid"] != record.study_instance_uid
        ):
            raise InvalidInstance("a replacement must keep the study and series of the stored instance")
        conn.execute(
            update(instances)
            .where(instances.c.id == existing["id"])
            .values({**_instance_values(record, blob, origin), "dataset_sha256": new_digest})
        )
        _event(
            conn, "instance.replaced", record, origin, blob.received_at, {"old_blob": existing["blob_key"]}
        )
        return Indexed(StoreOutcome.REPLACED, existing["blob_key"])

    now = blob.received_at
    parents = _SERIES_PARENTS_Q.first(conn, {"_uid": record.series_instance_uid})
    if parents is not None:
        # The common case: the 2nd..nth instance of a series. No upserts needed.
        series_id, study_id, pid, study_uid = parents
        if study_uid != record.study_instance_uid:
            raise InvalidInstance(
                f"Series Instance UID {record.series_instance_uid} already belongs to another study"
            )
        new_series = new_study = False
    else:
        series_id, study_id, pid, new_series, new_study = _upsert_parents(conn, record, now)

    _INSERT_INSTANCE.run(conn, {"series_fk": series_id, **_instance_values(record, blob, origin)})
    _COUNT_SERIES_Q.run(conn, {"_id": series_id})
    _COUNT_STUDY_Q.run(conn, {"_id": study_id, "_series": int(new_series), "_now": now})
    _COUNT_PATIENT_Q.run(conn, {"_id": pid, "_series": int(new_series), "_studies": int(new_study)})
    if event:
        _event(conn, "instance.stored", record, origin, now, {"size": blob.size, "new_study": new_study})
    return Indexed(StoreOutcome.STORED)


def _add_version(
    conn: Connection,
    existing: dict[str, Any],
    record: InstanceRecord,
    blob: BlobFacts,
    origin: Origin,
    new_digest: str | None,
    old_digest: str | None,
    *,
    event: bool,
) -> Indexed:
    """Keep a different object under a stored SOP Instance UID beside the stored one.

    The newest received is the current one (the ``instances`` row, which every edge serves);
    the others are rows of ``instance_versions``, each superseded when the next newer arrived.
    Usually the new object is the newest: the current row's facts move to a version row and the
    row takes the new object's header values and blob. An object older than the current one
    (``pacs reindex`` meets the files in any order; a concurrent store may commit first) is kept
    as a version in its place in the chain. The version row is inserted first: two stores
    superseding the same file at once collide on its unique blob key, and the loser is retried.
    """
    if (existing["series_instance_uid"], existing["study_instance_uid"]) != (
        record.series_instance_uid,
        record.study_instance_uid,
    ):
        raise DuplicateInstance(
            f"SOP Instance UID {record.sop_instance_uid} is already stored in another series or "
            "study; a new version of an instance must keep its study and series"
        )
    current = conn.execute(_CURRENT_FACTS, {"_id": existing["id"]}).mappings().one()
    new = {
        "blob_key": blob.blob_key,
        "size": blob.size,
        "sha256": blob.sha256,
        "dataset_sha256": new_digest,
        "transfer_syntax_uid": record.transfer_syntax_uid,
        "received_at": blob.received_at,
        "calling_ae": origin.calling_ae[:16] or None,
        "called_ae": origin.called_ae[:16] or None,
        "peer_address": origin.address[:64] or None,
        "origin_protocol": origin.protocol[:16],
    }
    newest = _utc(blob.received_at) >= _utc(current["received_at"])
    if newest:
        old = {**current, "dataset_sha256": old_digest or current["dataset_sha256"]}
        conn.execute(
            instance_versions.insert(),
            {**old, "sop_instance_uid": record.sop_instance_uid, "superseded_at": blob.received_at},
        )
        conn.execute(
            update(instances)
            .where(instances.c.id == existing["id"])
            .values({**_instance_values(record, blob, origin), "dataset_sha256": new_digest})
        )
    else:
        at = _utc(blob.received_at)
        chain = conn.execute(
            select(
                instance_versions.c.id, instance_versions.c.received_at, instance_versions.c.superseded_at
            ).where(instance_versions.c.sop_instance_uid == record.sop_instance_uid)
        ).all()
        newer = [_utc(r.received_at) for r in chain if _utc(r.received_at) > at]
        superseded_at = min(newer) if newer else current["received_at"]
        for r in chain:  # the one it now comes after was superseded by it
            if _utc(r.received_at) <= at < _utc(r.superseded_at):
                conn.execute(
                    update(instance_versions)
                    .where(instance_versions.c.id == r.id)
                    .values(superseded_at=blob.received_at)
                )
        conn.execute(
            instance_versions.insert(),
            {**new, "sop_instance_uid": record.sop_instance_uid, "superseded_at": superseded_at},
        )
    details = {
        "served": "new" if newest else "old",
        "old_sha256": current["sha256"],
        "new_sha256": blob.sha256,
        "old_size": current["size"],
        "new_size": blob.size,
        "old_transfer_syntax_uid": current["transfer_syntax_uid"],
        "new_transfer_syntax_uid": record.transfer_syntax_uid,
        "old_calling_ae": current["calling_ae"],
        "new_calling_ae": new["calling_ae"],
        "old_received_at": _utc(current["received_at"]).isoformat(),
    }
    if event:
        _event(conn, "instance.version_added", record, origin, blob.received_at, details)
    return Indexed(StoreOutcome.VERSIONED, None, details)


def _utc(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite gives back the naive UTC value)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# Statements built once (SQLAlchemy then compiles each once): the store path runs them per instance.
_EXISTING = (
    select(
        instances.c.id,
        instances.c.blob_key,
        instances.c.dataset_sha256,
        instances.c.series_fk,
        series.c.series_instance_uid,
        studies.c.study_instance_uid,
    )
    .join(series, instances.c.series_fk == series.c.id)
    .join(studies, series.c.study_fk == studies.c.id)
    .where(instances.c.sop_instance_uid == bindparam("_uid"))
)
_SERIES_PARENTS = (
    select(series.c.id, series.c.study_fk, studies.c.patient_fk, studies.c.study_instance_uid)
    .join(studies, series.c.study_fk == studies.c.id)
    .where(series.c.series_instance_uid == bindparam("_uid"))
)
_COUNT_SERIES = (
    update(series)
    .where(series.c.id == bindparam("_id"))
    .values(number_of_series_related_instances=series.c.number_of_series_related_instances + 1)
)
_COUNT_STUDY = (
    update(studies)
    .where(studies.c.id == bindparam("_id"))
    .values(
        number_of_study_related_instances=studies.c.number_of_study_related_instances + 1,
        number_of_study_related_series=studies.c.number_of_study_related_series + bindparam("_series"),
        updated_at=bindparam("_now"),
    )
)
_COUNT_PATIENT = (
    update(patients)
    .where(patients.c.id == bindparam("_id"))
    .values(
        number_of_patient_related_instances=patients.c.number_of_patient_related_instances + 1,
        number_of_patient_related_series=patients.c.number_of_patient_related_series + bindparam("_series"),
        number_of_patient_related_studies=(
            patients.c.number_of_patient_related_studies + bindparam("_studies")
        ),
    )
)


#: The archive facts of an instance row that move to ``instance_versions`` when it is superseded
#: (through Connection.execute: the times need SQLAlchemy's type conversion).
_VERSION_FACTS = (
    "blob_key",
    "size",
    "sha256",
    "dataset_sha256",
    "transfer_syntax_uid",
    "received_at",
    "calling_ae",
    "called_ae",
    "peer_address",
    "origin_protocol",
)
_CURRENT_FACTS = select(*(instances.c[name] for name in _VERSION_FACTS)).where(
    instances.c.id == bindparam("_id")
)

# The same, run on the DB-API cursor (pacs.index.prepared): these run for every stored instance.
_EXISTING_Q = Prepared(_EXISTING)
_EXISTING_KEYS = tuple(_EXISTING.selected_columns.keys())
_SERIES_PARENTS_Q = Prepared(_SERIES_PARENTS)
_INSERT_INSTANCE = Prepared(instances.insert())
_INSERT_EVENT = Prepared(events.insert())
_COUNT_SERIES_Q = Prepared(_COUNT_SERIES)
_COUNT_STUDY_Q = Prepared(_COUNT_STUDY)
_COUNT_PATIENT_Q = Prepared(_COUNT_PATIENT)


def _upsert_parents(
    conn: Connection, record: InstanceRecord, now: datetime
) -> tuple[int, int, int, bool, bool]:
    """Insert (or find) the patient, study and series of the first instance of a series.

    Returns ``(series_id, study_id, patient_id, new_series, new_study)``. ``ON CONFLICT DO
    NOTHING`` makes concurrent first instances of the same study or series safe.
    """
    pvals = _level_values(record, Level.PATIENT)
    identity = patient_identity(pvals)
    # Values go as execution parameters, not ``.values(...)``: the statement then has one cache
    # key and SQLAlchemy compiles it once (building a key over ~40 bound values cost ~1 ms each).
    pid = conn.execute(
        _insert(conn, patients).on_conflict_do_nothing(index_elements=["identity"]).returning(patients.c.id),
        {"identity": identity, **pvals},
    ).scalar()
    if pid is None:
        pid = conn.execute(select(patients.c.id).where(patients.c.identity == identity)).scalar_one()

    svals = _level_values(record, Level.STUDY)
    study_id = conn.execute(
        _insert(conn, studies)
        .on_conflict_do_nothing(index_elements=["study_instance_uid"])
        .returning(studies.c.id),
        {"patient_fk": pid, "created_at": now, "updated_at": now, **svals},
    ).scalar()
    new_study = study_id is not None
    if study_id is None:
        study_id, pid = conn.execute(
            select(studies.c.id, studies.c.patient_fk).where(
                studies.c.study_instance_uid == record.study_instance_uid
            )
        ).one()

    sevals = _level_values(record, Level.SERIES)
    series_id = conn.execute(
        _insert(conn, series)
        .on_conflict_do_nothing(index_elements=["series_instance_uid"])
        .returning(series.c.id),
        {"study_fk": study_id, **sevals},
    ).scalar()
    new_series = series_id is not None
    if series_id is None:
        series_id, owner = conn.execute(
            select(series.c.id, series.c.study_fk).where(
                series.c.series_instance_uid == record.series_instance_uid
            )
        ).one()
        if owner != study_id:
            raise InvalidInstance(
                f"Series Instance UID {record.series_instance_uid} already belongs to another study"
            )
    return series_id, study_id, pid, new_series, new_study


def _instance_values(record: InstanceRecord, blob: BlobFacts, origin: Origin) -> dict[str, Any]:
    return {
        **_level_values(record, Level.IMAGE),
        "transfer_syntax_uid": record.transfer_syntax_uid,
        "blob_key": blob.blob_key,
        "size": blob.size,
        "sha256": blob.sha256,
        "dataset_sha256": blob.dataset_sha256,
        "received_at": blob.received_at,
        "calling_ae": origin.calling_ae[:16] or None,
        "called_ae": origin.called_ae[:16] or None,
        "peer_address": origin.address[:64] or None,
        "origin_protocol": origin.protocol[:16],
    }


def _event(
    conn: Connection,
    kind: str,
    record: InstanceRecord,
    origin: Origin,
    at: datetime,
    details: dict[str, Any],
) -> None:
    _INSERT_EVENT.run(
        conn,
        {
            "at": at,
            "kind": kind,
            "study_instance_uid": record.study_instance_uid,
            "series_instance_uid": record.series_instance_uid,
            "sop_instance_uid": record.sop_instance_uid,
            "calling_ae": origin.calling_ae[:16] or None,
            "peer_address": origin.address[:64] or None,
            "user_name": origin.user[:64] or None,
            "details": json.dumps(details, default=str) if details else None,
        },
    )


def add_event(conn: Connection, kind: str, at: datetime, origin: Origin, **fields: Any) -> None:
    """Append a free-standing event (an association, a query, a retrieve)."""
    details = fields.pop("details", None)
    _INSERT_EVENT.run(
        conn,
        {
            "at": at,
            "kind": kind,
            "calling_ae": origin.calling_ae[:16] or None,
            "peer_address": origin.address[:64] or None,
            "user_name": origin.user[:64] or None,
            "details": json.dumps(details, default=str) if details else None,
            **fields,
        },
    )


_STORED_COLS = (
    instances.c.sop_instance_uid,
    instances.c.sop_class_uid,
    studies.c.study_instance_uid,
    series.c.series_instance_uid,
    instances.c.transfer_syntax_uid,
    instances.c.blob_key,
    instances.c.size,
    instances.c.sha256,
    instances.c.received_at,
    instances.c.number_of_frames,
    instances.c.instance_number,
)


def stored_instances(
    conn: Connection,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[StoredInstance]:
    """Instances under a study / series / single UID, in series and instance order."""
    given = (bool(study_instance_uid), bool(series_instance_uid), bool(sop_instance_uid))
    params = {"_study": study_instance_uid, "_series": series_instance_uid, "_sop": sop_instance_uid}
    return [StoredInstance(**dict(r)) for r in conn.execute(_stored_select(*given), params).mappings()]


@functools.lru_cache(maxsize=8)
def _stored_select(study: bool, series_: bool, sop: bool) -> Any:
    """The statement of :func:`stored_instances` for one combination of given UIDs, built once
    (every WADO and rendered request runs it)."""
    stmt = (
        select(*_STORED_COLS)
        .select_from(instances)
        .join(series, instances.c.series_fk == series.c.id)
        .join(studies, series.c.study_fk == studies.c.id)
    )
    if study:
        stmt = stmt.where(studies.c.study_instance_uid == bindparam("_study"))
    if series_:
        stmt = stmt.where(series.c.series_instance_uid == bindparam("_series"))
    if sop:
        stmt = stmt.where(instances.c.sop_instance_uid == bindparam("_sop"))
    return stmt.order_by(series.c.series_number, series.c.id, instances.c.instance_number, instances.c.id)


def iter_blob_facts(conn: Connection) -> Iterator[tuple[str, str, str]]:
    """``(sop_instance_uid, blob_key, sha256)`` of every indexed instance."""
    stmt = select(instances.c.sop_instance_uid, instances.c.blob_key, instances.c.sha256)
    for row in conn.execute(stmt):
        yield row[0], row[1], row[2]


def iter_version_facts(conn: Connection) -> Iterator[tuple[str, str, str]]:
    """``(sop_instance_uid, blob_key, sha256)`` of every superseded version."""
    v = instance_versions.c
    for row in conn.execute(select(v.sop_instance_uid, v.blob_key, v.sha256)):
        yield row[0], row[1], row[2]


def versions_of(conn: Connection, sop_instance_uid: str) -> list[InstanceVersion]:
    """Every kept version of an instance, newest first (the current one first); [] if not stored."""
    i, v = instances.c, instance_versions.c
    row = conn.execute(
        select(
            series.c.series_instance_uid,
            studies.c.study_instance_uid,
            *(i[name] for name in _VERSION_FACTS),
        )
        .join(series, i.series_fk == series.c.id)
        .join(studies, series.c.study_fk == studies.c.id)
        .where(i.sop_instance_uid == sop_instance_uid)
    ).first()
    if row is None:
        return []
    parents = (row.study_instance_uid, row.series_instance_uid)
    out = [_version(sop_instance_uid, parents, row, current=True)]
    older = conn.execute(
        select(instance_versions)
        .where(v.sop_instance_uid == sop_instance_uid)
        .order_by(v.received_at.desc(), v.id.desc())
    )
    out += [_version(sop_instance_uid, parents, r, current=False) for r in older]
    return out


def _version(sop: str, parents: tuple[str, str], row: Any, *, current: bool) -> InstanceVersion:
    return InstanceVersion(
        sop_instance_uid=sop,
        study_instance_uid=parents[0],
        series_instance_uid=parents[1],
        sha256=row.sha256,
        size=row.size,
        transfer_syntax_uid=row.transfer_syntax_uid,
        received_at=_utc(row.received_at),
        calling_ae=row.calling_ae,
        peer_address=row.peer_address,
        origin_protocol=row.origin_protocol,
        current=current,
        superseded_at=None if current else _utc(row.superseded_at),
        blob_key=row.blob_key,
    )


def count(conn: Connection, level: Level) -> int:
    """How many rows a level has."""
    table = {Level.PATIENT: patients, Level.STUDY: studies, Level.SERIES: series, Level.IMAGE: instances}[
        level
    ]
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def clear(conn: Connection) -> None:
    """Delete every indexed row (events are kept): the first step of a full reindex."""
    for table in (instance_versions, instances, series, studies, patients):
        conn.execute(delete(table))
