"""A local file store in front of an S3 bucket (``[storage] backend = "s3"``).

Every blob is written to the local store (temporary file, fsync, atomic link: what a C-STORE's
success means does not change) and uploaded later by the upload queue
(:mod:`pacs.services.uploads`), which removes the local copy once the object is verified. So a
blob is local, or remote, or for a moment both; reads use the local copy while it exists and
fall back to the bucket. Nothing on the store path talks to S3: an S3 outage or a hung server
cannot delay or fail a store.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, cast

from pacs.blobstore import BlobState, BlobWriter, FileBlobStore
from pacs.blobstore.s3 import S3BlobStore

log = logging.getLogger("pacs.blobstore")


class TieredBlobStore:
    """Writes and fresh blobs local, older ones in S3; one key space over both."""

    def __init__(self, local: FileBlobStore, remote: S3BlobStore) -> None:
        self.local = local
        self.remote = remote
        #: Deletes of remote-only blobs (a replaced instance) run here: never on a store's path.
        self._deletes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-delete")

    def writer(self, key: str | None = None) -> BlobWriter:
        """A new blob in the local store (see :meth:`FileBlobStore.writer`)."""
        return self.local.writer(key)

    def open(self, key: str) -> BinaryIO:
        """The local copy if there is one, else the object (``FileNotFoundError`` if neither)."""
        try:
            return self.local.open(key)
        except FileNotFoundError:
            return cast(BinaryIO, self.remote.open(key))  # a RawIOBase with file-like reads

    def path(self, key: str) -> Path | None:
        """The local file, while there is one."""
        p = self.local.path(key)
        return p if p is not None and p.is_file() else None

    def delete(self, key: str) -> None:
        """Remove the blob: the local copy now; a remote-only one in the background (logged)."""
        if self.path(key) is not None:
            self.local.delete(key)
            return
        self._deletes.submit(self._delete_remote, key)

    def _delete_remote(self, key: str) -> None:
        try:
            self.remote.delete(key)
        except OSError as exc:
            log.warning("cannot delete object %s from S3 (left there; pacs verify lists it): %s", key, exc)

    def exists(self, key: str) -> bool:
        return self.local.exists(key) or self.remote.exists(key)

    def keys(self) -> Iterator[str]:
        """Every key, local or remote, in order, each once."""
        last = None
        for key in heapq.merge(self.local.keys(), self.remote.keys()):
            if key != last:
                yield key
            last = key

    def check(self, key: str, size: int, sha256: str, *, deep: bool) -> BlobState:
        """A local copy is re-hashed (as the file store's verify does); an object is checked by
        size (HEAD), and re-hashed only when ``deep``."""
        local = self.path(key)
        if local is None:
            found = self.remote.head(key)
            if found is None:
                return "missing"
            if found[0] != size:
                return "corrupt"
            if not deep:
                return "ok"
        try:
            with self.open(key) as fh:
                digest = hashlib.file_digest(fh, "sha256")  # type: ignore[arg-type]  # BinaryIO has readinto
                read = fh.tell()
        except FileNotFoundError:
            return "missing"
        return "ok" if digest.hexdigest() == sha256 and read == size else "corrupt"

    def close(self) -> None:
        """Finish the pending remote deletes."""
        self._deletes.shutdown(wait=True)
