"""C-STORE received and answered on the association's reader thread.

pynetdicom hands every P-DATA PDU through a chain of objects and threads: the reader (DUL)
thread decodes the PDU into items, the items into a P-DATA primitive, the primitive into a DIMSE
message, the message into a C-STORE primitive, and queues it; the association thread takes it,
runs the storage service class, encodes the response into a primitive and queues it back; the
reader thread encodes and sends it. For a 512 KiB CT slice that was over a millisecond of Python
and four thread hand-offs per instance, most of the ingest cost after the archive's own work.

:class:`StoreFastPath` takes the P-DATA PDUs of a C-STORE request off that chain, on the reader
thread: it splits the PDU into its presentation data values (PS3.8 9.3.5), decodes the command
set (implicit VR little endian, PS3.7 6.3.1), writes the data set fragments straight into the
archive's incoming blob (as pynetdicom's chunked receive would, through the same
:class:`~pacs.scp.receive.ReceiveFile`), calls the same store code as the C-STORE handler
(:meth:`~pacs.scp.receive.Receiver.store`), and sends the C-STORE response (PS3.7 9.3.1.2)
itself. The listener gives each association its :class:`StoreFastPath` (``assoc.fast_path``).

Everything else goes to pynetdicom unchanged, PDU by PDU: any other command (C-ECHO, C-FIND,
C-MOVE, N-CREATE ...), a command set that does not fit in one PDU, a SOP class that is not a
storage class, a context that was not accepted, and any association not in the established
state. A protocol violation in the middle of a fast-path data set (a command fragment, another
presentation context, a malformed PDU) discards the instance and aborts the association, as
pynetdicom does for an invalid PDU. ``[dicom] fast_store = false`` turns it off; it is also off
at ``[log] level = "DEBUG"``, where pynetdicom's own PDU and DIMSE dumps are wanted.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from pacs.dicom.status import HANDLER_FAILED
from pacs.scp import status

if TYPE_CHECKING:
    from pacs.services.archive import Incoming

log = logging.getLogger(__name__)

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101

#: Longest the first request waits for its association to be marked established (seconds).
ESTABLISH_WAIT = 2.0

_ITEM = struct.Struct(">LBB")  # PDV item length, presentation context ID, message control header
_ELEMENT = struct.Struct("<HHL")  # implicit VR little endian element header


class MalformedPDU(ValueError):
    """A P-DATA-TF PDU whose items do not add up."""


def split_pdvs(pdu: bytearray | bytes) -> list[tuple[int, int, memoryview]]:
    """The presentation data values of a P-DATA-TF PDU: (context ID, control header, fragment).

    Fragments are views into ``pdu`` (no copy). Raises :class:`MalformedPDU` when an item's length
    does not fit the PDU.
    """
    view = memoryview(pdu)
    end = len(pdu)
    pos = 6
    out: list[tuple[int, int, memoryview]] = []
    while pos < end:
        if pos + 6 > end:
            raise MalformedPDU("truncated presentation data value item")
        length, context_id, control = _ITEM.unpack_from(pdu, pos)
        if length < 2 or pos + 4 + length > end:
            raise MalformedPDU(f"presentation data value item of length {length} does not fit the PDU")
        out.append((context_id, control, view[pos + 6 : pos + 4 + length]))
        pos += 4 + length
    if not out:
        raise MalformedPDU("P-DATA-TF PDU without presentation data values")
    return out


def parse_command(data: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """The elements of an encoded command set, element number -> value bytes.

    Raises :class:`MalformedPDU` for anything that is not a well-formed group 0000 in implicit VR
    little endian.
    """
    raw = bytes(data)
    out: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 8 > end:
            raise MalformedPDU("truncated command element")
        group, element, length = _ELEMENT.unpack_from(raw, pos)
        if group != 0 or pos + 8 + length > end:
            raise MalformedPDU("command set element out of group 0000 or longer than the command")
        out[element] = raw[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return out


def _us(value: bytes | None) -> int | None:
    return int.from_bytes(value, "little") if value is not None and len(value) == 2 else None


def _ui(value: bytes | None) -> str:
    return value.decode("ascii", "replace").rstrip("\0 ") if value else ""


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def encode_store_response(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int, comment: str = ""
) -> bytes:
    """The command set of a C-STORE-RSP (PS3.7 9.3.1.2), implicit VR little endian."""
    elements: list[tuple[int, bytes]] = [
        (0x0002, _even(sop_class_uid.encode("ascii"), b"\0")),
        (0x0100, struct.pack("<H", C_STORE_RSP)),
        (0x0120, struct.pack("<H", message_id)),
        (0x0800, struct.pack("<H", NO_DATA_SET)),
        (0x0900, struct.pack("<H", status)),
    ]
    if comment:
        elements.append((0x0902, _even(comment.encode("ascii", "replace")[:64], b" ")))
    elements.append((0x1000, _even(sop_instance_uid.encode("ascii"), b"\0")))
    body = b"".join(_ELEMENT.pack(0, tag, len(value)) + value for tag, value in elements)
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<L", len(body)) + body


def pdata_pdu(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF PDU carrying a whole command set as its last fragment."""
    item = _ITEM.pack(2 + len(command), context_id, 0x03) + command
    return struct.pack(">BBL", 0x04, 0x00, len(item)) + item


class Spool(Protocol):
    """Where a request's data set goes (:class:`pacs.scp.receive.ReceiveFile`)."""

    name: str
    incoming: Incoming | None

    def write(self, data: bytes | memoryview) -> int: ...

    def close(self) -> None: ...


class _Request:
    """The C-STORE request being received."""

    __slots__ = ("context_id", "message_id", "sop_class_uid", "sop_instance_uid", "spool")

    def __init__(
        self, context_id: int, message_id: int, sop_class_uid: str, sop_instance_uid: str, spool: Spool
    ) -> None:
        self.context_id = context_id
        self.message_id = message_id
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.spool = spool


#: Makes (and begins) the spool of a request: (association, SOP class, SOP instance, transfer syntax).
SpoolFactory = Callable[[Any, str, str, str], Spool]
#: Stores a received request: (association, spool, SOP class, SOP instance) -> (status, comment).
StoreFunction = Callable[[Any, Any, str, str], tuple[int, str]]


class StoreFastPath:
    """Per association: takes C-STORE requests off pynetdicom's P-DATA path (see the module doc)."""

    def __init__(self, dul: Any, spool: SpoolFactory, store: StoreFunction) -> None:
        self.dul = dul
        self.assoc = dul.assoc
        self._spool = spool
        self._store = store
        self._request: _Request | None = None  # a fast-path data set is being received
        self._passing = False  # pynetdicom has the current message, until it ends
        self._passed_command = bytearray()

    # ------------------------------------------------------------------ entry point

    def take(self, pdu: bytearray) -> bool:
        """Handle one P-DATA-TF PDU; False means pynetdicom must (this PDU, as usual)."""
        try:
            items = split_pdvs(pdu)
        except MalformedPDU as exc:
            if self._request is None:
                self._passing = False  # pynetdicom refuses the PDU and aborts
                return False
            self._violation(str(exc))
            return True
        if self._request is not None:
            self._receive(items)
            return True
        if not self._passing and self._start(items):
            return True
        self._follow(items)
        return False

    def close(self) -> None:
        """The association ended: discard a data set still being received."""
        if self._request is not None:
            self._discard()

    # ------------------------------------------------------------------ fast path

    def _start(self, items: list[tuple[int, int, memoryview]]) -> bool:
        """Begin a C-STORE on the fast path if this PDU opens one we can take."""
        context_id, control, _ = items[0]
        if not control & 0x01 or self.dul.state_machine.current_state != "Sta6":
            return False
        assoc = self.assoc
        if assoc._sent_release or not self._established():
            return False
        dimse = assoc.dimse
        if dimse.message is not None or not dimse.msg_queue.empty():
            return False  # pynetdicom has a message in progress or waiting
        command = bytearray()
        last = -1
        for i, (cid, ctrl, data) in enumerate(items):
            if not ctrl & 0x01 or cid != context_id:
                return False
            command += data
            if ctrl & 0x02:
                last = i
                break
        if last < 0:
            return False  # a command set spread over several PDUs: rare, pynetdicom's
        try:
            fields = parse_command(command)
        except MalformedPDU:
            return False
        if _us(fields.get(0x0100)) != C_STORE_RQ or _us(fields.get(0x0800)) in (None, NO_DATA_SET):
            return False
        message_id = _us(fields.get(0x0110))
        sop_class, sop_instance = _ui(fields.get(0x0002)), _ui(fields.get(0x1000))
        if message_id is None or not sop_class or not sop_instance:
            return False
        context = assoc._accepted_cx.get(context_id)
        if context is None or not context.as_scp:
            return False
        try:
            if uid_to_service_class(sop_class) is not StorageServiceClass:
                return False
        except Exception:
            return False
        spool = self._spool(assoc, sop_class, sop_instance, str(context.transfer_syntax[0]))
        self._request = _Request(context_id, message_id, sop_class, sop_instance, spool)
        self._receive(items[last + 1 :])
        return True

    def _established(self) -> bool:
        """Wait (briefly) for the association thread to finish accepting.

        The A-ASSOCIATE-AC goes out before pynetdicom's association thread records the
        association as established (after our EVT_ACCEPTED handler has logged it), so the first
        request can arrive a moment before that; storing it first would put it ahead of the
        association in the audit trail.
        """
        deadline = time.monotonic() + ESTABLISH_WAIT
        while not self.assoc.is_established:
            if time.monotonic() > deadline or self.assoc.is_aborted or self.assoc.is_released:
                return False
            time.sleep(0.0002)
        return True

    def _receive(self, items: list[tuple[int, int, memoryview]]) -> None:
        request = self._request
        assert request is not None
        for n, (cid, ctrl, data) in enumerate(items):
            if ctrl & 0x01 or cid != request.context_id:
                what = "a command fragment" if ctrl & 0x01 else f"presentation context {cid}"
                self._violation(f"{what} inside the data set of C-STORE message {request.message_id}")
                return
            request.spool.write(data)
            if ctrl & 0x02:
                if n != len(items) - 1:
                    self._violation("data after the last fragment of a C-STORE data set")
                    return
                self._finish()
                return

    def _finish(self) -> None:
        request = self._request
        assert request is not None
        self._request = None
        try:
            spool, sop_class, sop = request.spool, request.sop_class_uid, request.sop_instance_uid
            code, text = self._store(self.assoc, spool, sop_class, sop)
            comment = status.comment(text)
        except Exception:
            log.exception("C-STORE of %s failed unexpectedly", request.sop_instance_uid)
            code, comment = HANDLER_FAILED, "unexpected error in the archive; see its log"
        finally:
            if request.spool.incoming is not None:
                request.spool.incoming.abort()  # a no-op once committed
            self._release(request.spool)
        command = encode_store_response(
            request.message_id, request.sop_class_uid, request.sop_instance_uid, code, comment
        )
        limit = self.assoc.requestor.maximum_length or 0
        if limit and len(command) + 12 > limit:  # a peer with tiny PDUs: let pynetdicom fragment it
            rsp = C_STORE()
            rsp.MessageIDBeingRespondedTo = request.message_id
            rsp.AffectedSOPClassUID = request.sop_class_uid
            rsp.AffectedSOPInstanceUID = request.sop_instance_uid
            rsp.Status = code
            if comment:
                rsp.ErrorComment = comment  # type: ignore[assignment]  # typed None in pynetdicom
            self.assoc.dimse.send_msg(rsp, request.context_id)
            return
        self.dul.socket.send(pdata_pdu(request.context_id, command))

    # ------------------------------------------------------------------ pass-through bookkeeping

    def _follow(self, items: list[tuple[int, int, memoryview]]) -> None:
        """Track where the messages pynetdicom handles end, so the next one can be ours."""
        self._passing = True
        for _cid, ctrl, data in items:
            if ctrl & 0x01:
                self._passed_command += data
                if ctrl & 0x02:
                    try:
                        has_data = _us(parse_command(self._passed_command).get(0x0800)) != NO_DATA_SET
                    except MalformedPDU:
                        has_data = False
                    self._passed_command.clear()
                    self._passing = has_data
            elif ctrl & 0x02:
                self._passing = False
            else:
                self._passing = True

    # ------------------------------------------------------------------ failures

    def _violation(self, reason: str) -> None:
        log.error("aborting the association from %s: %s", self.assoc.requestor.address, reason)
        self._discard()
        self.dul.event_queue.put("Evt19")  # invalid PDU: pynetdicom sends A-ABORT and closes

    def _discard(self) -> None:
        request, self._request = self._request, None
        if request is not None:
            incoming = request.spool.incoming
            if incoming is not None:
                incoming.abort()
            self._release(request.spool)

    @staticmethod
    def _release(spool: Spool) -> None:
        spool.close()
        if spool.incoming is None:
            try:
                os.unlink(spool.name)
            except OSError:
                pass
