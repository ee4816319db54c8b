"""The audit spool: where rows wait, durably and in order, while the database cannot take them.

:class:`FileSpool` is one append-only JSON-lines file under the storage root
(``audit-spool/events.jsonl``), fsynced per batch and shared by every process under ``flock(2)``;
rows the database refuses outright go to ``rejected.jsonl`` beside it, never to be retried.
:class:`MemorySpool` keeps them in memory (tests).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("pacs.audit")


class Spool(Protocol):
    """Where audit rows wait, durably and in order, while the database cannot take them."""

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Add rows at the end; durable when this returns."""

    def pending(self) -> bool:
        """True when rows are waiting (a cheap check, made before every batch)."""

    def replay(self, write: Callable[[list[dict[str, Any]]], None]) -> int:
        """Hand every waiting row, oldest first, to ``write``; forget them only if it returns.
        Returns how many; ``write``'s exception propagates with the rows kept."""

    def reject(self, rows: Sequence[tuple[dict[str, Any], str]]) -> None:
        """Set aside rows the database refuses outright (with the reason), never to retry."""


class MemorySpool:
    """A :class:`Spool` in memory (tests, and an Audit built without a directory)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.rejected: list[tuple[dict[str, Any], str]] = []
        self._lock = threading.Lock()

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            self.rows.extend(dict(r) for r in rows)

    def pending(self) -> bool:
        return bool(self.rows)

    def replay(self, write: Callable[[list[dict[str, Any]]], None]) -> int:
        with self._lock:
            rows = list(self.rows)
            if rows:
                write(rows)
                del self.rows[: len(rows)]
            return len(rows)

    def reject(self, rows: Sequence[tuple[dict[str, Any], str]]) -> None:
        with self._lock:
            self.rejected.extend(rows)


class FileSpool:
    """A :class:`Spool` in one append-only JSON-lines file, shared by every process of the archive.

    Appends and the replay take ``flock(2)`` on the file; a batch is one ``write`` and one
    ``fsync``. The replay holds the lock from reading through the database commit to the
    truncation, so a row is replayed once (at least once if the process dies between the commit
    and the truncation: then twice, never lost). The file is never renamed or unlinked, so a
    writer waiting for the lock never appends to a file that is gone.
    """

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        self.path = directory / "events.jsonl"
        self.rejected_path = directory / "rejected.jsonl"
        self.fsync = fsync

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self._append(self.path, "".join(_spool_line(r) for r in rows).encode("utf-8"))

    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def replay(self, write: Callable[[list[dict[str, Any]]], None]) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            data = b"".join(chunks)
            if not data:
                return 0
            rows: list[dict[str, Any]] = []
            torn: list[tuple[dict[str, Any], str]] = []
            for line in data.split(b"\n"):
                if not line.strip():
                    continue
                try:
                    rows.append(_spool_row(line))
                except (ValueError, KeyError, TypeError) as exc:  # a write torn by a crash
                    torn.append(({"raw": line.decode("utf-8", "replace")}, f"unreadable spool line: {exc}"))
            if torn:
                self.reject(torn)
            if rows:
                write(rows)
            os.ftruncate(fd, 0)
            if self.fsync:
                os.fsync(fd)
            return len(rows)
        finally:
            os.close(fd)  # releases the lock

    def reject(self, rows: Sequence[tuple[dict[str, Any], str]]) -> None:
        for row, why in rows:
            log.error("AUDIT ROW SET ASIDE in %s (%s): %s", self.rejected_path, why, _spool_line(row).strip())
        lines = "".join(
            json.dumps({"error": why, "row": json.loads(_spool_line(r))}) + "\n" for r, why in rows
        )
        self._append(self.rejected_path, lines.encode("utf-8"))

    def _append(self, path: Path, data: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        new = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if new and self.fsync:
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


def _spool_line(row: Mapping[str, Any]) -> str:
    out = dict(row)
    if isinstance(out.get("at"), datetime):
        out["at"] = out["at"].isoformat()
    return json.dumps(out, default=str, ensure_ascii=False, separators=(",", ":")) + "\n"


def _spool_row(line: bytes) -> dict[str, Any]:
    row = json.loads(line)
    if not isinstance(row, dict) or "kind" not in row:
        raise ValueError("not an event row")
    row["at"] = datetime.fromisoformat(row["at"])
    return row
