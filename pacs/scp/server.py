"""The DIMSE listener: application entity, presentation contexts, access control, handlers.

Handlers stay thin: they build an :class:`~pacs.model.Origin`, call the archive service and map
the result to a DIMSE status (``pacs.scp.status``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom import ae as pynetdicom_ae
from pynetdicom import association as pynetdicom_association
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from pacs import tls
from pacs.config import Settings
from pacs.dicom.meta import PREAMBLE
from pacs.errors import PacsError
from pacs.model import Origin
from pacs.scp import status
from pacs.scp.faststore import StoreFastPath
from pacs.scp.reactor import WakeupAssociation, WakeupDUL, WakeupRequestHandler
from pacs.services.archive import Archive, Incoming
from pacs.services.audit import Audit

log = logging.getLogger("pacs.dimse")

#: Transfer syntaxes accepted for storage: everything modalities send, kept as received.
STORAGE_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent)
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 lossless
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 MP@ML
    "1.2.840.10008.1.2.4.101",  # MPEG2 MP@HL
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 HP@4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 HP@4.2 2D
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 HP@4.2 3D
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo HP@4.2
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10
]


@dataclass(frozen=True)
class Extension:
    """A DIMSE service added to the listener by another module (Q/R, MPPS...)."""

    contexts: list[tuple[str, list[str], dict[str, Any]]]  # (abstract syntax, transfer syntaxes, role kwargs)
    handlers: list[tuple[Any, Callable[..., Any]]]


def origin_of(event: evt.Event, user: str = "") -> Origin:
    """The :class:`Origin` of a DIMSE event (peer address and AE titles)."""
    return assoc_origin(event.assoc, user)


def assoc_origin(assoc: Any, user: str = "") -> Origin:
    """The :class:`Origin` of an association (peer address and AE titles)."""
    return Origin(
        address=str(assoc.requestor.address),
        calling_ae=str(assoc.requestor.ae_title).strip(),
        called_ae=str(assoc.acceptor.ae_title).strip(),
        user=user,
        protocol="dimse",
    )


def incoming_dir(storage: Path) -> Path:
    """This process's directory for instances being received: ``<storage>/tmp/incoming/<pid>``.

    Directories of processes that no longer run hold what a crash interrupted; they are removed
    here, so several listener processes can share the storage and each cleans up after the dead.
    """
    root = storage / "tmp" / "incoming"
    root.mkdir(parents=True, exist_ok=True)
    for d in root.iterdir():
        if d.is_dir() and d.name.isdigit() and int(d.name) != os.getpid() and not _alive(int(d.name)):
            shutil.rmtree(d, ignore_errors=True)
            log.warning("removed instances left half-received by process %s", d.name)
    mine = root / str(os.getpid())
    mine.mkdir(exist_ok=True)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _RequestMeta(NamedTuple):
    """What pynetdicom's chunked receive builds its file meta from (see :func:`_write_meta`)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


_pynetdicom_create_meta = dimse_messages.create_file_meta
_pydicom_write_meta = dimse_messages.write_file_meta_info


def _create_meta(**kwargs: Any) -> Any:
    """Stands in for pynetdicom's ``create_file_meta`` in its C-STORE receive: just the UIDs."""
    return _RequestMeta(
        str(kwargs["sop_class_uid"]), str(kwargs["sop_instance_uid"]), str(kwargs["transfer_syntax"])
    )


def _write_meta(fp: Any, meta: Any, *args: Any, **kwargs: Any) -> None:
    """Stands in for ``write_file_meta_info`` there: a :class:`_ReceiveFile` writes its own meta
    (building and encoding pynetdicom's, only to replace it, cost a tenth of a C-STORE)."""
    if isinstance(meta, _RequestMeta):
        if isinstance(fp, _ReceiveFile):
            fp.begin(*meta)
            return
        meta = _pynetdicom_create_meta(
            sop_class_uid=UID(meta.sop_class_uid),
            sop_instance_uid=UID(meta.sop_instance_uid),
            transfer_syntax=UID(meta.transfer_syntax),
        )
    _pydicom_write_meta(fp, meta, *args, **kwargs)


class _ReceiveFile:
    """Where pynetdicom writes an incoming C-STORE data set (chunked receive).

    pynetdicom writes a preamble and its own file meta, then the data set fragments as they
    arrive. When the association belongs to one of our listeners, the bytes go straight into a
    new blob of the archive (:meth:`Archive.incoming`): pynetdicom's file meta is replaced by
    ours (built from the same request UIDs, plus the sender's AE title), and the data set is
    hashed on the way, so storing it later is a parse, an fsync and a rename, not a second copy.
    Otherwise (or when the request's UIDs cannot name a file) it is a plain spool file that
    :meth:`Archive.store` reads and copies, as for any other stream.

    A write error (disk full) raised inside pynetdicom's state machine aborts the association;
    here it is remembered instead, the bytes already written are released, the rest of the data
    set is read and dropped, and :meth:`DicomServer.handle_store` answers 0xA700 Out of
    Resources (PS3.4 B.2.3), so the modality keeps the instance and sends it again later.
    """

    def __init__(self, *, assoc: Any = None, **kwargs: Any) -> None:
        self.file = self  # pynetdicom calls ``.file.flush()``
        self.error: OSError | None = None
        self.incoming: Incoming | None = None
        self._fh: Any = None
        self._started = False
        if assoc is None:
            assoc = getattr(threading.current_thread(), "assoc", None)  # the DUL thread's association
        server = getattr(getattr(assoc, "_server", None), "pacs", None)
        if isinstance(server, DicomServer):
            try:
                self.incoming = server.archive.incoming()
            except (PacsError, TypeError, OSError):
                self.incoming = None
        if self.incoming is not None:
            self._calling_ae = str(assoc.requestor.ae_title).strip()  # type: ignore[union-attr]
            self.name = str(self.incoming.path)
        else:
            self._fh = tempfile.NamedTemporaryFile(**kwargs)  # noqa: SIM115 - closed by pynetdicom
            self.name = self._fh.name

    def _failed(self, exc: OSError) -> None:
        self.error = exc
        if self.incoming is not None:
            self.incoming.abort()
            return
        try:
            os.truncate(self.name, 0)
        except OSError:
            pass

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> None:
        """The request's file meta (instead of pynetdicom's): ours when receiving in place."""
        self._started = True
        try:
            if self.incoming is not None:
                try:
                    self.incoming.start(sop_class_uid, sop_instance_uid, transfer_syntax, self._calling_ae)
                    return
                except PacsError:  # not receivable in place: a plain Part-10 stream that store() judges
                    out: Any = self.incoming.writer
            else:
                out = self._fh
            out.write(PREAMBLE)
            _pydicom_write_meta(
                out,
                _pynetdicom_create_meta(
                    sop_class_uid=UID(sop_class_uid),
                    sop_instance_uid=UID(sop_instance_uid),
                    transfer_syntax=UID(transfer_syntax),
                ),
            )
        except OSError as exc:
            self._failed(exc)

    def write(self, data: bytes) -> int:
        if self.error is not None or not self._started:  # before begin(): pynetdicom's preamble
            return len(data)
        try:
            if self.incoming is not None:
                self.incoming.write(data)
            else:
                self._fh.write(data)
        except OSError as exc:
            self._failed(exc)
        return len(data)

    def flush(self) -> None:
        if self.error is None and self._fh is not None:
            try:
                self._fh.flush()
            except OSError as exc:
                self._failed(exc)

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass


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


class _Handed(OSError):
    """Raised from get_request for a connection passed to another process (socketserver skips it)."""


class _Listener(ThreadedAssociationServer):
    """Adds dispatch to other listener processes, and TCP_NODELAY on accepted sockets."""

    nodelay = True
    dispatch: Dispatch | None = None
    bind_port = True  # False in a listener process that only takes connections handed to it

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
        handler = self.RequestHandlerClass(request, client_address, self)
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
                self.process_request(self.prepare(sock), (str(host), int(port)))
            except (OSError, ValueError) as exc:
                log.warning("cannot take a handed-over connection: %s", exc)
                sock.close()
                if self.dispatch is not None:
                    self.dispatch.add(self.dispatch.index, -1)


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

    # ------------------------------------------------------------------ lifecycle

    def build_ae(self) -> AE:
        """The application entity with every presentation context we accept."""
        d = self.settings.dicom
        _config.STORE_RECV_CHUNKED_DATASET = True  # stream each instance to disk, never whole in memory
        if self.settings.log.level.upper() != "DEBUG":
            # pynetdicom's own PDU/DIMSE dump handlers cost ~1/4 of a C-FIND response; our log has
            # one line per association and per instance. At DEBUG they stay on for peer debugging.
            _config.LOG_HANDLER_LEVEL = "none"
        dimse_messages.NamedTemporaryFile = _ReceiveFile  # a full disk answers 0xA700, not an abort
        dimse_messages.create_file_meta = _create_meta  # only used by the chunked C-STORE receive
        dimse_messages.write_file_meta_info = _write_meta
        # Associations this process opens (C-MOVE to a destination) wait on their socket too.
        pynetdicom_association.DULServiceProvider = WakeupDUL
        pynetdicom_ae.Association = WakeupAssociation  # type: ignore[misc]
        ae = AE(ae_title=d.ae_title)
        ae.maximum_pdu_size = d.max_pdu
        ae.maximum_associations = d.max_associations
        ae.network_timeout = d.network_timeout
        ae.acse_timeout = d.acse_timeout
        ae.dimse_timeout = d.dimse_timeout
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, STORAGE_TRANSFER_SYNTAXES)
        for ext in self.extensions:
            for abstract, syntaxes, roles in ext.contexts:
                ae.add_supported_context(abstract, syntaxes, **roles)
        return ae

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        """Event handlers bound to the listener."""
        hs: list[tuple[Any, Callable[..., Any]]] = [
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_ACCEPTED, self.handle_accepted),
            (evt.EVT_RELEASED, self.handle_closed),
            (evt.EVT_ABORTED, self.handle_closed),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
        ]
        for ext in self.extensions:
            hs.extend(ext.handlers)
        return hs

    def start(self) -> tuple[str, int]:
        """Bind and serve in a background thread; returns the bound (host, port)."""
        d = self.settings.dicom
        tempfile.tempdir = str(incoming_dir(self.settings.storage.path))  # pynetdicom's chunked receive
        ae = self.build_ae()
        _Listener.nodelay = d.tcp_nodelay
        _Listener.dispatch = self.dispatch
        _Listener.bind_port = self.inbox is None
        server = ae.make_server(
            (d.host, d.port),
            evt_handlers=self.handlers(),
            server_class=_Listener,
            ssl_context=self.tls(),
            request_handler=WakeupRequestHandler,
        )
        ae._servers.append(server)  # as AE.start_server does: the server's shutdown() removes it
        server.pacs = self  # type: ignore[attr-defined]  # _ReceiveFile finds the archive through it
        # WakeupDUL takes C-STORE requests off pynetdicom's P-DATA path through this.
        fast = d.fast_store and self.settings.log.level.upper() != "DEBUG"
        server.fast_path = self.fast_path if fast else None  # type: ignore[attr-defined]
        self._server = server  # type: ignore[assignment]
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
        else:
            return
        self._record("association.rejected", Origin(address=address, calling_ae=calling, protocol="dimse"))
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        event.assoc.kill()

    def handle_accepted(self, event: evt.Event) -> None:
        """Log and record the association (audit trail; the TLS peer certificate's CN as user)."""
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        o = origin_of(event, tls.peer_subject(sock))
        secure = isinstance(sock, ssl.SSLSocket)
        log.info(
            "association accepted from %s@%s%s", o.calling_ae, o.address, f" cert={o.user}" if o.user else ""
        )
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
        try:
            self.archive.record_event(kind, origin, details=details)
        except Exception as exc:  # an audit row must never break the association
            log.warning("cannot record %s event: %s", kind, exc)

    # ------------------------------------------------------------------ services

    def fast_path(self, dul: Any) -> StoreFastPath:
        """The C-STORE fast path of one association (see :mod:`pacs.scp.faststore`)."""
        return StoreFastPath(dul, self._spool, self.store_received)

    @staticmethod
    def _spool(assoc: Any, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> _ReceiveFile:
        spool = _ReceiveFile(assoc=assoc, delete=False, mode="wb", suffix=".dcm")
        spool.begin(sop_class_uid, sop_instance_uid, transfer_syntax)
        return spool

    def handle_echo(self, event: evt.Event) -> int:
        """C-ECHO: the link works."""
        return 0x0000

    def handle_store(self, event: evt.Event) -> Dataset | int:
        """C-STORE (through pynetdicom's service class): see :meth:`store_received`."""
        req = event.request
        spool = getattr(req, "_dataset_file", None)
        if not isinstance(spool, _ReceiveFile):  # build_ae always sets up the chunked receive
            log.error("C-STORE sop=%s arrived without a receive spool", req.AffectedSOPInstanceUID)
            return status.dataset(0xC211, "internal error: no receive spool")
        code, comment = self.store_received(
            event.assoc, spool, str(req.AffectedSOPClassUID or ""), str(req.AffectedSOPInstanceUID or "")
        )
        return status.dataset(code, comment)

    def store_received(
        self, assoc: Any, spool: _ReceiveFile, sop_class_uid: str, sop_instance_uid: str
    ) -> tuple[int, str]:
        """Store a received C-STORE data set through the archive; the response (status, comment).

        Success only once the instance is durable and indexed. Used by pynetdicom's storage
        service class (:meth:`handle_store`) and by the fast path (:mod:`pacs.scp.faststore`).
        """
        origin = assoc_origin(assoc)
        if spool.error is not None:
            log.warning(
                "C-STORE refused sop=%s from %s@%s: 0xA700 cannot spool the instance: %s",
                sop_instance_uid,
                origin.calling_ae,
                origin.address,
                spool.error,
            )
            return status.OUT_OF_RESOURCES_STORE, f"cannot receive: {spool.error.strerror}"
        incoming = spool.incoming
        expected = dict(expected_sop_instance_uid=sop_instance_uid, expected_sop_class_uid=sop_class_uid)
        try:
            if incoming is not None and incoming.meta is not None:
                result = self.archive.store_incoming(incoming, origin, **expected)
            else:
                try:
                    path = incoming.flushed_path() if incoming is not None else Path(spool.name)
                    with open(path, "rb") as fh:
                        result = self.archive.store(fh, origin, **expected)
                finally:
                    if incoming is not None:
                        incoming.abort()
        except PacsError as exc:
            code = status.for_store_error(exc)
            log.warning(
                "C-STORE refused sop=%s from %s@%s: 0x%04X %s",
                sop_instance_uid,
                origin.calling_ae,
                origin.address,
                code,
                exc,
            )
            return code, str(exc)
        return status.for_store_outcome(result.outcome), ""
