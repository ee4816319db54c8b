"""Federated search: every peer asked at once for a patient's studies, within one deadline.

Each (peer, identifier) pair is a task on a thread pool; the search waits for all of them or
the deadline, whichever comes first, and answers with what arrived. A peer that failed, was
slower than the deadline, or could not be asked (no ``[[peers.match]]`` rule for the identifier's
system) is named in the answer with the reason; its late answer is thrown away, and its request
was given the time left as its own timeout, so it frees its thread by the deadline too.

Studies are merged by Study Instance UID: the first peer (in ``[[peers]]`` order) gives the
attributes, every peer holding it is listed as a source, and each is marked with its facility
and a RetrieveURL (0008,1190) through our WADO-RS proxy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from pacs.errors import InvalidQuery
from pacs.services.federation import matching as m
from pacs.services.federation.peers import Found, Peer, PeerError
from pacs.services.identifiers import parse_token


@dataclass
class PeerStatus:
    """How one peer did in a search."""

    peer: str
    facility: str
    kind: str
    status: str  # ok, error, timeout, skipped
    ms: float = 0.0
    found: int = 0
    dropped: int = 0
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """For the JSON answer."""
        return dict(self.__dict__)


@dataclass
class SearchResult:
    """Merged studies and the state of every peer."""

    tokens: list[str]
    studies: list[dict[str, Any]] = field(default_factory=list)
    peers: list[PeerStatus] = field(default_factory=list)
    ms: float = 0.0

    @property
    def complete(self) -> bool:
        """Every peer that could be asked answered."""
        return all(p.status in ("ok", "skipped") for p in self.peers)

    def warnings(self) -> list[str]:
        """One line per peer that failed or was too slow."""
        return [f"{p.peer}: {p.status} ({p.detail})" for p in self.peers if p.status in ("error", "timeout")]


def parse_tokens(tokens: Sequence[str]) -> list[tuple[str, m.Key]]:
    """Identifiers with a system (a bare local ID never leaves the facility); InvalidQuery otherwise."""
    out: list[tuple[str, m.Key]] = []
    for token in tokens:
        key = parse_token(token)
        if not key[0]:
            raise InvalidQuery(
                f"identifier {token[:60]!r}: a federated search needs system|value (a local ID without"
                " its issuer names different people at different facilities)"
            )
        out.append((token, key))
    if not out:
        raise InvalidQuery("give identifier=system|value (e.g. urn:vn:cccd|079080001234)")
    if len(out) > 10:
        raise InvalidQuery("at most 10 identifiers per federated search")
    return out


def fan_out(
    peers: Sequence[Peer],
    tokens: Sequence[str],
    deadline: float,
    pool: ThreadPoolExecutor,
    proxy_url: Callable[[str, str], str | None],
) -> SearchResult:
    """Ask every peer for every identifier at once; merge what arrives within ``deadline`` s."""
    keys = parse_tokens(tokens)
    start = time.monotonic()
    end = start + deadline
    tasks: dict[Future[tuple[Found, float]], tuple[Peer, str]] = {}
    status = {p.name: PeerStatus(p.name, p.settings.facility_code, p.settings.kind, "ok") for p in peers}
    asked: set[str] = set()
    for peer in peers:
        for token, key in keys:
            if peer.settings.kind != "pacs" and not m.rules_for(peer.settings.match, key):
                continue
            asked.add(peer.name)
            tasks[pool.submit(_ask, peer, key, token, end)] = (peer, token)
    for peer in peers:
        if peer.name not in asked:
            status[peer.name].status = "skipped"
            status[peer.name].detail = "no [[peers.match]] rule for the identifier's system"
    done, _late = wait(tasks, timeout=max(0.0, end - time.monotonic()))
    found: dict[str, list[dict[str, Any]]] = {p.name: [] for p in peers}
    for future, (peer, _token) in tasks.items():
        st = status[peer.name]
        if future not in done:
            st.status, st.ms = "timeout", round(deadline * 1000, 1)
            st.detail = f"no answer within the deadline of {deadline * 1000:.0f} ms"
            continue
        try:
            answer, ms = future.result()
        except PeerError as exc:
            if st.status != "timeout":
                st.status = "timeout" if exc.timeout else "error"
                st.detail = exc.reason
            st.ms = max(st.ms, round((time.monotonic() - start) * 1000, 1))
            continue
        except Exception as exc:  # a peer's nonsense must not fail the search
            st.status, st.detail = "error", f"{type(exc).__name__}: {str(exc)[:200]}"
            continue
        st.ms = max(st.ms, ms)
        st.found += len(answer.studies)
        st.dropped += answer.dropped
        found[peer.name].extend(answer.studies)
    result = SearchResult(list(tokens), peers=[status[p.name] for p in peers])
    result.studies = merge(peers, found, proxy_url)
    result.ms = round((time.monotonic() - start) * 1000, 1)
    return result


def _ask(peer: Peer, key: m.Key, token: str, end: float) -> tuple[Found, float]:
    started = time.monotonic()
    left = end - started
    if left <= 0:
        raise PeerError(peer.name, "no time left before the deadline", timeout=True)
    answer = peer.find_studies(key, token, min(left, peer.settings.timeout_seconds))
    return answer, round((time.monotonic() - started) * 1000, 1)


def merge(
    peers: Sequence[Peer], found: dict[str, list[dict[str, Any]]], proxy_url: Callable[[str, str], str | None]
) -> list[dict[str, Any]]:
    """One entry per Study Instance UID, newest first; the first peer's attributes, every peer
    as a source (facility, kind, the peer's own RetrieveURL) and our proxy's RetrieveURL."""
    merged: dict[str, dict[str, Any]] = {}
    for peer in peers:
        for ds in found.get(peer.name, []):
            uid = m.first(ds, m.STUDY_UID)
            if not uid:
                continue
            source = {
                "peer": peer.name,
                "facility": peer.settings.facility_code,
                "kind": peer.settings.kind,
                "RetrieveURL": m.first(ds, m.RETRIEVE_URL) or None,
            }
            if uid in merged:
                merged[uid]["sources"].append(source)
                continue
            dicom = {k: v for k, v in ds.items() if k != m.RETRIEVE_URL}
            url = proxy_url(peer.name, uid)
            if url:
                dicom[m.RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
            merged[uid] = {
                "StudyInstanceUID": uid,
                "peer": peer.name,
                "facility": peer.settings.facility_code,
                "RetrieveURL": url,
                "sources": [source],
                "dicom": dicom,
            }
    return sorted(
        merged.values(),
        key=lambda s: m.first(s["dicom"], "00080020") + m.first(s["dicom"], "00080030"),
        reverse=True,
    )
