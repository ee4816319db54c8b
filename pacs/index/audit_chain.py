"""The hash chain over the ``events`` table: sealing rows onto it and verifying it.

Every row is **sealed** shortly after it is appended: ``seq`` (1, 2, 3 ...), ``prev_hash`` (the
``row_hash`` of row ``seq - 1``) and ``row_hash = SHA-256(prev_hash + "\\n" + canonical JSON of
the row's fields and seq)``. Sealing takes the chain head under a lock (``pg_advisory_xact_lock``
on PostgreSQL; SQLite has one writer), so concurrent writers never fork the chain; the triggers
let a row be sealed once and changed never. :func:`verify_events` walks the chain and reports the
first broken link. Rows are appended unsealed because the store path writes its event rows
itself, in its own hot transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, text, update

from pacs.index.schema import events

#: ``prev_hash`` of the first row.
GENESIS = "0" * 64
#: The fields a row's hash covers: all of its columns but ``prev_hash`` and ``row_hash``.
CHAIN_FIELDS = (
    "id",
    "seq",
    "at",
    "kind",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "calling_ae",
    "peer_address",
    "user_name",
    "patient_id",
    "details",
)
#: The most rows one call of :func:`seal_events` seals (its default ``limit``).
SEAL_BATCH = 5000
_SEAL = (
    update(events)
    .where(events.c.id == bindparam("_id"), events.c.row_hash.is_(None))
    .values(seq=bindparam("_seq"), prev_hash=bindparam("_prev"), row_hash=bindparam("_hash"))
)
#: One lock per schema for everyone sealing (held to the end of the sealing transaction).
_PG_CHAIN_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.pacs_events_chain'))")


def canonical(row: Mapping[str, Any]) -> bytes:
    """The bytes a row's hash covers: :data:`CHAIN_FIELDS` as compact JSON with sorted keys, the
    time as UTC ISO 8601 with microseconds, ``details`` as the stored text."""
    doc = {name: row.get(name) for name in CHAIN_FIELDS}
    at = doc["at"]
    if isinstance(at, datetime):
        at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
        doc["at"] = at.isoformat(timespec="microseconds")
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def chain_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """``row_hash`` of a row whose predecessor's hash is ``prev_hash`` (``row`` carries its ``seq``)."""
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + canonical(row)).hexdigest()


def seal_events(conn: Connection, limit: int = SEAL_BATCH) -> list[dict[str, Any]]:
    """Seal up to ``limit`` unsealed rows, oldest first, onto the chain head; returns them sealed."""
    if conn.dialect.name == "postgresql":
        conn.execute(_PG_CHAIN_LOCK)
    head = conn.execute(
        select(events.c.seq, events.c.row_hash)
        .where(events.c.seq.is_not(None))
        .order_by(events.c.seq.desc())
        .limit(1)
    ).first()
    seq, prev = (int(head.seq), str(head.row_hash)) if head is not None else (0, GENESIS)
    rows = [
        dict(r._mapping)
        for r in conn.execute(
            select(events).where(events.c.row_hash.is_(None)).order_by(events.c.id).limit(limit)
        )
    ]
    if not rows:
        return []
    params = []
    for r in rows:
        seq += 1
        r["seq"], r["prev_hash"] = seq, prev
        r["row_hash"] = prev = chain_hash(prev, r)
        params.append({"_id": r["id"], "_seq": seq, "_prev": r["prev_hash"], "_hash": prev})
    conn.execute(_SEAL, params)
    return rows


def has_unsealed(conn: Connection) -> bool:
    """Whether any row waits to be sealed (one look at a small partial index)."""
    return conn.execute(select(events.c.id).where(events.c.row_hash.is_(None)).limit(1)).first() is not None


@dataclass(frozen=True)
class ChainReport:
    """The result of walking the hash chain: ``ok``, or the first broken link and why."""

    ok: bool
    checked: int  # sealed rows verified before the end or the break
    unsealed: int  # rows appended but not sealed yet (not an error: sealing follows within seconds)
    broken_id: int | None = None  # events.id of the first row whose link does not hold
    broken_seq: int | None = None
    reason: str = ""


def verify_events(conn: Connection, page: int = 2000) -> ChainReport:
    """Walk the chain from ``seq`` 1: each row must follow its predecessor without a gap, name
    its hash as ``prev_hash``, and hash to its ``row_hash``."""
    unsealed = int(
        conn.execute(select(func.count()).select_from(events).where(events.c.row_hash.is_(None))).scalar_one()
    )
    prev, expected, checked = GENESIS, 1, 0
    while True:
        batch = conn.execute(
            select(events).where(events.c.seq >= expected).order_by(events.c.seq).limit(page)
        ).all()
        if not batch:
            return ChainReport(True, checked, unsealed)
        for row in batch:
            r = dict(row._mapping)
            why = ""
            if r["seq"] != expected:
                why = f"seq {expected} is missing (the next row has seq {r['seq']}): a row was removed"
            elif r["prev_hash"] != prev:
                why = "prev_hash is not the hash of the row before: a row before it was removed or replaced"
            elif chain_hash(prev, r) != r["row_hash"]:
                why = "the row's content does not match its hash: the row was altered"
            if why:
                return ChainReport(False, checked, unsealed, int(r["id"]), int(r["seq"]), why)
            prev, expected, checked = str(r["row_hash"]), expected + 1, checked + 1
