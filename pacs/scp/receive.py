"""The C-STORE receive path: the data set streamed into its blob, stored, answered (PS3.4 B.2).

Shared by pynetdicom's storage service class (:meth:`Receiver.handle_store`, with pynetdicom's
chunked receive writing into a :class:`ReceiveFile`) and by the fast path
(:mod:`pacs.scp.faststore`, which writes into the same :class:`ReceiveFile` and calls
:meth:`Receiver.store`). The listener makes one :class:`Receiver` and sets it on every
association it accepts (``assoc.receiver``); nothing here looks for it anywhere else.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, NamedTuple, cast

from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta

from pacs.dicom import status as codes
from pacs.dicom.meta import PREAMBLE
from pacs.errors import PacsError
from pacs.scp import access, status
from pacs.scp.origin import assoc_origin
from pacs.services.archive import Archive, Incoming

log = logging.getLogger("pacs.dimse")


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


# ---------------------------------------------------------------------- pynetdicom's file meta


class RequestMeta(NamedTuple):
    """What pynetdicom's chunked receive builds its file meta from (see :func:`write_meta`)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def create_meta(**kwargs: Any) -> Any:
    """Stands in for pynetdicom's ``create_file_meta`` in its C-STORE receive: just the UIDs."""
    return RequestMeta(
        str(kwargs["sop_class_uid"]), str(kwargs["sop_instance_uid"]), str(kwargs["transfer_syntax"])
    )


def write_meta(fp: Any, meta: Any, *args: Any, **kwargs: Any) -> None:
    """Stands in for ``write_file_meta_info`` there: a :class:`ReceiveFile` writes its own meta
    (building and encoding pynetdicom's, only to replace it, cost a tenth of a C-STORE)."""
    if isinstance(meta, RequestMeta):
        if isinstance(fp, ReceiveFile):
            fp.begin(*meta)
            return
        meta = create_file_meta(
            sop_class_uid=UID(meta.sop_class_uid),
            sop_instance_uid=UID(meta.sop_instance_uid),
            transfer_syntax=UID(meta.transfer_syntax),
        )
    write_file_meta_info(fp, meta, *args, **kwargs)


# ---------------------------------------------------------------------- the spool


class ReceiveFile:
    """Where an incoming C-STORE data set is written.

    pynetdicom's chunked receive makes one in place of its ``NamedTemporaryFile`` (on the
    association's DUL thread: the receiver is that association's ``receiver``); the fast path
    passes its receiver and association. pynetdicom writes a preamble and its own file meta,
    then the data set fragments as they arrive. With a receiver, the bytes go straight into a
    new blob of the archive (:meth:`Archive.incoming`): pynetdicom's file meta is replaced by
    ours (built from the same request UIDs, plus the sender's AE title), and the data set is
    hashed on the way, so storing it later is a parse, an fsync and a rename, not a second copy.
    Otherwise (the blob store cannot receive in place, or the request's UIDs cannot name a file)
    it is a plain spool file in the receiver's spool directory that :meth:`Archive.store` reads
    and copies, as for any other stream. Without a receiver (an association that is not one of
    our listeners', in a process that also runs pynetdicom for something else) it is what
    pynetdicom would have made: a temporary file in the default temporary directory.

    A write error (disk full) raised inside pynetdicom's state machine aborts the association;
    here it is remembered instead, the bytes already written are released, the rest of the data
    set is read and dropped, and :meth:`Receiver.store` answers 0xA700 Out of Resources
    (PS3.4 B.2.3), so the modality keeps the instance and sends it again later.
    """

    def __init__(self, receiver: Receiver | None = None, assoc: Any = None, **kwargs: Any) -> None:
        self.file = self  # pynetdicom calls ``.file.flush()``
        self.error: OSError | None = None
        self.incoming: Incoming | None = None
        self._fh: Any = None
        self._started = False
        self.size = 0
        if receiver is None:
            assoc = getattr(threading.current_thread(), "assoc", None)  # the DUL thread's association
            receiver = getattr(assoc, "receiver", None)
        #: ``[storage] max_instance_mb``: past it the rest of the data set is read and dropped
        #: (as after a write error) and the C-STORE answered 0xA700 with the reason.
        self._limit = receiver.archive.max_instance_bytes if receiver is not None else 0
        if receiver is not None:
            try:
                self.incoming = receiver.archive.incoming()
            except (PacsError, TypeError, OSError):
                self.incoming = None
        if self.incoming is not None:
            self._calling_ae = str(assoc.requestor.ae_title).strip()
            self.name = str(self.incoming.path)
        else:
            spool_dir = receiver.spool_dir if receiver is not None else None
            self._fh = tempfile.NamedTemporaryFile(dir=spool_dir, **kwargs)  # noqa: SIM115 - closed by pynetdicom
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
            write_file_meta_info(
                out,
                create_file_meta(
                    sop_class_uid=UID(sop_class_uid),
                    sop_instance_uid=UID(sop_instance_uid),
                    transfer_syntax=UID(transfer_syntax),
                ),
            )
        except OSError as exc:
            self._failed(exc)

    def write(self, data: bytes | memoryview) -> int:
        if self.error is not None or not self._started:  # before begin(): pynetdicom's preamble
            return len(data)
        self.size += len(data)
        if self._limit and self.size > self._limit:
            self._failed(OSError(errno.EFBIG, f"over max_instance_mb ({self._limit >> 20} MiB)"))
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


# ---------------------------------------------------------------------- storing


class Receiver:
    """The C-STORE receive path of one listener: its archive and its spool directory."""

    def __init__(self, archive: Archive, spool_dir: Path) -> None:
        self.archive = archive
        #: Plain spool files (when a data set cannot be received into its blob) go here.
        self.spool_dir = spool_dir

    def spool(
        self, assoc: Any, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str
    ) -> ReceiveFile:
        """A begun :class:`ReceiveFile` for a request (the fast path's spool factory)."""
        spool = ReceiveFile(self, assoc, delete=False, mode="wb", suffix=".dcm")
        spool.begin(sop_class_uid, sop_instance_uid, transfer_syntax)
        return spool

    def handle_store(self, event: evt.Event) -> Dataset | int:
        """C-STORE (through pynetdicom's service class): see :meth:`store`."""
        req = cast(C_STORE, event.request)
        spool = getattr(req, "_dataset_file", None)
        if not isinstance(spool, ReceiveFile):  # pynetdicom_patches.apply() sets up the chunked receive
            log.error("C-STORE sop=%s arrived without a receive spool", req.AffectedSOPInstanceUID)
            return status.dataset(codes.HANDLER_FAILED, "internal error: no receive spool")
        code, comment = self.store(
            event.assoc, spool, str(req.AffectedSOPClassUID or ""), str(req.AffectedSOPInstanceUID or "")
        )
        return status.dataset(code, comment)

    def store(
        self, assoc: Any, spool: ReceiveFile, sop_class_uid: str, sop_instance_uid: str
    ) -> tuple[int, str]:
        """Store a received C-STORE data set through the archive; the response (status, comment).

        Success only once the instance is durable and indexed. Used by pynetdicom's storage
        service class (:meth:`handle_store`) and by the fast path (:mod:`pacs.scp.faststore`).
        """
        origin = assoc_origin(assoc)
        if not access.may_store(assoc):
            if spool.incoming is not None:
                spool.incoming.abort()
            log.warning(
                "C-STORE refused sop=%s from %s@%s: 0x%04X C-STORE is not granted to this AE",
                sop_instance_uid,
                origin.calling_ae,
                origin.address,
                codes.NOT_AUTHORIZED,
            )
            return codes.NOT_AUTHORIZED, f"C-STORE is not granted to AE {origin.calling_ae}"
        if spool.error is not None:
            log.warning(
                "C-STORE refused sop=%s from %s@%s: 0x%04X cannot spool the instance: %s",
                sop_instance_uid,
                origin.calling_ae,
                origin.address,
                codes.OUT_OF_RESOURCES,
                spool.error,
            )
            return codes.OUT_OF_RESOURCES, f"cannot receive: {spool.error.strerror}"
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
            code = codes.answer(exc).c_store
            log.warning(
                "C-STORE refused sop=%s from %s@%s: 0x%04X %s",
                sop_instance_uid,
                origin.calling_ae,
                origin.address,
                code,
                exc,
            )
            return code, str(exc)
        return codes.STORE_OUTCOMES[result.outcome].c_store, ""
