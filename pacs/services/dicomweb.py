"""DICOMweb use cases over the archive: search, retrieve (instances, metadata, frames, bulk data), store.

Method names follow the DICOMweb transactions (PS3.18 10.4 Retrieve, 10.5 Store, 10.6 Search).
Nothing here knows HTTP: the web edge negotiates media types and maps errors to statuses.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset

from pacs import limits
from pacs.dicom import pixels
from pacs.dicom.json import ResultPlan, dataset_to_json, tag_hex, text_element
from pacs.errors import (
    DuplicateInstance,
    InvalidInstance,
    NotAcceptable,
    NotFound,
    PacsError,
    StorageUnavailable,
    TooLarge,
)
from pacs.limits import DecodeBudget
from pacs.model import Origin, StoredInstance, StoreResult
from pacs.query import Query
from pacs.services import transcode
from pacs.services.archive import Archive

log = logging.getLogger("pacs.dicomweb")

ANY = transcode.ANY
_CHUNK = 256 * 1024
#: Binary values up to this many bytes are sent inline in metadata (PS3.18 F.2.7).
INLINE_BINARY_LIMIT = 1024
_BASE = "@@pacs-instance-url-7f3a@@"  # stands for the instance URL in cached metadata
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}


@dataclass(frozen=True)
class Frames:
    """Frames of one instance in one transfer syntax: ``frames`` yields them one at a time, in the
    order of ``numbers`` (each requested frame once)."""

    transfer_syntax_uid: str
    numbers: list[int]
    frames: Iterator[bytes]


@dataclass(frozen=True)
class StowOutcome:
    """What happened to one part of a STOW-RS request: ``result`` or ``error``."""

    sop_class_uid: str
    sop_instance_uid: str
    result: StoreResult | None = None
    error: PacsError | None = None
    mismatch: bool = False  # the instance belongs to another study than the request path


class DicomWeb:
    """Search, retrieve and store through the :class:`Archive`."""

    def __init__(self, archive: Archive, cache_dir: Path) -> None:
        self.archive = archive
        self.cache_dir = cache_dir / "metadata"

    # ------------------------------------------------------------------ search (10.6)

    def search_text(
        self, query: Query, retrieve_url: Callable[[dict[str, Any]], str | None]
    ) -> tuple[str, int, bool, list[str]]:
        """Run a QIDO-RS query: the DICOM JSON text of the response (RetrieveURL (0008,1190) where
        given), the number of matches in it, whether more matches lie beyond ``limit``, and the
        studies the matches belong to (for the audit trail: which patients a search showed)."""
        more = False
        if query.limit is not None:
            rows = self.archive.search(query.with_limit(query.limit + 1, query.offset))
            more = len(rows) > query.limit
            rows = rows[: query.limit]
        else:
            rows = self.archive.search(query)
        plan = ResultPlan(query.return_keys, ("00081190",))
        parts = []
        studies: dict[str, None] = {}
        for row in rows:
            url = retrieve_url(row)
            parts.append(plan.text(row, {"00081190": text_element("UR", url)} if url else None))
            study = row.get("StudyInstanceUID")
            if study:
                studies[str(study)] = None
        return "[" + ",".join(parts) + "]", len(parts), more, list(studies)

    # ------------------------------------------------------------------ retrieve (10.4)

    def instances(
        self, study: str, series: str | None = None, sop: str | None = None
    ) -> list[StoredInstance]:
        """The stored instances addressed by a resource path; raises :class:`NotFound`."""
        return self.archive.instances(study, series, sop)

    def check_acceptable(
        self, instances: list[StoredInstance], syntaxes: Collection[str], budget: DecodeBudget | None = None
    ) -> list[str]:
        """The transfer syntax each instance is sent in (:meth:`retrieve_syntax`), in order; raises
        :class:`NotAcceptable` unless every instance can be sent in one of ``syntaxes``.

        With a ``budget``, the decoding the conversions will do is booked in it first (one header
        read per instance to convert), so that a request over a decoding limit is refused
        (:class:`~pacs.errors.TooLarge`) before its answer starts, as is an image the requested
        codec cannot carry (:class:`transcode.CannotTranscode`, a :class:`NotAcceptable`).
        """
        return [self.retrieve_syntax(inst, syntaxes, budget) for inst in instances]

    def retrieve_syntax(
        self, inst: StoredInstance, syntaxes: Collection[str], budget: DecodeBudget | None = None
    ) -> str:
        """The transfer syntax one instance is sent in (:func:`transcode.select`: every syntax the
        client named is one it asked for, lossy ones included, PS3.18 8.7.3.5); raises
        :class:`NotAcceptable` when none of ``syntaxes`` can carry it. The stored file is read
        (its header) only when the choice depends on the image or ``budget`` books a decoding."""
        stored = inst.transfer_syntax_uid
        ts = transcode.choose(stored, syntaxes, lossy=syntaxes)
        if ts is None:
            raise NotAcceptable(
                f"instance {inst.sop_instance_uid}: {transcode.refusal(stored, syntaxes, lossy=syntaxes)}"
            )
        wants = transcode.wants_image(stored, syntaxes)
        if not wants and not (budget is not None and transcode.needs_decoding(stored, ts)):
            return ts
        try:
            with self.archive.open(inst) as fh:
                if wants:
                    ts = transcode.select(stored, syntaxes, fh, lossy=syntaxes)
                if budget is not None and transcode.needs_decoding(stored, ts):
                    transcode.reserve(fh, ts, budget)
        except transcode.CannotTranscode as exc:
            raise transcode.CannotTranscode(f"instance {inst.sop_instance_uid}: {exc}") from exc
        return ts

    def retrieve_instance_bytes(
        self,
        inst: StoredInstance,
        syntaxes: Collection[str],
        budget: DecodeBudget | None = None,
        target: str | None = None,
    ) -> Iterator[bytes]:
        """The Part-10 bytes of one instance in ``target`` (else :meth:`retrieve_syntax`): streamed
        as stored (never parsed) when accepted, else converted by the transcoder, decoded pixel
        data one frame at a time (:func:`transcode.stream_as`; :class:`transcode.CannotTranscode`
        says why not)."""
        ts = target if target is not None else self.retrieve_syntax(inst, syntaxes)
        with self.archive.open(inst) as fh:
            if ts == inst.transfer_syntax_uid:
                while chunk := fh.read(_CHUNK):
                    yield chunk
                return
            try:
                yield from transcode.stream_as(fh, ts, budget)
            except transcode.CannotTranscode as exc:
                raise transcode.CannotTranscode(f"instance {inst.sop_instance_uid}: {exc}") from exc

    def retrieve_metadata(
        self, instances: list[StoredInstance], base_url: Callable[[StoredInstance], str]
    ) -> str:
        """The metadata of instances as a DICOM JSON array (text), BulkDataURIs under ``base_url``.

        Each instance's JSON is cached on disk by the SHA-256 of its stored bytes (content
        addressed, so never stale), which makes repeated series metadata requests cheap.
        """
        parts = []
        for inst in instances:
            text = self._metadata_text(inst)
            parts.append(text.replace(_BASE, base_url(inst)))
        return "[" + ",".join(parts) + "]"

    def _metadata_text(self, inst: StoredInstance) -> str:
        path = self.cache_dir / inst.sha256[:2] / f"{inst.sha256}.json"
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            pass
        with self.archive.open(inst) as fh:
            ds, has_pixels = _header(fh)
        obj = dataset_to_json(ds, bulk_uri=lambda p: f"{_BASE}/bulkdata/{p}", threshold=INLINE_BINARY_LIMIT)
        if has_pixels:
            obj["7FE00010"] = {
                "vr": "OB" if ds.file_meta.TransferSyntaxUID.is_compressed else "OW",
                "BulkDataURI": f"{_BASE}/bulkdata/7FE00010",
            }
        obj["00083002"] = {"vr": "UI", "Value": [inst.transfer_syntax_uid]}  # AvailableTransferSyntaxUID
        text = json.dumps(dict(sorted(obj.items())), ensure_ascii=False, separators=(",", ":"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot cache metadata of %s: %s", inst.sop_instance_uid, exc)
        return text

    def retrieve_frames(
        self,
        inst: StoredInstance,
        numbers: list[int],
        syntaxes: Collection[str],
        budget: DecodeBudget | None = None,
        lossy: Collection[str] = (),
    ) -> Frames:
        """Frames (1-based numbers) as stored (``*`` or the stored syntax accepted), decoded to
        native, or encoded into an accepted compressed syntax (lossy ones only when in ``lossy``:
        named by the client, :func:`transcode.choose_frames`).

        A frame listed more than once is sent once, where it is first listed. What can be
        checked is checked here (frame numbers, the transfer syntax, the decoding booked in
        ``budget``, the first frame read, decoded or encoded); the others are read, or
        converted, one at a time as :attr:`Frames.frames` is iterated, so a long list costs one
        frame of memory.
        """
        numbers = list(dict.fromkeys(numbers))
        with self.archive.open(inst) as fh:
            info = pixels.locate(fh)
        pixels.check_frame_numbers(info, numbers)
        stored = info.transfer_syntax_uid
        image = transcode.describe(info)
        ts = transcode.choose_frames(stored, syntaxes, lossy=lossy, image=image)
        if ts is None:
            raise NotAcceptable(
                f"frames of {inst.sop_instance_uid} are stored as {stored} and cannot be sent as "
                f"{', '.join(sorted(syntaxes))}"
                + "".join(f"; {why}" for t in sorted(syntaxes) if (why := transcode.why_not_image(image, t)))
            )
        convert = ts != stored and (info.encapsulated or ts != pixels.EXPLICIT_LE)
        budget = budget if budget is not None else DecodeBudget()
        if convert:
            pixels.reserve(info, len(numbers), budget)
        frames = self._frames(inst, info, numbers, ts if convert else None, budget)
        first = list(itertools.islice(frames, 1))  # its errors (a lying codestream...) are still an answer
        return Frames(ts, numbers, itertools.chain(first, frames))

    def _frames(
        self,
        inst: StoredInstance,
        info: pixels.PixelInfo,
        numbers: list[int],
        target: str | None,
        budget: DecodeBudget,
    ) -> Iterator[bytes]:
        """Each frame as stored (``target`` None), decoded to native, or encoded into ``target``."""
        with self.archive.open(inst) as fh:
            for n in numbers:
                if target is None:
                    yield pixels.raw_frame(fh, info, n)
                elif target in pixels.NATIVE_SYNTAXES:
                    yield pixels.native_frame_bytes(pixels.decode_frame(fh, info, n, budget))
                else:
                    yield transcode.encode_frame(fh, info, n, target, budget)

    def retrieve_bulkdata(self, inst: StoredInstance, tag_path: list[str]) -> bytes:
        """The value of one binary element addressed by a tag path (``TAG[/ITEM/TAG...]``)."""
        with self.archive.open(inst) as fh:
            ds, _ = _header(fh)
        node: Any = ds
        try:
            for i, part in enumerate(tag_path):
                if i % 2 == 0:
                    node = node[int(part, 16)]
                    if i < len(tag_path) - 1:
                        node = node.value
                else:
                    node = node[int(part)]
        except (KeyError, IndexError, ValueError, TypeError):
            raise NotFound(f"no bulk data at {'/'.join(tag_path)}") from None
        value = getattr(node, "value", None)
        if not isinstance(value, bytes | bytearray):
            raise NotFound(f"{'/'.join(tag_path)} is not a binary value")
        return bytes(value)

    # ------------------------------------------------------------------ store (10.5)

    def store_instances(
        self, parts: Iterator[BinaryIO], study: str | None, origin: Origin
    ) -> list[StowOutcome]:
        """Store each Part-10 part through the archive (the C-STORE path); one outcome per part."""
        outcomes: list[StowOutcome] = []
        for part in parts:
            outcomes.append(self._store_one(part, study, origin))
        return outcomes

    def _store_one(self, part: BinaryIO, study: str | None, origin: Origin) -> StowOutcome:
        sop_class = sop_instance = ""
        try:
            part = _as_part10(part)
            _check_deflated(part)
            head = pydicom.dcmread(
                part,
                stop_before_pixels=True,
                specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
            )
            sop_class = str(head.get("SOPClassUID", "") or "")
            sop_instance = str(head.get("SOPInstanceUID", "") or "")
            if study and str(head.get("StudyInstanceUID", "") or "") != study:
                return StowOutcome(
                    sop_class,
                    sop_instance,
                    error=InvalidInstance(f"the instance belongs to study {head.get('StudyInstanceUID')}"),
                    mismatch=True,
                )
        except Exception as exc:
            return StowOutcome(
                sop_class, sop_instance, error=InvalidInstance(f"not a DICOM Part-10 object: {exc}")
            )
        try:
            return StowOutcome(sop_class, sop_instance, result=self.archive.store(part, origin))
        except (InvalidInstance, DuplicateInstance, StorageUnavailable, TooLarge) as exc:
            return StowOutcome(sop_class, sop_instance, error=exc)


def _check_deflated(part: BinaryIO) -> None:
    """Refuse a deflated dataset that would inflate beyond the limit, before pydicom inflates it."""
    part.seek(0)
    pydicom.filereader.read_preamble(part, force=False)  # type: ignore[arg-type]
    meta = pydicom.filereader._read_file_meta_info(part)  # type: ignore[arg-type]
    if str(meta.get("TransferSyntaxUID", "")) == limits.DEFLATED:
        limits.check_deflated(part, part.tell())
    part.seek(0)


def _as_part10(part: BinaryIO) -> BinaryIO:
    """A part as a PS3.10 stream. Clients such as dicomweb-client (pydicom 3 ``dcmwrite``) send
    file meta without the 128-byte preamble, or a bare dataset; both are accepted and completed.
    """
    part.seek(0)
    head = part.read(132)
    part.seek(0)
    if head[128:132] == b"DICM":
        return part
    if head[:2] == b"\x02\x00":  # file meta without preamble
        return io.BytesIO(b"\x00" * 128 + b"DICM" + part.read())
    ds = pydicom.dcmread(part, force=True)
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        raise InvalidInstance("the part is neither a DICOM file nor a dataset with SOP UIDs")
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return buf


def _header(fh: BinaryIO) -> tuple[Dataset, bool]:
    """The dataset up to the pixel data, and whether pixel data follows."""
    fh.seek(0)
    try:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
    except Exception as exc:
        raise InvalidInstance(f"unparsable stored instance: {exc}") from exc
    ts = ds.file_meta.get("TransferSyntaxUID")
    head = fh.read(4)
    has_pixels = False
    if len(head) == 4:
        little = ts is None or pydicom.uid.UID(ts).is_little_endian
        group = int.from_bytes(head[:2], "little" if little else "big")
        element = int.from_bytes(head[2:4], "little" if little else "big")
        has_pixels = (group, element) in _PIXEL_TAGS
    return ds, has_pixels


def instance_key(inst: StoredInstance, *parts: object) -> str:
    """A content-addressed cache key for a derived representation of an instance."""
    return hashlib.sha256("|".join([inst.sha256, *map(str, parts)]).encode()).hexdigest()


__all__ = ["ANY", "DicomWeb", "Frames", "StowOutcome", "instance_key", "tag_hex"]
