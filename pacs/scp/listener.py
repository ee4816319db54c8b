"""The DIMSE listener: application entity, access control, association bookkeeping, TLS, and the
dispatch of associations over several listener processes.

Handlers stay thin: they build an :class:`~pacs.model.Origin`, call a service and map the result
through the one status table (:mod:`pacs.dicom.status`). C-STORE is :mod:`pacs.scp.receive`
(and its fast path, :mod:`pacs.scp.faststore`); the contexts we accept are
:mod:`pacs.scp.contexts`; every change to pynetdicom itself is :mod:`pacs.scp.pynetdicom_patches`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

from pacs import tls
from pacs.config import Settings
from pacs.dicom import status as codes
from pacs.model import Origin
from pacs.scp import access, pynetdicom_patches
from pacs.scp.contexts import Extension, add_supported_contexts
from pacs.scp.faststore import StoreFastPath
from pacs.scp.origin import origin_of
from pacs.scp.reactor import WakeupDUL, WakeupRequestHandler
from pacs.scp.receive import Receiver, incoming_dir
from pacs.services.archive import Archive
from pacs.services.audit import Audit

log = logging.getLogger("pacs.dimse")


def _by_sop_class(choices: list[tuple[frozenset[str], Callable[..., Any]]]) -> Callable[..., Any]:
    """One handler for an event several services bind (C-FIND: Query/Retrieve and the Modality
    Worklist): pynetdicom keeps one handler per intervention event, so pick by the request's SOP
    class among the services whose contexts name it."""

    def handle(event: evt.Event) -> Any:
        req = event.request
        uid = str(
            getattr(req, "AffectedSOPClassUID", None) or getattr(req, "RequestedSOPClassUID", None) or ""
        )
        for classes, handler in choices:
            if uid in classes:
                return handler(event)
        return choices[0][1](event)

    return handle


class Dispatch:
    """Spreads the associations of one DICOM port over the listener processes.

    The first process accepts every connection and hands each to the process with the fewest
    associations in progress (itself included), passing the socket over a UNIX socket pair
    (``SCM_RIGHTS``). Kernel spreading (SO_REUSEPORT) hashes the peer's address and port: four
    modalities sending at once landed all on one process (one core, one GIL) about one time in
    eight. ``loads`` is shared memory: slot ``index`` counts this process's associations.
    """

    def __init__(self, loads: Any, index: int, channels: list[socket.socket] | None = None) -> None:
        self.loads = loads
        self.index = index
        self.channels: list[socket.socket | None] = list(channels or [])  # to processes 1, 2, ...

    def add(self, slot: int, n: int) -> None:
        """Count ``n`` more (or fewer) associations for process ``slot``."""
        with self.loads.get_lock():
            self.loads[slot] += n

    def pick(self) -> int:
        """The process with the fewest associations (this one on a tie)."""
        with self.loads.get_lock():
            counts = list(self.loads)
        alive = [0] + [k + 1 for k, ch in enumerate(self.channels) if ch is not None]
        return min(alive, key=lambda k: (counts[k], k != self.index))

    def hand_over(self, slot: int, sock: socket.socket, addr: tuple[str, int]) -> bool:
        """Pass an accepted connection to process ``slot``; False if that process is gone."""
        channel = self.channels[slot - 1]
        if channel is None:
            return False
        try:
            socket.send_fds(channel, [json.dumps([addr[0], addr[1]]).encode()], [sock.fileno()])
        except OSError as exc:
            log.error("listener process %d does not take connections (%s); serving them here", slot, exc)
            self.channels[slot - 1] = None
            return False
        self.add(slot, 1)
        sock.close()
        return True


class Unidentified:
    """Connections accepted whose association is not yet accepted or refused: the peer has not
    been identified by its AE title, so it gets its own budget, apart from ``max_associations``.

    At most ``per_host`` such connections per peer address and ``limit`` in all. A new
    connection over either is admitted by dropping the one of that host (or of all) that has
    been negotiating longest. A modality negotiates in milliseconds and an A-ASSOCIATE-RQ must
    arrive whole within ``acse_timeout`` (:class:`~pacs.scp.reactor.WakeupDUL`), so under a flood
    of silent or slow sockets the oldest is always one of them, and legitimate peers, even from
    the flooding host (behind the same NAT), still get in. Refusing the newcomer instead would
    let the flood lock them out.
    """

    def __init__(self, limit: int, per_host: int) -> None:
        self.limit = max(1, limit)
        self.per_host = max(1, per_host)
        self._lock = threading.Lock()
        self._socks: dict[socket.socket, str] = {}  # in order of arrival

    def admit(self, sock: socket.socket, host: str) -> None:
        """Count a new connection, dropping the oldest of its host or of all to make room."""
        with self._lock:
            same = [s for s, h in self._socks.items() if h == host]
            oldest = None
            if len(same) >= self.per_host:
                oldest, why = same[0], f"{self.per_host} connections from {host} still negotiating"
            elif len(self._socks) >= self.limit:
                oldest, why = next(iter(self._socks)), f"{self.limit} connections still negotiating"
            if oldest is not None:
                old_host = self._socks.pop(oldest)
            self._socks[sock] = host
        if oldest is not None:
            log.warning("%s: dropping the oldest, from %s", why, old_host)
            try:
                oldest.shutdown(socket.SHUT_RDWR)  # its reader sees the close and ends
            except OSError:
                pass

    def identified(self, sock: object) -> None:
        """The connection's association was accepted or refused, or the connection ended."""
        with self._lock:
            self._socks.pop(sock, None)  # type: ignore[call-overload]

    def __len__(self) -> int:
        with self._lock:
            return len(self._socks)


class _Handed(OSError):
    """Raised from get_request for a connection passed to another process (socketserver skips it)."""


class _Listener(ThreadedAssociationServer):
    """Adds dispatch to other listener processes, TCP_NODELAY on accepted sockets, and the
    C-STORE receive path handed to each association it accepts (:class:`_AssociationHandler`).

    :meth:`DicomServer.start` makes a subclass per listener with these class attributes set
    (they are needed while pynetdicom's ``make_server`` constructs, binds and activates it).
    """

    nodelay = True
    dispatch: Dispatch | None = None
    bind_port = True  # False in a listener process that only takes connections handed to it
    receiver: Receiver | None = None
    fast_store = False  # C-STORE on the association's reader thread (pacs.scp.faststore)
    unidentified: Unidentified = Unidentified(64, 8)  # each listener gets its own (DicomServer.start)

    def fast_path(self, dul: WakeupDUL) -> StoreFastPath:
        """The C-STORE fast path of one association (see :mod:`pacs.scp.faststore`)."""
        receiver = self.receiver
        assert receiver is not None  # fast_store is only set with a receiver
        return StoreFastPath(dul, receiver.spool, receiver.store)

    def server_bind(self) -> None:
        if self.bind_port:
            super().server_bind()

    def server_activate(self) -> None:
        if self.bind_port:
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # Accept here, but leave the TLS handshake to the association's own thread (first read),
        # so a slow or hostile TLS client cannot hold up the accept loop.
        sock, addr = self.socket.accept()  # type: ignore[union-attr]
        dispatch = self.dispatch
        if dispatch is None:
            return self.prepare(sock), addr
        slot = dispatch.pick()
        if slot != dispatch.index and dispatch.hand_over(slot, sock, addr):
            raise _Handed
        dispatch.add(dispatch.index, 1)  # counted down when its request thread ends
        try:
            return self.prepare(sock), addr
        except Exception:
            dispatch.add(dispatch.index, -1)
            sock.close()
            raise OSError("cannot set up an accepted connection") from None

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit the connection to the budget of unidentified peers (socketserver calls this
        between accept and the request thread)."""
        self.unidentified.admit(request, str(client_address[0]))
        return True

    def prepare(self, sock: socket.socket) -> socket.socket:
        """Socket options (and TLS wrapping) of an accepted connection."""
        # Accepted sockets block forever by default: a peer that sends half a PDU (or announces
        # a 4 GB one) would hold its association slot for good. network_timeout bounds each read.
        sock.settimeout(self.ae.network_timeout)
        if self.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            if self.dispatch is not None:
                self.dispatch.add(self.dispatch.index, -1)

    def finish_request(self, request: Any, client_address: Any) -> None:
        handler = self.RequestHandlerClass(request, client_address, self)  # type: ignore[arg-type]
        assoc = getattr(handler, "assoc", None)
        if self.dispatch is not None and assoc is not None:
            assoc.join()  # the association runs in its own thread: count it until it ends

    def take_handed(self, inbox: socket.socket) -> None:
        """Serve the connections another process hands over, until it closes ``inbox``."""
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(inbox, 1024, 4)
            except OSError:
                return
            if not msg and not fds:
                return  # the dispatching process is gone
            if not fds:
                continue
            for extra in fds[1:]:
                os.close(extra)
            sock = socket.socket(fileno=fds[0])
            try:
                host, port = json.loads(msg)
                request, address = self.prepare(sock), (str(host), int(port))
                self.verify_request(request, address)
                self.process_request(request, address)
            except (OSError, ValueError) as exc:
                log.warning("cannot take a handed-over connection: %s", exc)
                sock.close()
                if self.dispatch is not None:
                    self.dispatch.add(self.dispatch.index, -1)


class _AssociationHandler(WakeupRequestHandler):
    """Hands each accepted association its listener's receive path and fast path."""

    server: _Listener

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        listener = self.server
        assoc.receiver = listener.receiver  # type: ignore[attr-defined]
        assoc.connection = self.request  # type: ignore[attr-defined]
        assoc.ended = functools.partial(listener.unidentified.identified, self.request)  # type: ignore[attr-defined]
        assoc.fast_path = listener.fast_path if listener.fast_store else None  # type: ignore[attr-defined]
        return assoc


class DicomServer:
    """One DIMSE listener bound to the archive. ``start()`` returns once it accepts connections."""

    def __init__(
        self,
        settings: Settings,
        archive: Archive,
        *,
        extensions: list[Extension] | None = None,
        audit: Audit | None = None,
        dispatch: Dispatch | None = None,
        inbox: socket.socket | None = None,
    ) -> None:
        self.settings = settings
        self.archive = archive
        #: The audit trail whose queued rows (queries, retrieves) are flushed before an
        #: association's close is recorded, so the trail reads in order.
        self.audit = audit
        self.extensions = extensions or []
        #: Several listener processes: the first accepts and dispatches (``dispatch`` with
        #: channels), the others take what it hands them through ``inbox`` and bind nothing.
        self.dispatch = dispatch
        self.inbox = inbox
        self._server: _Listener | None = None
        self._thread: threading.Thread | None = None
        self.receiver: Receiver | None = None  # made by start()

    # ------------------------------------------------------------------ lifecycle

    def build_ae(self) -> AE:
        """The application entity with every presentation context we accept."""
        d = self.settings.dicom
        pynetdicom_patches.apply()
        pynetdicom_patches.set_pdu_dumps(self._debug)
        ae = AE(ae_title=d.ae_title)
        ae.maximum_pdu_size = d.max_pdu
        # pynetdicom counts every association thread, negotiating ones included, so 32 silent
        # sockets would lock modalities out: handle_requested counts established ones instead.
        ae.maximum_associations = 1 << 20
        ae.network_timeout = d.network_timeout
        ae.acse_timeout = d.acse_timeout
        ae.dimse_timeout = d.dimse_timeout
        ae.require_called_aet = True
        add_supported_contexts(ae, self.extensions)
        return ae

    @property
    def _debug(self) -> bool:
        return self.settings.log.level.upper() == "DEBUG"

    def handlers(self, receiver: Receiver) -> list[tuple[Any, Callable[..., Any]]]:
        """Event handlers bound to the listener."""
        hs: list[tuple[Any, Callable[..., Any]]] = [
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_ACCEPTED, self.handle_accepted),
            (evt.EVT_RELEASED, self.handle_closed),
            (evt.EVT_ABORTED, self.handle_closed),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, receiver.handle_store),
        ]
        bound: dict[Any, list[tuple[frozenset[str], Callable[..., Any]]]] = {}
        for ext in self.extensions:
            classes = frozenset(str(abstract) for abstract, _, _ in ext.contexts)
            for event, handler in ext.handlers:
                bound.setdefault(event, []).append((classes, handler))
        for event, choices in bound.items():
            hs.append((event, choices[0][1] if len(choices) == 1 else _by_sop_class(choices)))
        return hs

    def start(self) -> tuple[str, int]:
        """Bind and serve in a background thread; returns the bound (host, port)."""
        d = self.settings.dicom
        receiver = self.receiver = Receiver(self.archive, incoming_dir(self.settings.storage.path))
        ae = self.build_ae()
        # WakeupDUL takes C-STORE requests off pynetdicom's P-DATA path (pynetdicom's PDU and
        # DIMSE dumps, wanted at DEBUG, would not see them).
        fast = d.fast_store and not self._debug
        listener: type[_Listener] = type(
            "_Listener",
            (_Listener,),
            {
                "nodelay": d.tcp_nodelay,
                "dispatch": self.dispatch,
                "bind_port": self.inbox is None,
                "receiver": receiver,
                "fast_store": fast,
                "unidentified": Unidentified(d.max_unidentified, d.max_unidentified_per_host),
            },
        )
        server = ae.make_server(
            (d.host, d.port),
            evt_handlers=self.handlers(receiver),  # type: ignore[arg-type]
            server_class=listener,
            ssl_context=self.tls(),
            request_handler=_AssociationHandler,
        )
        ae._servers.append(server)  # as AE.start_server does: the server's shutdown() removes it
        self._server = server = cast(_Listener, server)
        if self.inbox is None:
            self._thread = threading.Thread(target=server.serve_forever, name="dimse-listener", daemon=True)
        else:
            inbox = self.inbox
            self._thread = threading.Thread(
                target=server.take_handed, args=(inbox,), name="dimse-handed", daemon=True
            )
        self._thread.start()
        host, port = server.server_address[:2]
        if self.inbox is not None:
            host, port = d.host, d.port  # the port the dispatching process accepts on
        log.info(
            "DICOM listener %s on %s:%d%s, C-STORE %s",
            d.ae_title,
            host,
            port,
            " (TLS)" if server.ssl_context else "",
            "on the fast path" if fast else "through pynetdicom",
        )
        return str(host), int(port)

    def tls(self) -> ssl.SSLContext | None:
        """The TLS context when ``[dicom] tls_cert`` is set (PS3.15 B.9, BCP 195), else None."""
        d = self.settings.dicom
        if str(d.tls_cert) in ("", "."):
            return None
        return tls.server_context(
            d.tls_cert, d.tls_key, d.tls_ca, require_client_cert=d.tls_require_client_cert
        )

    def stop(self) -> None:
        """Stop accepting and close the listener."""
        if self._server is not None:
            if self.inbox is None:
                self._server.shutdown()
            else:  # no serve_forever loop to stop: end the hand-over loop and the associations
                try:
                    self.inbox.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                for assoc in self._server.active_associations:
                    assoc.abort()
            try:
                self._server.server_close()
            except OSError:
                pass
            self._server = None

    # ------------------------------------------------------------------ association control

    def handle_requested(self, event: evt.Event) -> None:
        """Access control at A-ASSOCIATE-RQ (PS3.8 9.3.4): called AE ours, calling AE (and host) allowed.

        pynetdicom's own ``require_called_aet`` check rejects a wrong called AE title; here we log
        that, and reject a calling AE title that is not listed, or listed only for another host,
        with A-ASSOCIATE-RJ (rejected-permanent, service-user, calling AE title not recognised).
        An empty ``allowed_aes`` lets nobody in.
        """
        d = self.settings.dicom
        rq = event.assoc.requestor.primitive
        assert rq is not None  # the A-ASSOCIATE-RQ, set before EVT_REQUESTED fires
        calling = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        address = str(event.assoc.requestor.address)
        if called != d.ae_title:
            log.warning(
                "association rejected (called AE not recognised): %r is not %r, from %s@%s",
                called,
                d.ae_title,
                calling,
                address,
            )
            return
        allowed = [a for a in d.allowed_aes if a.ae_title == calling]
        if not allowed:
            log.warning("association rejected (calling AE not recognised): %r from %s", calling, address)
        elif not any(a.host in (None, "", address) for a in allowed):
            log.warning("association rejected (calling AE %r not allowed from %s)", calling, address)
        elif not self._certificate_matches(event, allowed):
            pass  # logged there
        else:
            removed = access.restrict(event.assoc, access.granted(allowed))
            if removed:
                log.info("services not granted to %s@%s: %s", calling, address, ", ".join(removed))
            if self._established() >= d.max_associations:
                log.warning(
                    "association rejected (%d associations in progress, the limit): %s@%s",
                    d.max_associations,
                    calling,
                    address,
                )
                # rejected-transient, service-provider (presentation), local-limit-exceeded
                event.assoc.acse.send_reject(0x02, 0x03, 0x02)
                event.assoc.kill()
            return
        self._record("association.rejected", Origin(address=address, calling_ae=calling, protocol="dimse"))
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        event.assoc.kill()

    def _certificate_matches(self, event: evt.Event, allowed: list[Any]) -> bool:
        """An entry with ``certificate`` binds the AE title to a TLS client certificate: the
        peer's verified commonName must be that name (the handshake is done by now)."""
        bound = {a.certificate for a in allowed if a.certificate}
        if not bound or any(not a.certificate for a in allowed):
            return True
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        subject = tls.peer_subject(sock)
        if subject in bound:
            return True
        log.warning(
            "association rejected (calling AE %r is bound to certificate %s; the peer presented %s) from %s",
            str(event.assoc.requestor.primitive.calling_ae_title).strip(),  # type: ignore[union-attr]
            "/".join(sorted(bound)),
            repr(subject) if subject else "none",
            event.assoc.requestor.address,
        )
        return False

    def _established(self) -> int:
        """Associations this listener has accepted that are still established."""
        server = self._server
        if server is None:
            return 0
        return sum(1 for a in server.active_associations if a.is_acceptor and a.is_established)

    def handle_accepted(self, event: evt.Event) -> None:
        """Log and record the association (audit trail; the TLS peer certificate's CN as user)."""
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        o = origin_of(event, tls.peer_subject(sock))
        secure = isinstance(sock, ssl.SSLSocket)
        log.info(
            "association accepted from %s@%s%s", o.calling_ae, o.address, f" cert={o.user}" if o.user else ""
        )
        if self._server is not None:
            self._server.unidentified.identified(getattr(event.assoc, "connection", None))
        self._record("association.open", o, tls=secure)

    def handle_closed(self, event: evt.Event) -> None:
        """Log and record the end of an association."""
        o = origin_of(event)
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log.info("association %s from %s@%s", how, o.calling_ae, o.address)
        if self.audit is not None:
            self.audit.flush()
        self._record("association.close", o, how=how)

    def _record(self, kind: str, origin: Origin, **details: Any) -> None:
        """An association event through the audit trail (spooled to disk while the database is
        down, so none is lost), or straight into the index without one."""
        try:
            if self.audit is not None:
                self.audit.record(kind, origin, **details)
            else:
                self.archive.record_event(kind, origin, details=details)
        except Exception as exc:  # an audit row must never break the association
            log.warning("cannot record %s event: %s", kind, exc)

    # ------------------------------------------------------------------ services

    def handle_echo(self, event: evt.Event) -> int:
        """C-ECHO: the link works."""
        return codes.SUCCESS
