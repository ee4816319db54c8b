"""HTTP connection deadlines uvicorn lacks: a client must finish its request headers in time.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits forever for the
first request line and headers of a new connection, so slow-loris clients (connect, then send a
header byte now and then) each hold a socket and a file descriptor indefinitely. This wraps
uvicorn's HTTP protocol class with a per-connection deadline for the first complete headers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("pacs.http")


def with_header_timeout(base: type, seconds: float) -> type:
    """A subclass of uvicorn's HTTP protocol ``base`` that closes connections without complete
    request headers ``seconds`` after they were opened (408 semantics, RFC 9110 15.5.9)."""

    class HeaderDeadline(base):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._pacs_deadline = self.loop.call_later(seconds, self._pacs_headers_late)

        def _pacs_headers_late(self) -> None:
            if getattr(self, "cycle", None) is None and not self.transport.is_closing():
                client: Any = getattr(self, "client", None)
                log.warning(
                    "closing connection from %s: no complete request headers within %.0f s",
                    client[0] if client else "?",
                    seconds,
                )
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._pacs_deadline.cancel()
            super().connection_lost(exc)

    HeaderDeadline.__name__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadline
