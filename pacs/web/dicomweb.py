"""DICOMweb routes under ``/dicom-web`` (PS3.18): QIDO-RS, WADO-RS (incl. rendered, thumbnails); STOW-RS in
:mod:`pacs.web.stow`.

Each handler unpacks the request, calls a service (:mod:`pacs.services.dicomweb`,
:mod:`pacs.services.render`) on a worker thread and maps the result to a response. Errors are
raised as domain errors or :class:`~pacs.web.errors.HttpProblem` and turned into problem+json in one
place (:mod:`pacs.web.errors`).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from pacs import query as q
from pacs.dicom import pixels
from pacs.dicom.text import is_valid_uid
from pacs.errors import NotAcceptable
from pacs.limits import DecodeBudget, DecodeLimits
from pacs.model import Level, StoredInstance
from pacs.services.dicomweb import ANY, DicomWeb
from pacs.services.render import Renderer, RenderParams
from pacs.web.errors import HttpProblem
from pacs.web.multipart import (
    MediaRange,
    multipart_body,
    new_boundary,
    parse_accept,
)

DICOM_JSON = "application/dicom+json"
_GZIP_MIN = 1024

# ---------------------------------------------------------------- helpers


def _service(request: Request) -> DicomWeb:
    return request.app.state.dicomweb  # type: ignore[no-any-return]


def _renderer(request: Request) -> Renderer:
    return request.app.state.renderer  # type: ignore[no-any-return]


def _budget(request: Request) -> DecodeBudget:
    """The decoded pixel data this request may produce (``[http] max_decoded_mb_per_*``)."""
    http = request.app.state.settings.http
    return DecodeLimits.from_mb(http.max_decoded_mb_per_instance, http.max_decoded_mb_per_request).budget()


def _uid(request: Request, name: str) -> str:
    value = request.path_params[name]
    if not is_valid_uid(value):
        raise HttpProblem(400, f"{name}: {value[:80]!r} is not a valid UID")
    return str(value)


def _uids(request: Request) -> tuple[str, str | None, str | None]:
    study = _uid(request, "study")
    series = _uid(request, "series") if "series" in request.path_params else None
    sop = _uid(request, "instance") if "instance" in request.path_params else None
    return study, series, sop


def _root(request: Request) -> str:
    """The absolute URL of the DICOMweb root (``.../dicom-web``): under ``[http] public_url``
    when set, else from the request's Host header (checked by :class:`pacs.web.hosts.HostCheck`)."""
    public = request.app.state.settings.http.public_url
    base = public if public else str(request.base_url)
    return base.rstrip("/") + "/dicom-web"


def _instance_url(root: str, inst: StoredInstance) -> str:
    return (
        f"{root}/studies/{inst.study_instance_uid}/series/{inst.series_instance_uid}"
        f"/instances/{inst.sop_instance_uid}"
    )


def dicom_json(request: Request, payload: Any, status: int = 200) -> Response:
    """A DICOM JSON response (UTF-8), gzip-compressed when the client accepts it and it is worth it."""
    text = (
        payload
        if isinstance(payload, str)
        else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    )
    body = text.encode("utf-8")
    headers = {"Vary": "Accept-Encoding"}
    if len(body) >= _GZIP_MIN and "gzip" in request.headers.get("accept-encoding", "").lower():
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return Response(body, status_code=status, media_type=DICOM_JSON, headers=headers)


def _accept(request: Request) -> list[MediaRange]:
    """The acceptable media ranges: the ``accept`` query parameter when given, else the Accept header.

    The query parameter is the URL form of the header (PS3.18 8.3.3.1) and stands in for it:
    OHIF's ``thumbnail?accept=image/jpeg`` comes with a multipart Accept header it does not mean.
    """
    query = ",".join(v for v in request.query_params.getlist("accept") if v.strip())
    return parse_accept(query or request.headers.get("accept"))


def _accept_text(request: Request) -> str:
    """The Accept query parameter and header as received, for error messages."""
    query = request.query_params.getlist("accept")
    header = request.headers.get("accept")
    return f"accept={','.join(query)!r} and Accept {header!r}" if query else repr(header)


def _accepts_json(request: Request) -> None:
    """QIDO-RS and metadata answer in DICOM JSON only (PS3.18 8.7.3)."""
    for r in _accept(request):
        if r.media_type in ("*/*", "application/*", DICOM_JSON, "application/json"):
            return
        if r.media_type == "multipart/related" and r.related_type == DICOM_JSON:
            return
    raise HttpProblem(406, f"only {DICOM_JSON} is available here; Accept was {_accept_text(request)}")


# ---------------------------------------------------------------- QIDO-RS (PS3.18 10.6)

#: Content negotiation query parameters (PS3.18 8.3.3): not search keys.
_NEGOTIATION_PARAMS = {"accept", "charset"}


async def _search(request: Request, level: Level) -> Response:
    _accepts_json(request)
    scope: dict[str, str] = {}
    if "study" in request.path_params:
        scope["StudyInstanceUID"] = request.path_params["study"]
    if "series" in request.path_params:
        scope["SeriesInstanceUID"] = request.path_params["series"]
    settings = request.app.state.settings
    query = q.from_qido(
        level,
        [(k, v) for k, v in request.query_params.multi_items() if k not in _NEGOTIATION_PARAMS],
        scope=scope,
        default_limit=settings.http.default_query_limit,
        max_limit=settings.http.max_query_limit,
        fold_names=settings.query.names_accent_insensitive,
    )
    root = _root(request)
    study_scope = scope.get("StudyInstanceUID")
    series_scope = scope.get("SeriesInstanceUID")

    def retrieve_url(row: dict[str, Any]) -> str | None:
        study = row.get("StudyInstanceUID") or study_scope
        if not study:
            return None
        url = f"{root}/studies/{study}"
        if level is Level.STUDY:
            return url
        series = row.get("SeriesInstanceUID") or series_scope
        if not series:
            return None
        url += f"/series/{series}"
        if level is Level.SERIES:
            return url
        sop = row.get("SOPInstanceUID")
        return f"{url}/instances/{sop}" if sop else None

    text, matches, more, studies = await run_in_threadpool(_service(request).search_text, query, retrieve_url)
    request.state.detail = f"matches={matches}{' (more)' if more else ''}"
    if not studies and study_scope and matches:
        studies = [study_scope]
    request.state.audit_studies = studies  # the audit row names the patients this search showed
    response = dicom_json(request, text)
    if more:  # PS3.18 8.3.4.4.1: the client may ask for the next page with offset
        response.headers["Warning"] = '299 pacs: "There are additional results that can be requested"'
    return response


async def search_studies(request: Request) -> Response:
    """Search for studies."""
    return await _search(request, Level.STUDY)


async def search_series(request: Request) -> Response:
    """Search for series (all, or of one study)."""
    return await _search(request, Level.SERIES)


async def search_instances(request: Request) -> Response:
    """Search for instances (all, of one study or of one series)."""
    return await _search(request, Level.IMAGE)


# ---------------------------------------------------------------- WADO-RS (PS3.18 10.4)


def _dicom_syntaxes(request: Request) -> set[str]:
    """Transfer syntaxes acceptable for ``application/dicom`` parts (PS3.18 8.7.3.5.2).

    ``transfer-syntax=*`` (quoted or not) or an unspecific Accept: as stored; no parameter:
    Explicit VR Little Endian, the default of the standard. Any other value is a syntax the
    client asked for by name, lossy ones included: the instance is converted into it when not
    stored so (:mod:`pacs.services.transcode`).
    """
    out: set[str] = set()
    for r in _accept(request):
        if r.media_type in ("*/*", "multipart/*"):
            out.add(ANY)
        elif r.media_type == "multipart/related" and r.related_type in ("", "application/dicom", "*/*"):
            default = pixels.EXPLICIT_LE if r.related_type == "application/dicom" else ANY
            out.add(r.params.get("transfer-syntax") or default)
        elif r.media_type == "application/dicom":
            out.add(r.params.get("transfer-syntax") or pixels.EXPLICIT_LE)
    if not out:
        raise HttpProblem(
            406,
            f'retrieve answers multipart/related; type="application/dicom", not {_accept_text(request)}',
        )
    return out


async def retrieve(request: Request) -> Response:
    """Retrieve a study, series or instance as ``multipart/related; type="application/dicom"``."""
    study, series, sop = _uids(request)
    syntaxes = _dicom_syntaxes(request)
    svc = _service(request)
    budget = _budget(request)
    instances = await run_in_threadpool(svc.instances, study, series, sop)
    # Refusals (not acceptable, an image the codec cannot carry, over a decoding limit) before
    # the answer starts; the syntax of each instance is chosen once, here.
    targets = await run_in_threadpool(svc.check_acceptable, instances, syntaxes, budget)
    boundary = new_boundary()

    def parts() -> Iterator[tuple[str, Iterator[bytes]]]:
        for inst, ts in zip(instances, targets, strict=True):
            part = svc.retrieve_instance_bytes(inst, syntaxes, budget, ts)
            yield f"application/dicom; transfer-syntax={ts}", part

    request.state.detail = f"instances={len(instances)}"
    return StreamingResponse(
        multipart_body(boundary, parts()),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


async def retrieve_metadata(request: Request) -> Response:
    """Metadata of a study, series or instance as a DICOM JSON array (PS3.18 10.4.1.1.2)."""
    _accepts_json(request)
    study, series, sop = _uids(request)
    svc = _service(request)
    root = _root(request)
    instances = await run_in_threadpool(svc.instances, study, series, sop)
    text = await run_in_threadpool(svc.retrieve_metadata, instances, lambda i: _instance_url(root, i))
    request.state.detail = f"instances={len(instances)}"
    return dicom_json(request, text)


_FRAME_LIST = re.compile(r"^\d{1,6}(,\d{1,6})*$")
#: Most entries a frame list may have (repeats included); more is 400. Repeats are answered once
#: (the service keeps the first of each), so a response has at most NumberOfFrames parts.
MAX_FRAME_LIST = 10_000


def _frame_numbers(text: str) -> list[int]:
    text = text.replace("%2C", ",").replace("%2c", ",")
    if text.count(",") >= MAX_FRAME_LIST:
        raise HttpProblem(400, f"too many frames in one request (at most {MAX_FRAME_LIST} in a frame list)")
    if not _FRAME_LIST.fullmatch(text):
        raise HttpProblem(400, f"frame list {text[:80]!r} must be comma separated numbers starting at 1")
    numbers = [int(n) for n in text.split(",")]
    if any(n < 1 for n in numbers):
        raise HttpProblem(400, "frame numbers start at 1")
    return numbers


_SYNTAXES_BY_MEDIA: dict[str, set[str]] = {}
for _ts, _mt in pixels.FRAME_MEDIA_TYPES.items():
    _SYNTAXES_BY_MEDIA.setdefault(_mt, set()).add(_ts)


def _frame_ranges(request: Request) -> list[tuple[str, set[str]]]:
    """(media type, acceptable transfer syntaxes) for frames and bulk data, best first (PS3.18 8.7.3.3)."""
    out: list[tuple[str, set[str]]] = []
    for r in _accept(request):
        media = r.related_type if r.media_type == "multipart/related" else r.media_type
        if r.media_type == "multipart/related" and not media:
            media = "application/octet-stream"
        ts = r.params.get("transfer-syntax")
        if media in ("*/*", "multipart/*", "image/*"):
            out.append(("*/*", {ANY}))
        elif media == "application/octet-stream":
            out.append((media, {ts if ts else pixels.EXPLICIT_LE}))
        elif media in _SYNTAXES_BY_MEDIA:
            known = _SYNTAXES_BY_MEDIA[media]
            if ts in (None, "", "*"):
                out.append((media, set(known)))
            elif ts in known:
                out.append((media, {ts}))
    if not out:
        raise HttpProblem(
            406,
            "frames are served as multipart/related with application/octet-stream or the stored image "
            f"media type; Accept was {_accept_text(request)}",
        )
    return out


def _named_syntaxes(request: Request) -> set[str]:
    """The transfer syntaxes the Accept names (``transfer-syntax=`` other than ``*``)."""
    return {ts for r in _accept(request) if (ts := r.params.get("transfer-syntax")) and ts != "*"}


def _part_type(ranges: list[tuple[str, set[str]]], ts: str) -> str:
    for media, syntaxes in ranges:
        if ANY in syntaxes or ts in syntaxes:
            if media == "application/octet-stream" or ts == pixels.EXPLICIT_LE:
                return f"application/octet-stream; transfer-syntax={ts}"
            return f"{pixels.FRAME_MEDIA_TYPES.get(ts, 'application/octet-stream')}; transfer-syntax={ts}"
    return f"application/octet-stream; transfer-syntax={ts}"


async def _frames_response(request: Request, inst: StoredInstance, numbers: list[int] | None) -> Response:
    ranges = _frame_ranges(request)
    syntaxes = set().union(*(s for _, s in ranges))
    svc = _service(request)
    if numbers is None:
        info = await run_in_threadpool(_frame_count, svc, inst)
        numbers = list(range(1, info + 1))
    # Checked (numbers, syntax, decoding limits) now; read or decoded one frame at a time as sent.
    named = _named_syntaxes(request)  # lossy encodings only when asked for by name
    frames = await run_in_threadpool(svc.retrieve_frames, inst, numbers, syntaxes, _budget(request), named)
    part_type = _part_type(ranges, frames.transfer_syntax_uid)
    boundary = new_boundary()
    root_type = part_type.split(";")[0]
    request.state.detail = f"frames={len(frames.numbers)} ts={frames.transfer_syntax_uid}"
    return StreamingResponse(
        multipart_body(boundary, ((part_type, [f]) for f in frames.frames)),
        media_type=f'multipart/related; type="{root_type}"; boundary={boundary}',
    )


def _frame_count(svc: DicomWeb, inst: StoredInstance) -> int:
    with svc.archive.open(inst) as fh:
        return pixels.locate(fh).number_of_frames


async def _one_instance(request: Request) -> StoredInstance:
    study, series, sop = _uids(request)
    found = await run_in_threadpool(_service(request).instances, study, series, sop)
    return found[0]


async def retrieve_frames(request: Request) -> Response:
    """Frames of an instance (PS3.18 10.4.1.1.5), native or in the stored compressed syntax."""
    numbers = _frame_numbers(request.path_params["frames"])
    inst = await _one_instance(request)
    return await _frames_response(request, inst, numbers)


_BULK_PATH = re.compile(r"^[0-9A-Fa-f]{8}(/\d{1,6}/[0-9A-Fa-f]{8})*$")


async def retrieve_bulkdata(request: Request) -> Response:
    """A binary value addressed by a BulkDataURI from our metadata (PS3.18 10.4.1.1.6)."""
    path = request.path_params["path"].strip("/")
    if not _BULK_PATH.fullmatch(path):
        raise HttpProblem(400, f"bulk data path {path[:80]!r} is not TAG[/ITEM/TAG...]")
    inst = await _one_instance(request)
    if path.upper() in ("7FE00010", "7FE00008", "7FE00009"):
        return await _frames_response(request, inst, None)
    ranges = _frame_ranges(request)
    if not any(m in ("*/*", "application/octet-stream") for m, _ in ranges):
        raise NotAcceptable("bulk data is served as application/octet-stream")
    value = await run_in_threadpool(_service(request).retrieve_bulkdata, inst, path.split("/"))
    boundary = new_boundary()
    body = b"".join(multipart_body(boundary, [("application/octet-stream", [value])]))
    return Response(
        body, media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    )


# ---------------------------------------------------------------- rendered and thumbnails (PS3.18 8.3.5)


def _render_media_type(request: Request) -> str:
    for r in _accept(request):
        media = r.related_type if r.media_type == "multipart/related" else r.media_type
        if media in ("image/jpeg", "image/png", "image/gif"):
            return media
        if media in ("*/*", "image/*", ""):
            return "image/jpeg"
    raise HttpProblem(
        406,
        f"rendered images are image/jpeg, image/png or image/gif; Accept was {_accept_text(request)}",
    )


def _render_params(request: Request) -> RenderParams:
    params = request.query_params
    media_type = _render_media_type(request)
    quality = 90
    if "quality" in params:
        try:
            quality = int(params["quality"])
        except ValueError:
            raise HttpProblem(400, "quality must be a whole number from 1 to 100") from None
        if not 1 <= quality <= 100:
            raise HttpProblem(400, "quality must be a whole number from 1 to 100")
    viewport = None
    if params.get("viewport"):
        parts = params["viewport"].split(",")
        try:
            vw, vh = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise HttpProblem(400, "viewport must be vw,vh[,sx,sy,sw,sh] with whole numbers") from None
        if not (0 < vw <= 8192 and 0 < vh <= 8192):
            raise HttpProblem(400, "viewport sizes must be between 1 and 8192")
        viewport = (vw, vh)
    window = None
    if params.get("window"):
        parts = params["window"].split(",")
        functions = {
            "linear": "LINEAR",
            "linear-exact": "LINEAR_EXACT",
            "linear_exact": "LINEAR_EXACT",
            "sigmoid": "SIGMOID",
        }
        try:
            center, width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise HttpProblem(400, "window must be center,width[,function]") from None
        function = functions.get(parts[2].strip().lower()) if len(parts) > 2 else "LINEAR"
        if function is None or len(parts) > 3:
            raise HttpProblem(400, "window function must be linear, linear-exact or sigmoid")
        if not width > 0 or center != center:
            raise HttpProblem(400, "window width must be positive")
        window = pixels.Window(center, width, function)
    return RenderParams(media_type=media_type, quality=quality, viewport=viewport, window=window)


def _not_modified(request: Request, etag: str) -> bool:
    tags = [
        t.strip().removeprefix("W/").strip('"') for t in request.headers.get("if-none-match", "").split(",")
    ]
    return etag in tags or "*" in tags


def _image_response(content: bytes, media_type: str, etag: str, cache: str) -> Response:
    # One URL can answer JPEG or PNG by Accept: caches must key on it (Vary), or a cached JPEG
    # would be served to a client asking for PNG.
    return Response(
        content,
        media_type=media_type,
        headers={"ETag": f'"{etag}"', "Cache-Control": cache, "Vary": "Accept"},
    )


async def rendered(request: Request) -> Response:
    """Rendered instance or frame as one image; study or series as multipart of rendered instances."""
    study, series, sop = _uids(request)
    params = _render_params(request)
    renderer = _renderer(request)
    frame = _frame_numbers(request.path_params["frames"])[0] if "frames" in request.path_params else None
    svc = _service(request)
    budget = _budget(request)
    if sop is not None:
        number = frame or 1

        def one() -> tuple[str, bytes | None]:
            # Lookup, ETag check and rendering in one trip to a worker thread.
            inst = svc.instances(study, series, sop)[0]
            etag = renderer.key([inst], number, params, "rendered")
            if _not_modified(request, etag):
                return etag, None
            return etag, renderer.render(inst, number, params, budget).content

        etag, content = await run_in_threadpool(one)
        if content is None:
            return Response(status_code=304, headers={"ETag": f'"{etag}"', "Vary": "Accept"})
        return _image_response(content, params.media_type, etag, "private, max-age=3600")
    instances = await run_in_threadpool(svc.instances, study, series, sop)
    boundary = new_boundary()

    def parts() -> Iterator[tuple[str, list[bytes]]]:
        for inst in instances:
            try:
                out = renderer.render(inst, 1, params, budget)
            except Exception:  # instances without pixels (SR, KO), or over the decoding limit, are left out
                continue
            yield params.media_type, [out.content]

    return StreamingResponse(
        multipart_body(boundary, parts()),
        media_type=f'multipart/related; type="{params.media_type}"; boundary={boundary}',
    )


async def thumbnail(request: Request) -> Response:
    """A thumbnail of a study, series, instance or frame (PS3.18 10.4.1.1.4), cached and ETagged."""
    study, series, sop = _uids(request)
    params = _render_params(request)
    frame = _frame_numbers(request.path_params["frames"])[0] if "frames" in request.path_params else None
    renderer = _renderer(request)
    out = await run_in_threadpool(renderer.thumbnail, study, series, sop, frame, params, _budget(request))
    cache = "private, max-age=3600" if sop else "private, no-cache"
    if _not_modified(request, out.etag):
        return Response(status_code=304, headers={"ETag": f'"{out.etag}"', "Cache-Control": cache})
    return _image_response(out.content, out.media_type, out.etag, cache)


# ---------------------------------------------------------------- routes

_S = "/studies/{study}"
_SE = _S + "/series/{series}"
_I = _SE + "/instances/{instance}"
_F = _I + "/frames/{frames}"


def routes() -> list[BaseRoute]:
    from pacs.web.stow import store_instances  # STOW-RS lives beside; it reuses the helpers above

    """The DICOMweb routes, relative to the ``/dicom-web`` mount."""
    return [
        # QIDO-RS
        Route("/studies", search_studies, methods=["GET"]),
        Route("/series", search_series, methods=["GET"]),
        Route("/instances", search_instances, methods=["GET"]),
        Route(_S + "/series", search_series, methods=["GET"]),
        Route(_S + "/instances", search_instances, methods=["GET"]),
        Route(_SE + "/instances", search_instances, methods=["GET"]),
        # STOW-RS
        Route("/studies", store_instances, methods=["POST"]),
        Route(_S, store_instances, methods=["POST"]),
        # WADO-RS
        Route(_S, retrieve, methods=["GET"]),
        Route(_SE, retrieve, methods=["GET"]),
        Route(_I, retrieve, methods=["GET"]),
        Route(_S + "/metadata", retrieve_metadata, methods=["GET"]),
        Route(_SE + "/metadata", retrieve_metadata, methods=["GET"]),
        Route(_I + "/metadata", retrieve_metadata, methods=["GET"]),
        Route(_F, retrieve_frames, methods=["GET"]),
        Route(_I + "/bulkdata/{path:path}", retrieve_bulkdata, methods=["GET"]),
        Route(_S + "/rendered", rendered, methods=["GET"]),
        Route(_SE + "/rendered", rendered, methods=["GET"]),
        Route(_I + "/rendered", rendered, methods=["GET"]),
        Route(_F + "/rendered", rendered, methods=["GET"]),
        Route(_S + "/thumbnail", thumbnail, methods=["GET"]),
        Route(_SE + "/thumbnail", thumbnail, methods=["GET"]),
        Route(_I + "/thumbnail", thumbnail, methods=["GET"]),
        Route(_F + "/thumbnail", thumbnail, methods=["GET"]),
    ]
