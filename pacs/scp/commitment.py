"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

Thin edge: decode the N-ACTION's Action Information, call :class:`~pacs.services.commitment.Commitment`
(which verifies and keeps the request before the response goes out), map its errors through the
status table (:mod:`pacs.dicom.status`), and send the report the service asks for:

- **on the same association** (PS3.4 J.3.3.1.2 note 1): a thread started by the N-ACTION handler
  waits ``report_delay_seconds``, then, if the requester is still connected, writes the
  N-EVENT-REPORT-RQ there (:func:`send_on_association`) and waits for its response. pynetdicom's
  ``Association.send_n_event_report`` does the same from another thread (it pauses the
  association's reactor, :mod:`pacs.scp.reactor`, so the response comes to it, not to the
  reactor), but it waits for the response for the whole DIMSE timeout even when the requester
  asks for a release meanwhile (the reactor, paused, cannot answer it) and then aborts; here the
  wait also ends when a release request, an abort or the end of the connection arrives.
- **on a new association** (:class:`ReportSender`, called by the delivery worker): to the
  requester's ``[dicom] destinations`` entry, as C-MOVE opens one (:mod:`pacs.scp.peers`: TLS when
  the entry says so), proposing the SCP role (SCP/SCU Role Selection, PS3.4 J.3.3.1.3 note).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from pacs.config import Settings
from pacs.dicom import status as codes
from pacs.errors import PacsError, StorageUnavailable
from pacs.scp import status
from pacs.scp.contexts import STORAGE_TRANSFER_SYNTAXES, Extension
from pacs.scp.origin import origin_of
from pacs.scp.peers import Peers
from pacs.services.commitment import Commitment, DeliveryError, Report

log = logging.getLogger("pacs.dimse.commitment")

#: Action Type ID of "Request Storage Commitment" (PS3.4 J.3.2.1.1).
REQUEST_STORAGE_COMMITMENT = 1
#: Transfer syntaxes of the Storage Commitment context (no pixel data: the uncompressed ones).
_SYNTAXES = STORAGE_TRANSFER_SYNTAXES[:3]
#: Slice of every wait on the association (for its end, for the response).
_TICK = 0.05

_message_ids = itertools.count(1)
_ids_lock = threading.Lock()


def _next_message_id() -> int:
    with _ids_lock:
        return (next(_message_ids) - 1) % 0xFFFF + 1


def report_dataset(report: Report, retrieve_ae: str = "") -> Dataset:
    """The Event Information of the N-EVENT-REPORT (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    if retrieve_ae:
        ds.RetrieveAETitle = retrieve_ae
    if report.success:
        ds.ReferencedSOPSequence = [_item(r.sop_class_uid, r.sop_instance_uid) for r in report.success]
    if report.failed:
        failed = []
        for f in report.failed:
            item = _item(f.sop_class_uid, f.sop_instance_uid)
            item.FailureReason = f.reason
            failed.append(item)
        ds.FailedSOPSequence = failed
    return ds


def _item(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def _acknowledged(status_code: int | None, where: str) -> None:
    """Raise :class:`DeliveryError` unless the N-EVENT-REPORT-RSP status is Success or Warning."""
    if status_code is None:
        raise DeliveryError(f"no N-EVENT-REPORT response from {where}")
    if code_to_category(status_code) not in (STATUS_SUCCESS, STATUS_WARNING):
        raise DeliveryError(f"{where} answered the N-EVENT-REPORT with status 0x{status_code:04X}")


# ---------------------------------------------------------------- the same association


def _release_requested(assoc: Any) -> bool:
    """An A-RELEASE-RQ from the peer waits for the (paused) reactor: the peer is going."""
    pdu = assoc.dul.peek_next_pdu()
    return isinstance(pdu, A_RELEASE) and pdu.result is None


def _usable(assoc: Any) -> bool:
    """Whether the association can still carry a report."""
    return bool(assoc.is_established) and not assoc.is_aborted and not _release_requested(assoc)


def send_on_association(assoc: Any, report: Report, timeout: float, retrieve_ae: str = "") -> None:
    """Send ``report`` on an association we accepted and wait for the N-EVENT-REPORT-RSP.

    Runs on a thread of its own, never the association's: the reactor is paused (as pynetdicom's
    ``send_*`` methods do) so that the response comes here; messages other than our response
    that arrive meanwhile go back to the front of the queue for the reactor. Raises
    :class:`DeliveryError` when the peer leaves, fails the report, or does not answer within
    ``timeout`` seconds.
    """
    where = f"{str(assoc.requestor.ae_title).strip()}@{assoc.requestor.address}"
    cx = next(
        (c for c in assoc.accepted_contexts if str(c.abstract_syntax) == StorageCommitmentPushModel),
        None,
    )
    if cx is None:
        raise DeliveryError(f"no Storage Commitment presentation context with {where}")
    ts = cx.transfer_syntax[0]
    data = encode(report_dataset(report, retrieve_ae), ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    if data is None:
        raise DeliveryError("cannot encode the Event Information")
    req = N_EVENT_REPORT()
    req.MessageID = _next_message_id()
    req.AffectedSOPClassUID = StorageCommitmentPushModel
    req.AffectedSOPInstanceUID = StorageCommitmentPushModelInstance
    req.EventTypeID = report.event_type_id
    req.EventInformation = BytesIO(data)

    deadline = time.monotonic() + timeout
    msgs: queue.Queue[Any] = assoc.dimse.msg_queue
    others: list[Any] = []
    assoc._reactor_checkpoint.clear()  # pause the reactor after its current message
    try:
        while not assoc._is_paused:
            if not assoc.is_established or time.monotonic() > deadline:
                raise DeliveryError(f"the association with {where} is busy or gone")
            time.sleep(0.0005)
        if not _usable(assoc):
            raise DeliveryError(f"the association with {where} is ending")
        assoc.dimse.send_msg(req, cx.context_id)
        rsp = None
        while rsp is None:
            try:
                item = msgs.get(timeout=_TICK)
            except queue.Empty:
                if not _usable(assoc):
                    raise DeliveryError(f"the association with {where} ended before the response") from None
                if time.monotonic() > deadline:
                    raise DeliveryError(
                        f"no N-EVENT-REPORT response from {where} in {timeout:.0f} s"
                    ) from None
                continue
            _cx_id, msg = item
            if msg is None:  # pynetdicom's mark of an abort or a closed connection
                raise DeliveryError(f"the association with {where} was aborted")
            if (
                isinstance(msg, N_EVENT_REPORT)
                and msg.is_valid_response
                and msg.MessageIDBeingRespondedTo == req.MessageID
            ):
                rsp = msg
            else:
                others.append(item)
    finally:
        if others:
            with msgs.mutex:
                msgs.queue.extendleft(reversed(others))
                msgs.not_empty.notify()
        assoc._reactor_checkpoint.set()
        work = getattr(assoc, "_work", None)  # the reactor's wake-up (pacs.scp.reactor)
        if work is not None:
            work.set()
    assert rsp is not None
    _acknowledged(rsp.Status, where)


# ---------------------------------------------------------------- a new association


class ReportSender:
    """Sends a report on a new association to the requester's ``[dicom] destinations`` entry."""

    def __init__(self, settings: Settings, peers: Peers | None = None) -> None:
        self.settings = settings
        self.peers = peers or Peers(settings)

    def __call__(self, report: Report) -> None:
        """Associate, send, wait for the response, release; :class:`DeliveryError` if not acknowledged."""
        dest = self.peers.find(report.requester)
        if dest is None:
            raise DeliveryError(f"no [dicom] destinations entry for AE title {report.requester!r}")
        d = self.settings.dicom
        ae = AE(ae_title=d.ae_title)
        ae.acse_timeout = d.acse_timeout
        ae.dimse_timeout = d.dimse_timeout
        ae.network_timeout = d.network_timeout
        ae.add_requested_context(StorageCommitmentPushModel, _SYNTAXES)
        # We are the Storage Commitment SCP, the association requestor: propose the SCP role.
        role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        where = f"{dest.ae_title}@{dest.host}:{dest.port}"
        try:
            assoc = ae.associate(
                dest.host,
                dest.port,
                ae_title=dest.ae_title,
                ext_neg=[role],
                **self.peers.associate_options(dest),
            )
        except Exception as exc:  # TLS set-up, name resolution
            raise DeliveryError(f"cannot associate with {where}: {exc}") from exc
        if not assoc.is_established:
            ae.shutdown()
            raise DeliveryError(f"association with {where} refused or failed")
        try:
            ds = report_dataset(report, d.ae_title)
            rsp, _ = assoc.send_n_event_report(
                ds, report.event_type_id, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
            )
        except (RuntimeError, ValueError) as exc:  # no accepted context, the association dropped
            raise DeliveryError(f"cannot send the report to {where}: {exc}") from exc
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()
        _acknowledged(getattr(rsp, "Status", None), where)


# ---------------------------------------------------------------- the N-ACTION


class CommitmentSCP:
    """The N-ACTION handler and the same-association report threads."""

    def __init__(self, commitment: Commitment, settings: Settings) -> None:
        self.commitment = commitment
        self.settings = settings

    def handle_n_action(self, event: evt.Event) -> tuple[Dataset | int, Dataset | None]:
        """N-ACTION Request Storage Commitment (PS3.4 J.3.2): kept before the Success response."""
        req = cast(N_ACTION, event.request)
        origin = origin_of(event)
        if str(req.RequestedSOPClassUID) != StorageCommitmentPushModel:
            return codes.NO_SUCH_SOP_CLASS, None
        if str(req.RequestedSOPInstanceUID) != StorageCommitmentPushModelInstance:
            return status.dataset(
                codes.NO_SUCH_OBJECT_INSTANCE, "not the Storage Commitment SOP Instance"
            ), None
        if req.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
            return codes.NO_SUCH_ACTION, None
        try:
            info = event.action_information
            tx = str(info.get("TransactionUID", "") or "")
            items = [
                (
                    str(i.get("ReferencedSOPClassUID", "") or ""),
                    str(i.get("ReferencedSOPInstanceUID", "") or ""),
                )
                for i in info.get("ReferencedSOPSequence", None) or []
            ]
        except Exception as exc:
            log.warning("N-ACTION from %s@%s: cannot decode: %s", origin.calling_ae, origin.address, exc)
            return status.dataset(codes.INVALID_ARGUMENT_VALUE, "cannot decode the Action Information"), None
        hold = self.settings.commitment.same_association_wait_seconds > 0
        try:
            self.commitment.request(tx, items, origin, hold_for_association=hold)
        except PacsError as exc:
            reply = status.dataset(codes.answer(exc).n_action, str(exc))
            log.warning(
                "N-ACTION storage commitment refused tx=%s from %s@%s: 0x%04X %s",
                tx,
                origin.calling_ae,
                origin.address,
                reply.Status,
                exc,
            )
            return reply, None
        if hold:
            threading.Thread(
                target=self._report_here, args=(event.assoc, tx), name="commitment-report", daemon=True
            ).start()
        return codes.SUCCESS, None

    def _report_here(self, assoc: Any, tx: str) -> None:
        """Wait out the report delay; send on the requester's association, or hand the report
        over to the delivery worker when that association has ended."""
        c = self.settings.commitment
        due = time.monotonic() + c.report_delay_seconds
        while time.monotonic() < due and _usable(assoc):
            time.sleep(min(_TICK, max(0.0, due - time.monotonic())))
        try:
            if not _usable(assoc):
                log.info(
                    "storage commitment %s: the requester left; the report goes on a new association", tx
                )
                self.commitment.hand_over(tx)
                return
            timeout = min(c.same_association_wait_seconds, self.settings.dicom.dimse_timeout)
            self.commitment.deliver_on_association(
                tx, lambda report: send_on_association(assoc, report, timeout, self.settings.dicom.ae_title)
            )
        except StorageUnavailable as exc:  # the row's lease runs out and the worker sends it
            log.warning("storage commitment %s: %s", tx, exc)
        except Exception:
            log.exception("storage commitment %s: report on the same association failed", tx)


def extension(commitment: Commitment, settings: Settings) -> Extension:
    """Presentation context and handler of the Storage Commitment Push Model SCP."""
    scp = CommitmentSCP(commitment, settings)
    return Extension(
        contexts=[(str(StorageCommitmentPushModel), list(_SYNTAXES), {})],
        handlers=[(evt.EVT_N_ACTION, scp.handle_n_action)],
    )


__all__ = ["CommitmentSCP", "ReportSender", "extension", "report_dataset", "send_on_association"]
