"""Reuse routes under ``/api/reuse`` (issue 18): federated search, the WADO-RS proxy, imports,
prefetch; the viewer page of a peer's study; the "from another facility" label in QIDO-RS.

Thin: unpack, call :class:`pacs.services.federation.Federation` on a worker thread, answer JSON.
A failed or slow peer is named in the answer and in a ``Warning: 299`` header, never a failure of
the search. Access (:mod:`pacs.web.auth`): searches as DICOMweb search, proxied reads as the
DICOMweb family of their path, imports and prefetch as retrieve.
"""

from __future__ import annotations

import gzip
import html
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs.dicom.text import is_valid_uid
from pacs.errors import StorageUnavailable
from pacs.services.federation.peers import PeerError
from pacs.services.federation.service import Federation
from pacs.web.bodies import read_capped
from pacs.web.errors import HttpProblem, problem
from pacs.web.origin import origin_of

PREFIX = "/api/reuse"
#: Private block of the QIDO-RS label (PS3.5 7.8): creator, source facility, peer, the label.
LABEL_CREATOR = "PACS REUSE"
LABEL_TEXT = "from another facility / từ cơ sở khác"


def _fed(request: Request) -> Federation:
    return request.app.state.federation  # type: ignore[no-any-return]


def _tokens(request: Request) -> list[str]:
    found = [t.strip() for v in request.query_params.getlist("identifier") for t in v.split(",") if t.strip()]
    if not found:
        raise HttpProblem(400, "give identifier=system|value (e.g. urn:vn:cccd|079080001234)")
    return found


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")
    return Response(body, status, media_type="application/json", headers=headers)


def _root(request: Request) -> str:
    public = request.app.state.settings.http.public_url
    return (public or str(request.base_url)).rstrip("/")


def _peer_error(exc: PeerError) -> HttpProblem:
    return HttpProblem(504 if exc.timeout else 502, str(exc))


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_capped(request, 65536)
    if raw is None:
        raise HttpProblem(413, "a reuse request body is at most 64 KiB")
    try:
        data = json.loads(raw.decode("utf-8") or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HttpProblem(400, f"the body is not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HttpProblem(400, "the body must be a JSON object")
    return data


# ---------------------------------------------------------------------- search


async def search_studies(request: Request) -> Response:
    """``GET /api/reuse/studies?identifier=system|value[&deadline=ms][&peer=name...]``: every
    peer (or the named ones) at once."""
    deadline = request.query_params.get("deadline")
    try:
        seconds = float(deadline) / 1000 if deadline else None
    except ValueError:
        raise HttpProblem(400, "deadline is in milliseconds") from None
    result = await run_in_threadpool(
        _fed(request).search,
        _tokens(request),
        origin_of(request),
        deadline=seconds,
        proxy_root=_root(request) + PREFIX + "/peers",
        peers=request.query_params.getlist("peer") or None,
    )
    request.state.audit_studies = [s["StudyInstanceUID"] for s in result.studies]
    request.state.detail = f"studies={len(result.studies)} complete={result.complete}"
    headers = {}
    if not result.complete:
        text = "; ".join(result.warnings()).replace('"', "'")[:1500]
        headers["Warning"] = f'299 pacs "some facilities did not answer: {text}"'
    return _json(
        {
            "identifiers": result.tokens,
            "complete": result.complete,
            "ms": result.ms,
            "studies": result.studies,
            "peers": [p.as_dict() for p in result.peers],
        },
        headers=headers,
    )


async def local_studies(request: Request) -> Response:
    """``GET /api/reuse/local?identifier=system|value``: our studies, for a peer facility."""
    body = await run_in_threadpool(
        _fed(request).local_studies, _tokens(request), origin_of(request), 200, _root(request) + "/dicom-web"
    )
    request.state.audit_studies = [s["dicom"]["0020000D"]["Value"][0] for s in body["studies"]]
    return _json(body)


async def list_peers(request: Request) -> Response:
    """``GET /api/reuse/peers``: the peers (names, facilities, kinds; never credentials)."""
    peers = [
        {
            "name": p.name,
            "facility": p.settings.facility_code,
            "kind": p.settings.kind,
            "capabilities": list(p.capabilities),
            "dicomweb": p.dicomweb_root is not None,
        }
        for p in _fed(request).peers.values()
    ]
    return _json({"peers": peers})


# ---------------------------------------------------------------------- proxy, viewer page


def _scoped(path: str, params: list[tuple[str, str]]) -> None:
    """Every proxied read names one study (no browsing of a peer's archive through us)."""
    parts = path.strip("/").split("/")
    if parts[0] == "studies" and len(parts) > 1 and is_valid_uid(parts[1]):
        return
    if any(k in ("StudyInstanceUID", "0020000D") and is_valid_uid(v) for k, v in params):
        return
    raise HttpProblem(400, "a proxied request names one study: studies/{uid}/... or StudyInstanceUID=")


async def proxy(request: Request) -> Response:
    """``GET /api/reuse/peers/{name}/dicom-web/{path}``: the peer's WADO-RS / QIDO-RS, cached."""
    name, path = request.path_params["name"], request.path_params["path"]
    params = list(request.query_params.multi_items())
    _scoped(path, params)
    accept = request.headers.get("accept", "*/*")
    try:
        got = await run_in_threadpool(_fed(request).proxy_get, name, path, params, accept, origin_of(request))
    except PeerError as exc:
        raise _peer_error(exc) from exc
    request.state.detail = f"peer={name} cache={'hit' if got.cached else 'miss'}"
    headers = {"X-Reuse-Cache": "hit" if got.cached else "miss", "X-Reuse-Peer": name}
    if got.size is not None:
        headers["Content-Length"] = str(got.size)
    return StreamingResponse(got.body, media_type=got.media_type, headers=headers)


async def peer_viewer(request: Request) -> Response:
    """``GET /reuse/peers/{name}/``: the viewer, its DICOMweb root the peer's proxy (open
    ``#/study/{uid}`` there); the page itself holds no patient data."""
    name = request.path_params["name"]
    if name not in _fed(request).peers:
        raise HttpProblem(404, f"no peer named {name[:64]!r}")
    page = (request.app.state.static_dir / "index.html").read_text(encoding="utf-8")
    up = "../../../"
    for old, new in (
        ('content="dicom-web"', f'content="{up}api/reuse/peers/{html.escape(name)}/dicom-web"'),
        ('content="api/', f'content="{up}api/'),
        ('content="fhir"', f'content="{up}fhir"'),
        ('href="viewer.css"', f'href="{up}viewer.css"'),
        ('src="viewer.js"', f'src="{up}viewer.js"'),
        ('src="reuse.js"', f'src="{up}reuse.js"'),
    ):
        page = page.replace(old, new)
    page = page.replace("<head>", f'<head>\n<meta name="reuse-peer" content="{html.escape(name)}">', 1)
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------------- import, prefetch


async def import_study(request: Request) -> Response:
    """``POST /api/reuse/import`` ``{"peer", "study", "identifier"}``: into the archive, with provenance."""
    data = await _body(request)
    peer, study = str(data.get("peer") or ""), str(data.get("study") or "")
    if not peer or not study:
        raise HttpProblem(400, "give peer and study (the Study Instance UID)")
    try:
        row = await run_in_threadpool(
            _fed(request).import_study, peer, study, origin_of(request), str(data.get("identifier") or "")
        )
    except PeerError as exc:
        raise _peer_error(exc) from exc
    request.state.audit_studies = [study]
    return _json(row, 201 if row["status"] == "done" else 502 if row["status"] == "failed" else 202)


async def list_imports(request: Request) -> Response:
    """``GET /api/reuse/imports[?study=uid,uid]``: provenance of imported studies."""
    studies = [u for v in request.query_params.getlist("study") for u in v.split(",") if is_valid_uid(u)]
    fed = _fed(request)
    if studies:
        rows = list((await run_in_threadpool(fed.imported, studies)).values())
    else:
        rows = await run_in_threadpool(fed.imports, 200)
    return _json({"imports": rows, "label": LABEL_TEXT})


async def prefetch(request: Request) -> Response:
    """``POST /api/reuse/prefetch`` ``{"identifier": "system|value" | [...], "study", "peer"}``
    (the last two optional): 202 and the job."""
    data = await _body(request)
    ident = data.get("identifier") or data.get("identifiers") or []
    tokens = [ident] if isinstance(ident, str) else [str(t) for t in ident if isinstance(t, str)]
    job = await run_in_threadpool(
        lambda: _fed(request).prefetch(
            tokens, origin_of(request), study_uid=data.get("study") or None, peer=data.get("peer") or None
        )
    )
    return _json({"job": job, "status": "pending", "href": f"{PREFIX}/jobs/{job}"}, 202)


async def list_jobs(request: Request) -> Response:
    """``GET /api/reuse/jobs[/{id}]``: prefetch jobs."""
    jobs = await run_in_threadpool(_fed(request).jobs, 200)
    if "id" in request.path_params:
        found = [j for j in jobs if str(j["id"]) == request.path_params["id"]]
        if not found:
            raise HttpProblem(404, "no such job")
        return _json(found[0])
    return _json({"jobs": jobs})


# ---------------------------------------------------------------------- QIDO-RS label


class ImportedLabel:
    """On ``GET /dicom-web/studies`` answers, mark studies imported from another facility with a
    private block (creator :data:`LABEL_CREATOR`: (0011,1001) facility code, (0011,1002) peer,
    (0011,1003) :data:`LABEL_TEXT`). Only while imported studies exist (checked every 10 s)."""

    def __init__(self, app: ASGIApp, fed: Federation) -> None:
        self.app = app
        self.fed = fed
        self._any: tuple[float, bool] = (-1e9, False)

    def _some(self) -> bool:
        """Whether any study was imported (cached 10 s). An index that cannot answer says no:
        the QIDO-RS route then gives its own answer (503 when the index is down), never a 500 here."""
        at, some = self._any
        if time.monotonic() - at > 10:
            try:
                some = bool(self.fed.imports(1))
            except StorageUnavailable:
                return False
            self._any = (time.monotonic(), some)
        return some

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or scope["path"].rstrip("/") != "/dicom-web/studies"
        ):
            await self.app(scope, receive, send)
            return
        if not await run_in_threadpool(self._some):
            await self.app(scope, receive, send)
            return
        held: list[Message] = []
        chunks: list[bytes] = []

        async def hold(message: Message) -> None:
            if message["type"] == "http.response.start":
                held.append(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            await self._label(held[0], b"".join(chunks), scope, receive, send)

        await self.app(scope, receive, hold)

    async def _label(self, start: Message, body: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        headers = MutableHeaders(raw=list(start.get("headers", [])))
        rows: Any = None
        if start["status"] == 200 and headers.get("content-type", "").startswith("application/dicom+json"):
            try:
                text = gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body
                rows = json.loads(text)
            except (OSError, ValueError):
                rows = None
        if isinstance(rows, list) and rows:
            uids = [((r.get("0020000D") or {}).get("Value") or [""])[0] for r in rows if isinstance(r, dict)]
            try:
                found = await run_in_threadpool(self.fed.imported, uids)
            except StorageUnavailable as exc:
                # Unlabelled imported studies would pass for local ones: no answer rather than that.
                answer = problem(503, str(exc), {"Retry-After": "30"})
                await answer(scope, receive, send)
                return
            if found:
                for r in rows:
                    prov = found.get(((r.get("0020000D") or {}).get("Value") or [""])[0])
                    if prov:
                        r["00110010"] = {"vr": "LO", "Value": [LABEL_CREATOR]}
                        r["00111001"] = {"vr": "LO", "Value": [prov.get("facility_code") or ""]}
                        r["00111002"] = {"vr": "LO", "Value": [prov["peer"]]}
                        r["00111003"] = {"vr": "LO", "Value": [LABEL_TEXT]}
                body = json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                del headers["content-encoding"]
        headers["content-length"] = str(len(body))
        await send({**start, "headers": headers.raw})
        await send({"type": "http.response.body", "body": body})


def lifespan(rt: Any) -> Callable[[Any], Any]:
    """Start the prefetch worker with the app (when peers are configured), stop it after."""

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        worker = rt.federation.worker if rt.settings.peers else None
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                await run_in_threadpool(worker.stop)

    return run


def routes() -> list[BaseRoute]:
    """The reuse routes."""
    return [
        Route(PREFIX + "/studies", search_studies, methods=["GET"]),
        Route(PREFIX + "/local", local_studies, methods=["GET"]),
        Route(PREFIX + "/peers", list_peers, methods=["GET"]),
        Route(PREFIX + "/peers/{name}/dicom-web/{path:path}", proxy, methods=["GET"]),
        Route(PREFIX + "/import", import_study, methods=["POST"]),
        Route(PREFIX + "/imports", list_imports, methods=["GET"]),
        Route(PREFIX + "/prefetch", prefetch, methods=["POST"]),
        Route(PREFIX + "/jobs", list_jobs, methods=["GET"]),
        Route(PREFIX + "/jobs/{id}", list_jobs, methods=["GET"]),
        Route("/reuse/peers/{name}/", peer_viewer, methods=["GET"]),
    ]


__all__ = ["ImportedLabel", "lifespan", "routes"]
