"""Domain errors -> HTTP problem details (RFC 9457, ``application/problem+json``).

Which HTTP status a domain error gets is the status table's (:mod:`pacs.dicom.status`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pacs.dicom.status import HTTP_SERVICE_UNAVAILABLE, answer
from pacs.errors import PacsError

log = logging.getLogger("pacs.web")

_TITLES = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HttpProblem(Exception):
    """Raised by the web edge for errors that are about HTTP itself (bad parameters, media types)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def problem(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    """An ``application/problem+json`` response with a human-readable reason."""
    body = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status, "detail": detail}
    body.update(extra)
    return Response(
        json.dumps(body, ensure_ascii=False),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def status_for(exc: PacsError) -> int:
    """The HTTP status of a domain error (the one status table, :mod:`pacs.dicom.status`)."""
    return answer(exc).http


async def handle_pacs_error(request: Request, exc: Exception) -> Response:
    """Domain error -> problem+json."""
    assert isinstance(exc, PacsError)
    status = status_for(exc)
    headers = {"Retry-After": "30"} if status == HTTP_SERVICE_UNAVAILABLE else None
    request.state.reason = str(exc)
    return problem(status, str(exc), headers)


async def handle_http_problem(request: Request, exc: Exception) -> Response:
    """Edge error -> problem+json."""
    assert isinstance(exc, HttpProblem)
    request.state.reason = exc.detail
    return problem(exc.status, exc.detail, exc.headers)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 -> problem+json."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 304:
        return Response(status_code=304, headers=exc.headers)
    return problem(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """Anything else: logged with its traceback, a 500 without internals for the client."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "internal error; see the server log")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    PacsError: handle_pacs_error,
    HttpProblem: handle_http_problem,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
