"""The peers of ``[[peers]]``: how each kind is asked for a patient's studies, read through and
checked (``pacs peer check``).

* ``pacs``: ``GET {url}/api/reuse/local?identifier=system|value`` (the peer matches identifiers
  itself and returns each study with its patient's identifiers; we check them again), WADO-RS
  under ``{url}/dicom-web``.
* ``dicomweb`` (Orthanc's plugin, any QIDO-RS server): QIDO-RS with the keys of the peer's
  ``[[peers.match]]`` rules (:mod:`.matching`), answers checked study by study; WADO-RS under
  ``{url}``.
* ``dimse``: C-FIND (study level) with the same rules, C-MOVE to us for imports; the association
  itself is made by the DIMSE edge (:class:`DimseClient`, implemented in :mod:`pacs.scp`).

HTTP goes through one ``httpx.Client`` per peer (kept-alive connections, the peer's TLS and
credentials); credentials are sent, never logged. Every call takes a timeout: a peer that does
not answer costs at most that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

import pacs
from pacs.config import PeerMatch, PeerSettings
from pacs.services.federation import matching as m

log = logging.getLogger("pacs.federation")

DICOM_JSON = "application/dicom+json"


class PeerError(Exception):
    """A peer could not answer: unreachable, refused, timed out, or answered nonsense."""

    def __init__(self, peer: str, reason: str, *, timeout: bool = False, status: int = 0) -> None:
        super().__init__(f"peer {peer}: {reason}")
        self.peer = peer
        self.reason = reason
        self.timeout = timeout
        self.status = status


@dataclass
class Found:
    """What one peer answered for one identifier: the studies kept and how many were dropped."""

    studies: list[dict[str, Any]] = field(default_factory=list)  # DICOM JSON study objects
    dropped: int = 0
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Check:
    """``pacs peer check``: reachable or not, in how long, and what the peer can do."""

    peer: str
    kind: str
    reachable: bool
    ms: float
    capabilities: tuple[str, ...] = ()
    detail: str = ""


class DimseClient(Protocol):
    """C-ECHO, C-FIND and C-MOVE as a service user (``pacs.scp.federation`` implements it)."""

    def echo(self, peer: PeerSettings, timeout: float) -> None:
        """Verify the association (raises :class:`PeerError`)."""

    def find(
        self, peer: PeerSettings, level: str, keys: dict[str, str], fields: Sequence[str], timeout: float
    ) -> list[dict[str, Any]]:
        """C-FIND at ``level``; each match as DICOM JSON (raises :class:`PeerError`)."""

    def move(self, peer: PeerSettings, study_uid: str, destination: str, timeout: float) -> tuple[int, int]:
        """C-MOVE a study to ``destination``; (completed, failed) sub-operations."""


class Peer:
    """A configured peer; subclasses per kind."""

    capabilities: tuple[str, ...] = ()

    def __init__(self, settings: PeerSettings) -> None:
        self.settings = settings
        self.name = settings.name

    def find_studies(self, key: m.Key, token: str, timeout: float) -> Found:
        """The peer's studies of the person the identifier names, checked (raises PeerError)."""
        raise NotImplementedError

    def check(self, timeout: float) -> Check:
        """Reachability and capabilities, within ``timeout`` seconds."""
        raise NotImplementedError

    @property
    def dicomweb_root(self) -> str | None:
        """The WADO-RS root (None: no DICOMweb, e.g. a DIMSE peer)."""
        return None

    def close(self) -> None:
        """Release connections."""


class HttpPeer(Peer):
    """A peer over HTTP (``pacs`` or plain DICOMweb): one client with its TLS and credentials."""

    def __init__(self, settings: PeerSettings) -> None:
        super().__init__(settings)
        # httpx logs every request line at INFO: the URL carries patient identifiers.
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
        verify: Any = settings.tls_verify
        if settings.tls_verify and str(settings.tls_ca) not in ("", "."):
            verify = str(settings.tls_ca)
        headers = {"User-Agent": f"pacs/{getattr(pacs, '__version__', '0')} federation"}
        auth: httpx.Auth | None = None
        if settings.auth == "bearer":
            headers["Authorization"] = f"Bearer {settings.secret}"
        elif settings.auth == "basic":
            auth = httpx.BasicAuth(settings.username, settings.secret)
        self.http = httpx.Client(
            verify=verify,
            auth=auth,
            headers=headers,
            timeout=httpx.Timeout(settings.timeout_seconds),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            follow_redirects=False,
        )
        self.base = settings.url.rstrip("/")

    def close(self) -> None:
        self.http.close()

    def get(self, url: str, params: Any, accept: str, timeout: float) -> httpx.Response:
        """A GET read whole (raises :class:`PeerError` on failure or a status >= 400)."""
        try:
            res = self.http.get(url, params=params, headers={"Accept": accept}, timeout=_timeout(timeout))
        except httpx.TimeoutException as exc:
            raise PeerError(self.name, f"no answer within {timeout * 1000:.0f} ms", timeout=True) from exc
        except httpx.HTTPError as exc:
            raise PeerError(self.name, _reason(exc)) from exc
        if res.status_code >= 400:
            raise PeerError(self.name, f"HTTP {res.status_code}", status=res.status_code)
        return res

    def open(
        self, path: str, params: Sequence[tuple[str, str]], accept: str, timeout: float
    ) -> httpx.Response:
        """A streamed GET under the WADO-RS root (the caller closes it); raises PeerError."""
        root = self.dicomweb_root
        assert root is not None
        req = self.http.build_request(
            "GET",
            f"{root}/{path}",
            params=list(params),
            headers={"Accept": accept},
            timeout=_timeout(timeout),
        )
        try:
            res = self.http.send(req, stream=True)
        except httpx.TimeoutException as exc:
            raise PeerError(self.name, f"no answer within {timeout * 1000:.0f} ms", timeout=True) from exc
        except httpx.HTTPError as exc:
            raise PeerError(self.name, _reason(exc)) from exc
        return res

    def _json(self, res: httpx.Response) -> Any:
        if res.status_code == 204 or not res.content:
            return []
        try:
            return res.json()
        except ValueError as exc:
            raise PeerError(self.name, "the answer is not JSON") from exc


class PacsPeer(HttpPeer):
    """Another ``pacs``: it matches identifiers itself (``/api/reuse/local``)."""

    capabilities = ("search", "wado-rs", "import")

    @property
    def dicomweb_root(self) -> str | None:
        return f"{self.base}/dicom-web"

    def find_studies(self, key: m.Key, token: str, timeout: float) -> Found:
        res = self.get(f"{self.base}/api/reuse/local", {"identifier": token}, "application/json", timeout)
        body = self._json(res)
        if not isinstance(body, dict) or not isinstance(body.get("studies"), list):
            raise PeerError(self.name, "the answer has no studies list")
        out = Found()
        for study in body["studies"]:
            if not isinstance(study, dict) or not isinstance(study.get("dicom"), dict):
                continue
            verdict = m.check_pacs_study(study, key)
            if verdict.keep:
                out.studies.append(study["dicom"])
            else:
                out.dropped += 1
                out.reasons.append(verdict.reason)
        return out

    def check(self, timeout: float) -> Check:
        start = time.perf_counter()
        try:
            res = self.get(
                f"{self.base}/api/reuse/local",
                {"identifier": "urn:vn:cccd|000000000000"},
                "application/json",
                timeout,
            )
            self._json(res)
        except PeerError as exc:
            return Check(self.name, "pacs", False, _ms(start), detail=exc.reason)
        return Check(self.name, "pacs", True, _ms(start), self.capabilities)


class DicomwebPeer(HttpPeer):
    """A plain DICOMweb server (Orthanc): QIDO-RS by the ``[[peers.match]]`` rules."""

    capabilities = ("qido-rs", "wado-rs", "import")

    def __init__(self, settings: PeerSettings, pool: ThreadPoolExecutor) -> None:
        super().__init__(settings)
        self.pool = pool  # verifies candidate studies side by side

    @property
    def dicomweb_root(self) -> str | None:
        return self.base

    def find_studies(self, key: m.Key, token: str, timeout: float) -> Found:
        deadline = time.monotonic() + timeout
        out = Found()
        seen: set[str] = set()
        for rule in m.rules_for(self.settings.match, key):
            # includefield repeated, not comma separated: Orthanc's plugin reads only a single value.
            params = [*m.qido_params(rule, key).items(), *(("includefield", f) for f in m.STUDY_FIELDS)]
            params.append(("limit", "200"))
            rows = self._json(self.get(f"{self.base}/studies", params, DICOM_JSON, _left(deadline)))
            pending: list[dict[str, Any]] = []
            for ds in rows if isinstance(rows, list) else []:
                uid = m.first(ds, m.STUDY_UID)
                if not uid or uid in seen:
                    continue
                verdict = m.check_study(ds, rule, key)
                if verdict.needs_instance:
                    pending.append(ds)
                elif verdict.keep:
                    seen.add(uid)
                    out.studies.append(ds)
                else:
                    out.dropped += 1
                    out.reasons.append(verdict.reason)
            if pending:
                self._by_instance(pending, rule, key, deadline, out, seen)
        return out

    def _by_instance(
        self,
        candidates: list[dict[str, Any]],
        rule: PeerMatch,
        key: m.Key,
        deadline: float,
        out: Found,
        seen: set[str],
    ) -> None:
        """Decide OtherPatientIDs candidates on one instance of each (asked side by side)."""

        def one(ds: dict[str, Any]) -> m.Verdict:
            uid = m.first(ds, m.STUDY_UID)
            params = [("includefield", t) for t in (m.OTHER_IDS, m.OTHER_IDS_SEQUENCE, m.ISSUER)]
            params.append(("limit", "1"))
            rows = self._json(
                self.get(f"{self.base}/studies/{uid}/instances", params, DICOM_JSON, _left(deadline))
            )
            if not isinstance(rows, list) or not rows:
                return m.Verdict(False, reason="the study has no instances")
            return m.check_instance(rows[0], rule, key)

        for ds, verdict in zip(candidates, self.pool.map(one, candidates), strict=True):
            if verdict.keep:
                seen.add(m.first(ds, m.STUDY_UID))
                out.studies.append(ds)
            else:
                out.dropped += 1
                out.reasons.append(verdict.reason)

    def check(self, timeout: float) -> Check:
        start = time.perf_counter()
        try:
            self._json(self.get(f"{self.base}/studies", {"limit": "1"}, DICOM_JSON, timeout))
        except PeerError as exc:
            return Check(self.name, "dicomweb", False, _ms(start), detail=exc.reason)
        return Check(self.name, "dicomweb", True, _ms(start), self.capabilities)


class DimsePeer(Peer):
    """A DIMSE archive: C-FIND by the ``[[peers.match]]`` rules, C-MOVE to us."""

    capabilities = ("c-find", "c-move", "import")

    def __init__(self, settings: PeerSettings, client: DimseClient | None) -> None:
        super().__init__(settings)
        self.client = client

    def _client(self) -> DimseClient:
        if self.client is None:
            raise PeerError(self.name, "no DIMSE client in this process")
        return self.client

    def find_studies(self, key: m.Key, token: str, timeout: float) -> Found:
        deadline = time.monotonic() + timeout
        out = Found()
        seen: set[str] = set()
        for rule in m.rules_for(self.settings.match, key):
            rows = self._client().find(
                self.settings, "STUDY", m.qido_params(rule, key), m.STUDY_FIELDS, _left(deadline)
            )
            for ds in rows:
                uid = m.first(ds, m.STUDY_UID)
                if not uid or uid in seen:
                    continue
                verdict = m.check_study(ds, rule, key)
                if verdict.needs_instance:
                    found = self._client().find(
                        self.settings,
                        "IMAGE",
                        {"StudyInstanceUID": uid},
                        ("OtherPatientIDs", "OtherPatientIDsSequence", "IssuerOfPatientID"),
                        _left(deadline),
                    )
                    verdict = (
                        m.check_instance(found[0], rule, key)
                        if found
                        else m.Verdict(False, reason="no images")
                    )
                if verdict.keep:
                    seen.add(uid)
                    out.studies.append(ds)
                else:
                    out.dropped += 1
                    out.reasons.append(verdict.reason)
        return out

    def move(self, study_uid: str, destination: str, timeout: float) -> tuple[int, int]:
        """C-MOVE a study to ``destination`` (our AE title)."""
        return self._client().move(self.settings, study_uid, destination, timeout)

    def check(self, timeout: float) -> Check:
        start = time.perf_counter()
        try:
            self._client().echo(self.settings, timeout)
        except PeerError as exc:
            return Check(self.name, "dimse", False, _ms(start), detail=exc.reason)
        return Check(self.name, "dimse", True, _ms(start), self.capabilities)


def make_peers(
    settings: Sequence[PeerSettings], dimse: DimseClient | None, pool: ThreadPoolExecutor
) -> dict[str, Peer]:
    """One client per configured peer, by name."""
    out: dict[str, Peer] = {}
    for p in settings:
        if p.kind == "pacs":
            out[p.name] = PacsPeer(p)
        elif p.kind == "dicomweb":
            out[p.name] = DicomwebPeer(p, pool)
        else:
            out[p.name] = DimsePeer(p, dimse)
    return out


def stream(res: httpx.Response, peer: str) -> Iterator[bytes]:
    """The body of a streamed response, a peer error as :class:`PeerError`; closed at the end."""
    try:
        yield from res.iter_bytes(1 << 16)
    except httpx.TimeoutException as exc:
        raise PeerError(peer, "stopped answering", timeout=True) from exc
    except httpx.HTTPError as exc:
        raise PeerError(peer, _reason(exc)) from exc
    finally:
        res.close()


def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(max(0.001, seconds))


def _left(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect (refused or unreachable)"
    return f"{type(exc).__name__}: {str(exc)[:200]}"
