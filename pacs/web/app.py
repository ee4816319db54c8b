"""The starlette application: ``/dicom-web`` (PS3.18), ``/healthz`` and the viewer at ``/``.

Routes are one explicit list (:func:`routes`); other modules add theirs by extending it. Services
are built once over the runtime's archive and kept on ``app.state``. Every response carries the
security headers of :class:`SecurityHeaders`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs.web import appraisal, auth, dicomweb, fhir, instances, measurements, orders, reuse
from pacs.web.errors import EXCEPTION_HANDLERS
from pacs.web.hosts import HostCheck, default_hosts

log = logging.getLogger("pacs.http")

STATIC_DIR = Path(__file__).parent / "static"

#: The Content-Security-Policy of every response (what counts is the documents: the viewer and the
#: printable appraisal record). The viewer loads only its own script and stylesheet and talks to its
#: own origin; it shows images from ``blob:`` URLs and has a ``data:`` icon. The appraisal record
#: page has an inline ``<style>``: hence ``'unsafe-inline'`` for styles, never for scripts.
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'self'",
    ]
)
#: HTTP Strict Transport Security (RFC 6797), sent only on responses that went over TLS.
HSTS = "max-age=31536000"
_DICOM_JSON = ("application/dicom+json", 'multipart/related; type="application/dicom+json"')


class SecurityHeaders:
    """Security headers on every response: ``X-Content-Type-Options: nosniff``, :data:`CSP`
    (kept when a route set its own), ``Referrer-Policy: no-referrer``, :data:`HSTS` over TLS, and
    ``Cache-Control: no-store`` on patient data as JSON: DICOM JSON (QIDO-RS, metadata) and
    everything under ``/api`` (which also covers its CSV and XML exports)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        api = path == "/api" or path.startswith("/api/")
        https = scope.get("scheme") == "https"

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = CSP
                if https:
                    headers["Strict-Transport-Security"] = HSTS
                ctype = headers.get("content-type", "").lower()
                if api or ctype.startswith(_DICOM_JSON):
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_wrapper)


class PacsApp(Starlette):
    """Starlette with :class:`SecurityHeaders` outside everything, even the error middleware
    that answers 500 for an unhandled exception."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


class RequestLog:
    """One structured log line per request: method, path (with its UIDs), status, time, reason."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        state = scope.setdefault("state", {})

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # The client went away, or pacs.web.timeouts cut off its late body (answering 408
            # itself): nobody is left to answer and there is nothing to trace. Logged as 499
            # (nginx's "client closed request") unless a response had started.
            status = 499 if status == 500 else status
            state["reason"] = state.get("reason") or "the client left before its request was complete"
        finally:
            client = scope.get("client") or ("", 0)
            query = loggable_query(scope.get("query_string", b""))
            reason = state.get("reason") or ""
            detail = state.get("detail") or ""
            log.log(
                logging.WARNING if status >= 500 else logging.INFO,
                "http %s %s%s status=%d ms=%.1f client=%s%s%s",
                scope.get("method"),
                scope.get("path"),
                f"?{query}" if query else "",
                status,
                (time.perf_counter() - start) * 1000,
                client[0],
                f" {detail}" if detail else "",
                f" reason={reason!r}" if reason else "",
            )


#: Query parameters whose values are logged; every other value (patient names and IDs, accession
#: numbers, anything a client adds) is logged as ``…``: the log is not an access-controlled store.
_LOGGED_VALUES = frozenset(
    {
        "limit", "offset", "includefield", "fuzzymatching", "format", "Modality", "ModalitiesInStudy",
        "StudyDate", "StudyTime", "SeriesNumber", "InstanceNumber", "QueryRetrieveLevel", "page", "size",
        "from", "to", "date_from", "date_to", "quality", "viewport", "window", "accept",
    }
)  # fmt: skip


def loggable_query(raw: bytes) -> str:
    """A query string for the log: every parameter name, values only of :data:`_LOGGED_VALUES`."""
    if not raw:
        return ""
    parts = []
    for pair in raw.decode("latin-1").split("&")[:30]:
        key, _, value = pair.partition("=")
        name = unquote_plus(key)[:40]
        parts.append(f"{name}={value[:60]}" if name in _LOGGED_VALUES else f"{name}=…")
    return "&".join(parts)


async def health(request: Request) -> JSONResponse:
    """Liveness probe."""
    return JSONResponse({"status": "ok"})


def routes(rt: Any) -> list[BaseRoute]:
    """Every route of the application, the static viewer last."""
    out: list[BaseRoute] = [
        Route("/healthz", health),
        Mount("/dicom-web", routes=dicomweb.routes()),
        *fhir.routes(),
        *appraisal.routes(),
        *orders.routes(),
        *reuse.routes(),
        *instances.routes(),
        *measurements.routes(),
        *auth.routes(),
    ]
    if STATIC_DIR.is_dir():
        # The viewer's own files are text: gzip them (pixel data elsewhere is never gzipped).
        viewer = GZipMiddleware(StaticFiles(directory=STATIC_DIR, html=True), minimum_size=1024)
        out.append(Mount("/", app=viewer, name="viewer"))
    return out


def create_app(rt: Any) -> Starlette:
    """Build the web application over a :class:`pacs.runtime.Runtime`."""
    settings = rt.settings
    hosts = set(settings.http.allowed_hosts) or default_hosts(settings)
    middleware = [
        Middleware(RequestLog),
        Middleware(HostCheck, allowed=hosts),
        Middleware(fhir.FhirOutcomes),
        Middleware(reuse.ImportedLabel, fed=rt.federation),  # "from another facility" in QIDO-RS
    ]
    if settings.http.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.http.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["ETag", "Content-Type", "Content-Length", "Warning"],
                max_age=600,
            )
        )
    middleware.append(
        Middleware(auth.AccessControl, auth=rt.auth, audit=rt.audit, enabled=settings.auth_enabled)
    )
    app = PacsApp(
        routes=routes(rt),
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=reuse.lifespan(rt),  # the prefetch worker
    )
    auth.install(app, rt)
    app.state.settings = settings
    app.state.archive = rt.archive
    app.state.appraisal = rt.appraisal
    app.state.orders = rt.orders
    app.state.dicomweb = rt.dicomweb
    app.state.renderer = rt.renderer
    app.state.fhir = rt.fhir
    app.state.federation = rt.federation
    app.state.static_dir = STATIC_DIR
    return app
