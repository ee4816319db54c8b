"""The federation service: federated search, the WADO-RS proxy, imports and prefetch, audited.

Every cross-facility query and fetch is an audit row naming who asked, the patient identifiers
and the peer(s): ``reuse.query`` (a federated search: each peer's outcome), ``reuse.fetch`` (the
first proxied read of a study by a user, then once per 10 minutes), ``reuse.import``,
``reuse.prefetch`` (queued) and ``reuse.local`` (a peer asking us, beside the ``query.identifier``
row of the look-up itself).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from pacs.config import Settings
from pacs.errors import InvalidQuery, NotFound
from pacs.index import federation as sql
from pacs.index.database import Database
from pacs.model import Origin
from pacs.services.archive import Archive
from pacs.services.federation import matching as m
from pacs.services.federation.cache import DiskCache
from pacs.services.federation.importer import Importer
from pacs.services.federation.peers import Check, DimseClient, HttpPeer, make_peers
from pacs.services.federation.prefetch import PrefetchWorker, viewer_requests
from pacs.services.federation.proxy import Proxied, Proxy
from pacs.services.federation.search import SearchResult, fan_out, parse_tokens
from pacs.services.identifiers import Auditor, Identifiers

log = logging.getLogger("pacs.federation")
_UID_IN_PATH = "studies/"


class Federation:
    """Look-ups and fetches across facilities (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        archive: Archive,
        db: Database,
        identifiers: Identifiers,
        audit: Auditor | None,
        *,
        dimse: DimseClient | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.config = settings.federation
        self.db = db
        self.identifiers = identifiers
        self.audit = audit
        self.clock = clock
        n = len(settings.peers)
        # Hung peers hold a thread until the deadline: room for a few searches at once.
        self.pool = ThreadPoolExecutor(max_workers=max(8, 4 * n), thread_name_prefix="reuse-peer")
        self._verify = ThreadPoolExecutor(max_workers=8, thread_name_prefix="reuse-verify")
        self.peers = make_peers(settings.peers, dimse, self._verify)
        cache_dir = self.config.cache_dir
        if str(cache_dir) in ("", "."):
            cache_dir = settings.storage.path / "reuse-cache"
        self._cache_dir = Path(cache_dir)
        self._cache: DiskCache | None = None
        self._cache_lock = threading.Lock()
        self.importer = Importer(archive, db, self.peers, settings.dicom.ae_title, clock=clock)
        self.worker = PrefetchWorker(self, db, self.config, clock=clock)
        self._fetched: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    @property
    def cache(self) -> DiskCache:
        """The proxy cache (made on first use: a CLI command needs none)."""
        with self._cache_lock:
            if self._cache is None:
                self._cache = DiskCache(self._cache_dir, self.config.cache_mb << 20)
            return self._cache

    @property
    def proxy(self) -> Proxy:
        """The WADO-RS proxy over the cache."""
        return Proxy(self.peers, self.cache)

    def close(self) -> None:
        """Stop the prefetch threads, release connections."""
        self.worker.stop()
        for peer in self.peers.values():
            peer.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._verify.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ search

    def search(
        self,
        tokens: Sequence[str],
        origin: Origin,
        *,
        deadline: float | None = None,
        proxy_root: str = "",
        peers: Sequence[str] | None = None,
        audit: bool = True,
    ) -> SearchResult:
        """Every peer (or the named ones) asked for the identifiers' studies within the deadline
        (``[federation] deadline_seconds``, or less); merged, local and imported ones marked.
        ``proxy_root`` is our ``/api/reuse/peers`` URL for the RetrieveURLs."""
        limit = self.config.deadline_seconds
        wait = min(deadline, limit) if deadline and deadline > 0 else limit
        chosen = [p for n, p in self.peers.items() if peers is None or n in peers]

        def proxy_url(peer: str, uid: str) -> str | None:
            if not proxy_root or not isinstance(self.peers[peer], HttpPeer):
                return None
            return f"{proxy_root}/{peer}/dicom-web/studies/{uid}"

        result = fan_out(chosen, tokens, wait, self.pool, proxy_url)
        uids = [s["StudyInstanceUID"] for s in result.studies]
        with self.db.read() as conn:
            local = sql.local_studies(conn, uids)
            imported = sql.imported_among(conn, uids)
        for s in result.studies:
            uid = s["StudyInstanceUID"]
            s["local"] = uid in local and uid not in imported
            s["imported"] = imported[uid]["status"] if uid in imported else None
        if audit and self.audit is not None:
            self.audit.record(
                "reuse.query",
                origin,
                identifiers=list(tokens)[:10],
                peers=[
                    {k: p.as_dict()[k] for k in ("peer", "facility", "status", "found", "dropped", "ms")}
                    for p in result.peers
                ],
                studies=uids[:1000],
                outcome="0" if result.complete else "4",
            )
        log.info(
            "federated search: %d studies from %d peers in %.0f ms%s",
            len(result.studies),
            len(result.peers),
            result.ms,
            "" if result.complete else " (" + "; ".join(result.warnings()) + ")",
        )
        return result

    def local_studies(
        self, tokens: Sequence[str], origin: Origin, limit: int = 200, dicomweb_root: str = ""
    ) -> dict[str, Any]:
        """``/api/reuse/local``: our own studies (not those imported from elsewhere) of the patients
        the identifiers name, each as DICOM JSON with its patient's identifiers; for a peer."""
        parse_tokens(tokens)
        total, rows = self.identifiers.find_studies(origin, tokens=tokens, limit=limit)
        with self.db.read() as conn:
            imported = sql.imported_among(conn, [r["study_instance_uid"] for r in rows])
        rows = [r for r in rows if r["study_instance_uid"] not in imported]
        series, _ = self.identifiers.series_and_instances([r["id"] for r in rows])
        modalities: dict[int, list[str]] = {}
        for s in series:
            if s["modality"] and s["modality"] not in modalities.setdefault(s["study_fk"], []):
                modalities[s["study_fk"]].append(s["modality"])
        if self.audit is not None:
            self.audit.record(
                "reuse.local",
                origin,
                identifiers=list(tokens)[:10],
                studies=[r["study_instance_uid"] for r in rows][:1000],
            )
        return {
            "facility": self.settings.appraisal.facility_code,
            "total": total - len(imported),
            "studies": [
                {
                    "dicom": study_json(r, modalities.get(r["id"], []), dicomweb_root),
                    "identifiers": [
                        {"system": i.system, "value": i.value, "full_value": i.full_value}
                        for i in r["identifiers"]
                    ],
                }
                for r in rows
            ],
        }

    # ------------------------------------------------------------------ proxy, import

    def proxy_get(
        self, name: str, path: str, params: Sequence[tuple[str, str]], accept: str, origin: Origin
    ) -> Proxied:
        """A peer's DICOMweb answer through the cache; the first read of a study audited."""
        got = self.proxy.get(name, path, params, accept)
        uid = path.split("/")[1] if path.startswith(_UID_IN_PATH) else ""
        if not uid:
            uid = next((v for k, v in params if k in ("StudyInstanceUID", "0020000D")), "")
        key = (origin.user or origin.address, name, uid)
        now = time.monotonic()
        if uid and now - self._fetched.get(key, -1e9) > 600:
            self._fetched[key] = now
            if len(self._fetched) > 4096:
                self._fetched.popitem(last=False)
            if self.audit is not None:
                peer = self.peers[name].settings
                self.audit.record(
                    "reuse.fetch",
                    origin,
                    study_instance_uid=uid,
                    peer=name,
                    facility=peer.facility_code,
                    path=path[:200],
                    cached=got.cached,
                )
        return got

    def proxy_json(self, name: str, path: str, params: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """A DICOM JSON answer through the proxy (prefetch lists series and instances)."""
        import json

        got = self.proxy.get(name, path, params, "application/dicom+json, application/json")
        body = b"".join(got.body)
        data = json.loads(body) if body else []
        return data if isinstance(data, list) else []

    def import_study(self, name: str, study_uid: str, origin: Origin, identifier: str = "") -> dict[str, Any]:
        """Import a peer's study into the archive, with provenance; audited."""
        row = self.importer.import_study(name, study_uid, origin, identifier)
        if self.audit is not None:
            self.audit.record(
                "reuse.import",
                origin,
                study_instance_uid=study_uid,
                peer=name,
                facility=row.get("facility_code"),
                identifiers=[identifier] if identifier else [],
                status=row["status"],
                instances=row["instances"],
                outcome="0" if row["status"] == sql.STATE_DONE else "8",
            )
        return row

    def imported(self, study_uids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Provenance of those of the studies that came from another facility."""
        with self.db.read() as conn:
            return sql.imported_among(conn, study_uids)

    def imports(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """The newest imports."""
        with self.db.read() as conn:
            return sql.imports(conn, limit, offset)

    # ------------------------------------------------------------------ prefetch

    def prefetch(
        self,
        tokens: Sequence[str],
        origin: Origin,
        *,
        study_uid: str | None = None,
        peer: str | None = None,
    ) -> int:
        """Queue a prefetch of the identifiers' prior studies (or one study); the job id."""
        parse_tokens(tokens)
        if peer is not None and peer not in self.peers:
            raise InvalidQuery(f"no peer named {peer[:64]!r} in [[peers]]")
        with self.db.write() as conn:
            job = sql.job_add(
                conn,
                kind="prefetch",
                identifiers=list(tokens),
                trigger="api",
                requested_by=origin.user or origin.address or origin.protocol,
                now=self.clock(),
                study_uid=study_uid,
                peer=peer,
            )
        if self.audit is not None:
            self.audit.record(
                "reuse.prefetch",
                origin,
                identifiers=list(tokens)[:10],
                job=job,
                peer=peer,
                study_instance_uid=study_uid,
                trigger="api",
            )
        self.worker.wake()
        return job

    def order_created(self, conn: Connection, order: dict[str, Any], tokens: Sequence[str]) -> None:
        """Orders hook (in the order's transaction): queue a prefetch of the patient's priors by
        the identifiers that can leave the facility (those with a system)."""
        usable = [t for t in tokens if not t.startswith("|")][:10]
        if not self.config.prefetch_on_order or not usable or not self.peers:
            return
        sql.job_add(
            conn,
            kind="prefetch",
            identifiers=usable,
            trigger="order",
            requested_by="orders",
            now=self.clock(),
            order_key=order.get("order_key"),
        )
        if self.audit is not None:
            self.audit.record(
                "reuse.prefetch",
                Origin(protocol="internal", user="orders"),
                identifiers=usable,
                trigger="order",
                order=order.get("order_key"),
            )
        self.worker.wake()

    def run_prefetch(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one prefetch job: search, then fetch what the viewer needs of the newest priors."""
        origin = Origin(protocol="internal", user=f"prefetch:{job['requested_by']}"[:128])
        result = self.search(job["identifiers"], origin, peers=[job["peer"]] if job["peer"] else None)
        wanted: list[tuple[str, str]] = []  # (peer with DICOMweb, study)
        for st in result.studies:
            uid = st["StudyInstanceUID"]
            web = [x["peer"] for x in st["sources"] if isinstance(self.peers[x["peer"]], HttpPeer)]
            if st["local"] or st["imported"] or not web:
                continue
            if job["study_instance_uid"] is None or uid == job["study_instance_uid"]:
                wanted.append((web[0], uid))
        wanted = wanted[: max(1, self.config.prefetch_max_studies)]
        requests = size = missing = 0
        done: list[str] = []
        for peer, uid in wanted:
            for path, params, accept in viewer_requests(self, peer, uid):
                try:
                    size += self.proxy.drain(peer, path, params, accept)
                    requests += 1
                except (NotFound, InvalidQuery):  # e.g. no thumbnails at Orthanc: the viewer copes
                    missing += 1
            done.append(uid)
            if self.audit is not None:
                self.audit.record(
                    "reuse.fetch",
                    origin,
                    study_instance_uid=uid,
                    peer=peer,
                    identifiers=job["identifiers"],
                    prefetch=job["id"],
                )
        answered = [p.peer for p in result.peers if p.status == "ok"]
        if not answered and result.warnings():
            raise RuntimeError("no peer answered: " + "; ".join(result.warnings()))  # tried again later
        return {
            "studies": done,
            "requests": requests,
            "bytes": size,
            "answered": answered,
            "errors": result.warnings(),
        }

    def jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest prefetch jobs."""
        with self.db.read() as conn:
            return sql.jobs(conn, limit)

    # ------------------------------------------------------------------ peers

    def check_peers(self) -> list[Check]:
        """``pacs peer check``: every peer at once, each within its timeout and the deadline."""
        limit = self.config.deadline_seconds
        return list(
            self.pool.map(lambda p: p.check(min(limit, p.settings.timeout_seconds)), self.peers.values())
        )


def study_json(r: dict[str, Any], modalities: Sequence[str], dicomweb_root: str = "") -> dict[str, Any]:
    """A study row of :func:`pacs.index.identifiers.studies_matching` as DICOM JSON (PS3.18 F),
    with its RetrieveURL under ``dicomweb_root`` when given."""
    ds: dict[str, Any] = {}

    def put(tag: str, vr: str, value: Any) -> None:
        if value not in (None, "", []):
            ds[tag] = {"vr": vr, "Value": value if isinstance(value, list) else [value]}

    put("00080020", "DA", r.get("study_date"))
    put("00080030", "TM", r.get("study_time"))
    put("00080050", "SH", r.get("accession_number"))
    put("00080061", "CS", list(modalities))
    put("00081030", "LO", r.get("study_description"))
    if r.get("patient_name"):
        ds["00100010"] = {"vr": "PN", "Value": [{"Alphabetic": r["patient_name"]}]}
    put(m.PATIENT_ID, "LO", r.get("patient_id"))
    put(m.ISSUER, "LO", r.get("issuer_of_patient_id"))
    put("00100030", "DA", r.get("patient_birth_date"))
    put("00100040", "CS", r.get("patient_sex"))
    put(m.STUDY_UID, "UI", r.get("study_instance_uid"))
    put("00201206", "IS", r.get("number_of_study_related_series"))
    put("00201208", "IS", r.get("number_of_study_related_instances"))
    if dicomweb_root:
        put(m.RETRIEVE_URL, "UR", f"{dicomweb_root}/studies/{r['study_instance_uid']}")
    return ds
