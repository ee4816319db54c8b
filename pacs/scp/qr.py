"""Query/Retrieve SCP: C-FIND, C-MOVE and C-GET (PS3.4 Annex C) over the one query engine.

Patient Root and Study Root information models, levels PATIENT, STUDY, SERIES and IMAGE.
Identifiers parse into :class:`pacs.query.Query` (``from_identifier``) and run through
``Archive.search``, exactly as QIDO-RS does; matching rules live there, not here.

Status choices (codes in ``pacs.dicom.status``, the one table):

- Malformed identifier (bad level, key below the level, invalid range, date or UID):
  ``0xA900`` Identifier does not match SOP Class, with an Error Comment; an identifier that
  cannot be decoded at all: ``0xC000`` Unable to process. The association stays up.
- Pending responses are ``0xFF01`` when the request asked for keys we do not index (they come
  back empty, PS3.4 C.4.1.1.4), ``0xFF00`` otherwise.
- More matches than ``[dicom] max_find_results``: the first ``max_find_results`` matches are
  sent as pending responses, then the final status is ``0xA700`` (Out of resources) with the
  Error Comment ``more than N matches; refine the query``. C-FIND defines no warning status, and
  a silent Success would let a workstation believe the list is complete.
- C-CANCEL: checked before every pending response and every sub-operation; ``0xFE00``.
- C-MOVE to an AE title not in ``[dicom] destinations``: ``0xA801``.

C-MOVE and C-GET decode the identifier and hand the rest to :class:`pacs.services.retrieve.Retrieve`:
the instances it names, each read in a transfer syntax the peer accepted for its SOP class (as
stored when accepted, else converted by :mod:`pacs.services.transcode`). An instance that cannot
be sent is a failed sub-operation whose UID goes into the Failed SOP Instance UID List; pynetdicom
counts the sub-operations and sends the pending and final responses. Files are read one at a time
while sending, never a whole study in memory.

Audit (PS3.15 A.5.3): every request leaves one row when it ends, whatever the outcome (success,
refused with its status and reason, capped, cancelled, cut by the end of the association), with
the identifier's keys as sent and the studies and patients matched or sent; the final response
waits until that row is durable (``[audit] wait_seconds``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import build_context, evt
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacs.config import Settings
from pacs.dicom import status as codes
from pacs.dicom.attributes import BY_KEYWORD, BY_TAG, UNIQUE_KEY, Attribute
from pacs.errors import PacsError
from pacs.model import Level, Origin, StoredInstance
from pacs.query import from_identifier
from pacs.scp import status
from pacs.scp.contexts import STORAGE_TRANSFER_SYNTAXES, Extension
from pacs.scp.origin import origin_of
from pacs.scp.peers import Peers
from pacs.services.archive import Archive
from pacs.services.audit import Audit
from pacs.services.retrieve import Outgoing, Retrieve, Tally, proposals

log = logging.getLogger("pacs.dimse.qr")

_PATIENT_ROOT = {
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
}
_QR_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]  # identifiers: explicit / implicit VR LE
_TAG_LEVEL = 0x00080052
_TAG_CHARSET = 0x00080005
_TAG_RETRIEVE_AE = 0x00080054
_TAG_AVAILABILITY = 0x00080056
#: A transfer syntax no peer can have accepted: marks a sub-operation that must fail.
_NO_SYNTAX = UID("2.25.0")
_MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: at most 128 presentation contexts (odd IDs 1-255)

Status = int | Dataset
Response = tuple[Status, Dataset | None]


# ---------------------------------------------------------------- pure helpers


class ResponsePlan:
    """How each C-FIND response identifier is built (PS3.4 C.4.1.1.3.2), worked out once per query.

    Exactly the keys of the request come back, in UTF-8, plus Specific Character Set,
    Query/Retrieve Level, Retrieve AE Title and the unique key of the level (so that the match
    can be retrieved); requested keys we do not index come back empty; keys below the level are
    left out. Values come from our own index (validated when stored), so elements are made
    without pydicom's per-value checks.
    """

    def __init__(self, request: Dataset, level: Level, ae_title: str) -> None:
        fixed: list[tuple[int, str, Any]] = [
            (_TAG_CHARSET, "CS", "ISO_IR 192"),
            (_TAG_LEVEL, "CS", level.value),
            (_TAG_RETRIEVE_AE, "AE", ae_title),
        ]
        self.columns: list[tuple[int, str, Attribute]] = []
        for elem in request:
            tag = int(elem.tag)
            if elem.tag.group in (0x0000, 0x0002) or elem.tag.is_private:
                continue
            if tag in (_TAG_CHARSET, _TAG_LEVEL, _TAG_RETRIEVE_AE):
                continue
            if tag == _TAG_AVAILABILITY:
                fixed.append((tag, "CS", "ONLINE"))
                continue
            vr = _vr_of(elem.tag, str(elem.VR))
            attr = BY_TAG.get(tag)
            if attr is not None and attr.level.depth <= level.depth:
                self.columns.append((tag, vr, attr))
            elif attr is None:
                fixed.append((tag, vr, [] if vr == "SQ" else None))
        self.fixed = fixed
        unique = BY_KEYWORD[UNIQUE_KEY[level]]
        self.unique = None if any(t == unique.tag for t, _, _ in self.columns) else unique

    def identifier(self, row: dict[str, Any]) -> Dataset:
        """The response identifier of one match."""
        ds = Dataset()
        for tag, vr, value in self.fixed:
            ds.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))
        for tag, vr, attr in self.columns:
            value = _to_dicom(attr, row[attr.keyword]) if attr.keyword in row else None
            ds.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))
        u = self.unique
        if u is not None and row.get(u.keyword):
            ds.add(DataElement(u.tag, u.vr, row[u.keyword], validation_mode=config.IGNORE))
        return ds


def response_identifier(request: Dataset, row: dict[str, Any], level: Level, ae_title: str) -> Dataset:
    """The C-FIND response identifier of one match (see :class:`ResponsePlan`)."""
    return ResponsePlan(request, level, ae_title).identifier(row)


def assume_utf8_when_undeclared(identifier: Dataset) -> None:
    """Declare ISO_IR 192 on an identifier that has no Specific Character Set but non-ASCII text
    that is valid UTF-8 (what many local systems send); otherwise leave it to the default
    repertoire (PS3.5 6.1.2.3). Must run before any value is read.
    """
    if "SpecificCharacterSet" in identifier:
        return
    non_ascii = False
    for tag in identifier.keys():
        raw = identifier.get_item(tag).value
        if isinstance(raw, bytes) and any(b > 0x7F for b in raw):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return
            non_ascii = True
    if non_ascii:
        identifier.SpecificCharacterSet = "ISO_IR 192"
        implicit, little = identifier.original_encoding
        identifier.set_original_encoding(implicit, little, "utf_8")  # raw values decode with this


def _vr_of(tag: Any, request_vr: str) -> str:
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        vr = request_vr
    return vr.split(" or ")[0] if " or " in vr else vr


def _to_dicom(attr: Attribute, value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, str) and "\\" in value:
        return value.split("\\")
    if attr.is_integer and not isinstance(value, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return value


def accepted_syntaxes(contexts: Sequence[PresentationContext]) -> dict[str, list[str]]:
    """Per SOP class, the transfer syntaxes of the accepted ``contexts``, in their order."""
    out: dict[str, list[str]] = {}
    for cx in contexts:
        out.setdefault(str(cx.abstract_syntax), []).append(str(cx.transfer_syntax[0]))
    return out


def _dataset(out: Outgoing) -> Dataset:
    """What pynetdicom sends for one sub-operation. An unsendable instance becomes a header-only
    dataset in a transfer syntax no peer can have accepted: pynetdicom finds no context, counts
    the sub-operation as failed and lists its SOP Instance UID (PS3.4 C.4.2.1.3.2)."""
    if out.dataset is not None:
        return out.dataset
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = out.instance.sop_class_uid, out.instance.sop_instance_uid
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = _NO_SYNTAX
    return ds


def _peer(origin: Origin) -> str:
    return f"{origin.calling_ae}@{origin.address}"


def query_keys(identifier: Dataset, size: int = 256, depth: int = 0) -> dict[str, Any]:
    """The keys of a Q/R identifier as the audit trail records them (``{keyword: value}``, empty
    for a return key): the ParticipantObjectQuery of the Query message (PS3.15 A.5.3). Values are cut at
    ``size`` characters; one that cannot be decoded is kept as its raw bytes (Latin-1)."""
    out: dict[str, Any] = {}
    for tag in identifier.keys():
        if tag.group in (0x0000, 0x0002):
            continue
        name = keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"
        value: Any
        try:
            elem = identifier[tag]
            if elem.VR == "SQ":
                value = [query_keys(item, size, depth + 1) for item in elem.value[:4]] if depth < 2 else []
            elif elem.value is None or elem.value == "":
                value = ""
            elif isinstance(elem.value, bytes):
                value = elem.value[:size].decode("latin-1")
            elif isinstance(elem.value, list | tuple) or type(elem.value).__name__ == "MultiValue":
                value = "\\".join(str(v) for v in elem.value)
            else:
                value = str(elem.value)
        except Exception:
            raw = identifier.get_item(tag).value
            value = raw.decode("latin-1") if isinstance(raw, bytes) else repr(raw)
        out[name] = value[:size] if isinstance(value, str) else value
    return out


def _matched(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Audit details of the C-FIND matches sent: count, studies, patients (the audit service
    adds the patients of the studies)."""
    studies = list(dict.fromkeys(str(r["StudyInstanceUID"]) for r in rows if r.get("StudyInstanceUID")))
    patients = list(dict.fromkeys(str(r["PatientID"]) for r in rows if r.get("PatientID")))
    return {"matches": len(rows), "studies": studies, "patients": patients}


def _retrieved(instances: Sequence[StoredInstance]) -> dict[str, Any]:
    """Audit details of a retrieve set: instance count and studies."""
    return {
        "instances": len(instances),
        "studies": list(dict.fromkeys(i.study_instance_uid for i in instances)),
    }


def _ended(reason: str, **more: Any) -> dict[str, Any]:
    """Audit details of a request that did not end in success (outcome 4, minor failure)."""
    return {"outcome": 4, "reason": reason, **more}


def _failure(refusal: Dataset) -> dict[str, Any]:
    """Audit details of a refused request: its status, reason and outcome (PS3.15 A.5.1: 8 serious
    failure when we could not serve it, 4 minor failure for a request we would not)."""
    code = int(refusal.Status)
    return {
        "outcome": 8 if code == codes.FIND_TOO_MANY_MATCHES else 4,
        "dimse_status": f"0x{code:04X}",
        "reason": str(refusal.get("ErrorComment", "")),
    }


# ---------------------------------------------------------------- the service


class QueryRetrieveSCP:
    """C-FIND / C-MOVE / C-GET handlers bound to an archive and its retrieve service."""

    def __init__(
        self,
        archive: Archive,
        settings: Settings,
        audit: Audit | None = None,
        retrieve: Retrieve | None = None,
    ) -> None:
        self.archive = archive
        self.retrieve = retrieve if retrieve is not None else Retrieve(archive)
        self.settings = settings
        #: Query and retrieve events go to the audit trail's writer thread when there is one,
        #: so a C-FIND's final status never waits for an audit row's commit.
        self.audit = audit
        self.ae_title = settings.dicom.ae_title
        self.max_results = max(1, settings.dicom.max_find_results)
        self.fold_names = settings.query.names_accent_insensitive
        self.peers = Peers(settings)  # destinations and their TLS context (shared with commitment)

    # ------------------------------------------------------------------ C-FIND

    def handle_find(self, event: evt.Event) -> Iterator[Response]:
        """C-FIND (PS3.4 C.4.1): one pending response per match, then the final status."""
        origin = origin_of(event)
        started = time.monotonic()
        sop_class = str(event.request.AffectedSOPClassUID)
        patient_root = sop_class in _PATIENT_ROOT
        audit: dict[str, Any] = {"sop_class": sop_class}
        try:
            identifier = event.identifier
            assume_utf8_when_undeclared(identifier)
            audit["query"] = query_keys(identifier)
            query = from_identifier(
                identifier,
                patient_root=patient_root,
                max_results=self.max_results + 1,
                fold_names=self.fold_names,
            )
            audit["level"] = query.level.value
            rows = self.archive.search(query)
        except Exception as exc:
            refusal = self._refused("C-FIND", exc, origin)
            self._record("query.find", origin, **audit, **_failure(refusal))
            yield refusal, None
            return
        pending = codes.PENDING_WARNING if query.unsupported_return_keys else codes.PENDING
        sent = 0
        plan = ResponsePlan(identifier, query.level, self.ae_title)
        recorded = finished = False
        try:
            for row in rows[: self.max_results]:
                if event.is_cancelled:
                    log.info("C-FIND cancelled by %s after %d matches", _peer(origin), sent)
                    recorded = True
                    why = _ended("cancelled by the requester (C-CANCEL)", cancelled=True)
                    self._record("query.find", origin, **audit, **_matched(rows[:sent]), **why)
                    yield codes.CANCEL, None
                    return
                answer = plan.identifier(row)
                sent += 1
                yield pending, answer
            finished = True
        finally:
            if not recorded and not finished:  # the association ended (or building an answer failed)
                why = _ended("the association ended before the last response")
                self._record("query.find", origin, durable=False, **audit, **_matched(rows[:sent]), **why)
        capped = len(rows) > self.max_results
        root = "patient-root" if patient_root else "study-root"
        ms = (time.monotonic() - started) * 1000
        log.info(
            "C-FIND %s level=%s matches=%d%s in %.1f ms from %s",
            root,
            query.level.value,
            sent,
            " (capped)" if capped else "",
            ms,
            _peer(origin),
        )
        if capped:
            comment = f"more than {self.max_results} matches; refine the query"
            final = status.dataset(codes.FIND_TOO_MANY_MATCHES, comment)
            capped_ = {**_failure(final), "outcome": 4, "capped": True}  # matches went out: minor
            self._record("query.find", origin, **audit, **_matched(rows[:sent]), **capped_)
            yield final, None
            return
        self._record("query.find", origin, **audit, **_matched(rows[:sent]), outcome=0)

    # ------------------------------------------------------------------ C-MOVE

    def handle_move(self, event: evt.Event) -> Iterator[Any]:
        """C-MOVE (PS3.4 C.4.2): open a storage association to the named destination and send."""
        origin = origin_of(event)
        title = str(event.move_destination or "").strip()
        audit: dict[str, Any] = {"sop_class": str(event.request.AffectedSOPClassUID), "destination": title}
        dest = self.peers.find(title)
        if dest is None:
            log.warning("C-MOVE refused: unknown destination %r requested by %s", title, _peer(origin))
            self._keys_of(event, audit)
            why = _ended(f"unknown move destination {title!r}", dimse_status="0xA801")
            self._record("retrieve.move", origin, **audit, **why)
            yield None, None  # pynetdicom answers 0xA801 Move Destination unknown
            return
        try:
            instances = self._retrieve_set(event, audit)
        except Exception as exc:
            # pynetdicom only sends a final status after the destination and a sub-operation
            # count, and it associates with the destination in between.
            yield dest.host, dest.port, {"contexts": [build_context(Verification)]}
            yield 1
            refusal = self._refused("C-MOVE", exc, origin)
            self._record("retrieve.move", origin, **audit, **_failure(refusal))
            yield refusal, None
            return
        audit.update(_retrieved(instances))
        store_assoc: dict[str, Any] = {}

        def _accepted(ev: evt.Event) -> None:
            store_assoc["assoc"] = ev.assoc

        contexts = [
            build_context(sop, list(ts)) for sop, ts in proposals(instances, _MAX_CONTEXTS, lossy=dest.lossy)
        ]
        # TLS for a tls = true destination, Nagle off (pacs.scp.peers, as for commitment reports).
        options = self.peers.associate_options(dest)
        options["contexts"] = contexts
        options["evt_handlers"].append((evt.EVT_ACCEPTED, _accepted))
        yield dest.host, dest.port, options
        yield len(instances)
        log.info(
            "C-MOVE %d instance(s) to %s (%s:%d) for %s",
            len(instances),
            dest.ae_title,
            dest.host,
            dest.port,
            _peer(origin),
        )
        assoc = store_assoc.get("assoc")
        accepted = accepted_syntaxes(assoc.accepted_contexts if assoc is not None else [])
        yield from self._send(event, instances, accepted, "C-MOVE", origin, audit, lossy=dest.lossy)

    # ------------------------------------------------------------------ C-GET

    def handle_get(self, event: evt.Event) -> Iterator[Any]:
        """C-GET (PS3.4 C.4.3): send on the requesting association, which took the SCP role."""
        origin = origin_of(event)
        audit: dict[str, Any] = {"sop_class": str(event.request.AffectedSOPClassUID)}
        try:
            instances = self._retrieve_set(event, audit)
        except Exception as exc:
            yield 1  # pynetdicom sends a final status only after a non-zero sub-operation count
            refusal = self._refused("C-GET", exc, origin)
            self._record("retrieve.get", origin, **audit, **_failure(refusal))
            yield refusal, None
            return
        audit.update(_retrieved(instances))
        yield len(instances)
        log.info("C-GET %d instance(s) for %s", len(instances), _peer(origin))
        accepted = accepted_syntaxes([cx for cx in event.assoc.accepted_contexts if cx.as_scu])
        lossy = getattr(self.peers.find(origin.calling_ae), "lossy", False)  # its destination entry
        yield from self._send(event, instances, accepted, "C-GET", origin, audit, lossy=lossy)

    # ------------------------------------------------------------------ shared

    def _send(
        self,
        event: evt.Event,
        instances: Sequence[StoredInstance],
        accepted: dict[str, list[str]],
        what: str,
        origin: Origin,
        audit: dict[str, Any],
        lossy: bool = False,
    ) -> Iterator[Response]:
        """One pending C-STORE sub-operation per instance; pynetdicom counts their outcomes. The
        audit row (kind ``retrieve.move`` / ``retrieve.get``) is written when it ends, however."""
        kind = "retrieve.move" if what == "C-MOVE" else "retrieve.get"
        tally = Tally()
        offered = 0
        recorded = False
        try:
            for i, out in enumerate(self.retrieve.outgoing(instances, accepted, tally, lossy=lossy)):
                if event.is_cancelled:
                    log.info("%s cancelled by %s after %d of %d", what, _peer(origin), i, len(instances))
                    recorded = True
                    why = _ended("cancelled by the requester (C-CANCEL)", cancelled=True)
                    self._record(kind, origin, **audit, offered=i, unsendable=len(tally.failed), **why)
                    yield codes.CANCEL, None
                    return
                ds = _dataset(out)
                offered = i + 1
                yield codes.PENDING, ds
            log.info("%s for %s prepared %s", what, _peer(origin), tally)
            recorded = True
            outcome = 4 if tally.failed else 0
            self._record(
                kind, origin, **audit, offered=offered, unsendable=len(tally.failed), outcome=outcome
            )
        finally:
            if not recorded:  # the association ended, or preparing an instance failed
                why = _ended(f"{what} ended after {offered} of {len(instances)} instance(s)")
                self._record(kind, origin, durable=False, **audit, offered=offered, **why)

    def _retrieve_set(self, event: evt.Event, audit: dict[str, Any]) -> list[StoredInstance]:
        patient_root = str(event.request.AffectedSOPClassUID) in _PATIENT_ROOT
        identifier = event.identifier
        assume_utf8_when_undeclared(identifier)
        audit["query"] = query_keys(identifier)
        query = from_identifier(identifier, patient_root=patient_root)
        audit["level"] = query.level.value
        return self.retrieve.instances(query)

    @staticmethod
    def _keys_of(event: evt.Event, audit: dict[str, Any]) -> None:
        """The identifier's keys into ``audit``, when it can be decoded at all."""
        try:
            identifier = event.identifier
            assume_utf8_when_undeclared(identifier)
            audit["query"] = query_keys(identifier)
        except Exception as exc:
            audit["identifier_error"] = f"{type(exc).__name__}: {exc}"[:200]

    def _refused(self, what: str, exc: Exception, origin: Origin) -> Dataset:
        if isinstance(exc, PacsError):
            answers = codes.answer(exc)
            code = answers.c_find if what == "C-FIND" else answers.c_retrieve
            reason = str(exc)
        else:  # an identifier pydicom cannot decode, or values it cannot convert
            code = codes.UNABLE_TO_PROCESS
            reason = f"cannot read the identifier: {type(exc).__name__}: {exc}"
        log.warning("%s refused from %s: 0x%04X %s", what, _peer(origin), code, reason)
        return status.dataset(code, reason)

    def _record(self, kind: str, origin: Origin, *, durable: bool = True, **details: Any) -> None:
        """One audit row; ``durable``: wait until it is in the database or the spool."""
        try:
            if self.audit is not None:
                self.audit.record(kind, origin, durable=durable, **details)
            else:
                self.archive.record_event(kind, origin, details=details)
        except Exception as exc:  # an audit row must never fail the query itself
            log.warning("cannot record %s event: %s", kind, exc)


def extension(
    archive: Archive, settings: Settings, audit: Audit | None = None, retrieve: Retrieve | None = None
) -> Extension:
    """Presentation contexts and handlers of the Q/R services.

    The storage contexts are re-declared with both roles allowed so that a C-GET requester can
    take the Storage SCP role on its own association (PS3.7 D.3.3.4 role selection).
    """
    scp = QueryRetrieveSCP(archive, settings, audit, retrieve)
    contexts: list[tuple[str, list[str], dict[str, Any]]] = [
        (str(uid), list(_QR_SYNTAXES), {})
        for uid in (
            PatientRootQueryRetrieveInformationModelFind,
            PatientRootQueryRetrieveInformationModelMove,
            PatientRootQueryRetrieveInformationModelGet,
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelGet,
        )
    ]
    for cx in AllStoragePresentationContexts:
        contexts.append(
            (str(cx.abstract_syntax), list(STORAGE_TRANSFER_SYNTAXES), {"scu_role": True, "scp_role": True})
        )
    return Extension(
        contexts=contexts,
        handlers=[
            (evt.EVT_C_FIND, scp.handle_find),
            (evt.EVT_C_MOVE, scp.handle_move),
            (evt.EVT_C_GET, scp.handle_get),
        ],
    )


__all__ = ["QueryRetrieveSCP", "accepted_syntaxes", "extension", "response_identifier"]
