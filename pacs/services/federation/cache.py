"""The WADO-RS proxy's disk cache: answers of peers kept by (peer, path, query, Accept), bounded
in size, least recently used first out.

An entry is one file named by the SHA-256 of its key: a JSON line (status, media type, when
fetched) then the body. Writes go to a temporary file renamed into place once complete, so a
reader never sees half an answer and a crash leaves only a ``.tmp`` (removed at start). A hit
touches the file's modification time, which orders the eviction; several processes may share
the directory (each counts what it writes and rescans the directory when it thinks it is full).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("pacs.federation")


@dataclass(frozen=True)
class Entry:
    """A cached answer: its media type, when it was fetched, the open body (caller closes)."""

    media_type: str
    fetched_at: float
    body: BinaryIO
    size: int


def cache_key(peer: str, path: str, params: Sequence[tuple[str, str]], accept: str) -> str:
    """The key of an answer: the query parameters sorted, the Accept header as sent."""
    text = "\n".join([peer, path, "&".join(f"{k}={v}" for k, v in sorted(params)), accept.strip()])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class DiskCache:
    """A bounded LRU of peer answers on disk (see the module docstring)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_entry = max(1 << 20, max_bytes // 4)  # larger answers pass through uncached
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._total = 0
        root.mkdir(parents=True, exist_ok=True)
        self._scan()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def _scan(self) -> None:
        """Learn what is on disk, oldest first; remove unfinished writes."""
        found: list[tuple[float, str, int]] = []
        for sub in self.root.iterdir() if self.root.is_dir() else []:
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                try:
                    st = f.stat()
                except OSError:
                    continue
                if f.name.endswith(".tmp"):
                    if time.time() - st.st_mtime > 3600:
                        f.unlink(missing_ok=True)
                    continue
                found.append((st.st_mtime, f.name, st.st_size))
        found.sort()
        with self._lock:
            self._sizes = OrderedDict((name, size) for _, name, size in found)
            self._total = sum(self._sizes.values())

    @property
    def size(self) -> int:
        """Bytes this process counts in the cache."""
        return self._total

    def get(self, key: str, max_age: float | None = None) -> Entry | None:
        """The entry of ``key`` (touched: most recently used), or None; older than ``max_age``
        seconds counts as missing."""
        path = self._path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - handed to the caller
        except OSError:
            return None
        try:
            meta = json.loads(fh.readline())
            size = os.fstat(fh.fileno()).st_size - fh.tell()
            if max_age is not None and time.time() - float(meta["at"]) > max_age:
                fh.close()
                return None
            os.utime(path)
        except (OSError, ValueError, KeyError):
            fh.close()
            return None
        with self._lock:
            if key in self._sizes:
                self._sizes.move_to_end(key)
        return Entry(str(meta.get("type", "application/octet-stream")), float(meta["at"]), fh, size)

    def writer(self, key: str, media_type: str) -> Writer:
        """A writer for a new entry (committed by :meth:`Writer.commit`, else dropped)."""
        return Writer(self, key, media_type)

    def _added(self, key: str, size: int) -> None:
        with self._lock:
            self._total += size - self._sizes.pop(key, 0)
            self._sizes[key] = size
            over = self._total > self.max_bytes
        if over:
            self.evict()

    def evict(self) -> int:
        """Remove least recently used entries until 90 % of the bound (a rescan is not needed at
        every write); returns how many."""
        self._scan()  # other processes may have written or touched entries
        removed = 0
        with self._lock:
            while self._total > self.max_bytes * 0.9 and self._sizes:
                key, size = self._sizes.popitem(last=False)
                self._total -= size
                try:
                    self._path(key).unlink()
                    removed += 1
                except OSError:
                    pass
        if removed:
            log.info("reuse cache: %d entries evicted, %d bytes kept", removed, self._total)
        return removed

    def clear(self) -> None:
        """Remove every entry."""
        self._scan()
        with self._lock:
            for key in list(self._sizes):
                self._path(key).unlink(missing_ok=True)
            self._sizes.clear()
            self._total = 0


class Writer:
    """An entry being written: ``write`` as the answer streams, ``commit`` when complete."""

    def __init__(self, cache: DiskCache, key: str, media_type: str) -> None:
        self.cache = cache
        self.key = key
        self.final = cache._path(key)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.with_name(f"{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        self.fh: BinaryIO | None = open(self.tmp, "wb")  # noqa: SIM115 - closed by commit/abort
        header = json.dumps({"type": media_type, "at": time.time()}).encode() + b"\n"
        self.fh.write(header)
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append a chunk; past the largest entry the write is abandoned (the answer still flows)."""
        if self.fh is None:
            return
        self.size += len(chunk)
        if self.size > self.cache.max_entry:
            self.abort()
            return
        self.fh.write(chunk)

    def commit(self) -> None:
        """The answer is complete: make it the entry."""
        if self.fh is None:
            return
        self.fh.close()
        self.fh = None
        size = self.tmp.stat().st_size
        os.replace(self.tmp, self.final)
        self.cache._added(self.key, size)

    def abort(self) -> None:
        """Drop what was written."""
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        self.tmp.unlink(missing_ok=True)
