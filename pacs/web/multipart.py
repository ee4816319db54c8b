"""HTTP plumbing for DICOMweb: media type parsing, Accept negotiation input, multipart/related.

``multipart/related`` (RFC 2387) responses are generated part by part from iterators, so a study is
never held in memory; request bodies are spooled to a temporary file and split with ``mmap``.
"""

from __future__ import annotations

import io
import mmap
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

CRLF = b"\r\n"


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header or a Content-Type: ``type/subtype; k=v``."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def related_type(self) -> str:
        """The ``type`` parameter of a ``multipart/related`` range, lower case, or ``""``."""
        return self.params.get("type", "").lower()


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    out: list[str] = []
    buf: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return out


def parse_media_type(text: str) -> MediaRange:
    """Parse ``type/subtype; name=value; name="quoted value"``."""
    pieces = _split_outside_quotes(text, ";")
    media_type = pieces[0].strip().lower()
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        name, sep, value = piece.partition("=")
        if not sep:
            continue
        name = name.strip().lower()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
        else:
            params[name] = value
    return MediaRange(media_type, params, q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, best first (``*/*`` when absent)."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(p) for p in _split_outside_quotes(header, ",") if p.strip()]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)


def new_boundary() -> str:
    """A random boundary that cannot occur in our part headers."""
    return f"pacs-{secrets.token_hex(16)}"


def multipart_body(boundary: str, parts: Iterable[tuple[str, Iterable[bytes]]]) -> Iterator[bytes]:
    """Yield a multipart/related body: each part is (Content-Type, chunks of its content)."""
    delim = f"--{boundary}".encode()
    for content_type, chunks in parts:
        yield delim + CRLF + f"Content-Type: {content_type}".encode() + CRLF + CRLF
        for chunk in chunks:
            if chunk:
                yield chunk
        yield CRLF
    yield delim + b"--" + CRLF


class FileSlice(io.RawIOBase):
    """A read-only, seekable window ``[start, end)`` over an open binary file."""

    def __init__(self, fh: BinaryIO, start: int, end: int) -> None:
        super().__init__()
        self._fh, self._start, self._end, self._pos = fh, start, end, 0

    @property
    def name(self) -> str:
        """A name for libraries that label what they read (pydicom does)."""
        return f"<multipart part {self._start}-{self._end}>"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._end - self._start - self._pos)
        if n <= 0:
            return 0
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        size = self._end - self._start
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


@dataclass
class Part:
    """One body part of a multipart request."""

    headers: dict[str, str]
    start: int
    end: int

    @property
    def content_type(self) -> MediaRange:
        """The part's Content-Type (``application/octet-stream`` when absent, RFC 2046 5.1)."""
        return parse_media_type(self.headers.get("content-type", "application/octet-stream"))


class MultipartError(ValueError):
    """A request body that is not a well-formed multipart message."""


def split_parts(fh: BinaryIO, boundary: str) -> list[Part]:
    """Find the body parts of a multipart message held in a file (RFC 2046 5.1.1)."""
    fh.seek(0, io.SEEK_END)
    size = fh.tell()
    if size == 0:
        raise MultipartError("the request body is empty")
    delim = b"--" + boundary.encode("latin-1")
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[: len(delim)] == delim:
            pos = 0
        else:
            pos = mm.find(CRLF + delim)
            if pos < 0:
                raise MultipartError("the body does not contain the boundary of its Content-Type")
            pos += 2
        parts: list[Part] = []
        while True:
            after = pos + len(delim)
            if mm[after : after + 2] == b"--":
                return parts
            line_end = mm.find(CRLF, after)
            if line_end < 0:
                raise MultipartError("truncated multipart body")
            head_end = mm.find(CRLF + CRLF, line_end)
            if head_end == line_end:  # no headers at all
                headers_raw = b""
                body_start = line_end + 4
            elif head_end < 0:
                raise MultipartError("a body part has no end of headers")
            else:
                headers_raw = mm[line_end + 2 : head_end]
                body_start = head_end + 4
            nxt = mm.find(CRLF + delim, body_start)
            if nxt < 0:
                raise MultipartError("the closing boundary is missing")
            headers: dict[str, str] = {}
            for line in headers_raw.split(CRLF):
                name, sep, value = line.decode("latin-1").partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            parts.append(Part(headers, body_start, nxt))
            pos = nxt + 2
            if len(parts) > 100_000:
                raise MultipartError("too many body parts")
