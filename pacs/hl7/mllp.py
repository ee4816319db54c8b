"""The MLLP listener of the HL7 v2 door (HL7 v2.5 Appendix C: ``0x0B message 0x1C 0x0D``).

One thread per connection (at most ``[hl7] max_connections``; more are closed at once), one
message at a time per connection, in order: a message is read whole, handed to
:func:`pacs.hl7.handler.handle_message` (which returns only after the orders service committed)
and its ACK is written before the next one is read. Hostile or broken peers cost bounded
memory and time:

* a frame over ``max_message_kb`` is answered AR (with the control ID when its MSH arrived) and
  the connection closed; nothing beyond the limit is buffered;
* a peer silent for ``idle_timeout_seconds`` is disconnected, and so is one whose message is not
  complete ``message_timeout_seconds`` after its first byte (a byte dribbler);
* bytes outside a frame (other than line ends between frames) close the connection after a
  little garbage; a start byte inside a frame restarts it (the sender gave up on the last one);
* peers outside ``allowed_hosts`` (addresses or networks) are closed before anything is read.

Every refusal is logged with its reason, the peer address and, when known, the message type and
control ID; never field values.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Any

from pacs.config import Hl7Settings
from pacs.hl7.handler import OrdersPort, handle_message
from pacs.hl7.messages import Header, Hl7Error, ack, header_of

log = logging.getLogger("pacs.hl7")

START = b"\x0b"
END = b"\x1c\x0d"
FS = 0x1C
#: Bytes outside a frame tolerated (besides CR/LF/space between frames) before hanging up.
MAX_GARBAGE = 1024


def frame(payload: bytes) -> bytes:
    """One MLLP block."""
    return START + payload + END


class MllpServer:
    """The HL7 listener: :meth:`start` binds and accepts in a background thread."""

    def __init__(self, settings: Hl7Settings, orders: OrdersPort) -> None:
        self.settings = settings
        self.orders = orders
        self._nets = [ipaddress.ip_network(h, strict=False) for h in settings.allowed_hosts]
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    @property
    def max_bytes(self) -> int:
        return self.settings.max_message_kb * 1024

    def start(self, port: int | None = None, *, reuse_port: bool = False) -> tuple[str, int]:
        """Bind ``[hl7] host:port`` (or ``port``) and start accepting; returns the bound address.

        With ``reuse_port`` several processes listen on the same port (SO_REUSEPORT) and the
        kernel spreads the connections over them: ``pacs serve`` does that in each listener
        process, so messages on different connections are parsed on different cores.
        """
        s = self.settings
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((s.host, s.port if port is None else port))
        sock.listen(64)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="hl7-accept", daemon=True)
        self._thread.start()
        host, port = sock.getsockname()[:2]
        log.info("hl7 MLLP listener on %s:%d", host, port)
        return str(host), int(port)

    def stop(self) -> None:
        """Stop accepting and close every connection (a message being applied finishes first)."""
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    # ------------------------------------------------------------------ accepting

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)  # EMFILE and the like: do not spin
                continue
            peer = str(addr[0])
            if not self._allowed(peer):
                log.warning("hl7 connection from %s refused: not in [hl7] allowed_hosts", peer)
                _close(conn)
                continue
            with self._lock:
                if len(self._conns) >= self.settings.max_connections:
                    busy = True
                else:
                    busy = False
                    self._conns.add(conn)
            if busy:
                log.warning(
                    "hl7 connection from %s refused: %d connections open ([hl7] max_connections)",
                    peer,
                    self.settings.max_connections,
                )
                _close(conn)
                continue
            threading.Thread(target=self._serve, args=(conn, peer), name=f"hl7-{peer}", daemon=True).start()

    def _allowed(self, peer: str) -> bool:
        if not self._nets:
            return True
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._nets)

    # ------------------------------------------------------------------ one connection

    def _serve(self, conn: socket.socket, peer: str) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            _Connection(self, conn, peer).run()
        except OSError as exc:
            log.info("hl7 connection from %s ended: %s", peer, type(exc).__name__)
        except Exception:
            log.exception("hl7 connection from %s failed", peer)
        finally:
            with self._lock:
                self._conns.discard(conn)
            _close(conn)


class _Connection:
    """The read loop of one connection: frames out of the byte stream, bounded."""

    def __init__(self, server: MllpServer, conn: socket.socket, peer: str) -> None:
        self.server = server
        self.conn = conn
        self.peer = peer
        self.buf = bytearray()  # the current frame's payload so far
        self.in_frame = False
        self.started = 0.0  # monotonic time of the current frame's first byte
        self.garbage = 0

    def run(self) -> None:
        s = self.server.settings
        while not self.server._stop.is_set():
            timeout = s.idle_timeout_seconds
            if self.in_frame:
                left = self.started + s.message_timeout_seconds - time.monotonic()
                if left <= 0:
                    self._give_up(f"message not complete after {s.message_timeout_seconds:g} s")
                    return
                timeout = min(timeout, left)
            self.conn.settimeout(timeout)
            try:
                chunk = self.conn.recv(65536)
            except TimeoutError:
                if self.in_frame and time.monotonic() - self.started >= s.message_timeout_seconds:
                    self._give_up(f"message not complete after {s.message_timeout_seconds:g} s")
                elif self.in_frame:
                    self._give_up(f"silent for {s.idle_timeout_seconds:g} s in the middle of a message")
                else:
                    log.info(
                        "hl7 connection from %s idle for %g s: closed", self.peer, s.idle_timeout_seconds
                    )
                return
            if not chunk:
                if self.in_frame:
                    log.warning(
                        "hl7 connection from %s closed in the middle of a message (%d bytes dropped)",
                        self.peer,
                        len(self.buf),
                    )
                return
            if not self._feed(chunk):
                return

    def _feed(self, chunk: bytes) -> bool:
        """Take in received bytes; answers every complete frame. False: hang up."""
        pos = 0
        n = len(chunk)
        while pos < n:
            if not self.in_frame:
                start = chunk.find(START, pos)
                between = chunk[pos : n if start < 0 else start]
                junk = len(between.strip(b"\r\n\t \x1c"))
                if junk:
                    self.garbage += junk
                    if self.garbage > MAX_GARBAGE:
                        log.warning(
                            "hl7 connection from %s closed: %d bytes outside MLLP frames",
                            self.peer,
                            self.garbage,
                        )
                        return False
                if start < 0:
                    return True
                self.in_frame = True
                self.started = time.monotonic()
                self.buf.clear()
                pos = start + 1
                continue
            end = chunk.find(FS, pos)
            restart = chunk.find(START, pos, end if end >= 0 else n)
            if restart >= 0:  # a new start block before the end: the last frame was abandoned
                log.warning(
                    "hl7 connection from %s: a frame restarted before its end (%d bytes dropped)",
                    self.peer,
                    len(self.buf) + restart - pos,
                )
                self.buf.clear()
                self.started = time.monotonic()
                pos = restart + 1
                continue
            piece = chunk[pos : n if end < 0 else end]
            if len(self.buf) + len(piece) > self.server.max_bytes:
                self._too_large(piece)
                return False
            self.buf += piece
            if end < 0:
                return True
            pos = end + 1
            if pos < n and chunk[pos] == 0x0D:
                pos += 1
            self.in_frame = False
            payload = bytes(self.buf)
            self.buf.clear()
            if not self._answer(payload):
                return False
        return True

    def _answer(self, payload: bytes) -> bool:
        answer = handle_message(payload, self.server.orders, self.peer)
        return self._send(answer.payload)

    def _send(self, payload: bytes) -> bool:
        try:
            self.conn.settimeout(self.server.settings.idle_timeout_seconds)
            self.conn.sendall(frame(payload))
        except OSError as exc:
            log.warning("hl7 connection from %s: ACK not delivered (%s)", self.peer, type(exc).__name__)
            return False
        return True

    def _header(self, head: bytes) -> Header | None:
        try:
            return header_of(head)
        except Hl7Error as exc:
            return exc.header

    def _too_large(self, piece: bytes) -> None:
        limit = self.server.settings.max_message_kb
        head = bytes(self.buf[:4096] if len(self.buf) >= 4096 else (self.buf + piece)[:4096])
        header = self._header(head) if b"\r" in head or b"\n" in head else None
        name = header.name if header else "?"
        control = header.control_id[:40] if header else "?"
        reason = f"message larger than {limit} KiB ([hl7] max_message_kb)"
        log.warning(
            "hl7 %s %s from %s refused AR 207: %s; connection closed", name, control, self.peer, reason
        )
        self._send(ack(header, "AR", reason, 207))

    def _give_up(self, why: str) -> None:
        header = self._header(bytes(self.buf[:4096])) if b"\r" in self.buf[:4096] else None
        name = header.name if header else "?"
        control = header.control_id[:40] if header else "?"
        log.warning("hl7 %s %s from %s: %s; connection closed", name, control, self.peer, why)


def _close(conn: Any) -> None:
    try:
        conn.close()
    except OSError:
        pass
