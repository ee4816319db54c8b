"""Rendered resources and thumbnails (PS3.18 8.3.5 / 10.4.1.1.3, 10.4.1.1.4 Thumbnail).

Images are produced by :mod:`pacs.dicom.pixels`. Every output has a content-addressed key (the
SHA-256 of the source instances' stored bytes plus the rendering parameters), used as ETag;
thumbnails are cached on disk under ``<storage>/cache/thumbnails`` so a warm one costs a file read.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from pacs.dicom import pixels
from pacs.errors import InvalidInstance, NoPixelData
from pacs.model import StoredInstance
from pacs.services.archive import Archive

log = logging.getLogger("pacs.render")

THUMBNAIL_SIZE = (128, 128)


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

    @staticmethod
    def key(instances: list[StoredInstance], frame: int | None, params: RenderParams, kind: str) -> str:
        """The ETag of a rendering, computable without rendering (for 304 Not Modified)."""
        h = hashlib.sha256(f"{kind}|{frame}|{params.token()}".encode())
        for inst in instances:
            h.update(inst.sha256.encode())
        return h.hexdigest()[:40]

    def render(self, inst: StoredInstance, frame: int, params: RenderParams) -> Rendered:
        """Render one frame (1-based) of one instance."""
        with self.archive.open(inst) as fh:
            info = pixels.locate(fh)
            pixels.check_frame_numbers(info, [frame])
            arr = pixels.decode_frame(fh, info, frame)
        display = pixels.to_display(info.header, arr, params.window)
        content = pixels.encode_image(
            display, params.media_type, quality=params.quality, viewport=params.viewport
        )
        return Rendered(content, params.media_type, self.key([inst], frame, params, "rendered"))

    def thumbnail(self, instances: list[StoredInstance], frame: int | None, params: RenderParams) -> Rendered:
        """A small image standing for a study, series, instance or frame (cached on disk).

        For several instances the middle instance of the first series with pixel data is used.
        """
        if params.viewport is None:
            params = RenderParams(params.media_type, params.quality, THUMBNAIL_SIZE, params.window)
        etag = self.key(instances, frame, params, "thumbnail")
        ext = "png" if params.media_type == "image/png" else "jpg"
        path = self.thumb_dir / etag[:2] / f"{etag}.{ext}"
        try:
            return Rendered(path.read_bytes(), params.media_type, etag)
        except FileNotFoundError:
            pass
        rendered = self._first_renderable(instances, frame, params)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(rendered.content)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot cache thumbnail %s: %s", etag, exc)
        return Rendered(rendered.content, params.media_type, etag)

    def _first_renderable(
        self, instances: list[StoredInstance], frame: int | None, params: RenderParams
    ) -> Rendered:
        last: Exception | None = None
        for _series, group in groupby(instances, key=lambda i: i.series_instance_uid):
            members = list(group)
            candidate = members[len(members) // 2]
            number = frame or max(1, ((candidate.number_of_frames or 1) + 1) // 2)
            try:
                return self.render(candidate, number, params)
            except (NoPixelData, InvalidInstance) as exc:
                last = exc
        if isinstance(last, InvalidInstance):
            raise last
        raise NoPixelData("nothing here has pixel data to make a thumbnail from")
