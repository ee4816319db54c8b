"""The WADO-RS proxy: a peer's DICOMweb read through us, kept in the disk cache.

``GET /api/reuse/peers/{name}/dicom-web/{path}`` is forwarded to the peer's WADO-RS / QIDO-RS
root with the peer's credentials and the client's Accept header; a complete 200 answer is kept
(:mod:`.cache`) while it streams to the client. Searches (paths ending in studies, series or
instances) are kept 5 minutes, everything else (metadata, frames, rendered, thumbnails,
instances: a SOP Instance does not change) until evicted. When the peer is away, a kept answer is
served however old it is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from pacs.errors import InvalidQuery, NotFound
from pacs.services.federation.cache import DiskCache, Writer, cache_key
from pacs.services.federation.peers import HttpPeer, Peer, PeerError, stream

log = logging.getLogger("pacs.federation")

#: The DICOMweb paths forwarded (PS3.18 10.4, 10.6): UIDs, resource names and frame lists only.
PATH = re.compile(
    r"(studies|series|instances)"
    r"(/([0-9.]{1,64}|series|instances|metadata|rendered|thumbnail|frames/\d{1,6}(,\d{1,6}){0,999}))*"
)
SEARCH_TTL = 300.0
#: Query parameters forwarded (QIDO keys are DICOM keywords or tags; the rest of PS3.18 8.3).
_PARAM = re.compile(r"[A-Za-z][A-Za-z0-9.]{0,63}|[0-9A-Fa-f]{8}")


@dataclass
class Proxied:
    """An answer to send on: media type, body chunks, whether it came from the cache."""

    media_type: str
    body: Iterator[bytes]
    cached: bool
    size: int | None = None


class Proxy:
    """Read a peer's DICOMweb through the cache (see the module docstring)."""

    def __init__(self, peers: Mapping[str, Peer], cache: DiskCache) -> None:
        self.peers = peers
        self.cache = cache

    def peer(self, name: str) -> HttpPeer:
        """The HTTP peer of that name; NotFound / InvalidQuery otherwise."""
        peer = self.peers.get(name)
        if peer is None:
            raise NotFound(f"no peer named {name[:64]!r} in [[peers]]")
        if not isinstance(peer, HttpPeer) or peer.dicomweb_root is None:
            raise InvalidQuery(f"peer {name} has no DICOMweb (a DIMSE peer): import its studies instead")
        return peer

    def get(self, name: str, path: str, params: Sequence[tuple[str, str]], accept: str) -> Proxied:
        """The peer's answer to ``GET {root}/{path}?{params}``. Raises NotFound (the peer has no
        such resource), InvalidQuery (a path or parameter not forwarded) or PeerError."""
        peer = self.peer(name)
        path = path.strip("/")
        if not PATH.fullmatch(path):
            raise InvalidQuery(f"{path[:80]!r} is not a DICOMweb resource path")
        for k, _ in params:
            if not _PARAM.fullmatch(k):
                raise InvalidQuery(f"query parameter {k[:40]!r} is not forwarded")
        search = path.rsplit("/", 1)[-1] in ("studies", "series", "instances")
        key = cache_key(name, path, params, cache_accept(path, accept))
        entry = self.cache.get(key, SEARCH_TTL if search else None)
        if entry is not None:
            return Proxied(entry.media_type, _chunks(entry.body), True, entry.size)
        try:
            res = peer.open(path, params, accept, peer.settings.timeout_seconds)
        except PeerError:
            stale = self.cache.get(key)
            if stale is not None:
                log.warning("peer %s away: served a kept answer for %s", name, path)
                return Proxied(stale.media_type, _chunks(stale.body), True, stale.size)
            raise
        if res.status_code != 200:
            status = res.status_code
            res.close()
            if status == 204:
                return Proxied("application/dicom+json", iter([b"[]"]), False, 2)
            if status == 404:
                raise NotFound(f"peer {name} has no {path[:120]}")
            if status == 406:
                raise InvalidQuery(f"peer {name} cannot answer {path[:80]} as {accept[:80]}")
            raise PeerError(name, f"HTTP {status} for {path[:80]}", status=status)
        media = res.headers.get("content-type", "application/octet-stream")
        length = res.headers.get("content-length")
        size = (
            int(length) if length and length.isdigit() and not res.headers.get("content-encoding") else None
        )
        return Proxied(media, _tee(stream(res, name), self.cache, key, media), False, size)

    def drain(self, name: str, path: str, params: Sequence[tuple[str, str]], accept: str) -> int:
        """Fetch an answer into the cache without sending it anywhere (prefetch); its bytes."""
        got = self.get(name, path, params, accept)
        return sum(len(c) for c in got.body)


def cache_accept(path: str, accept: str) -> str:
    """The Accept header as the cache keys it: images by the type asked first (JPEG or PNG),
    DICOM JSON as one, the rest as sent (clients word the same wish differently)."""
    last = path.rsplit("/", 1)[-1]
    wanted = accept.split(",")[0].split(";")[0].strip().lower()
    if last in ("rendered", "thumbnail"):
        return "image/png" if wanted == "image/png" else "image/jpeg"
    if last in ("studies", "series", "instances", "metadata") and "json" in accept.lower():
        return "application/dicom+json"
    return accept.strip()


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    try:
        while chunk := fh.read(1 << 16):
            yield chunk
    finally:
        fh.close()


def _tee(body: Iterator[bytes], cache: DiskCache, key: str, media: str) -> Iterator[bytes]:
    """Yield the peer's chunks, writing them to the cache; kept only when the answer completed."""
    writer: Writer = cache.writer(key, media)
    complete = False
    try:
        for chunk in body:
            writer.write(chunk)
            yield chunk
        complete = True
    finally:
        if complete:
            writer.commit()
        else:
            writer.abort()
