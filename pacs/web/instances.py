"""Admin API over stored instances: the versions kept under one SOP Instance UID.

``[storage] duplicate_policy = "keep-versions"`` keeps every object received under an SOP
Instance UID; the newest is the instance every edge serves. These routes (admins only: ``/api``
paths of no other family are, see :func:`pacs.web.auth.classify`) list them and return one:

- ``GET /api/instances/{sop_instance_uid}/versions``: JSON, newest first (the current one first):
  SHA-256 of the stored file, size, transfer syntax, received at, sender, superseded at.
- ``GET /api/instances/{sop_instance_uid}/versions/{sha256}``: that version's Part-10 file as
  stored (``application/dicom``).

Thin edge over :meth:`pacs.services.archive.Archive.versions` and ``open_version``; blob keys
never leave the archive. Each call is audited by the access control with the instance's study.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from pacs.model import InstanceVersion

if TYPE_CHECKING:
    from pacs.services.archive import Archive

PREFIX = "/api/instances"
_CHUNK = 1 << 20


def _archive(request: Request) -> Archive:
    return request.app.state.archive  # type: ignore[no-any-return]


def _json(v: InstanceVersion, sop: str) -> dict[str, Any]:
    return {
        "sha256": v.sha256,
        "size": v.size,
        "transfer_syntax_uid": v.transfer_syntax_uid,
        "received_at": v.received_at.isoformat() if v.received_at else None,
        "calling_ae": v.calling_ae,
        "peer_address": v.peer_address,
        "origin_protocol": v.origin_protocol,
        "current": v.current,
        "superseded_at": v.superseded_at.isoformat() if v.superseded_at else None,
        "url": f"{PREFIX}/{sop}/versions/{v.sha256}",
    }


async def list_versions(request: Request) -> Response:
    """``GET /api/instances/{sop}/versions``: the current and the superseded versions, newest first."""
    sop = request.path_params["sop"]
    found = await run_in_threadpool(_archive(request).versions, sop)  # NotFound -> 404
    first = found[0]
    request.state.audit_studies = [first.study_instance_uid]  # the audit row names the patient
    request.state.detail = f"versions={len(found)}"
    body = {
        "sop_instance_uid": sop,
        "study_instance_uid": first.study_instance_uid,
        "series_instance_uid": first.series_instance_uid,
        "versions": [_json(v, sop) for v in found],
    }
    return Response(orjson.dumps(body), media_type="application/json; charset=utf-8")


async def get_version(request: Request) -> Response:
    """``GET /api/instances/{sop}/versions/{sha256}``: the Part-10 file of one version, as stored."""
    sop, sha = request.path_params["sop"], request.path_params["sha256"]
    version, fh = await run_in_threadpool(_archive(request).open_version, sop, sha)  # NotFound -> 404
    request.state.audit_studies = [version.study_instance_uid]
    request.state.detail = f"version={version.sha256[:16]} current={version.current}"
    return StreamingResponse(
        _chunks(fh),
        media_type="application/dicom",
        headers={
            "Content-Length": str(version.size),
            "Content-Disposition": f'attachment; filename="{sop}-{version.sha256[:12]}.dcm"',
        },
    )


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    """The file in chunks (starlette runs this iterator on a worker thread); closed at the end."""
    with fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def routes() -> list[BaseRoute]:
    """The routes of this module."""
    return [
        Route(PREFIX + "/{sop:str}/versions", list_versions, methods=["GET"]),
        Route(PREFIX + "/{sop:str}/versions/{sha256:str}", get_version, methods=["GET"]),
    ]
