"""Modality Worklist SCP (PS3.4 Annex K, Modality Worklist Information Model - FIND).

Thin edge: parse the identifier with the one query engine (:func:`pacs.query.from_worklist_identifier`),
ask the orders service for the open items, answer exactly the keys asked (top level and the
Scheduled Procedure Step Sequence item), in UTF-8, or with accents removed for the AE titles of
``[worklist] ascii_fallback_aes`` (old modalities that would show UTF-8 as mojibake).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import ModalityWorklistInformationFind

from pacs.config import Settings
from pacs.dicom import status as codes
from pacs.dicom.attributes import WORKLIST_BY_TAG, Attribute
from pacs.dicom.encode import Element
from pacs.dicom.text import ascii_text
from pacs.errors import PacsError
from pacs.query import from_worklist_identifier
from pacs.scp import status
from pacs.scp.contexts import Extension
from pacs.scp.origin import origin_of
from pacs.scp.preencoded import PreEncoded
from pacs.scp.qr import assume_utf8_when_undeclared, query_keys
from pacs.services.audit import Audit
from pacs.services.orders import Orders

log = logging.getLogger("pacs.dimse.worklist")

_SPS = 0x00400100  # Scheduled Procedure Step Sequence
_CHARSET = 0x00080005
#: Coded entries kept as JSON [value, scheme, meaning], by the sequence tag that returns them.
_CODES = {0x00321064: "requested_procedure_code", 0x00400008: "scheduled_protocol_code"}
_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


def _vr(tag: int, request_vr: str) -> str:
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return request_vr
    return vr.split(" or ")[0]


class _Plan:
    """The shape of every answer to one request: which keys, where, from which column."""

    def __init__(self, request: Dataset, ascii_only: bool) -> None:
        self.ascii_only = ascii_only
        self.top = self._keys(request)
        sps = request.get("ScheduledProcedureStepSequence")
        self.sps: list[tuple[int, str, Attribute | str | None]] | None = None
        if sps is not None:
            self.sps = self._keys(sps[0]) if len(sps) else self._keys(Dataset(), everything=True)

    def _keys(self, ds: Dataset, everything: bool = False) -> list[tuple[int, str, Attribute | str | None]]:
        keys: list[tuple[int, str, Attribute | str | None]] = []
        if everything:  # an empty sequence item asks for every attribute of the step
            return [(a.tag, a.vr, a) for a in WORKLIST_BY_TAG.values() if a.sequence] + [
                (0x00400008, "SQ", "scheduled_protocol_code")
            ]
        for elem in ds:
            tag = int(elem.tag)
            if elem.tag.group in (0x0000, 0x0002) or elem.tag.is_private or tag in (_SPS, _CHARSET):
                continue
            attr = WORKLIST_BY_TAG.get(tag)
            if attr is not None and elem.VR != "SQ":
                keys.append((tag, attr.vr, attr))
            elif tag in _CODES:
                keys.append((tag, "SQ", _CODES[tag]))
            else:
                vr = _vr(tag, str(elem.VR))
                keys.append((tag, vr, None))  # not kept: returned empty
        return keys

    def answer(self, row: dict[str, Any]) -> PreEncoded:
        """The response identifier of one item (encoded by :mod:`pacs.dicom.encode`)."""
        elements: list[Element] = [] if self.ascii_only else [(_CHARSET, "CS", "ISO_IR 192")]
        elements += self._fill(self.top, row)
        if self.sps is not None:
            elements.append((_SPS, "SQ", [self._fill(self.sps, row)]))
        return PreEncoded(elements, "ascii" if self.ascii_only else "utf-8")

    def _fill(
        self, keys: list[tuple[int, str, Attribute | str | None]], row: dict[str, Any]
    ) -> list[Element]:
        out: list[Element] = []
        for tag, vr, source in keys:
            if isinstance(source, str):  # a coded entry
                out.append((tag, "SQ", self._code(row.get(source))))
                continue
            if vr == "SQ" or source is None:
                out.append((tag, vr, [] if vr == "SQ" else None))
                continue
            value = row.get(source.column)
            if isinstance(value, str) and self.ascii_only:
                value = ascii_text(value)
            out.append((tag, vr, value))
        return out

    def _code(self, stored: str | None) -> list[list[Element]]:
        if not stored:
            return []
        value, scheme, meaning = json.loads(stored)
        return [
            [
                (0x00080100, "SH", value),
                (0x00080102, "SH", scheme or "L"),  # a local code when the HIS names no scheme
                (0x00080104, "LO", ascii_text(meaning) if self.ascii_only else meaning),
            ]
        ]


class WorklistSCP:
    """The Modality Worklist C-FIND handler over the orders service."""

    def __init__(self, orders: Orders, settings: Settings, audit: Audit | None = None) -> None:
        self.orders = orders
        self.audit = audit
        self.max_results = max(1, settings.worklist.max_results)
        self.fold_names = settings.query.names_accent_insensitive
        self.ascii_aes = frozenset(a.strip() for a in settings.worklist.ascii_fallback_aes)

    def handle_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """C-FIND on the worklist: one pending response per open scheduled step, then success."""
        origin = origin_of(event)
        started = time.monotonic()
        audit: dict[str, Any] = {"sop_class": str(ModalityWorklistInformationFind)}
        try:
            identifier = event.identifier
            assume_utf8_when_undeclared(identifier)
            audit["query"] = query_keys(identifier)
            query = from_worklist_identifier(identifier, fold_names=self.fold_names)
            rows = self.orders.worklist(query, self.max_results + 1)
            plan = _Plan(identifier, origin.calling_ae.strip() in self.ascii_aes)
        except Exception as exc:
            if isinstance(exc, PacsError):
                code, reason = codes.answer(exc).c_find, str(exc)
            else:
                code, reason = (
                    codes.UNABLE_TO_PROCESS,
                    f"cannot read the identifier: {type(exc).__name__}: {exc}",
                )
            log.warning(
                "worklist C-FIND refused from %s@%s: 0x%04X %s",
                origin.calling_ae,
                origin.address,
                code,
                reason,
            )
            self._record(origin, {**audit, "outcome": 8, "reason": reason})
            yield status.dataset(code, reason), None
            return
        if len(rows) > self.max_results:
            reason = (
                f"more than {self.max_results} scheduled steps match; narrow the query (date, station AE)"
            )
            log.warning("worklist C-FIND from %s: %s", origin.calling_ae, reason)
            self._record(origin, {**audit, "outcome": 4, "reason": reason})
            yield status.dataset(codes.FIND_TOO_MANY_MATCHES, reason), None
            return
        pending = codes.PENDING_WARNING if query.unsupported_return_keys else codes.PENDING
        for row in rows:
            if event.is_cancelled:
                yield codes.CANCEL, None
                return
            yield pending, plan.answer(row)
        log.info(
            "worklist C-FIND matches=%d in %.1f ms from %s@%s%s",
            len(rows),
            (time.monotonic() - started) * 1000,
            origin.calling_ae,
            origin.address,
            " (ASCII fallback)" if plan.ascii_only else "",
        )
        self._record(
            origin,
            {
                **audit,
                "outcome": 0,
                "matches": len(rows),
                "patients": sorted({r["patient_id"] for r in rows})[:100],
            },
        )

    def _record(self, origin: Any, details: dict[str, Any]) -> None:
        try:
            if self.audit is not None:
                self.audit.record("query.worklist", origin, durable=False, **details)
        except Exception as exc:  # an audit row must never fail the query itself
            log.warning("cannot record a worklist query event: %s", exc)


def extension(orders: Orders, settings: Settings, audit: Audit | None = None) -> Extension:
    """Presentation context and C-FIND handler of the Modality Worklist SCP."""
    scp = WorklistSCP(orders, settings, audit)
    return Extension(
        contexts=[(str(ModalityWorklistInformationFind), list(_SYNTAXES), {})],
        handlers=[(evt.EVT_C_FIND, scp.handle_find)],
    )
