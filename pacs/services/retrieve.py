"""Retrieve: send matched instances to a peer (C-MOVE, C-GET; PS3.4 C.4.2, C.4.3).

The use case behind both retrieve services, without the protocol: which stored instances a
retrieve names (:meth:`Retrieve.instances`), and, for each, the dataset to send in a transfer
syntax the peer accepted for its SOP class (:meth:`Retrieve.outgoing`), converted by the one
transcoder (:mod:`pacs.services.transcode`) when the stored syntax is not accepted: as stored
first, then native, then lossless compressed (a peer that accepts only JPEG-LS gets JPEG-LS), and
lossy compressed only for a peer allowed it (``[dicom] destinations`` entry with ``lossy = true``).
What cannot be sent is an :class:`Outgoing` with a reason, counted in a :class:`Tally`; the edge
turns it into a failed sub-operation (listed in the Failed SOP Instance UID List).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from pacs.dicom.attributes import BY_KEYWORD
from pacs.errors import InvalidQuery, NotFound, TooLarge
from pacs.limits import DecodeBudget, DecodeLimits
from pacs.model import Level, StoredInstance
from pacs.query import AnyOf, Condition, Equal, Query
from pacs.services import transcode
from pacs.services.archive import Archive

log = logging.getLogger("pacs.retrieve")

#: Per SOP Class UID, the transfer syntaxes a peer accepted for it, in the order it accepted them.
Accepted = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class Outgoing:
    """One instance to send: ``dataset`` in ``transfer_syntax_uid``, or ``reason`` why it cannot be."""

    instance: StoredInstance
    dataset: Dataset | None = None
    transfer_syntax_uid: str | None = None
    reason: str = ""

    @property
    def sendable(self) -> bool:
        """True when there is a dataset to send."""
        return self.dataset is not None


@dataclass
class Tally:
    """What a retrieve prepared: instances sent as stored, converted, and failed (SOP Instance UIDs)."""

    total: int = 0
    as_stored: int = 0
    converted: int = 0
    failed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.total} instance(s): {self.as_stored} as stored, {self.converted} converted, "
            f"{len(self.failed)} unsendable"
        )

    def count(self, out: Outgoing) -> None:
        """Count one prepared instance."""
        if not out.sendable:
            self.failed.append(out.instance.sop_instance_uid)
        elif out.transfer_syntax_uid == out.instance.transfer_syntax_uid:
            self.as_stored += 1
        else:
            self.converted += 1


class Retrieve:
    """Retrieve through the :class:`Archive`: the instances a query names, ready to send."""

    def __init__(self, archive: Archive, limits: DecodeLimits | None = None) -> None:
        self.archive = archive
        #: What one C-MOVE / C-GET may decode to convert instances for the peer: per instance
        #: and over the whole retrieve (``[http] max_decoded_mb_*``, shared with WADO-RS).
        self.limits = limits or DecodeLimits()

    def instances(self, query: Query) -> list[StoredInstance]:
        """The stored instances a C-MOVE / C-GET identifier names (PS3.4 C.4.2.2.1, C.4.3.2.1).

        The unique key of the retrieve level must be present with a value (a list of UIDs below
        the PATIENT level); unique keys above the level narrow the set. Raises
        :class:`InvalidQuery` otherwise.
        """
        level = query.level
        studies = _unique_values(query, "StudyInstanceUID")
        series = _unique_values(query, "SeriesInstanceUID")
        sops = _unique_values(query, "SOPInstanceUID")
        found: dict[str, StoredInstance] = {}

        def add(**uids: str | None) -> None:
            try:
                for inst in self.archive.instances(**uids):
                    found.setdefault(inst.sop_instance_uid, inst)
            except NotFound:
                pass

        if level is Level.PATIENT:
            pids = [c.matcher for c in query.conditions if c.attribute.keyword == "PatientID"]
            if not pids or not isinstance(pids[0], Equal):
                raise InvalidQuery("a PATIENT level retrieve needs a single PatientID")
            study_query = Query(
                level=Level.STUDY,
                conditions=(Condition(BY_KEYWORD["PatientID"], pids[0]),),
                return_keys=(BY_KEYWORD["StudyInstanceUID"],),
                patient_root=True,
            )
            for row in self.archive.search(study_query):
                add(study_instance_uid=row["StudyInstanceUID"])
        elif level is Level.STUDY:
            if not studies:
                raise InvalidQuery("a STUDY level retrieve needs StudyInstanceUID")
            for uid in studies:
                add(study_instance_uid=uid)
        elif level is Level.SERIES:
            if not series:
                raise InvalidQuery("a SERIES level retrieve needs SeriesInstanceUID")
            for uid in series:
                add(study_instance_uid=studies[0] if len(studies) == 1 else None, series_instance_uid=uid)
        else:
            if not sops:
                raise InvalidQuery("an IMAGE level retrieve needs SOPInstanceUID")
            for uid in sops:
                add(
                    study_instance_uid=studies[0] if len(studies) == 1 else None,
                    series_instance_uid=series[0] if len(series) == 1 else None,
                    sop_instance_uid=uid,
                )
        return list(found.values())

    def outgoing(
        self,
        instances: Sequence[StoredInstance],
        accepted: Accepted,
        tally: Tally | None = None,
        *,
        lossy: bool = False,
    ) -> Iterator[Outgoing]:
        """Each instance ready to send (:meth:`prepare`), one at a time, counted in ``tally``;
        ``lossy``: the peer may be sent lossy compressed copies (its destination entry says so).

        Files are read one at a time as the caller asks for the next, never a whole study in memory.
        """
        if tally is not None:
            tally.total = len(instances)
        budget = self.limits.budget()  # one per retrieve: its per-request total spans every instance
        for inst in instances:
            out = self.prepare(inst, accepted.get(inst.sop_class_uid, ()), budget, lossy=lossy)
            if tally is not None:
                tally.count(out)
            yield out

    def prepare(
        self,
        inst: StoredInstance,
        accepted: Sequence[str],
        budget: DecodeBudget | None = None,
        *,
        lossy: bool = False,
    ) -> Outgoing:
        """Read one stored instance in a transfer syntax among ``accepted`` (:func:`transcode.select`:
        lossy ones only when ``lossy``).

        As stored when accepted (parsed, not converted), else converted by the transcoder;
        no accepted syntax that can carry it, a missing file, a failed conversion or one that
        would decode more than the per-instance limit (:class:`~pacs.errors.TooLarge`, refused
        before decoding) gives an unsendable :class:`Outgoing` with the reason.
        """
        if not accepted:
            return _unsendable(inst, "the peer accepted no context for its SOP class")
        stored = inst.transfer_syntax_uid
        allowed = accepted if lossy else ()
        if transcode.choose(stored, accepted, lossy=allowed) is None:  # whatever the image
            return _unsendable(inst, transcode.refusal(stored, accepted, lossy=allowed, image=None))
        try:
            with self.archive.open(inst) as fh:
                target = transcode.select(stored, accepted, fh, lossy=allowed)
                ds = transcode.read_as(fh, target, budget)  # as stored: parsed, not converted
        except (NotFound, OSError, transcode.CannotTranscode, TooLarge) as exc:
            return _unsendable(inst, str(exc))
        return Outgoing(inst, ds, target)


def proposals(
    instances: Sequence[StoredInstance], limit: int = 128, *, lossy: bool = False
) -> list[tuple[str, tuple[str, ...]]]:
    """(SOP class, transfer syntaxes) of each presentation context to propose to a C-MOVE
    destination: per SOP class, what the transcoder offers for each stored transfer syntax
    (:func:`transcode.offers`; lossy syntaxes when ``lossy``), each on its own context so that
    the peer can accept them one by one; at most ``limit`` (PS3.8 9.3.2.2: 128 contexts). The
    stored and uncompressed contexts of every SOP class come first, the compressed ones we could
    encode into after them, so that a long list cuts only those.
    """
    out: list[tuple[str, tuple[str, ...]]] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for compressed in (False, True):
        for inst in instances:
            for syntaxes in transcode.offers(inst.transfer_syntax_uid, lossy=lossy, compressed=compressed):
                if (inst.sop_class_uid, syntaxes) not in seen:
                    seen.add((inst.sop_class_uid, syntaxes))
                    out.append((inst.sop_class_uid, syntaxes))
                    if len(out) >= limit:
                        return out
    return out


def _unique_values(query: Query, keyword: str) -> list[str]:
    """The values a retrieve identifier gives for one unique key (single value or UID list)."""
    for cond in query.conditions:
        if cond.attribute.keyword != keyword:
            continue
        m = cond.matcher
        if isinstance(m, Equal):
            return [str(m.value)]
        if isinstance(m, AnyOf):
            return [str(v) for v in m.values]
        raise InvalidQuery(f"{keyword} must be a single value or a list of UIDs in a retrieve")
    return []


def _unsendable(inst: StoredInstance, why: str) -> Outgoing:
    log.warning("retrieve: cannot send sop=%s: %s", inst.sop_instance_uid, why)
    return Outgoing(inst, reason=why)


__all__ = ["Accepted", "Outgoing", "Retrieve", "Tally", "proposals"]
