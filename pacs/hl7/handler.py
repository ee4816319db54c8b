"""One HL7 v2 message in, one acknowledgement out: parse, call the orders service, map the result.

The service commits before it returns, so AA always means "written" (a resend of the same MSH-10
from the same sender is acknowledged AA again without being applied twice). Domain errors map to
ACK codes here and only here: :class:`~pacs.errors.InvalidOrder` -> AE 207 (the service's
reason), :class:`~pacs.errors.NotFound` -> AE 204 (unknown key identifier),
:class:`~pacs.errors.StorageUnavailable` -> AR 207 (not taken: resend later); a message that
cannot be read is answered as :mod:`pacs.hl7.messages` decides (AR, or AE for content).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Protocol

from pacs.errors import InvalidOrder, NotFound, PacsError, StorageUnavailable
from pacs.hl7.messages import AckCode, Header, Hl7Error, Parsed, ack, parse
from pacs.model import Origin
from pacs.services.orders.model import (
    Applied,
    MessageId,
    OrderMessage,
    PatientMerge,
    PatientUpdate,
    Report,
)

log = logging.getLogger("pacs.hl7")


class OrdersPort(Protocol):
    """What the HL7 door needs of :class:`pacs.services.orders.Orders`."""

    def apply(self, msg: OrderMessage, origin: Origin, message_id: MessageId | None = None) -> Applied: ...

    def update_patient(
        self, upd: PatientUpdate, origin: Origin, message_id: MessageId | None = None
    ) -> Applied: ...

    def merge_patients(
        self, merge: PatientMerge, origin: Origin, message_id: MessageId | None = None
    ) -> Applied: ...

    def record_report(
        self, report: Report, origin: Origin, message_id: MessageId | None = None
    ) -> Applied: ...


@dataclass(frozen=True)
class Answer:
    """The acknowledgement of one message and what it said (for logs and tests)."""

    payload: bytes  # the ACK message, without MLLP framing
    code: AckCode
    error: int = 0  # HL7 table 0357
    reason: str = ""
    header: Header | None = None
    applied: Applied | None = None


def scrub(reason: str) -> str:
    """A reason fit for the log: quoted values (which may be patient data) replaced by '…'."""
    return re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", reason)


def refuse(header: Header | None, code: AckCode, error: int, reason: str, peer: str) -> Answer:
    """An AE/AR answer, logged with its reason (no values) and the message type and control ID."""
    name = header.name if header else "?"
    control = header.control_id if header else "?"
    log.warning("hl7 %s %s from %s refused %s %d: %s", name, control[:40], peer, code, error, scrub(reason))
    return Answer(ack(header, code, reason, error), code, error, reason, header)


def handle_message(raw: bytes, orders: OrdersPort, peer: str = "") -> Answer:
    """Parse ``raw`` (one message), apply it through ``orders`` and build its acknowledgement."""
    try:
        parsed = parse(raw)
    except Hl7Error as exc:
        return refuse(exc.header, "AR" if exc.reject else "AE", exc.code, exc.reason, peer)
    h = parsed.header
    try:
        applied = _apply(parsed, orders, peer)
    except NotFound as exc:
        return refuse(h, "AE", 204, str(exc), peer)
    except InvalidOrder as exc:
        return refuse(h, "AE", 207, str(exc), peer)
    except StorageUnavailable:
        return refuse(h, "AR", 207, "the archive cannot write now (database unavailable): resend later", peer)
    except PacsError as exc:
        return refuse(h, "AE", 207, str(exc), peer)
    except Exception:
        log.exception("hl7 %s %s from %s: internal error", h.name, h.control_id[:40], peer)
        return refuse(h, "AR", 207, "internal error of the archive: resend later", peer)
    text = "applied before" if applied.duplicate else applied.detail
    log.info(
        "hl7 %s %s from %s: AA %s%s",
        h.name,
        h.control_id[:40],
        peer,
        applied.kind,
        " (resend, not applied again)" if applied.duplicate else f" {applied.detail}",
    )
    return Answer(ack(h, "AA", text), "AA", 0, text, h, applied)


def _apply(parsed: Parsed, orders: OrdersPort, peer: str) -> Applied:
    h = parsed.header
    origin = Origin(address=peer, user=h.sender[:64], protocol="hl7")
    body, mid = parsed.body, parsed.message_id
    if isinstance(body, OrderMessage):
        return orders.apply(body, origin, mid)
    if isinstance(body, PatientUpdate):
        return orders.update_patient(body, origin, mid)
    if isinstance(body, PatientMerge):
        return orders.merge_patients(body, origin, mid)
    return orders.record_report(body, origin, mid)
