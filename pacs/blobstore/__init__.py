"""Blob stores: the bytes of each instance under an opaque key.

Keys are never built from UIDs or names. A write goes to a temporary place first and becomes
visible under its key only on :meth:`BlobWriter.commit` (after fsync, by an atomic link or
rename), so a crash never leaves a half-written blob under a key.

On Linux the temporary place is an unnamed file (``O_TMPFILE``) in the blob's own shard
directory, given its name by ``linkat`` at commit: a crash leaves nothing to clean up, and new
files are spread over the shard directories' inode groups instead of all being created in one
``tmp/`` directory (where ext4 spends much CPU skipping recently deleted inodes). Elsewhere, or
on a filesystem without ``O_TMPFILE``, writes go to ``tmp/<name>.part`` and are renamed.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, runtime_checkable


class BlobWriter(Protocol):
    """An in-progress write. Use as a context manager: leaving without commit discards it."""

    size: int

    @property
    def key(self) -> str:
        """The key the blob will have once committed."""

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes."""

    def sync(self) -> None:
        """Make what was written durable (fsync) without publishing it yet; commit() does it too."""

    def readable_path(self) -> Path | None:
        """A path where the written bytes can be read before commit, if the store has one."""

    def getvalue(self) -> bytes | None:
        """The written bytes, for stores that hold them in memory."""

    def commit(self) -> str:
        """Make the blob durable and visible; returns its key."""

    def abort(self) -> None:
        """Discard what was written."""

    def __enter__(self) -> BlobWriter: ...

    def __exit__(self, *exc: object) -> None: ...


class BlobStore(Protocol):
    """Where instance bytes live."""

    def writer(self) -> BlobWriter:
        """Start a new blob."""

    def open(self, key: str) -> BinaryIO:
        """Open a blob for reading; raises ``FileNotFoundError`` if it is not there."""

    def path(self, key: str) -> Path | None:
        """A filesystem path for the blob, if the store has one (for zero-copy responses)."""

    def delete(self, key: str) -> None:
        """Remove a blob (no error if absent)."""

    def exists(self, key: str) -> bool:
        """True if the key has a committed blob."""

    def keys(self) -> Iterator[str]:
        """Every committed key."""


#: What :meth:`CheckedStore.check` found for a blob.
BlobState = Literal["ok", "missing", "corrupt"]


@runtime_checkable
class CheckedStore(Protocol):
    """A store that checks its blobs itself (where reading each one whole costs too much)."""

    def check(self, key: str, size: int, sha256: str, *, deep: bool) -> BlobState:
        """Whether the blob is there with ``size`` bytes (``deep``: and hashes to ``sha256``)."""


#: Keys in a row that share a shard directory before the next is picked at random.
SHARD_RUN = 256

_shard_state = threading.local()


def new_key() -> str:
    """A fresh opaque key ``aa/bb/<128 random bits as hex>``.

    The shard ``aa/bb`` is random too, but kept for :data:`SHARD_RUN` keys in a row (per
    thread): the instances of a study land in a few directories rather than one new directory
    each, which saves two ``mkdir`` and their fsyncs per instance on a young archive, and
    spreads evenly over the 65,536 shards in the long run.
    """
    token = secrets.token_hex(16)
    left = getattr(_shard_state, "left", 0)
    if left <= 0:
        _shard_state.shard = f"{token[:2]}/{token[2:4]}"
        left = SHARD_RUN
    _shard_state.left = left - 1
    return f"{_shard_state.shard}/{token}"


def _check_key(key: str) -> None:
    parts = key.split("/")
    if len(parts) != 3 or not all(p and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise ValueError(f"not a blob key: {key!r}")


_O_TMPFILE = getattr(os, "O_TMPFILE", 0)


class _FileWriter:
    def __init__(self, store: FileBlobStore, key: str | None = None) -> None:
        self._store = store
        if key is not None:
            _check_key(key)
        self._key = key or new_key()
        self._final = os.path.join(store.root_str, self._key)
        self._shard = os.path.dirname(self._final)
        self._tmp: str | None = None  # the named temporary file, when O_TMPFILE is not used
        fd = store.open_unnamed(self._shard)
        if fd is None:
            self._tmp = os.path.join(store.tmp_str, self._key.rsplit("/", 1)[1] + ".part")
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._fh: BinaryIO | None = os.fdopen(fd, "wb")  # closed in commit/abort
        self._synced = False
        self.size = 0
        self._done = False

    def write(self, data: bytes | memoryview) -> None:
        assert self._fh is not None
        self._fh.write(data)
        self.size += len(data)

    @property
    def key(self) -> str:
        return self._key

    def readable_path(self) -> Path | None:
        assert self._fh is not None
        self._fh.flush()
        return Path(self._tmp if self._tmp is not None else f"/proc/self/fd/{self._fh.fileno()}")

    def sync(self) -> None:
        assert self._fh is not None and not self._done
        self._fh.flush()
        if self._store.fsync and not self._synced:
            os.fsync(self._fh.fileno())
        self._synced = True

    def getvalue(self) -> bytes | None:
        return None

    def commit(self) -> str:
        assert self._fh is not None and not self._done
        self.sync()
        fh, self._fh = self._fh, None
        try:
            dir_fd = self._publish(fh.fileno())
        finally:
            fh.close()
        try:
            if self._store.fsync:
                os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._done = True
        return self._key

    def _publish(self, fd: int) -> int:
        """Give the written file its name (the key), atomically; returns an fd of its directory."""
        for attempt in (1, 2):
            try:
                if self._tmp is not None:
                    self._store.ensure_dir(self._shard)
                    os.replace(self._tmp, self._final)
                dir_fd = os.open(self._shard, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:  # the shard was removed behind our back: make it again
                if attempt == 2:
                    raise
                self._store.forget_dir(self._shard)
                self._store.ensure_dir(self._shard)
                continue
            if self._tmp is None:
                try:
                    # linkat(AT_FDCWD, "/proc/self/fd/N", dir_fd, name, AT_SYMLINK_FOLLOW): passing
                    # a directory fd is what makes Python call linkat() rather than link().
                    name = os.path.basename(self._final)
                    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
                except BaseException:
                    os.close(dir_fd)
                    raise
            return dir_fd
        raise AssertionError("unreachable")

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()  # flushes what is buffered: may fail again on a full disk
            except OSError:
                pass
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass

    def __enter__(self) -> _FileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    """Blobs as files under ``root/blobs/aa/bb/<key>``; in-progress writes under ``root/tmp``."""

    def __init__(self, root: Path, *, fsync: bool = True, unnamed_tmp: bool = True) -> None:
        self.root = Path(root) / "blobs"
        self.tmp_dir = Path(root) / "tmp"
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.root_str, self.tmp_str = str(self.root), str(self.tmp_dir)
        self._dirs: set[str] = set()  # shard directories known to exist (and to be durable)
        self.unnamed_tmp = unnamed_tmp and bool(_O_TMPFILE) and os.path.isdir("/proc/self/fd")

    def open_unnamed(self, shard: str) -> int | None:
        """A writable unnamed file (``O_TMPFILE``) in ``shard``, or None where unsupported."""
        if not self.unnamed_tmp:
            return None
        self.ensure_dir(shard)
        try:
            return os.open(shard, _O_TMPFILE | os.O_RDWR, 0o644)
        except FileNotFoundError:  # the shard was removed behind our back
            self.forget_dir(shard)
            self.ensure_dir(shard)
            return os.open(shard, _O_TMPFILE | os.O_RDWR, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self.unnamed_tmp = False  # this filesystem has no O_TMPFILE: named files in tmp/
            return None

    def ensure_dir(self, shard: str) -> None:
        """Create a shard directory (``aa/bb``) if needed, durably: a new directory's entry in
        its parent is fsynced, or a crash could lose every blob renamed into it."""
        if shard in self._dirs:
            return
        parent = os.path.dirname(shard)
        for d in (parent, shard):
            try:
                os.mkdir(d)
            except FileExistsError:
                continue
            if self.fsync:
                _fsync_dir(os.path.dirname(d))
        self._dirs.add(shard)

    def forget_dir(self, shard: str) -> None:
        """Drop a shard directory from the cache of those known to exist."""
        self._dirs.discard(shard)

    def clean_tmp(self) -> int:
        """Remove leftovers of writes interrupted by a crash; returns how many were removed.

        Only safe when no writer of this store is running (at start-up).
        """
        n = 0
        for p in self.tmp_dir.glob("*.part"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def writer(self, key: str | None = None) -> _FileWriter:
        """A new blob; ``key``: under that key (a copy of a blob kept elsewhere, e.g. in S3)."""
        return _FileWriter(self, key)

    def open(self, key: str) -> BinaryIO:
        _check_key(key)
        return open(self.root / key, "rb")

    def path(self, key: str) -> Path | None:
        _check_key(key)
        return self.root / key

    def delete(self, key: str) -> None:
        _check_key(key)
        (self.root / key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        _check_key(key)
        return (self.root / key).is_file()

    def keys(self) -> Iterator[str]:
        for p in sorted(self.root.glob("??/??/*")):
            if p.is_file():
                yield p.relative_to(self.root).as_posix()


class _MemoryWriter:
    def __init__(self, store: MemoryBlobStore) -> None:
        self._store = store
        self._buf = io.BytesIO()
        self.size = 0
        self._done = False
        self.key = new_key()

    def write(self, data: bytes | memoryview) -> None:
        self._buf.write(data)
        self.size += len(data)

    def sync(self) -> None:
        pass

    def readable_path(self) -> Path | None:
        return None

    def getvalue(self) -> bytes | None:
        return self._buf.getvalue()

    def commit(self) -> str:
        with self._store._lock:
            self._store._blobs[self.key] = self._buf.getvalue()
        self._done = True
        return self.key

    def abort(self) -> None:
        self._done = True

    def __enter__(self) -> _MemoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class MemoryBlobStore:
    """Blobs in a dict: for tests."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def writer(self) -> _MemoryWriter:
        return _MemoryWriter(self)

    def open(self, key: str) -> BinaryIO:
        try:
            return io.BytesIO(self._blobs[key])
        except KeyError:
            raise FileNotFoundError(key) from None

    def path(self, key: str) -> Path | None:
        return None

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(key, None)

    def exists(self, key: str) -> bool:
        return key in self._blobs

    def keys(self) -> Iterator[str]:
        yield from sorted(self._blobs)
