"""Event-driven reactor loops for pynetdicom acceptor associations.

pynetdicom runs two polling loops per association: the DUL thread sleeps 1 ms whenever a pass
found nothing to do, and the association thread sleeps 1 ms before every look at its message
queue. Every DIMSE exchange therefore waits for up to three such sleeps (request complete ->
handler, response queued -> socket, next PDU arrived -> read), and an idle association wakes
2,000 times a second. For a C-FIND that returns 25 matches or a modality sending 500 slices,
those sleeps are most of the latency.

Here both loops wait on the thing they are waiting for instead:

- the DUL thread blocks in ``select()`` on the peer socket plus a wake-up socket that
  :meth:`WakeupDUL.send_pdu` pokes when the association queues a PDU to send;
- the association thread blocks on an event the DUL sets after each state-machine action
  (a completed DIMSE message, a release or abort request).

Everything else (state machine, timers, pause handshake, shutdown) is pynetdicom's own code;
the run loops below are pynetdicom 3.0's with only the sleeps replaced. ``pyproject.toml`` pins
pynetdicom to the 3.0 series, and the protocol tests run every service through these loops.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import RequestHandler

from pacs.scp.fastrsp import FastResponses

log = logging.getLogger("pynetdicom")

#: First allocation for an incoming PDU; a larger announced length grows the buffer as bytes
#: arrive, so a peer that lies about a PDU's length costs only what it really sends.
FIRST_CHUNK = 1 << 20

#: Largest A-ASSOCIATE-RQ / -AC / -RJ PDU we read (PS3.8 9.3.2-9.3.4). Its length is not
#: negotiated; 128 presentation contexts with ten transfer syntaxes each and a 64 KiB user
#: identity item (the largest its 2-byte length allows) fit in well under this. A peer that
#: announces more is aborted before it is read: it has not been identified yet.
MAX_ASSOCIATION_PDU = 256 * 1024

#: A-RELEASE-RQ/-RP and A-ABORT have a 4-byte body (PS3.8 9.3.6-9.3.8).
MAX_SMALL_PDU = 64

#: Longest a loop blocks without a wake-up: the resolution of timers (ARTIM, network idle)
#: and of a pause requested by another thread.
IDLE_WAIT = 0.02


_UNSET: Any = object()


class PduRefused(Exception):
    """A PDU over its size limit or not received whole by its deadline: the peer is aborted."""


class WakeupDUL(DULServiceProvider):
    """A DUL provider whose idle wait is ``select()`` on the peer socket and a wake-up socket.

    It also bounds what a peer can make it hold (:meth:`_limits`): each PDU's announced length
    is checked against what this side accepts before the body is read, and each PDU must arrive
    whole by a deadline, not merely with no gap longer than the socket timeout (one byte every
    few seconds used to keep a socket, and its association slot, for good).
    """

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        #: When the connection was accepted: the association must be negotiated by
        #: ``acse_timeout`` after it, however slowly its A-ASSOCIATE-RQ arrives.
        self.connected_at = time.monotonic()
        self._fast: Any = _UNSET
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def _poke(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # buffer full (a wake-up is already pending) or already closed
            pass

    def send_pdu(self, primitive: Any) -> None:
        """Queue a primitive for the peer and wake the loop to send it."""
        super().send_pdu(primitive)
        self._poke()

    def kill_dul(self) -> None:
        """Stop the reactor."""
        super().kill_dul()
        self._poke()

    def stop_dul(self) -> bool:
        """Stop the reactor if idle (Sta1); as pynetdicom's, but wakes the loop first."""
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._poke()
            while self.is_alive():
                time.sleep(self._run_loop_delay)
            return True
        return False

    def _idle(self) -> None:
        """Block until the peer sends, the association queues a PDU, or IDLE_WAIT passes."""
        sock = getattr(self.socket, "socket", None)
        fds: list[Any] = [self._wake_r] if sock is None else [self._wake_r, sock]
        try:
            ready, _, _ = select.select(fds, [], [], IDLE_WAIT)
        except (OSError, ValueError):  # the peer socket was closed under us
            time.sleep(self._run_loop_delay)
            return
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass

    def _read_pdu_data(self) -> None:
        """Read one PDU and queue its event: pynetdicom's, reading with ``recv_into``.

        pynetdicom reads a PDU 4 KiB per ``recv()``, and a socket with a timeout polls before
        each: a 256 KiB P-DATA PDU cost ~130 ``poll`` + ``recv`` pairs, each a GIL hand-off.
        Here a PDU takes as few reads as the kernel's buffer allows.
        """
        sock = getattr(self.socket, "socket", None)
        if sock is None:
            self.event_queue.put("Evt17")
            return
        deadline = self._deadline()
        head = self._recv(sock, 6, b"", deadline)
        if head is None:
            return
        if len(head) != 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, _, pdu_length = struct.unpack(">BBL", head)
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            log.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        limit = self._limit(pdu_type)
        if limit is not None and pdu_length > limit:
            self._refuse(sock, f"PDU type 0x{pdu_type:02X} of {pdu_length} bytes, over the {limit} accepted")
            return
        body = self._recv(sock, pdu_length, head, deadline)
        if body is None:
            return
        if len(body) != 6 + pdu_length:
            log.error(
                f"The received PDU is shorter than expected ({len(body)} of {6 + pdu_length} bytes received)"
            )
            self.event_queue.put("Evt17")
            return
        identified = getattr(self.assoc, "ended", None) if pdu_type == 0x01 else None
        if identified is not None:
            # A whole A-ASSOCIATE-RQ arrived in time: the peer has named itself, and leaves the
            # budget of unidentified connections before the AE check (which may take a while
            # under load), so a flood can no longer push it out while it is being answered.
            identified()
        if pdu_type == 0x04:
            fast = self._fast_path()
            if fast is not None and fast.take(body):
                return
        try:
            pdu, event = self._decode_pdu(body)
            self.event_queue.put(event)
        except Exception as exc:
            log.error("Unable to decode the received PDU data")
            log.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)

    def _recv(
        self, sock: socket.socket, n: int, prefix: bytearray | bytes, deadline: float | None
    ) -> bytearray | None:
        """``prefix`` and ``n`` more bytes; None (the peer aborted, or the transport closed, its
        event queued) when they do not arrive by the deadline or the connection fails."""
        try:
            return _recv_exact(sock, n, prefix=prefix, deadline=deadline)
        except PduRefused as exc:
            self._refuse(sock, str(exc))
        except (OSError, TimeoutError) as exc:
            log.error("Connection closed before the entire PDU was received")
            log.debug("recv failed: %s", exc)
            self.event_queue.put("Evt17")
        return None

    def _limit(self, pdu_type: int) -> int | None:
        """The largest body length this side accepts for a PDU type; None: no limit."""
        if pdu_type == 0x04:  # P-DATA-TF: the Maximum Length this side announced (PS3.8 D.3.3.1)
            assoc = self.assoc
            local = assoc.acceptor if assoc.is_acceptor else assoc.requestor
            return local.maximum_length or None  # 0: unlimited, as announced
        if pdu_type in (0x01, 0x02, 0x03):
            return MAX_ASSOCIATION_PDU
        return MAX_SMALL_PDU

    def _deadline(self) -> float | None:
        """When the PDU that is starting must have arrived whole.

        Before the association is established (an acceptor's A-ASSOCIATE-RQ): ``acse_timeout``
        after the connection was accepted. Afterwards: ``network_timeout`` after the PDU's first
        byte, which lets a 256 KiB PDU come at 4 KiB/s with the 60 s default.
        """
        assoc = self.assoc
        if assoc.is_acceptor and not assoc.is_established and assoc.acse_timeout is not None:
            return self.connected_at + assoc.acse_timeout
        if assoc.network_timeout is not None:
            return time.monotonic() + assoc.network_timeout
        return None

    def _refuse(self, sock: socket.socket, why: str) -> None:
        """Abort the peer (A-ABORT, service provider, invalid PDU parameter value) and close."""
        assoc = self.assoc
        peer = assoc.requestor if assoc.is_acceptor else assoc.acceptor
        log.warning("A-ABORT to %s@%s: %s", peer.ae_title, peer.address, why)
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x06
        try:
            sock.sendall(abort.encode())
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.event_queue.put("Evt17")  # the transport is gone (PS3.8 9.2: AA-4 / AA-5)

    def _fast_path(self) -> Any:
        """The association's C-STORE fast path (:mod:`pacs.scp.faststore`), if its listener gave
        it one (:attr:`WakeupAssociation.fast_path`)."""
        fast = self._fast
        if fast is _UNSET:
            make = getattr(self.assoc, "fast_path", None)
            fast = self._fast = make(self) if make is not None else None
        return fast

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop with the idle sleep replaced by :meth:`_idle`."""
        try:
            self._run()
        finally:
            self._wake_r.close()
            self._wake_w.close()
            if self._fast not in (None, _UNSET):
                self._fast.close()

    def _run(self) -> None:
        self._idle_timer.start()
        idle = False
        work = getattr(self.assoc, "_work", None)
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._idle()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                # Either encode and send one primitive, or receive and decode one PDU, per pass.
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                log.error("Exception in DUL.run(), aborting association")
                log.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())  # type: ignore[union-attr]
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                if work is not None:
                    work.set()
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            if work is not None and not work.is_set():
                work.set()  # a DIMSE message, release or abort may now be waiting for the association
            idle = False


def _recv_exact(
    sock: socket.socket, n: int, prefix: bytes | bytearray = b"", deadline: float | None = None
) -> bytearray:
    """``prefix`` plus ``n`` bytes read from ``sock`` (fewer only if the peer closed).

    Raises :class:`PduRefused` when ``deadline`` (``time.monotonic()``) passes first. The
    socket's own timeout still bounds each read; it is lowered only for the last stretch
    before the deadline, and restored.
    """
    start = len(prefix)
    buf = bytearray(start + min(n, FIRST_CHUNK))
    buf[:start] = prefix
    end = start + n
    got = start
    base = sock.gettimeout()
    lowered = False
    try:
        while got < end:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PduRefused(f"PDU not received whole in time ({got} of {end} bytes)")
                if base is None or left < base:
                    sock.settimeout(left)
                    lowered = True
            if got == len(buf):
                buf.extend(bytes(min(end - got, len(buf))))
            try:
                with memoryview(buf) as view:
                    k = sock.recv_into(view[got:], len(buf) - got)
            except TimeoutError:
                if lowered:
                    raise PduRefused(f"PDU not received whole in time ({got} of {end} bytes)") from None
                raise
            if not k:
                del buf[got:]
                break
            got += k
    finally:
        if lowered:
            sock.settimeout(base)
    return buf


class WakeupAssociation(Association):
    """An association whose reactor waits on the DUL's wake-up instead of sleeping.

    Acceptors become one in :class:`WakeupRequestHandler`; requestors (the associations the
    server opens for C-MOVE) because :mod:`pacs.scp.pynetdicom_patches` makes pynetdicom's AE
    build them. A requestor's ``send_c_store`` first waits for the reactor to pause: with
    pynetdicom's loop that is up to its 1 ms sleep per C-STORE sub-operation; this one is paused
    whenever it waits.
    """

    #: Set by the listener on each association it accepts: makes the C-STORE fast path of the
    #: association from its DUL (:mod:`pacs.scp.faststore`); None: pynetdicom's own path.
    fast_path: Callable[[WakeupDUL], Any] | None = None
    #: Set by the listener on each association it accepts: its C-STORE receive path
    #: (:class:`pacs.scp.receive.Receiver`), where a :class:`~pacs.scp.receive.ReceiveFile`
    #: made by pynetdicom's chunked receive finds the archive.
    receiver: Any = None
    #: Set by the listener on each association it accepts: its accepted socket, and what to
    #: call once the peer is no longer unidentified (the listener's budget of such peers): when
    #: its whole A-ASSOCIATE-RQ has arrived, and again (harmless) when the thread ends.
    connection: Any = None
    ended: Callable[[], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._work = threading.Event()

    def run(self) -> None:
        """The association's thread (pynetdicom's), then :attr:`ended`."""
        try:
            super().run()
        finally:
            if self.ended is not None:
                self.ended()

    def _install(self) -> None:
        """Swap in a :class:`WakeupDUL` and :class:`~pacs.scp.fastrsp.FastResponses` (before the
        association starts)."""
        if type(self.dimse) is DIMSEServiceProvider:
            self.dimse.__class__ = FastResponses  # same layout; only send_msg differs
        old = self.dul
        if not hasattr(self, "_work"):
            self._work = threading.Event()
        if isinstance(old, WakeupDUL):  # pynetdicom made one already (DicomServer installs it)
            return
        dul = WakeupDUL(self)
        dul.socket = old.socket
        dul.event_queue = old.event_queue  # holds Evt5 (transport connected) from set_socket()
        self.dul = dul
        # pynetdicom pushes these into the DUL's timers when they are set: set them again.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def kill(self) -> None:
        """Stop the association (and wake its reactor so it sees that at once)."""
        self._work.set()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop, waiting on ``_work`` instead of sleeping 1 ms per pass."""
        self._is_paused = False
        while not self._kill:
            # Paused while waiting: another thread may take the queues now; it clears the
            # checkpoint first, so this thread stops below before it reads them again.
            self._is_paused = True
            self._work.wait(IDLE_WAIT)
            self._work.clear()
            self._reactor_checkpoint.wait()
            self._is_paused = False
            if not self._reactor_checkpoint.is_set():
                # A send_*() cleared it just as we left the wait, and may have seen us paused:
                # its response must be left to it (the race of pydicom/pynetdicom#875).
                continue

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._work.set()  # more may be queued behind it
                self._serve_request(msg, context_id)  # type: ignore[arg-type]

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                log.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                log.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                log.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class WakeupRequestHandler(RequestHandler):
    """Builds each accepted association as a :class:`WakeupAssociation`."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.__class__ = WakeupAssociation  # same layout; only the run loops differ
        assoc._install()  # type: ignore[attr-defined]
        self.assoc = assoc  # for the listener's bookkeeping (pacs.scp.listener.Dispatch)
        return assoc
