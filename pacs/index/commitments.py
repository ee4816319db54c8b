"""Repository functions of Storage Commitment (the ``commitments`` table).

Every function takes an open :class:`~sqlalchemy.Connection`; the caller owns the transaction.
Delivery work is taken with a lease: :func:`take_due` picks pending rows that are due and not
held (no lease, or one that has run out) and writes this node's name and lease end into them;
on PostgreSQL the pick is ``SELECT ... FOR UPDATE SKIP LOCKED`` so that nodes sharing the index
never take the same row, and on SQLite the single writer lock does the same. Every later change
(delivered, attempt failed, released) names the holder, so a node whose lease was taken over
cannot write over the new holder's state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, or_, select, update

from pacs.index.schema import commitments, instances

STATE_PENDING = "pending"
STATE_DELIVERED = "delivered"
STATE_FAILED = "failed"

#: Longest IN list of one look-up (SQLite's bound-parameter limit is 32766 since 3.32; smaller
#: batches also keep PostgreSQL's plans simple).
_BATCH = 500


def instance_facts(conn: Connection, sop_instance_uids: Iterable[str]) -> dict[str, tuple[str, str, str]]:
    """``{sop_instance_uid: (sop_class_uid, blob_key, sha256)}`` of the archived ones among the UIDs."""
    uids = list(dict.fromkeys(sop_instance_uids))
    out: dict[str, tuple[str, str, str]] = {}
    cols = (instances.c.sop_instance_uid, instances.c.sop_class_uid, instances.c.blob_key, instances.c.sha256)
    for k in range(0, len(uids), _BATCH):
        stmt = select(*cols).where(instances.c.sop_instance_uid.in_(uids[k : k + _BATCH]))
        for uid, cls, key, sha in conn.execute(stmt):
            out[str(uid)] = (str(cls or ""), str(key), str(sha))
    return out


def exists(conn: Connection, transaction_uid: str) -> bool:
    """Whether a commitment with this Transaction UID was ever accepted."""
    stmt = select(commitments.c.id).where(commitments.c.transaction_uid == transaction_uid)
    return conn.execute(stmt).first() is not None


def insert(
    conn: Connection,
    *,
    transaction_uid: str,
    calling_ae: str,
    called_ae: str,
    peer_address: str,
    items: Sequence[Sequence[str]],
    result: dict[str, Any],
    now: datetime,
    next_attempt_at: datetime,
    locked_by: str | None,
    locked_until: datetime | None,
) -> int:
    """Add a pending commitment (its result already decided); returns its id."""
    done = conn.execute(
        commitments.insert().values(
            transaction_uid=transaction_uid,
            calling_ae=calling_ae[:16] or None,
            called_ae=called_ae[:16] or None,
            peer_address=peer_address[:64] or None,
            items=json.dumps([list(i) for i in items]),
            status=STATE_PENDING,
            result=json.dumps(result),
            attempts=0,
            next_attempt_at=next_attempt_at,
            locked_by=locked_by,
            locked_until=locked_until,
            created_at=now,
        )
    )
    assert done.inserted_primary_key is not None
    return int(done.inserted_primary_key[0])


def get(conn: Connection, transaction_uid: str) -> dict[str, Any] | None:
    """A commitment row (``items`` and ``result`` decoded), or None."""
    row = (
        conn.execute(select(commitments).where(commitments.c.transaction_uid == transaction_uid))
        .mappings()
        .first()
    )
    return _decoded(row) if row is not None else None


def take_due(
    conn: Connection, node: str, now: datetime, lease_until: datetime, limit: int
) -> list[dict[str, Any]]:
    """Lease up to ``limit`` pending rows that are due and not held by a live lease to ``node``.

    PostgreSQL: the rows are picked ``FOR UPDATE SKIP LOCKED`` (another node's transaction
    picking at the same moment skips them). SQLite: the caller's write transaction holds the
    database's only write lock. Commit soon after: the lease is what keeps the rows afterwards.
    """
    stmt = (
        select(commitments.c.id)
        .where(
            commitments.c.status == STATE_PENDING,
            commitments.c.next_attempt_at <= now,
            or_(commitments.c.locked_until.is_(None), commitments.c.locked_until < now),
        )
        .order_by(commitments.c.next_attempt_at, commitments.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    ids = [int(r[0]) for r in conn.execute(stmt)]
    if not ids:
        return []
    conn.execute(
        update(commitments).where(commitments.c.id.in_(ids)).values(locked_by=node, locked_until=lease_until)
    )
    rows = conn.execute(select(commitments).where(commitments.c.id.in_(ids)).order_by(commitments.c.id))
    return [_decoded(r) for r in rows.mappings()]


def renew(conn: Connection, transaction_uid: str, node: str, lease_until: datetime) -> dict[str, Any] | None:
    """Extend ``node``'s lease on a pending row it holds; the row, or None if it no longer holds it."""
    done = conn.execute(
        update(commitments)
        .where(
            commitments.c.transaction_uid == transaction_uid,
            commitments.c.status == STATE_PENDING,
            commitments.c.locked_by == node,
        )
        .values(locked_until=lease_until)
    )
    return get(conn, transaction_uid) if done.rowcount == 1 else None


def mark_delivered(conn: Connection, row_id: int, node: str, now: datetime) -> bool:
    """The peer acknowledged the report: delivered, lease cleared. False if ``node`` no longer
    held the row (another node took it over after the lease ran out)."""
    done = conn.execute(
        update(commitments)
        .where(
            commitments.c.id == row_id, commitments.c.status == STATE_PENDING, commitments.c.locked_by == node
        )
        .values(
            status=STATE_DELIVERED,
            delivered_at=now,
            attempts=commitments.c.attempts + 1,
            locked_by=None,
            locked_until=None,
            last_error=None,
        )
    )
    return done.rowcount == 1


def mark_attempt_failed(
    conn: Connection,
    row_id: int,
    node: str,
    error: str,
    *,
    next_attempt_at: datetime,
    give_up: bool,
) -> bool:
    """An attempt failed: count it, keep the reason, release the lease, and either schedule the
    next attempt or (``give_up``) mark the commitment failed. False if ``node`` no longer held it."""
    done = conn.execute(
        update(commitments)
        .where(
            commitments.c.id == row_id, commitments.c.status == STATE_PENDING, commitments.c.locked_by == node
        )
        .values(
            status=STATE_FAILED if give_up else STATE_PENDING,
            attempts=commitments.c.attempts + 1,
            last_error=error[:2000],
            next_attempt_at=next_attempt_at,
            locked_by=None,
            locked_until=None,
        )
    )
    return done.rowcount == 1


def release(conn: Connection, transaction_uid: str, node: str, now: datetime) -> bool:
    """Give up ``node``'s lease without an attempt (the requester's association is gone): the
    row is due at once for any node."""
    done = conn.execute(
        update(commitments)
        .where(
            commitments.c.transaction_uid == transaction_uid,
            commitments.c.status == STATE_PENDING,
            commitments.c.locked_by == node,
        )
        .values(locked_by=None, locked_until=None, next_attempt_at=now)
    )
    return done.rowcount == 1


def leases(conn: Connection, prefix: str) -> list[tuple[int, str]]:
    """``(id, locked_by)`` of pending rows held under a node name starting with ``prefix``."""
    stmt = select(commitments.c.id, commitments.c.locked_by).where(
        commitments.c.status == STATE_PENDING, commitments.c.locked_by.startswith(prefix, autoescape=True)
    )
    return [(int(i), str(n)) for i, n in conn.execute(stmt)]


def break_leases(conn: Connection, row_ids: Sequence[int], holders: Sequence[str]) -> int:
    """Clear the leases of rows still held by the given (dead) holders; how many were cleared."""
    cleared = 0
    for row_id, holder in zip(row_ids, holders, strict=True):
        done = conn.execute(
            update(commitments)
            .where(commitments.c.id == row_id, commitments.c.locked_by == holder)
            .values(locked_by=None, locked_until=None)
        )
        cleared += done.rowcount
    return cleared


def _decoded(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["items"] = json.loads(out["items"]) if out.get("items") else []
    out["result"] = json.loads(out["result"]) if out.get("result") else {}
    return out
