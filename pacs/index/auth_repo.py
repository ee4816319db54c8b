"""SQL for users, bearer tokens and reading the event log (the audit trail).

Writing events stays in :mod:`pacs.index.repo` (``add_event``); this module adds batched appends
and the filtered, paged reads an auditor needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, or_, select, update

from pacs.index.schema import auth_tokens, events, patients, studies, users


@dataclass(frozen=True)
class UserRow:
    """A user as stored (the hash never leaves the service layer)."""

    id: int
    name: str
    role: str
    password_hash: str
    disabled: bool
    created_at: datetime


def _user(row: Any) -> UserRow:
    return UserRow(
        id=row.id,
        name=row.name,
        role=row.role,
        password_hash=row.password_hash,
        disabled=bool(row.disabled),
        created_at=row.created_at,
    )


def add_user(conn: Connection, name: str, role: str, password_hash: str, at: datetime) -> int:
    """Insert a user; raises ``IntegrityError`` when the name is taken."""
    result = conn.execute(
        insert(users).values(
            name=name, role=role, password_hash=password_hash, disabled=False, created_at=at, updated_at=at
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def get_user(conn: Connection, name: str) -> UserRow | None:
    """The user called ``name``, or None."""
    row = conn.execute(select(users).where(users.c.name == name)).first()
    return _user(row) if row else None


def list_users(conn: Connection) -> list[UserRow]:
    """Every user, by name."""
    return [_user(r) for r in conn.execute(select(users).order_by(users.c.name))]


def set_user(conn: Connection, name: str, at: datetime, **values: Any) -> bool:
    """Update a user's role, hash or disabled flag; False when there is no such user."""
    result = conn.execute(update(users).where(users.c.name == name).values(updated_at=at, **values))
    return bool(result.rowcount)


def add_token(
    conn: Connection, user_id: int, token_sha256: str, created: datetime, expires: datetime, address: str
) -> None:
    """Record an issued token (its hash only)."""
    conn.execute(
        insert(auth_tokens).values(
            token_sha256=token_sha256,
            user_fk=user_id,
            created_at=created,
            expires_at=expires,
            address=address[:64] or None,
        )
    )


def token_user(conn: Connection, token_sha256: str, now: datetime) -> tuple[UserRow, datetime] | None:
    """The enabled user owning an unexpired token, with the token's expiry; None otherwise."""
    row = conn.execute(
        select(users, auth_tokens.c.expires_at)
        .join(auth_tokens, auth_tokens.c.user_fk == users.c.id)
        .where(auth_tokens.c.token_sha256 == token_sha256)
        .where(auth_tokens.c.expires_at > now)
        .where(users.c.disabled.is_(False))
    ).first()
    return (_user(row), row.expires_at) if row else None


def revoke_tokens(conn: Connection, user_id: int) -> int:
    """Delete every token of a user (on disable); returns how many."""
    return int(conn.execute(delete(auth_tokens).where(auth_tokens.c.user_fk == user_id)).rowcount)


def revoke_token(conn: Connection, token_sha256: str) -> bool:
    """Delete one token (sign-out); whether it existed."""
    return bool(conn.execute(delete(auth_tokens).where(auth_tokens.c.token_sha256 == token_sha256)).rowcount)


def purge_tokens(conn: Connection, now: datetime) -> int:
    """Delete expired tokens."""
    return int(conn.execute(delete(auth_tokens).where(auth_tokens.c.expires_at <= now)).rowcount)


# ---------------------------------------------------------------------- the event log


def append_events(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Append several event rows at once (keys: the ``events`` columns; ``details`` a dict)."""
    if not rows:
        return
    values = []
    for r in rows:
        v = dict(r)
        d = v.get("details")
        v["details"] = json.dumps(d, default=str, ensure_ascii=False) if d else None
        for col, n in (("calling_ae", 16), ("peer_address", 64), ("user_name", 64), ("kind", 32)):
            if v.get(col):
                v[col] = str(v[col])[:n]
        for col in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
            if v.get(col):
                v[col] = str(v[col])[:64]
        values.append(v)
    conn.execute(insert(events), values)


@dataclass(frozen=True)
class EventFilter:
    """Filters of an audit query; every field optional."""

    since: datetime | None = None
    until: datetime | None = None
    user: str | None = None
    kinds: tuple[str, ...] = ()  # a kind, or a prefix ending with "."
    study_instance_uid: str | None = None
    address: str | None = None
    after_id: int = 0


def query_events(conn: Connection, flt: EventFilter, limit: int) -> list[dict[str, Any]]:
    """Events matching ``flt`` in the order they were appended, at most ``limit``."""
    conds = [events.c.id > flt.after_id]
    if flt.since is not None:
        conds.append(events.c.at >= flt.since)
    if flt.until is not None:
        conds.append(events.c.at < flt.until)
    if flt.user:
        conds.append(or_(events.c.user_name == flt.user, events.c.calling_ae == flt.user))
    if flt.study_instance_uid:
        conds.append(events.c.study_instance_uid == flt.study_instance_uid)
    if flt.address:
        conds.append(events.c.peer_address == flt.address)
    if flt.kinds:
        kc = [
            events.c.kind.startswith(k, autoescape=True) if k.endswith(".") else events.c.kind == k
            for k in flt.kinds
        ]
        conds.append(or_(*kc))
    stmt = select(events).where(and_(*conds)).order_by(events.c.id).limit(limit)
    out = []
    for row in conn.execute(stmt):
        d = dict(row._mapping)
        try:
            d["details"] = json.loads(d["details"]) if d["details"] else {}
        except ValueError:
            d["details"] = {"raw": d["details"]}
        out.append(d)
    return out


def patients_of_studies(conn: Connection, study_uids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``study UID -> (PatientID, PatientName)`` for the studies the index knows."""
    uids = sorted(set(u for u in study_uids if u))
    out: dict[str, tuple[str, str]] = {}
    for i in range(0, len(uids), 500):
        chunk = uids[i : i + 500]
        stmt = (
            select(studies.c.study_instance_uid, patients.c.patient_id, patients.c.patient_name)
            .join(patients, patients.c.id == studies.c.patient_fk)
            .where(studies.c.study_instance_uid.in_(chunk))
        )
        for uid, pid, pname in conn.execute(stmt):
            out[uid] = (pid or "", pname or "")
    return out
