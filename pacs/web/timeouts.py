"""HTTP connection guards uvicorn lacks: header and body deadlines, and a connection cap.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but otherwise waits forever
for a client: for request headers (slow-loris clients send a header byte now and then), and for a
request body that stops arriving. Each such client holds a socket, a file descriptor and, while
its request runs, the application's attention. :func:`guarded` wraps uvicorn's h11 protocol class
so that every connection is in one of three phases, each with its own rule:

- **headers** (a new connection, or the first byte of a further request on a keep-alive
  connection, until its headers are complete): ``header_timeout`` seconds, then the connection is
  closed (RFC 9112 9.5 lets a server close a connection it does not want to wait for);
- **body** (headers complete, body not yet received): no gap of more than ``body_timeout`` seconds
  between received bytes, and the whole body within ``body_deadline`` seconds; time during which
  the application is not reading (uvicorn paused the socket, or the client waits for
  ``100 Continue``) is the server's, not the client's. On expiry: 408 Request Timeout (RFC 9110
  15.5.9) when no response has started, and the connection is closed; the application sees a
  disconnect;
- otherwise (the server's turn, or idle between requests: uvicorn's keep-alive timeout) no timer.

The cap: a connection beyond ``max_connections`` open ones (per web server process) is answered
``503 Service Unavailable`` with ``Retry-After`` as soon as it is accepted, then closed: sockets and
memory stay bounded by the cap, and a client learns why. (uvicorn's own ``limit_concurrency``
answers 503 only once a request's headers are complete, so idle sockets beyond it still pile up.)
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import h11

log = logging.getLogger("pacs.http")

#: Seconds a refused connection gets to read its 503 (we half-close, drain, then close; closing at
#: once with unread request bytes would reset the connection and lose the answer).
REFUSAL_LINGER = 1.0
#: Refusals are logged at most this often (a flood of them must not flood the log).
REFUSAL_LOG_INTERVAL = 10.0


def _plain(status: int, reason: str, text: str, *extra: str) -> bytes:
    body = text.encode("ascii")
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: text/plain; charset=utf-8",
        "X-Content-Type-Options: nosniff",
        *extra,
        "Connection: close",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def guarded(
    base: type,
    *,
    header_timeout: float,
    body_timeout: float = 0.0,
    body_deadline: float = 0.0,
    max_connections: int = 0,
) -> type:
    """A subclass of uvicorn's ``H11Protocol`` ``base`` with the deadlines and the cap of the
    module docstring (each 0 = off)."""
    busy = _plain(
        503,
        "Service Unavailable",
        "too many connections to this server; try again shortly\n",
        "Retry-After: 5",
    )
    refusals = {"count": 0, "logged_at": -math.inf}

    class Guarded(base):  # type: ignore[valid-type, misc]
        _pacs_timer: asyncio.TimerHandle | None = None
        _pacs_phase = ""  # "headers", "body", or "" (no timer)
        _pacs_fresh = True  # no request begun yet on this connection
        _pacs_refused = False
        _pacs_body_end = math.inf  # loop time by which the body must be complete
        _pacs_last_byte = 0.0  # loop time of the last body bytes received

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if max_connections > 0 and len(self.connections) > max_connections:
                self._pacs_refuse()
                return
            self._pacs_update()

        def data_received(self, data: bytes) -> None:
            if self._pacs_refused:
                return  # drained and dropped: the 503 is on its way
            if self._pacs_phase == "body":
                self._pacs_last_byte = self.loop.time()
            super().data_received(data)
            self._pacs_update()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._pacs_update()  # the next request (perhaps already buffered) starts its clock

        def connection_lost(self, exc: Exception | None) -> None:
            self._pacs_cancel()
            super().connection_lost(exc)

        # -------------------------------------------------------------- phases

        def _pacs_cancel(self) -> None:
            if self._pacs_timer is not None:
                self._pacs_timer.cancel()
                self._pacs_timer = None

        def _pacs_update(self) -> None:
            """Work out the phase from h11's view of the client; start its timer on a change."""
            if self.transport.is_closing():
                self._pacs_cancel()
                return
            state = self.conn.their_state
            if state is h11.IDLE and (self._pacs_fresh or self.conn.trailing_data[0]):
                phase = "headers"
            elif state is h11.SEND_BODY:
                phase = "body"
            else:
                phase = ""
            if state is not h11.IDLE:
                self._pacs_fresh = False
            if phase == self._pacs_phase:
                return
            self._pacs_phase = phase
            self._pacs_cancel()
            if phase == "headers" and header_timeout > 0:
                self._pacs_timer = self.loop.call_later(header_timeout, self._pacs_headers_late)
            elif phase == "body":
                now = self.loop.time()
                self._pacs_last_byte = now
                self._pacs_body_end = now + body_deadline if body_deadline > 0 else math.inf
                self._pacs_arm_body()

        def _pacs_headers_late(self) -> None:
            self._pacs_timer = None
            if self._pacs_phase != "headers" or self.transport.is_closing():
                return
            log.warning(
                "closing connection from %s: no complete request headers within %.0f s",
                self._pacs_client(),
                header_timeout,
            )
            self.transport.close()

        def _pacs_arm_body(self) -> None:
            gap_end = self._pacs_last_byte + body_timeout if body_timeout > 0 else math.inf
            when = min(gap_end, self._pacs_body_end)
            if when < math.inf:
                self._pacs_timer = self.loop.call_at(when, self._pacs_body_check)

        def _pacs_body_check(self) -> None:
            self._pacs_timer = None
            if self._pacs_phase != "body" or self.transport.is_closing():
                return
            now = self.loop.time()
            if now >= self._pacs_body_end:
                self._pacs_body_late(f"the request body took longer than {body_deadline:.0f} s")
                return
            cycle: Any = self.cycle
            if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
                self._pacs_last_byte = now  # the application is not reading yet: not the client's delay
            if now < self._pacs_last_byte + body_timeout:
                self._pacs_arm_body()  # bytes came meanwhile
                return
            self._pacs_body_late(f"no request body bytes for {body_timeout:.0f} s")

        def _pacs_body_late(self, why: str) -> None:
            cycle: Any = self.cycle
            scope = getattr(cycle, "scope", None) or {}
            log.warning(
                "closing connection from %s: %s (%s %s)",
                self._pacs_client(),
                why,
                scope.get("method", "?"),
                scope.get("path", "?"),
            )
            if cycle is not None:
                if not cycle.response_started:
                    self.transport.write(_plain(408, "Request Timeout", f"{why}\n"))
                cycle.disconnected = True  # the application's further sends go nowhere
                cycle.message_event.set()  # and a receive() it waits in returns http.disconnect
            self.transport.close()

        # -------------------------------------------------------------- the cap

        def _pacs_refuse(self) -> None:
            self._pacs_refused = True
            self.connections.discard(self)  # not served: does not count against the cap
            refusals["count"] += 1
            now = self.loop.time()
            if now - refusals["logged_at"] >= REFUSAL_LOG_INTERVAL:
                log.warning(
                    "refused %d connection(s) with 503, the latest from %s: %d open "
                    "([http] max_connections = %d)",
                    refusals["count"],
                    self._pacs_client(),
                    len(self.connections),
                    max_connections,
                )
                refusals["count"], refusals["logged_at"] = 0, now
            self.transport.write(busy)
            if self.transport.can_write_eof():
                self.transport.write_eof()  # FIN after the 503; read and drop until the client closes
                self._pacs_timer = self.loop.call_later(REFUSAL_LINGER, self.transport.close)
            else:  # TLS: no half-close
                self.transport.close()

        def _pacs_client(self) -> str:
            client: Any = getattr(self, "client", None)
            return str(client[0]) if client else "?"

    Guarded.__name__ = f"Guarded{base.__name__}"
    return Guarded
