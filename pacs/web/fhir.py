"""FHIR R4 routes under ``/fhir`` (ImagingStudy search and read, the CapabilityStatement) and the
IHE Invoke Image Display link ``/viewer`` (IHE RAD TF-1 IID, RAD-106).

Thin: unpack the request, call :class:`pacs.services.fhir.Fhir` on a worker thread, answer
``application/fhir+json``. Every error under ``/fhir`` (ours, the router's, the sign-in guard's)
leaves as an ``OperationOutcome`` with the reason (:class:`FhirOutcomes`). ``/fhir/metadata`` is
public; the rest has the access rules of DICOMweb search (:mod:`pacs.web.auth`).

``/viewer`` takes ``studyUID``, or ``patientID`` (with ``issuer``), or ``identifier=system|value``
and redirects (303) to the viewer's own address for the study, or for the list of the patient's
studies (the viewer signs in and looks the identifier up itself: no patient data in the redirect).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs.dicom.text import is_valid_uid
from pacs.model import PatientIdentifier
from pacs.services.fhir import FHIR_JSON, Fhir, Links
from pacs.services.identifiers import classify
from pacs.web.errors import HttpProblem
from pacs.web.origin import origin_of

PREFIX = "/fhir"
#: OperationOutcome issue codes (FHIR R4 IssueType) by HTTP status.
_ISSUE = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
          406: "not-supported", 413: "too-costly", 503: "transient"}  # fmt: skip


def operation_outcome(status: int, detail: str) -> dict[str, Any]:
    """An ``OperationOutcome`` with one issue: error severity, the code of ``status``, the reason."""
    code = _ISSUE.get(status, "exception" if status >= 500 else "processing")
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "fatal" if status >= 500 else "error", "code": code, "diagnostics": detail}],
    }


def fhir_json(payload: dict[str, Any], status: int = 200) -> Response:
    """A FHIR JSON response (never cached: it names patients)."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(body, status, media_type=FHIR_JSON, headers={"Cache-Control": "no-store"})


class FhirOutcomes:
    """Under ``/fhir``, turn ``application/problem+json`` answers (from anywhere in the stack)
    into ``OperationOutcome`` resources with the same status, headers and reason."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        chunks: list[bytes] = []

        async def send_wrapper(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                ctype = MutableHeaders(raw=list(message.get("headers", []))).get("content-type", "")
                if ctype.startswith("application/problem+json"):
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                try:
                    detail = str(json.loads(b"".join(chunks)).get("detail", ""))
                except ValueError:
                    detail = ""
                status = int(held["status"])
                body = json.dumps(operation_outcome(status, detail), ensure_ascii=False).encode("utf-8")
                headers = MutableHeaders(raw=list(held.get("headers", [])))
                headers["content-type"] = FHIR_JSON
                headers["content-length"] = str(len(body))
                await send({"type": "http.response.start", "status": status, "headers": headers.raw})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_wrapper)


def _service(request: Request) -> Fhir:
    return request.app.state.fhir  # type: ignore[no-any-return]


def _links(request: Request) -> Links:
    public = request.app.state.settings.http.public_url
    base = (public or str(request.base_url)).rstrip("/")
    return Links(fhir=base + PREFIX, dicomweb=base + "/dicom-web", viewer=base + "/viewer")


def _lenient(request: Request) -> bool:
    return "handling=lenient" in request.headers.get("prefer", "").replace(" ", "").lower()


async def metadata(request: Request) -> Response:
    """``GET /fhir/metadata``: the CapabilityStatement."""
    return fhir_json(_service(request).capability(_links(request)))


async def search_imaging_study(request: Request) -> Response:
    """``GET /fhir/ImagingStudy?...``: a searchset Bundle."""
    params = list(request.query_params.multi_items())
    bundle = await run_in_threadpool(
        _service(request).search_imaging_studies,
        params,
        origin_of(request),
        _links(request),
        lenient=_lenient(request),
    )
    shown = [e["resource"]["id"] for e in bundle.get("entry", [])]
    request.state.audit_studies = shown  # the HTTP audit row names their patients too
    request.state.detail = f"total={bundle['total']} shown={len(shown)}"
    return fhir_json(bundle)


async def read_imaging_study(request: Request) -> Response:
    """``GET /fhir/ImagingStudy/{id}``."""
    resource_id = request.path_params["id"]
    study = await run_in_threadpool(
        _service(request).read_imaging_study, resource_id, origin_of(request), _links(request)
    )
    request.state.audit_studies = [study["id"]]
    return fhir_json(study)


async def viewer_link(request: Request) -> Response:
    """``GET /viewer?studyUID=...`` | ``?patientID=...&issuer=...`` | ``?identifier=system|value``
    (IHE IID): 303 to the viewer on that study, or on the patient's study list."""
    p = request.query_params
    if p.get("studyUID"):
        uid = p["studyUID"].split(",")[0].strip()
        if not is_valid_uid(uid):
            raise HttpProblem(400, f"studyUID: {uid[:80]!r} is not a valid UID")
        return RedirectResponse(f"./#/study/{uid}", status_code=303)
    token = p.get("identifier", "").strip()
    if not token and p.get("patientID", "").strip():
        pid, issuer = p["patientID"].strip(), p.get("issuer", "").strip()
        if not issuer:  # a bare Patient ID: the studies of every issuer's patient with it, each apart
            return RedirectResponse(f"./#/?PatientID={quote(pid, safe='')}", status_code=303)
        token = classify(PatientIdentifier(pid, issuer))[0].token
    if not token:
        raise HttpProblem(400, "give studyUID, patientID (with issuer) or identifier=system|value")
    return RedirectResponse(f"./#/?identifier={quote(token, safe='')}", status_code=303)


def routes() -> list[BaseRoute]:
    """The FHIR mount and the viewer link."""
    return [
        Mount(
            PREFIX,
            routes=[
                Route("/metadata", metadata, methods=["GET"]),
                Route("/ImagingStudy", search_imaging_study, methods=["GET"]),
                Route("/ImagingStudy/{id}", read_imaging_study, methods=["GET"]),
            ],
        ),
        Route("/viewer", viewer_link, methods=["GET"]),
    ]
