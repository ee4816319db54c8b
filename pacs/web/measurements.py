"""Measurement reports for the viewer: a thin edge over :mod:`pacs.services.measurements`.

- ``POST /api/measurements/sr``: ``{"study": uid, "measurements": [...]}`` (the viewer's JSON):
  the values are computed from the stored images, a TID 1500 Comprehensive SR is built and stored
  through STOW-RS; the answer is 201 with the SR's UIDs and the computed measurements.
- ``GET /api/measurements/{study}``: the measurements of the study's newest report, as that JSON.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pacs.services.measurements import MeasurementReports, parse_request
from pacs.web.errors import HttpProblem
from pacs.web.origin import origin_of

PREFIX = "/api/measurements"
#: Largest accepted body (500 measurements are about 100 kB).
MAX_BODY = 1 << 20


def _reports(request: Request) -> MeasurementReports:
    return MeasurementReports(request.app.state.dicomweb)


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json; charset=utf-8")


async def save_report(request: Request) -> Response:
    """Build and store a measurement report (201), or 400 for a body that does not describe one."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise HttpProblem(413, f"a measurement report is at most {MAX_BODY >> 10} kB of JSON")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HttpProblem(400, f"the body is not JSON: {exc}") from None
    study, items = parse_request(body)  # InvalidQuery -> 400
    request.state.audit_studies = [study]
    saved = await run_in_threadpool(_reports(request).save, study, items, origin_of(request))
    request.state.detail = f"sr={saved['sop']} measurements={len(items)}"
    return _json(saved, status=201)


async def load_report(request: Request) -> Response:
    """The newest report's measurements (an empty list when the study has none)."""
    study = request.path_params["study"]
    request.state.audit_studies = [study]
    loaded = await run_in_threadpool(_reports(request).load, study)
    request.state.detail = f"sr={loaded['sop']} measurements={len(loaded['measurements'])}"
    return _json(loaded)


def routes() -> list[BaseRoute]:
    """The routes of this module."""
    return [
        Route(PREFIX + "/sr", save_report, methods=["POST"]),
        Route(PREFIX + "/{study:str}", load_report, methods=["GET"]),
    ]
