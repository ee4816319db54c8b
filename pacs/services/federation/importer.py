"""Import a peer's study into the local archive, with its provenance.

The provenance row (``reuse_imports``: peer, facility, the peer's URL, who, when) is written
before the first instance arrives, so every store transaction sees that the study comes from
elsewhere: the appraisal lines leave it out (no local appraisal record for an exam done at
another facility) and it is never linked to a local order. Then the instances come:

* WADO-RS (``pacs`` and DICOMweb peers): ``GET {root}/studies/{uid}`` as
  ``multipart/related; type="application/dicom"`` streamed part by part into
  :meth:`Archive.store` (the one store path: same checks, same durability);
* C-MOVE (DIMSE peers): the peer sends the study to our AE title; our DICOM listener stores it.

A study acquired here is not imported (it is ours already); one imported before is not fetched
again; a failed import can be started again.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, BinaryIO

from pacs.dicom.text import is_valid_uid
from pacs.errors import DuplicateInstance, InvalidQuery, NotFound, PacsError
from pacs.index import federation as sql
from pacs.index.database import Database
from pacs.model import Origin
from pacs.services.archive import Archive
from pacs.services.federation.peers import DimsePeer, HttpPeer, Peer, PeerError, stream

log = logging.getLogger("pacs.federation")

#: The Origin.protocol of instances stored by an import (the appraisal hook leaves them out).
REUSE = "reuse"
_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_ACCEPT_PLAIN = 'multipart/related; type="application/dicom"'


class AlreadyLocal(DuplicateInstance):
    """The study was acquired here: nothing to import."""


class Importer:
    """Peer studies into the archive through its store path, with provenance."""

    def __init__(
        self,
        archive: Archive,
        db: Database,
        peers: Mapping[str, Peer],
        our_ae_title: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.archive = archive
        self.db = db
        self.peers = peers
        self.our_ae_title = our_ae_title
        self.clock = clock

    def import_study(self, name: str, study_uid: str, origin: Origin, identifier: str = "") -> dict[str, Any]:
        """Import one study of peer ``name``; the provenance row as it ends. Raises NotFound,
        InvalidQuery, :class:`AlreadyLocal`."""
        peer = self.peers.get(name)
        if peer is None:
            raise NotFound(f"no peer named {name[:64]!r} in [[peers]]")
        if not is_valid_uid(study_uid):
            raise InvalidQuery(f"{study_uid[:80]!r} is not a valid Study Instance UID")
        with self.db.read() as conn:
            known = sql.import_get(conn, study_uid)
            local = bool(sql.local_studies(conn, [study_uid]))
        if local and known is None:
            raise AlreadyLocal(f"study {study_uid} is in this archive already (acquired here)")
        if known is not None and known["status"] != sql.STATE_FAILED:
            return known
        root = peer.dicomweb_root
        values = {
            "study_instance_uid": study_uid,
            "peer": peer.name,
            "facility_code": peer.settings.facility_code or None,
            "source_url": f"{root}/studies/{study_uid}" if root else f"dicom://{peer.settings.ae_title}",
            "method": "wado-rs" if root else "c-move",
            "identifier": identifier[:330] or None,
            "imported_by": (origin.user or origin.calling_ae or origin.protocol)[:128],
            "started_at": self.clock(),
        }
        with self.db.write() as conn:
            if not sql.import_start(conn, values):
                found = sql.import_get(conn, study_uid)
                assert found is not None
                return found
        status, count, detail = sql.STATE_DONE, 0, ""
        try:
            if isinstance(peer, HttpPeer) and root:
                count, detail = self._wado(peer, study_uid, origin)
            elif isinstance(peer, DimsePeer):
                count, detail = self._move(peer, study_uid)
            if count == 0:
                status, detail = sql.STATE_FAILED, detail or "the peer sent no instance"
        except (PeerError, PacsError, OSError) as exc:
            status, detail = sql.STATE_FAILED, str(exc)
            count = self._count(study_uid)
        with self.db.write() as conn:
            sql.import_finish(conn, study_uid, status, count, detail, self.clock())
            row = sql.import_get(conn, study_uid)
        assert row is not None
        log.info(
            "import study=%s from peer=%s: %s, %d instance(s) %s", study_uid, name, status, count, detail
        )
        return row

    def _wado(self, peer: HttpPeer, study_uid: str, origin: Origin) -> tuple[int, str]:
        res = peer.open(f"studies/{study_uid}", [], _ACCEPT, peer.settings.timeout_seconds)
        if res.status_code in (400, 406):  # a peer that knows no transfer-syntax=*: as it stores
            res.close()
            res = peer.open(f"studies/{study_uid}", [], _ACCEPT_PLAIN, peer.settings.timeout_seconds)
        if res.status_code != 200:
            res.close()
            raise PeerError(peer.name, f"HTTP {res.status_code} retrieving the study", status=res.status_code)
        boundary = _boundary(res.headers.get("content-type", ""))
        stored, refused = 0, []
        store_origin = Origin(address=origin.address, user=origin.user, protocol=REUSE)
        for part in parts(stream(res, peer.name), boundary):
            try:
                self.archive.store(part, store_origin)
                stored += 1
            except PacsError as exc:
                refused.append(str(exc)[:200])
            finally:
                part.close()
        detail = f"{len(refused)} refused: {refused[0]}" if refused else ""
        return stored, detail

    def _move(self, peer: DimsePeer, study_uid: str) -> tuple[int, str]:
        completed, failed = peer.move(study_uid, self.our_ae_title, max(60.0, peer.settings.timeout_seconds))
        count = self._count(study_uid)
        return count, f"C-MOVE: {completed} sent, {failed} failed" if failed else ""

    def _count(self, study_uid: str) -> int:
        try:
            with self.db.read() as conn:
                return sql.study_facts(conn, study_uid)[0]
        except PacsError:
            return 0


def _boundary(content_type: str) -> str:
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        raise InvalidQuery(f"the peer's answer has no multipart boundary ({content_type[:80]})")
    return found.group(1)


def parts(chunks: Iterator[bytes], boundary: str) -> Iterator[BinaryIO]:
    """The bodies of a ``multipart/related`` stream (RFC 2046), each in a temporary file (spooled
    in memory up to 8 MiB), as the stream arrives."""
    delim = b"\r\n--" + boundary.encode("latin-1")
    keep = len(delim) + 2
    buf = b"\r\n"  # the first delimiter may open the body without a line break before it
    part: Any = None  # the part being written (None: between parts)
    in_headers = False
    for chunk in chunks:
        buf += chunk
        while True:
            if part is None:
                at = buf.find(delim)
                if at < 0:
                    buf = buf[-keep:]
                    break
                rest = buf[at + len(delim) :]
                if len(rest) < 2:
                    break
                if rest[:2] == b"--":
                    return
                buf, in_headers = rest, True
                part = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115 - yielded
            if in_headers:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                buf, in_headers = buf[end + 4 :], False
            at = buf.find(delim)
            if at < 0:
                if len(buf) > keep:
                    part.write(buf[:-keep])
                    buf = buf[-keep:]
                break
            part.write(buf[:at])
            part.seek(0)
            yield part
            part = None
            buf = buf[at:]
