"""The REST door of the scheduled workflow, for an HIS that cannot speak HL7 v2 (``/api/orders``,
``/api/patients``; role ``orders`` or admin).

Thin edge over :class:`pacs.services.orders.Orders` (``app.state.orders``): JSON in, the same
plain types the HL7 door builds, JSON out. A request is answered only after its transaction
committed; an ``Idempotency-Key`` header makes a resend harmless (the first result is returned,
nothing is applied twice). Invalid content is 422 with the reason, a change to an unknown order
404, a body that is not JSON 400, one over 1 MiB 413.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pacs.errors import InvalidOrder, InvalidQuery
from pacs.services.orders import Orders
from pacs.services.orders.model import (
    Applied,
    Code,
    Control,
    MessageId,
    OrderMessage,
    OtherId,
    PatientInfo,
    PatientMerge,
    PatientUpdate,
    Report,
    ScheduledStep,
)
from pacs.web.bodies import read_capped
from pacs.web.errors import problem
from pacs.web.origin import origin_of

MAX_BODY = 1 << 20


def _service(request: Request) -> Orders:
    return request.app.state.orders  # type: ignore[no-any-return]


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json; charset=utf-8")


async def _body(request: Request) -> dict[str, Any] | Response:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        return problem(415, "send the order as application/json")
    raw = await read_capped(request, MAX_BODY)
    if raw is None:
        return problem(413, f"an order request body is at most {MAX_BODY >> 20} MiB", {"Connection": "close"})
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return problem(400, f"the body is not UTF-8 JSON: {exc}")
    if not isinstance(data, dict):
        return problem(400, "the body must be a JSON object")
    return data


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str | int):
        raise InvalidOrder(f"{key}: expected a string")
    return str(value)


def _obj(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidOrder(f"{key}: expected an object")
    return value


def _code(data: dict[str, Any], key: str) -> Code | None:
    c = _obj(data, key)
    return Code(_str(c, "value"), _str(c, "scheme"), _str(c, "meaning")) if c else None


def patient_of(data: dict[str, Any]) -> PatientInfo:
    """A patient object: ``patient_id``, ``issuer``, ``name`` (DICOM PN), ``birth_date``,
    ``sex``, ``other_ids`` [{``value``, ``issuer``, ``type``}]."""
    others = data.get("other_ids") or []
    if not isinstance(others, list) or not all(isinstance(o, dict) for o in others):
        raise InvalidOrder("patient.other_ids: expected a list of objects")
    return PatientInfo(
        patient_id=_str(data, "patient_id"),
        issuer_of_patient_id=_str(data, "issuer"),
        name=_str(data, "name"),
        birth_date=_str(data, "birth_date"),
        sex=_str(data, "sex"),
        other_ids=tuple(OtherId(_str(o, "value"), _str(o, "issuer"), _str(o, "type")) for o in others),
    )


def order_of(data: dict[str, Any], control: Control | None = None) -> OrderMessage:
    """An order object (see the README's "Orders from the HIS") as an :class:`OrderMessage`."""
    try:
        ctl = control or Control(_str(data, "control") or "NW")
    except ValueError:
        raise InvalidOrder(f"control must be one of {', '.join(c.value for c in Control)}") from None
    steps = data.get("steps") or []
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise InvalidOrder("steps: expected a list of objects")
    if len(steps) > 100:
        raise InvalidOrder("steps: at most 100 scheduled steps per order")
    rp = _obj(data, "requested_procedure")
    return OrderMessage(
        control=ctl,
        placer_order_number=_str(data, "placer_order_number"),
        filler_order_number=_str(data, "filler_order_number"),
        accession_number=_str(data, "accession_number"),
        patient=patient_of(_obj(data, "patient")) if data.get("patient") else None,
        requested_procedure_id=_str(rp, "id"),
        requested_procedure_description=_str(rp, "description"),
        requested_procedure_code=_code(rp, "code"),
        study_instance_uid=_str(data, "study_instance_uid"),
        steps=tuple(
            ScheduledStep(
                step_id=_str(s, "step_id"),
                modality=_str(s, "modality"),
                station_ae_title=_str(s, "station_ae_title"),
                station_name=_str(s, "station_name"),
                location=_str(s, "location"),
                start=_str(s, "start"),
                description=_str(s, "description"),
                protocol_code=_code(s, "protocol_code"),
                performing_physician=_str(s, "performing_physician"),
                study_instance_uid=_str(s, "study_instance_uid"),
                accession_number=_str(s, "accession_number"),
                requested_procedure_id=_str(s, "requested_procedure_id"),
            )
            for s in steps
        ),
        referring_physician=_str(data, "referring_physician"),
        requesting_physician=_str(data, "requesting_physician"),
        ordered_at=_str(data, "ordered_at"),
        ordered_at_source="REST ordered_at",
        priority=_str(data, "priority"),
        order_status=_str(data, "status"),
        admission_id=_str(data, "admission_id"),
        patient_location=_str(data, "patient_location"),
        facility_code=_str(data, "facility_code"),
        reason=_str(data, "reason"),
    )


def _message_id(request: Request) -> MessageId | None:
    key = request.headers.get("idempotency-key", "").strip()
    if not key:
        return None
    if len(key) > 200:
        raise InvalidOrder("Idempotency-Key: at most 200 characters")
    who = origin_of(request)
    return MessageId(sender=f"rest:{who.user or who.address}", control_id=key)


def _applied(a: Applied) -> dict[str, Any]:
    return {
        "kind": a.kind,
        "orders": [k[2:] for k in a.order_keys],
        "steps": a.steps,
        "duplicate": a.duplicate,
        "detail": a.detail,
    }


def _key(number: str) -> str:
    """``/api/orders/{number}``: a placer order number, or ``filler:NUMBER`` for the filler's."""
    return f"F:{number[7:]}" if number.startswith("filler:") else f"P:{number}"


async def post_order(request: Request) -> Response:
    """``POST /api/orders``: a new order (``control`` NW, the default) or XO / CA / DC / SC."""
    data = await _body(request)
    if isinstance(data, Response):
        return data
    msg = order_of(data)
    svc = _service(request)
    applied = await run_in_threadpool(svc.apply, msg, origin_of(request), _message_id(request))
    order = await run_in_threadpool(svc.get_order, applied.order_keys[0])
    created = msg.control is Control.NEW and not applied.duplicate
    return _json({"applied": _applied(applied), "order": order}, 201 if created else 200)


async def list_orders(request: Request) -> Response:
    """``GET /api/orders?status=&accession=&patient_id=&limit=&offset=``."""
    q = request.query_params
    try:
        limit = min(int(q.get("limit", "100")), 1000)
        offset = int(q.get("offset", "0"))
    except ValueError:
        raise InvalidQuery("limit and offset must be integers") from None
    if limit < 1 or offset < 0:
        raise InvalidQuery("limit must be at least 1 and offset not negative")
    found = await run_in_threadpool(
        _service(request).list_orders,
        limit=limit,
        offset=offset,
        status=q.get("status") or None,
        accession_number=q.get("accession") or None,
        patient_id=q.get("patient_id") or None,
    )
    return _json({"orders": found, "limit": limit, "offset": offset})


async def get_order(request: Request) -> Response:
    """``GET /api/orders/{number}``: the order with its steps and their states."""
    return _json(await run_in_threadpool(_service(request).get_order, _key(request.path_params["number"])))


async def cancel_order(request: Request) -> Response:
    """``DELETE /api/orders/{number}``: cancel (CA) an order that has not started."""
    key = _key(request.path_params["number"])
    msg = OrderMessage(
        control=Control.CANCEL,
        placer_order_number=key[2:] if key.startswith("P:") else "",
        filler_order_number=key[2:] if key.startswith("F:") else "",
    )
    applied = await run_in_threadpool(_service(request).apply, msg, origin_of(request), _message_id(request))
    return _json({"applied": _applied(applied)})


async def post_report(request: Request) -> Response:
    """``POST /api/orders/{number}/report``: result time, reporting doctor, performed time, text."""
    data = await _body(request)
    if isinstance(data, Response):
        return data
    key = _key(request.path_params["number"])
    report = Report(
        placer_order_number=key[2:] if key.startswith("P:") else "",
        filler_order_number=key[2:] if key.startswith("F:") else "",
        reported_at=_str(data, "reported_at"),
        reported_at_source="REST reported_at",
        reporting_doctor=_str(data, "reporting_doctor"),
        status=_str(data, "status") or "F",
        performed_at=_str(data, "performed_at"),
        performed_at_source="REST performed_at",
        text=_str(data, "text"),
    )
    applied = await run_in_threadpool(
        _service(request).record_report, report, origin_of(request), _message_id(request)
    )
    return _json({"applied": _applied(applied)})


async def update_patient(request: Request) -> Response:
    """``POST /api/patients/update``: ``{"patient": {...}}`` with the new demographics (as ADT^A08)."""
    data = await _body(request)
    if isinstance(data, Response):
        return data
    upd = PatientUpdate(patient_of(_obj(data, "patient")))
    applied = await run_in_threadpool(
        _service(request).update_patient, upd, origin_of(request), _message_id(request)
    )
    return _json({"applied": _applied(applied)})


async def merge_patients(request: Request) -> Response:
    """``POST /api/patients/merge``: ``{"surviving": {...}, "prior_patient_id", "prior_issuer"}``
    (as ADT^A40)."""
    data = await _body(request)
    if isinstance(data, Response):
        return data
    merge = PatientMerge(
        patient_of(_obj(data, "surviving")), _str(data, "prior_patient_id"), _str(data, "prior_issuer")
    )
    applied = await run_in_threadpool(
        _service(request).merge_patients, merge, origin_of(request), _message_id(request)
    )
    return _json({"applied": _applied(applied)})


def routes() -> list[BaseRoute]:
    """The orders API routes."""
    return [
        Route("/api/orders", post_order, methods=["POST"]),
        Route("/api/orders", list_orders, methods=["GET"]),
        Route("/api/orders/{number:path}/report", post_report, methods=["POST"]),
        Route("/api/orders/{number:path}", get_order, methods=["GET"]),
        Route("/api/orders/{number:path}", cancel_order, methods=["DELETE"]),
        Route("/api/patients/update", update_patient, methods=["POST"]),
        Route("/api/patients/merge", merge_patients, methods=["POST"]),
    ]
