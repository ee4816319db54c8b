"""Appraisal API (read-only JSON, CSV / XLSX / XML exports, printable HTML) under ``/api/appraisal/v1``.

Thin edge over :class:`pacs.services.appraisal.Appraisal` (on ``app.state.appraisal``): parse
parameters, build an :class:`~pacs.model.Origin` (the service audits every call), answer. Domain
errors become problem+json in the application's exception handlers (:mod:`pacs.web.errors`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from pacs.errors import InvalidQuery, NotFound
from pacs.services.appraisal.filters import FILTERS
from pacs.web import appraisal_claims
from pacs.web.origin import origin_of

if TYPE_CHECKING:
    from pacs.services.appraisal import Appraisal

PREFIX = "/api/appraisal/v1"

# ---------------------------------------------------------------- helpers


def _service(request: Request) -> Appraisal:
    return request.app.state.appraisal  # type: ignore[no-any-return]


def _json(data: Any, status: int = 200) -> Response:
    """Compact UTF-8 JSON (orjson: a page of 1,000 records is ~7 MB, ~10x faster than ``json``)."""
    return Response(orjson.dumps(data), status_code=status, media_type="application/json; charset=utf-8")


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """``first``, then the rest of an export stream (closing it closes the export, which audits)."""
    try:
        yield first
        yield from rest
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()


def _filters(request: Request) -> dict[str, str]:
    return {k: request.query_params[k] for k in FILTERS if request.query_params.get(k)}


#: Export formats and their media types.
EXPORT_MEDIA = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "xml": "application/xml; charset=utf-8",
}


async def _export(request: Request, fmt: str) -> Response:
    svc = _service(request)
    stream = {"csv": svc.stream_csv, "xlsx": svc.stream_xlsx, "xml": svc.stream_xml}[fmt]
    chunks = stream(_filters(request), origin_of(request))  # InvalidQuery here -> 400
    # the first chunk waits for the first page of records (the XLSX: for the whole workbook, in
    # a worker thread): an index failure is still a 503
    first = await run_in_threadpool(next, chunks, b"")
    media = EXPORT_MEDIA[fmt]
    return StreamingResponse(
        _prepend(first, chunks),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="pacs-extract.{fmt}"'},
    )


async def _html(request: Request, record_id: str) -> Response:
    text = await run_in_threadpool(_service(request).record_html, record_id, origin_of(request))
    return HTMLResponse(text)


# ---------------------------------------------------------------- routes


async def list_records(request: Request) -> Response:
    """A page of records (``?format=csv|xlsx|xml``: the export of every matching record)."""
    params = _filters(request)
    raw_limit = request.query_params.get("limit")
    try:
        limit = int(raw_limit) if raw_limit else None
    except ValueError:
        raise InvalidQuery(f"limit must be an integer, got {raw_limit!r}") from None
    fmt = request.query_params.get("format", "json")
    if fmt in EXPORT_MEDIA:
        return await _export(request, fmt)
    if fmt != "json":
        raise InvalidQuery("format must be json, csv, xlsx or xml")
    svc = _service(request)
    page = await run_in_threadpool(
        svc.list_records,
        params,
        origin_of(request),
        cursor=request.query_params.get("cursor"),
        limit=limit,
    )
    return _json(
        {
            "label": svc.label,
            "count": len(page.records),
            "next_cursor": page.next_cursor,
            "records": page.records,
        }
    )


async def export(request: Request) -> Response:
    """``export.csv`` / ``export.xlsx`` / ``export.xml``: every matching record, streamed."""
    fmt = request.path_params["fmt"]
    if fmt not in EXPORT_MEDIA:
        raise NotFound(f"no export format {fmt!r}: use export.csv, export.xlsx or export.xml")
    return await _export(request, fmt)


async def get_record(request: Request) -> Response:
    """One record (``?format=html``: its printable view)."""
    record_id = request.path_params["id"]
    if request.query_params.get("format") == "html":
        return await _html(request, record_id)
    return _json(await run_in_threadpool(_service(request).get_record, record_id, origin_of(request)))


async def get_record_html(request: Request) -> Response:
    """The printable view of one record."""
    return await _html(request, request.path_params["id"])


async def devices(request: Request) -> Response:
    """Observed device clock facts over a window of receipt dates."""
    params = {k: request.query_params[k] for k in ("from", "to", "device") if request.query_params.get(k)}
    return _json(await run_in_threadpool(_service(request).device_clocks, params, origin_of(request)))


async def openapi(request: Request) -> Response:
    """The OpenAPI description of this API."""
    return _json(openapi_document())


def routes() -> list[BaseRoute]:
    """The appraisal routes (the service on ``app.state.appraisal``)."""
    return [
        Route(f"{PREFIX}/openapi.json", openapi, methods=["GET"]),
        Route(f"{PREFIX}/records", list_records, methods=["GET"]),
        Route(f"{PREFIX}/devices", devices, methods=["GET"]),
        Route(f"{PREFIX}/export.{{fmt:str}}", export, methods=["GET"]),
        Route(f"{PREFIX}/records/{{id}}.html", get_record_html, methods=["GET"]),
        Route(f"{PREFIX}/records/{{id}}", get_record, methods=["GET"]),
        *appraisal_claims.routes(),
    ]


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the appraisal API."""
    filt = [
        ("from", "Study date from (YYYY-MM-DD or YYYYMMDD), inclusive"),
        ("to", "Study date to, inclusive"),
        ("facility", "Facility code MA_CSKCB; another facility's code matches nothing"),
        ("modality", "Modality of any series (CT, DX, US...)"),
        ("device", "DeviceSerialNumber or StationName of any series"),
        ("accession", "Accession number"),
        ("patient_id", "PatientID, citizen ID or insurance card code, matched exactly"),
        ("service_code", "Ministry service code XX.YYYY.ZZZZ (through the service register)"),
        ("machine_code", "MA_MAY: the device register row in force on the study date has this code"),
        ("department", "MA_KHOA: the device register row in force on the study date has this department"),
    ]
    params = [
        {"name": n, "in": "query", "required": False, "schema": {"type": "string"}, "description": d}
        for n, d in filt
    ]
    problem = {
        "description": "Problem details (RFC 9457)",
        "content": {"application/problem+json": {"schema": {"type": "object"}}},
    }
    label = {
        "type": "object",
        "required": ["code", "vi", "en"],
        "properties": {"code": {"type": "string"}, "vi": {"type": "string"}, "en": {"type": "string"}},
    }
    stamp = {
        "type": ["object", "null"],
        "properties": {
            "value": {"type": "string", "format": "date-time"},
            "source": {"type": "string", "description": "DICOM attribute the time came from"},
            "timezone_source": {"type": "string"},
        },
    }
    record = {
        "type": "object",
        "description": (
            "One imaging service line. Device times reflect machine operation (image acquisition) "
            "only; see `label`. Reference times are informative (`reference_only: true`)."
        ),
        "required": ["id", "label", "device_timestamps", "ordering_checks"],
        "properties": {
            "id": {
                "type": "string",
                "description": (
                    "Service-line id: acc:<AccessionNumber>, rp:<RequestedProcedureID>, "
                    "sps:<ScheduledProcedureStepID>, study:<StudyInstanceUID> or mpps:<SOP Instance UID> "
                    "(<kind>64:<base64url> when the value is not URL-safe). A bare Study Instance UID "
                    "is accepted as an alias of the line holding that study."
                ),
            },
            "label": label,
            "facility_code": {"type": ["string", "null"]},
            "service_line": {"type": "object"},
            "service": {"type": "object"},
            "patient": {
                "type": "object",
                "properties": {
                    k: {"type": ["string", "null"]}
                    for k in (
                        "patient_id",
                        "issuer_of_patient_id",
                        "patient_id_type",  # from IssuerOfPatientID only, never guessed from the shape
                        "citizen_id",
                        "insurance_card_code",
                    )
                },
            },
            "studies": {"type": "array", "items": {"type": "object"}},
            "series": {"type": "array", "items": {"type": "object"}},
            "procedure_steps": {"type": "array", "items": {"type": "object"}},
            "device_timestamps": {
                "type": "object",
                "properties": {
                    "first_acquisition": stamp,
                    "last_acquisition": stamp,
                    "procedure_step_start": {"type": ["string", "null"]},
                },
            },
            "device_acquisition_span": {
                "type": ["object", "null"],
                "description": "First to last image acquisition time written by the device: only part of"
                " the procedure. A span that cannot be measured (one image, series times only) is"
                ' status "unknown" with seconds null and the reason, never 0.',
                "properties": {
                    "status": {"type": "string", "enum": ["measured", "unknown"]},
                    "from": {"type": ["string", "null"]},
                    "to": {"type": ["string", "null"]},
                    "seconds": {"type": ["number", "null"]},
                    "reason": {"type": ["string", "null"]},
                    "basis": {"type": "string"},
                },
            },
            "archive_receipt": {"type": "object"},
            "devices": {"type": "array", "items": {"type": "object"}},
            "people": {"type": "object"},
            "ordering_checks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "check": {"type": "string"},
                        "result": {"enum": ["consistent", "inconsistent", "unknown"]},
                        "timestamps": {"type": "object"},
                    },
                },
            },
            "reference_times": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"reference_only": {"const": True}},
                },
            },
            "claim_fields": {"type": "object", "description": "XML3-shaped fields (PACS extract)"},
            "notes": {"type": "array", "items": {"type": "string"}},
        },
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "PACS appraisal API (acquisition logs)",
            "version": "1",
            "description": (
                "Read-only, audited access to acquisition logs for reconciling imaging service lines. "
                "Reports facts and orderings; never a judgement derived from time."
            ),
        },
        "paths": {
            f"{PREFIX}/records": {
                "get": {
                    "summary": "List records (cursor paging)",
                    "parameters": [
                        *params,
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                        {"name": "format", "in": "query", "schema": {"enum": ["json", "csv", "xlsx", "xml"]}},
                    ],
                    "responses": {
                        "200": {
                            "description": "A page of records",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "label": label,
                                            "count": {"type": "integer"},
                                            "next_cursor": {"type": ["string", "null"]},
                                            "records": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Record"},
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        "400": problem,
                    },
                }
            },
            f"{PREFIX}/records/{{id}}": {
                "get": {
                    "summary": "One record (`?format=html` for a printable view)",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "format", "in": "query", "schema": {"enum": ["json", "html"]}},
                    ],
                    "responses": {
                        "200": {
                            "description": "The record",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Record"}},
                                "text/html": {"schema": {"type": "string"}},
                            },
                        },
                        "404": problem,
                    },
                }
            },
            f"{PREFIX}/devices": {
                "get": {
                    "summary": "Receive delays per device over a window of receipt dates (and a device clock"
                    " seen ahead of the archive, only where the evidence shows it); facts, no verdict",
                    "description": (
                        "Facts only: per device the median and latest offset between the last image "
                        "acquisition time written by the device and its arrival at the archive, the "
                        "time-synchronised flag the device wrote, and whether offsets exceed the "
                        "configured tolerance. Default window: the last 30 days."
                    ),
                    "parameters": [
                        {"name": "from", "in": "query", "schema": {"type": "string"}},
                        {"name": "to", "in": "query", "schema": {"type": "string"}},
                        {"name": "device", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {"description": "Devices", "content": {"application/json": {}}},
                        "400": problem,
                    },
                }
            },
            f"{PREFIX}/records/{{id}}.html": {
                "get": {
                    "summary": "Printable HTML view of one record",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {"description": "HTML", "content": {"text/html": {}}},
                        "404": problem,
                    },
                }
            },
            f"{PREFIX}/export.csv": {
                "get": {
                    "summary": "CSV extract shaped after XML3: UTF-8 with a BOM, the label and notice in"
                    " # header lines (one quoted cell each), values verbatim",
                    "parameters": params,
                    "responses": {"200": {"description": "CSV", "content": {"text/csv": {}}}, "400": problem},
                }
            },
            f"{PREFIX}/export.xlsx": {
                "get": {
                    "summary": "XLSX extract: sheet 'Nhãn - Label' (label in Vietnamese and English, filters,"
                    " generation time, notes), then the records with typed columns (IDs, codes and"
                    " yyyymmddHHMM times as text, counts as integers)",
                    "parameters": params,
                    "responses": {
                        "200": {"description": "XLSX", "content": {EXPORT_MEDIA["xlsx"]: {}}},
                        "400": problem,
                    },
                }
            },
            f"{PREFIX}/export.xml": {
                "get": {
                    "summary": "XML extract shaped after XML3 (root PACS_TRICH_XUAT, label in NHAN)",
                    "parameters": params,
                    "responses": {
                        "200": {"description": "XML", "content": {"application/xml": {}}},
                        "400": problem,
                    },
                }
            },
        },
        "components": {"schemas": {"Record": record}},
    }
    document["paths"].update(appraisal_claims.openapi_paths(problem))
    return document
