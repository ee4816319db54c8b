"""Sign-in, route guards and the web audit trail.

:class:`AccessControl` is an ASGI middleware in front of every route. It classifies a request
into an endpoint family (:func:`classify`); ``/healthz``, ``/fhir/metadata`` and the viewer's
static files are public; everything under ``/dicom-web``, ``/fhir`` and ``/api`` needs a bearer
token (RFC 6750) when authentication is on: none or an invalid one gives 401 with
``WWW-Authenticate: Bearer``, a role without the family gives 403. Every request for patient
data (and every refusal) is appended to the audit trail with who, from where, what
(study/series/instance UIDs from the path, query parameters), when and the HTTP status;
appraisal calls are audited by the appraisal service.

Routes: ``POST /api/auth/login`` (JSON or form ``username``/``password`` -> ``{"access_token",
"token_type": "bearer", "expires_in"}``, rate-limited per client address; a body over 16 KiB gets 413
before it is read further), ``GET /api/auth/me``,
``GET /api/audit`` (admins; ``format=json|xml`` for PS3.15 A.5 audit messages).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs.model import Origin
from pacs.services.audit import Audit, event_filter
from pacs.services.auth import Auth, Family, Principal, RateLimiter, allowed, refusal_reason
from pacs.web.bodies import read_capped
from pacs.web.errors import problem

log = logging.getLogger("pacs.web.auth")

LOGIN_PATH = "/api/auth/login"
#: Largest sign-in request body, bytes (a user name and a password, JSON or form fields).
LOGIN_MAX_BODY = 16384
_UID = r"([0-9.]{1,64})"
_IDS = re.compile(rf"/studies/{_UID}(?:/series/{_UID}(?:/instances/{_UID})?)?")
_PIXELS = re.compile(r"/(frames|rendered|thumbnail|bulkdata)(/|$)")
_PROXIED = re.compile(r"^/api/reuse/peers/[^/]+/dicom-web/(.*)$")
_SEARCH = re.compile(rf"^/dicom-web(?:/studies/{_UID}(?:/series/{_UID})?)?/(studies|series|instances)/?$")


def classify(method: str, path: str) -> Family | None:
    """The endpoint family of a request; None for public paths (viewer files, ``/healthz``)."""
    if path == "/dicom-web" or path.startswith("/dicom-web/"):
        if method == "POST":
            return Family.STORE
        if _PIXELS.search(path):
            return Family.PIXELS
        if path.rstrip("/").endswith("/metadata"):
            return Family.METADATA
        if _SEARCH.match(path):
            return Family.SEARCH
        return Family.RETRIEVE
    if path == "/fhir" or path.startswith("/fhir/"):  # FHIR ImagingStudy: as DICOMweb search
        return None if path == "/fhir/metadata" else Family.SEARCH
    if path.startswith("/api/reuse/"):  # federation (issue 18)
        proxied = _PROXIED.match(path)
        if proxied:  # a peer's DICOMweb through us: as our own of the same path
            return classify(method, "/dicom-web/" + proxied.group(1))
        return Family.RETRIEVE if method == "POST" else Family.SEARCH
    if path == "/api" or path.startswith("/api/"):
        if path.startswith("/api/appraisal/"):
            return Family.APPRAISAL
        if path == "/api/audit" or path.startswith("/api/audit/"):
            return Family.AUDIT
        if path.startswith("/api/auth/"):
            return Family.SESSION
        if path.startswith(("/api/orders", "/api/patients/")):
            return Family.ORDERS
        if path.startswith("/api/measurements/"):  # a reader's measurements: saved as an SR, read back
            return Family.STORE if method == "POST" else Family.METADATA
        return Family.ADMIN
    return None


def uids_of(path: str) -> tuple[str | None, str | None, str | None]:
    """Study, series and SOP Instance UIDs named in a DICOMweb path."""
    m = _IDS.search(path)
    return (m.group(1), m.group(2), m.group(3)) if m else (None, None, None)


def bearer(scope: Scope) -> str | None:
    """The bearer token of the ``Authorization`` header, if any."""
    for k, v in scope.get("headers") or []:
        if k == b"authorization":
            scheme, _, value = v.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
    return None


def _client(scope: Scope) -> str:
    c = scope.get("client")
    return str(c[0]) if c else ""


class AccessControl:
    """Authenticate, authorise and audit every request (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, auth: Auth, audit: Audit, enabled: bool) -> None:
        self.app = app
        self.auth = auth
        self.audit = audit
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        family = classify(method, path)
        if family is None or (path == LOGIN_PATH and method == "POST"):
            await self.app(scope, receive, send)  # public; the login handler audits itself
            return
        principal: Principal | None = None
        token = bearer(scope)
        if token and (self.enabled or family is Family.SESSION):
            principal = await run_in_threadpool(self.auth.authenticate, token)
        if principal is not None:
            scope["user"] = principal
        refusal: Response | None = None
        if self.enabled and principal is None:
            err = ', error="invalid_token"' if token else ""
            refusal = problem(
                401,
                "sign in first: POST /api/auth/login, then send Authorization: Bearer <token>"
                if not token
                else "the token is invalid or expired; sign in again",
                {"WWW-Authenticate": f'Bearer realm="pacs"{err}'},
            )
        elif self.enabled and principal is not None and not allowed(principal.role, family):
            refusal = problem(403, refusal_reason(principal.role, family))
        status = 500

        audited = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, audited
            if message["type"] == "http.response.start":
                status = message["status"]
                # No patient data leaves before its audit row is durable (in the database, or in
                # the spool while the database is away).
                audited = True
                await run_in_threadpool(self._audit, scope, family, principal, status, True)
            await send(message)

        try:
            if refusal is not None:
                reason = "unauthenticated" if refusal.status_code == 401 else "forbidden"
                scope.setdefault("state", {})["reason"] = reason
                await refusal(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            if not audited:  # no response began (an error, the client left): still recorded
                self._audit(scope, family, principal, status)

    def _audit(
        self, scope: Scope, family: Family, principal: Principal | None, status: int, durable: bool = False
    ) -> None:
        if family is Family.SESSION and status < 400:
            return  # not patient data
        if family is Family.APPRAISAL and status < 400:
            return  # the appraisal service audits its own calls
        study, series, sop = uids_of(scope["path"])
        query = scope.get("query_string", b"").decode("latin-1")
        params = dict(parse_qsl(query)) if query else {}
        details: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
        }
        if query:
            details["query"] = query[:1000]
        pid = params.get("PatientID") or params.get("00100020")
        if pid:
            details["patient_id"] = pid[:64]
        if principal is not None:
            details["role"] = principal.role
        if status in (401, 403):
            details["reason"] = "unauthenticated" if status == 401 else "forbidden"
        shown = (scope.get("state") or {}).get("audit_studies")
        if shown:
            details["studies"] = list(shown)[:1000]  # the audit names their patients
        try:
            self.audit.record(
                f"http.{family.value}",
                Origin(address=_client(scope), user=principal.name if principal else "", protocol="http"),
                study_instance_uid=study or params.get("StudyInstanceUID"),
                series_instance_uid=series,
                sop_instance_uid=sop,
                durable=durable,
                **details,
            )
        except Exception:  # never fail the response because of the audit queue
            log.exception("cannot queue the audit row for %s %s", scope["method"], scope["path"])


# ---------------------------------------------------------------------- routes


async def login(request: Request) -> Response:
    """``POST /api/auth/login``: credentials -> bearer token (RFC 6750), rate-limited per address."""
    st = request.app.state
    address = request.client.host if request.client else ""
    wait = st.login_limiter.hit(address)
    if wait:
        st.audit.record(
            "auth.login_failed",
            Origin(address=address, protocol="http"),
            reason="rate limited",
            status=429,
        )
        request.state.reason = "login rate limit"
        return problem(
            429,
            "too many sign-in attempts from this address; try again later",
            {"Retry-After": str(int(wait) + 1)},
        )
    body = await _login_body(request)
    if body is None:
        request.state.reason = "login body too large"
        return problem(
            413,
            f"a sign-in request body is at most {LOGIN_MAX_BODY >> 10} KiB",
            {"Connection": "close"},  # the rest of the body is not read: drop the connection
        )
    name, password = _credentials(request, body)
    if not name or not password:
        return problem(400, "send username and password (JSON or form fields)")
    token = await run_in_threadpool(st.auth.login, name, password, Origin(address=address, protocol="http"))
    if token is None:
        st.audit.record(
            "auth.login_failed",
            Origin(address=address, user=name[:64], protocol="http"),
            reason="wrong user name or password, or the user is disabled",
            status=401,
        )
        log.warning("login failed for %r from %s", name[:64], address)
        request.state.reason = "login failed"
        return problem(401, "wrong user name or password", {"WWW-Authenticate": 'Bearer realm="pacs"'})
    st.audit.record(
        "auth.login",
        Origin(address=address, user=token.user.name, protocol="http"),
        role=token.user.role,
        status=200,
    )
    log.info("login %s (%s) from %s", token.user.name, token.user.role, address)
    return JSONResponse(
        {
            "access_token": token.access_token,
            "token_type": "bearer",
            "expires_in": token.expires_in,
            "user": token.user.name,
            "role": token.user.role,
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


async def _login_body(request: Request) -> bytes | None:
    """The sign-in request body, or None once it is known to exceed :data:`LOGIN_MAX_BODY`."""
    return await read_capped(request, LOGIN_MAX_BODY)


def _credentials(request: Request, body: bytes) -> tuple[str, str]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if ctype == "application/json":
            data = json.loads(body or b"{}")
            if not isinstance(data, dict):
                return "", ""
        else:  # application/x-www-form-urlencoded (OAuth 2.0 password grant style)
            data = dict(parse_qsl(body.decode("utf-8")))
    except (ValueError, UnicodeDecodeError):
        return "", ""
    name, password = data.get("username"), data.get("password")
    return (name if isinstance(name, str) else "", password if isinstance(password, str) else "")


async def logout(request: Request) -> Response:
    """``POST /api/auth/logout``: revoke the bearer token of the request (204); the viewer's
    sign-out button calls it, so a token copied from the browser stops working too."""
    token = bearer(request.scope)
    if not token:
        return problem(400, "send the token to revoke: Authorization: Bearer <token>")
    revoked = await run_in_threadpool(request.app.state.auth.logout, token)
    return Response(status_code=204 if revoked else 404)


async def me(request: Request) -> Response:
    """``GET /api/auth/me``: who the token belongs to (and whether sign-in is required)."""
    user = request.scope.get("user")
    body: dict[str, Any] = {"auth_required": request.app.state.auth_enabled}
    if isinstance(user, Principal):
        expires = user.expires_at.isoformat() if user.expires_at else None
        body.update(user=user.name, role=user.role, expires_at=expires)
    return JSONResponse(body)


async def audit_log(request: Request) -> Response:
    """``GET /api/audit``: the audit trail (admins). ``format``: rows (default), json, xml (PS3.15 A.5)."""
    params = dict(request.query_params)
    try:
        flt = event_filter(params)
        limit = min(max(1, int(params.get("limit") or 1000)), 10000)
    except ValueError as exc:
        return problem(400, f"bad audit query: {exc}")
    fmt = params.get("format", "rows")
    if fmt not in ("rows", "json", "xml"):
        return problem(400, "format must be rows, json or xml")
    audit: Audit = request.app.state.audit
    rows = await run_in_threadpool(audit.query, flt, limit)
    if fmt == "xml":
        return Response(audit.to_xml(rows), media_type="application/xml")
    if fmt == "json":
        return Response(audit.to_json(rows), media_type="application/json")
    out = [{**r, "at": r["at"].isoformat()} for r in rows]
    return JSONResponse({"events": out, "next_after": rows[-1]["id"] if len(rows) == limit else None})


def routes() -> list[BaseRoute]:
    """Sign-in and audit routes."""
    return [
        Route(LOGIN_PATH, login, methods=["POST"]),
        Route("/api/auth/me", me, methods=["GET"]),
        Route("/api/auth/logout", logout, methods=["POST"]),
        Route("/api/audit", audit_log, methods=["GET"]),
    ]


def install(app: Any, rt: Any) -> None:
    """Put what the routes need on ``app.state``."""
    s = rt.settings
    app.state.auth = rt.auth
    app.state.audit = rt.audit
    app.state.auth_enabled = s.auth_enabled
    app.state.login_limiter = RateLimiter(s.auth.login_attempts, float(s.auth.login_window_seconds))
