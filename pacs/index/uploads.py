"""Repository functions of the S3 upload queue (the ``blob_uploads`` table).

Every function takes an open :class:`~sqlalchemy.Connection`; the caller owns the transaction.
Work is taken with a lease, as :mod:`pacs.index.commitments` does: :func:`take_due` picks queued
rows that are due and not held by a live lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the
one write lock on SQLite) and writes the holder and lease end into them; every later change
names the holder, so a node whose lease was taken over cannot overwrite the new holder's work.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pacs.index.schema import blob_uploads, instance_versions, instances

QUEUED = "queued"
REMOTE = "remote"

_BATCH = 500


def enqueue(conn: Connection, keys: Iterable[str], now: datetime) -> None:
    """Queue blobs for upload (a key already queued or remote is left as it is)."""
    rows = [
        {"blob_key": k, "state": QUEUED, "attempts": 0, "next_attempt_at": now, "created_at": now}
        for k in keys
    ]
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(blob_uploads).on_conflict_do_nothing(index_elements=["blob_key"]), rows)


def take_due(
    conn: Connection, node: str, now: datetime, lease_until: datetime, limit: int
) -> list[dict[str, Any]]:
    """Lease up to ``limit`` queued rows that are due and not held; commit soon after."""
    stmt = (
        select(blob_uploads.c.id)
        .where(
            blob_uploads.c.state == QUEUED,
            blob_uploads.c.next_attempt_at <= now,
            or_(blob_uploads.c.locked_until.is_(None), blob_uploads.c.locked_until < now),
        )
        .order_by(blob_uploads.c.next_attempt_at, blob_uploads.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    ids = [int(r[0]) for r in conn.execute(stmt)]
    if not ids:
        return []
    taken = blob_uploads.c.id.in_(ids)
    conn.execute(update(blob_uploads).where(taken).values(locked_by=node, locked_until=lease_until))
    rows = conn.execute(select(blob_uploads).where(blob_uploads.c.id.in_(ids)).order_by(blob_uploads.c.id))
    return [dict(r) for r in rows.mappings()]


def renew(conn: Connection, ids: Iterable[int], node: str, lease_until: datetime) -> int:
    """Extend ``node``'s leases on the given rows (the heartbeat); how many it still holds."""
    ids = list(ids)
    if not ids:
        return 0
    done = conn.execute(
        update(blob_uploads)
        .where(blob_uploads.c.id.in_(ids), blob_uploads.c.locked_by == node)
        .values(locked_until=lease_until)
    )
    return int(done.rowcount)


def _held(row_id: int, node: str) -> Any:
    return (blob_uploads.c.id == row_id) & (blob_uploads.c.locked_by == node)


def mark_remote(conn: Connection, row_id: int, node: str, size: int, md5: str | None, now: datetime) -> bool:
    """The object is uploaded and verified: ``remote``, lease cleared. False if not held."""
    done = conn.execute(
        update(blob_uploads)
        .where(_held(row_id, node))
        .values(
            state=REMOTE,
            size=size,
            md5=md5,
            uploaded_at=now,
            attempts=blob_uploads.c.attempts + 1,
            last_error=None,
            locked_by=None,
            locked_until=None,
        )
    )
    return done.rowcount == 1


def mark_failed(conn: Connection, row_id: int, node: str, error: str, next_attempt_at: datetime) -> bool:
    """An attempt failed: count it, keep the reason, release the lease until ``next_attempt_at``."""
    done = conn.execute(
        update(blob_uploads)
        .where(_held(row_id, node))
        .values(
            attempts=blob_uploads.c.attempts + 1,
            last_error=error[:2000],
            next_attempt_at=next_attempt_at,
            locked_by=None,
            locked_until=None,
        )
    )
    return done.rowcount == 1


def release(conn: Connection, ids: Iterable[int], node: str, next_attempt_at: datetime) -> None:
    """Give rows back without an attempt (the round stopped: S3 is down), due at ``next_attempt_at``."""
    ids = list(ids)
    if ids:
        conn.execute(
            update(blob_uploads)
            .where(blob_uploads.c.id.in_(ids), blob_uploads.c.locked_by == node)
            .values(locked_by=None, locked_until=None, next_attempt_at=next_attempt_at)
        )


def release_all(conn: Connection) -> int:
    """Clear every lease (SQLite at start-up: the one process that uploads is this one)."""
    held = blob_uploads.c.locked_by.is_not(None)
    done = conn.execute(update(blob_uploads).where(held).values(locked_by=None, locked_until=None))
    return int(done.rowcount)


def due_now(conn: Connection, now: datetime) -> int:
    """Make every queued row due at once (``pacs storage migrate``); how many there are."""
    done = conn.execute(
        update(blob_uploads).where(blob_uploads.c.state == QUEUED).values(next_attempt_at=now)
    )
    return int(done.rowcount)


def forget(conn: Connection, row_id: int, node: str | None = None) -> bool:
    """Remove a row (the blob is local only again, or was deleted). With ``node``: if held."""
    cond = blob_uploads.c.id == row_id
    if node is not None:
        cond = _held(row_id, node)
    return conn.execute(delete(blob_uploads).where(cond)).rowcount == 1


def counts(conn: Connection) -> dict[str, int]:
    """Rows per state."""
    stmt = select(blob_uploads.c.state, func.count()).group_by(blob_uploads.c.state)
    return {str(s): int(n) for s, n in conn.execute(stmt)}


def oldest_queued(conn: Connection) -> tuple[datetime | None, str | None]:
    """When the oldest queued blob was queued, and the last error of any queued row."""
    first = conn.execute(select(func.min(blob_uploads.c.created_at)).where(blob_uploads.c.state == QUEUED))
    err = conn.execute(
        select(blob_uploads.c.last_error)
        .where(blob_uploads.c.state == QUEUED, blob_uploads.c.last_error.is_not(None))
        .order_by(blob_uploads.c.next_attempt_at.desc())
        .limit(1)
    ).scalar()
    return first.scalar(), err


def states(conn: Connection, keys: Iterable[str]) -> dict[str, str]:
    """``{blob_key: state}`` of the keys that have a row."""
    keys = list(keys)
    out: dict[str, str] = {}
    for k in range(0, len(keys), _BATCH):
        stmt = select(blob_uploads.c.blob_key, blob_uploads.c.state).where(
            blob_uploads.c.blob_key.in_(keys[k : k + _BATCH])
        )
        out.update({str(key): str(state) for key, state in conn.execute(stmt)})
    return out


def remote_rows(conn: Connection, after_id: int, limit: int) -> list[dict[str, Any]]:
    """``remote`` rows with an id above ``after_id``, in id order (a resumable walk)."""
    stmt = (
        select(blob_uploads)
        .where(blob_uploads.c.state == REMOTE, blob_uploads.c.id > after_id)
        .order_by(blob_uploads.c.id)
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(stmt).mappings()]


def indexed_blob(conn: Connection, key: str) -> tuple[int, str] | None:
    """``(size, sha256)`` of an indexed blob (an instance's or a superseded version's), or None."""
    for table in (instances, instance_versions):
        row = conn.execute(select(table.c.size, table.c.sha256).where(table.c.blob_key == key)).first()
        if row is not None:
            return int(row[0]), str(row[1])
    return None


def iter_indexed_blobs(conn: Connection) -> Iterator[tuple[str, str, int, str]]:
    """``(what, blob_key, size, sha256)`` of every indexed file: instances, then superseded versions."""
    i = instances.c
    for sop, key, size, sha in conn.execute(select(i.sop_instance_uid, i.blob_key, i.size, i.sha256)):
        yield str(sop), str(key), int(size), str(sha)
    v = instance_versions.c
    for sop, key, size, sha in conn.execute(select(v.sop_instance_uid, v.blob_key, v.size, v.sha256)):
        yield f"{sop} (superseded version {str(sha)[:16]})", str(key), int(size), str(sha)
