"""Rendered resources and thumbnails (PS3.18 8.3.5 / 10.4.1.1.3, 10.4.1.1.4 Thumbnail).

Images are produced by :mod:`pacs.dicom.pixels`, each decoded frame charged to the request's
:class:`~pacs.limits.DecodeBudget` (a budget of its own per image when none is given). A rendered
instance has a content-addressed key (the SHA-256 of its stored bytes plus the rendering
parameters), used as ETag.

Thumbnails are cached on disk under ``<storage>/cache/thumbnails``, as images named by their ETag
and as small entries keyed by the request (study, series, instance, frame, parameters) that say
which image answers it and under which content stamp (:mod:`pacs.index.versions`). A warm
thumbnail costs one small query (is the stamp still current?) and a file read; a new or replaced
instance changes the stamp, and the thumbnail is made again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import BinaryIO

from pacs.dicom import pixels
from pacs.errors import InvalidInstance, NoPixelData, NotFound, TooLarge
from pacs.index.versions import content_stamp
from pacs.limits import DecodeBudget
from pacs.model import StoredInstance
from pacs.services.archive import Archive

log = logging.getLogger("pacs.render")

THUMBNAIL_SIZE = (128, 128)
#: Thumbnail cache entries kept in memory (each a few hundred bytes); the disk holds them all.
_ENTRIES_MAX = 4096
#: Parsed image headers kept in memory (a few tens of KB each), by content: a stack being scrolled
#: through is rendered without parsing each header again.
_HEADERS_MAX = 1024


@dataclass(frozen=True)
class RenderParams:
    """What the client asked for (PS3.18 8.3.5.1)."""

    media_type: str = "image/jpeg"
    quality: int = 90
    viewport: tuple[int, int] | None = None
    window: pixels.Window | None = None

    def token(self) -> str:
        """A stable text form for cache keys."""
        w = self.window
        win = f"{w.center:g},{w.width:g},{w.function}" if w else "-"
        vp = f"{self.viewport[0]}x{self.viewport[1]}" if self.viewport else "-"
        return f"{self.media_type}|q{self.quality}|{vp}|{win}"


@dataclass(frozen=True)
class Rendered:
    """An encoded image and its entity tag."""

    content: bytes
    media_type: str
    etag: str


class Renderer:
    """Render frames of stored instances; cache thumbnails."""

    def __init__(self, archive: Archive, cache_dir: Path) -> None:
        self.archive = archive
        self.thumb_dir = cache_dir / "thumbnails"
        self._entries: dict[str, dict[str, str]] = {}
        self._headers: OrderedDict[tuple[str, str], pixels.PixelInfo] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(instances: list[StoredInstance], frame: int | None, params: RenderParams, kind: str) -> str:
        """The ETag of a rendering, computable without rendering (for 304 Not Modified)."""
        h = hashlib.sha256(f"{kind}|{frame}|{params.token()}".encode())
        for inst in instances:
            h.update(inst.sha256.encode())
        return h.hexdigest()[:40]

    def render(
        self, inst: StoredInstance, frame: int, params: RenderParams, budget: DecodeBudget | None = None
    ) -> Rendered:
        """Render one frame (1-based) of one instance (:class:`~pacs.errors.TooLarge` when decoding
        it would go over ``budget``)."""
        with self.archive.open(inst) as fh:
            info = self._pixel_info(inst, fh)
            pixels.check_frame_numbers(info, [frame])
            arr = pixels.decode_frame(fh, info, frame, budget)
        display = pixels.to_display(info.header, arr, params.window)
        content = pixels.encode_image(
            display, params.media_type, quality=params.quality, viewport=params.viewport
        )
        return Rendered(content, params.media_type, self.key([inst], frame, params, "rendered"))

    def thumbnail(
        self,
        study: str,
        series: str | None,
        sop: str | None,
        frame: int | None,
        params: RenderParams,
        budget: DecodeBudget | None = None,
    ) -> Rendered:
        """A small image standing for a study, series, instance or frame (cached on disk).

        For several instances the middle instance of the first series with pixel data is used.
        Raises :class:`NotFound` when nothing is stored there.
        """
        if params.viewport is None:
            params = RenderParams(params.media_type, params.quality, THUMBNAIL_SIZE, params.window)
        request = hashlib.sha256(f"{study}|{series}|{sop}|{frame}|{params.token()}".encode()).hexdigest()
        entry = self._entry(request)
        # The stamp is read before the instances are listed: a store in between makes the entry
        # look older than it is (made again next time), never newer.
        with self.archive.read() as conn:
            stamp = content_stamp(conn, study, series, sop, entry["member"] if entry else None)
        if stamp is None:
            raise NotFound(f"no stored instances for {sop or series or study}")
        if entry is not None and entry["stamp"] == stamp[0] and entry["member_sha"] == stamp[1]:
            try:
                return Rendered(
                    self._image_path(entry["etag"], params).read_bytes(), params.media_type, entry["etag"]
                )
            except FileNotFoundError:
                pass
        instances = self.archive.instances(study, series, sop)
        rendered, member = self._first_renderable(instances, frame, params, budget)
        if sop is not None:
            etag = self.key([member], frame, params, "thumbnail")
        else:
            etag = hashlib.sha256(
                f"thumbnail|{frame}|{params.token()}|{stamp[0]}|{member.sop_instance_uid}|{member.sha256}".encode()
            ).hexdigest()[:40]
        entry = {
            "stamp": stamp[0],
            "member": member.sop_instance_uid,
            "member_sha": member.sha256,
            "etag": etag,
        }
        try:
            _write_atomic(self._image_path(etag, params), rendered.content)
            _write_atomic(self._entry_path(request), json.dumps(entry).encode())
        except OSError as exc:
            log.warning("cannot cache thumbnail %s: %s", etag, exc)
        self._remember(request, entry)
        return Rendered(rendered.content, params.media_type, etag)

    def _pixel_info(self, inst: StoredInstance, fh: BinaryIO) -> pixels.PixelInfo:
        """The parsed header of an instance, from memory when seen recently (keyed by content)."""
        key = (inst.blob_key, inst.sha256)
        with self._lock:
            info = self._headers.get(key)
            if info is not None:
                self._headers.move_to_end(key)
                return info
        info = pixels.locate(fh)
        if info.value_offset >= 0:  # not a deflated object parsed whole (its pixels are in the header)
            with self._lock:
                self._headers[key] = info
                while len(self._headers) > _HEADERS_MAX:
                    self._headers.popitem(last=False)
        return info

    def _image_path(self, etag: str, params: RenderParams) -> Path:
        ext = (
            "png"
            if params.media_type == "image/png"
            else "gif"
            if params.media_type == "image/gif"
            else "jpg"
        )
        return self.thumb_dir / etag[:2] / f"{etag}.{ext}"

    def _entry_path(self, request: str) -> Path:
        return self.thumb_dir / "requests" / request[:2] / f"{request}.json"

    def _entry(self, request: str) -> dict[str, str] | None:
        entry = self._entries.get(request)
        if entry is not None:
            return entry
        try:
            entry = json.loads(self._entry_path(request).read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or not {"stamp", "member", "member_sha", "etag"} <= entry.keys():
            return None
        self._remember(request, entry)
        return entry

    def _remember(self, request: str, entry: dict[str, str]) -> None:
        with self._lock:
            while len(self._entries) >= _ENTRIES_MAX:
                self._entries.pop(next(iter(self._entries)))
            self._entries[request] = entry

    def _first_renderable(
        self,
        instances: list[StoredInstance],
        frame: int | None,
        params: RenderParams,
        budget: DecodeBudget | None,
    ) -> tuple[Rendered, StoredInstance]:
        last: Exception | None = None
        for _series, group in groupby(instances, key=lambda i: i.series_instance_uid):
            members = list(group)
            candidate = members[len(members) // 2]
            number = frame or max(1, ((candidate.number_of_frames or 1) + 1) // 2)
            try:
                return self.render(candidate, number, params, budget), candidate
            except (NoPixelData, InvalidInstance, TooLarge) as exc:  # another series may do
                last = exc
        if isinstance(last, InvalidInstance | TooLarge):
            raise last
        raise NoPixelData("nothing here has pixel data to make a thumbnail from")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
