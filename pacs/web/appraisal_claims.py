"""Appraisal routes for HIS claims: reconciliation, evidence packs, device register, totals.

Thin edge over :class:`pacs.services.appraisal.Appraisal` (``claims``, ``evidence``, and the
device methods), mounted under ``/api/appraisal/v1`` and, as the issue names them, under
``/api/appraisal`` (role appraiser: the ``/api/appraisal/`` family). A claim upload is read whole
but never beyond :data:`MAX_CLAIM_BODY` (413 with the reason); an XML with a DTD, an entity or an
external reference is refused (400) before anything is expanded.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from pacs.errors import InvalidQuery
from pacs.services.appraisal.filters import FILTERS
from pacs.services.appraisal.reconcile_out import result_csv, result_xlsx
from pacs.web.bodies import read_capped
from pacs.web.errors import problem
from pacs.web.origin import origin_of

if TYPE_CHECKING:
    from pacs.services.appraisal import Appraisal

PREFIXES = ("/api/appraisal/v1", "/api/appraisal")
#: Largest claim upload (XML3, GIAMDINHHS envelope or CSV), bytes.
MAX_CLAIM_BODY = 32 << 20
#: Largest evidence batch request body (a JSON list of ids), bytes.
MAX_BATCH_BODY = 1 << 20
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_STATIC = Path(__file__).parent / "static"
_PAGE = Template((_STATIC / "appraisal-evidence.html").read_text(encoding="utf-8"))
_STYLE = (_STATIC / "appraisal-evidence.css").read_text(encoding="utf-8")


def _service(request: Request) -> Appraisal:
    return request.app.state.appraisal  # type: ignore[no-any-return]


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json; charset=utf-8")


def _download(body: bytes, media: str, name: str) -> Response:
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _run_document(doc: dict[str, Any], fmt: str) -> Response:
    if fmt == "csv":
        return _download(result_csv(doc), "text/csv; charset=utf-8", f"pacs-doi-chieu-{doc['run']}.csv")
    if fmt == "xlsx":
        return _download(result_xlsx(doc), XLSX, f"pacs-doi-chieu-{doc['run']}.xlsx")
    if fmt != "json":
        raise InvalidQuery("format must be json, csv or xlsx")
    return _json(doc)


async def reconcile(request: Request) -> Response:
    """``POST .../reconcile?month=YYYY-MM``: the body is an XML3 (or GIAMDINHHS) or a CSV list."""
    body = await read_capped(request, MAX_CLAIM_BODY)
    if body is None:
        return problem(
            413,
            f"a claim upload is at most {MAX_CLAIM_BODY >> 20} MiB: split it by month",
            {"Connection": "close"},
        )
    params = {k: v for k, v in request.query_params.items() if k in ("month", "from", "to", "scope")}
    svc = _service(request)
    kind = request.headers.get("content-type", "")
    doc = await run_in_threadpool(svc.claims.reconcile, body, kind, params, origin_of(request))
    fmt = request.query_params.get("format", "json")
    return await run_in_threadpool(_run_document, doc, fmt)


async def get_run(request: Request) -> Response:
    """A stored reconciliation run (``?format=json|csv|xlsx``)."""
    svc = _service(request)
    doc = await run_in_threadpool(svc.claims.get_run, request.path_params["run"], origin_of(request))
    return await run_in_threadpool(_run_document, doc, request.query_params.get("format", "json"))


async def unregistered(request: Request) -> Response:
    """Devices seen in DICOM but not in the device register."""
    params = {k: request.query_params[k] for k in ("from", "to") if request.query_params.get(k)}
    return _json(await run_in_threadpool(_service(request).unregistered_devices, params, origin_of(request)))


async def totals(request: Request) -> Response:
    """Studies, series and images per study date and device (``?format=json|csv``)."""
    params = {k: request.query_params[k] for k in FILTERS if request.query_params.get(k)}
    svc, origin = _service(request), origin_of(request)
    fmt = request.query_params.get("format", "json")
    if fmt == "csv":
        return _download(
            await run_in_threadpool(svc.totals_csv, params, origin),
            "text/csv; charset=utf-8",
            "pacs-tong.csv",
        )
    if fmt != "json":
        raise InvalidQuery("format must be json or csv")
    return _json(await run_in_threadpool(svc.device_totals, params, origin))


async def evidence(request: Request) -> Response:
    """The evidence pack of one claim line: ``?format=html`` (default, printable) or ``json``."""
    svc = _service(request)
    doc = await run_in_threadpool(svc.evidence.pack, request.path_params["id"], origin_of(request))
    fmt = request.query_params.get("format", "html")
    if fmt == "json":
        return _json(doc)
    if fmt != "html":
        raise InvalidQuery("format must be html or json")
    return HTMLResponse(evidence_html(doc))


async def evidence_batch(request: Request) -> Response:
    """A zip of evidence packs: ``?ids=a,b`` or a JSON body ``{"ids": [...]}``, or the matched lines
    of a reconciliation run (``run``, optionally ``lines`` = positions)."""
    ids = [i for i in request.query_params.get("ids", "").split(",") if i.strip()]
    run, lines = request.query_params.get("run"), request.query_params.get("lines")
    if request.method == "POST":
        raw = await read_capped(request, MAX_BATCH_BODY)
        if raw is None:
            return problem(413, f"an evidence batch request is at most {MAX_BATCH_BODY >> 20} MiB")
        try:
            data = json.loads(raw.decode("utf-8") or "{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return problem(400, f"the body is not UTF-8 JSON: {exc}")
        if not isinstance(data, dict):
            return problem(400, 'the body is a JSON object {"ids": [...]} or {"run": n, "lines": [...]}')
        ids += [str(i) for i in data.get("ids") or []]
        run = str(data["run"]) if data.get("run") is not None else run
        lines = ",".join(str(n) for n in data.get("lines") or []) or lines
    svc, origin = _service(request), origin_of(request)
    if run:
        if not run.isdigit():
            raise InvalidQuery("run must be a reconciliation run number")
        wanted = {int(n) for n in (lines or "").split(",") if n.strip().isdigit()}
        doc = await run_in_threadpool(svc.claims.get_run, int(run), origin)
        ids += [
            r["pacs"]["record_id"]
            for r in doc["lines"]
            if r["category"] == "matched" and (not wanted or r["position"] in wanted)
        ]
    body = await run_in_threadpool(svc.evidence.batch, ids, origin, evidence_html)
    return _download(body, "application/zip", "pacs-bang-chung.zip")


# ---------------------------------------------------------------- the printable page


def _value(v: Any) -> str:
    if v is None or v == "" or v == []:
        return "—"
    if isinstance(v, list | dict):
        return escape(json.dumps(v, ensure_ascii=False))
    return escape(str(v))


def _table(title: str, rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{_value(v)}</td></tr>" for k, v in rows)
    return f"<h2>{escape(title)}</h2><table>{body}</table>"


def _grid(title: str, heads: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return f"<h2>{escape(title)}</h2><p>— (không có / none)</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    body = "".join("<tr>" + "".join(f"<td>{_value(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<h2>{escape(title)}</h2><table class='grid'><tr>{head}</tr>{body}</table>"


def evidence_html(doc: dict[str, Any]) -> str:
    """The printable page of an evidence pack (print CSS; the browser makes the PDF); the pack's
    canonical JSON is embedded as data so that the hash shown can be checked from the page."""
    p, digest = doc["pack"], doc["sha256"]
    label, dev = p["label"], p["device_time_label"]
    line, service = p["service_line"], p["service"]
    parts = [
        f"<h1>Gói bằng chứng PACS / PACS evidence pack — {escape(p['record_id'])}</h1>",
        f"<p class='notice'>{escape(p['notice'])}</p>",
        f"<div class='device-time'><p lang='vi'>{escape(dev['vi'])}</p>"
        f"<p lang='en'>{escape(dev['en'])}</p></div>",
        f"<div class='label'><p><strong>{escape(label['code'])}</strong></p>"
        f"<p lang='vi'>{escape(label['vi'])}</p><p lang='en'>{escape(label['en'])}</p></div>",
        _table(
            "Dịch vụ / Service line",
            [
                ("Số phiếu chỉ định / Accession number", line.get("accession_number")),
                ("UID ca chụp / Study Instance UID", line.get("study_instance_uids")),
                ("Mã dịch vụ / Service code (MA_DICH_VU)", service.get("service_code")),
                ("Tên dịch vụ / Service name", service.get("service_name")),
                ("Mô tả ca chụp / Study description", service.get("study_description")),
                ("Mã cơ sở KCB / Facility code", p.get("facility_code")),
                ("Mã khoa / Department (MA_KHOA)", p.get("MA_KHOA")),
            ],
        ),
        _table("Người bệnh / Patient", [(k, v) for k, v in p["patient"].items()]),
        _grid(
            "Y lệnh HIS / HIS order",
            ["order", "accession_number", "status", "ordered_at", "performed_at", "reported_at", "source"],
            [
                [
                    o.get(k)
                    for k in (
                        "order",
                        "accession_number",
                        "status",
                        "ordered_at",
                        "performed_at",
                        "reported_at",
                        "source",
                    )
                ]
                for o in p["order"]["his_orders"]
            ],
        ),
        _grid(
            "Các bước thực hiện (MPPS) / Procedure steps (MPPS)",
            ["SOP Instance UID", "status", "start", "end", "station", "AE"],
            [
                [
                    s["sop_instance_uid"],
                    s["status"],
                    s["start"],
                    s["end"],
                    s["performed_station_name"],
                    s["performed_station_ae_title"],
                ]
                for s in p["procedure_steps"]
            ],
        ),
        _table(
            "Số lượng / Counts",
            [("Số loạt ảnh / Series", p["counts"]["series"]), ("Số ảnh / Images", p["counts"]["images"])],
        ),
        _grid(
            "Loạt ảnh / Series",
            ["Series Instance UID", "modality", "ảnh / images", "first", "last", "nguồn / source"],
            [
                [
                    s["series_instance_uid"],
                    s["modality"],
                    s["instance_count"],
                    s["first_acquisition"],
                    s["last_acquisition"],
                    s["acquisition_time_source"],
                ]
                for s in p["series"]
            ],
        ),
        _grid(
            "Thiết bị / Devices",
            [
                "modality",
                "manufacturer",
                "model",
                "serial",
                "station",
                "MA_MAY",
                "MA_MAY 4750",
                "danh mục / register row",
            ],
            [
                [
                    d["modality"],
                    d["manufacturer"],
                    d["manufacturer_model_name"],
                    d["device_serial_number"],
                    d["station_name"],
                    d["machine_code"]["current"],
                    d["machine_code"]["previous"],
                    d["machine_code"].get("register_row"),
                ]
                for d in p["devices"]
            ],
        ),
        _table(
            "Người thực hiện và bác sĩ đọc kết quả / Performer and reading doctor",
            [
                (
                    "Mã người thực hiện / Performer's code (NGUOI_THUC_HIEN)",
                    p["performer"]["NGUOI_THUC_HIEN"],
                ),
                (
                    "Người thực hiện (DICOM) / Performing (DICOM)",
                    [x["dicom_name"] for x in p["performer"]["performing"]],
                ),
                (
                    "Kỹ thuật viên (DICOM) / Operators (DICOM)",
                    [x["dicom_name"] for x in p["performer"]["operators"]],
                ),
                ("Mã bác sĩ đọc kết quả / Reading doctor's code", p["reading_doctor"]["PACS_MA_BS_DOC_KQ"]),
                ("Nguồn / Source", p["reading_doctor"]["source"]),
                ("Bác sĩ chỉ định / Ordering doctor (MA_BAC_SI)", p["order"]["MA_BAC_SI"]),
            ],
        ),
        _table(
            "Kết quả / Report",
            [
                ("Thời điểm có kết quả / Result time (NGAY_KQ)", p["report"]["NGAY_KQ"]),
                ("Nguồn / Source", p["report"]["source"]),
                ("Trạng thái kết quả / Report status", p["report"]["report_status"]),
            ],
        ),
        _grid(
            "Các mốc thời gian và nguồn / Times and their sources",
            ["mã / code", "tiếng Việt", "English", "giá trị / value", "nguồn / source"],
            [[t["code"], t["vi"], t["en"], t["value"], t["source"]] for t in p["times"]],
        ),
        _grid(
            "Kiểm tra thứ tự thời gian / Ordering checks",
            ["check", "result", "timestamps"],
            [[c["check"], c["result"], c["timestamps"]] for c in p["ordering_checks"]],
        ),
        _grid(
            "Thời gian tham chiếu (chỉ để tham khảo) / Reference times (reference only)",
            ["service_code", "reference_minutes", "source", "note"],
            [
                [r["service_code"], r["reference_minutes"], r["source"], r["note"]]
                for r in p["reference_times"]
            ],
        ),
        "<h2>Ghi chú / Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in p["notes"]) + "</ul>",
        _table(
            "Toàn vẹn / Integrity",
            [
                ("Thời điểm lập / Generated at", p["generated_at"]),
                ("Định dạng / Format", p["format"]),
                ("Mã băm SHA-256 của JSON chuẩn hoá của gói / SHA-256 of the pack's canonical JSON", digest),
            ],
        ),
        f"<p class='hash'>SHA-256: {escape(digest)}</p>",
        "<script type='application/json' id='pack'>"
        + json.dumps(p, ensure_ascii=False, sort_keys=True).replace("<", "\\u003c")
        + "</script>",
    ]
    title = f"PACS — {p['record_id']}"
    return _PAGE.substitute(title=escape(title), style=_STYLE, body="\n".join(parts))


def routes() -> list[BaseRoute]:
    """The claim routes under each prefix."""
    out: list[BaseRoute] = []
    for prefix in PREFIXES:
        out += [
            Route(f"{prefix}/reconcile", reconcile, methods=["POST"]),
            Route(f"{prefix}/reconcile/{{run:int}}", get_run, methods=["GET"]),
            Route(f"{prefix}/devices/unregistered", unregistered, methods=["GET"]),
            Route(f"{prefix}/totals", totals, methods=["GET"]),
            Route(f"{prefix}/evidence.zip", evidence_batch, methods=["GET", "POST"]),
            Route(f"{prefix}/evidence/{{id}}", evidence, methods=["GET"]),
        ]
    return out


def openapi_paths(problem: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI paths of these routes (under ``/api/appraisal/v1``)."""
    p = PREFIXES[0]

    def q(name: str, description: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "schema": {"type": "string"}, "description": description}

    period = [q("month", "YYYY-MM"), q("from", "YYYY-MM-DD"), q("to", "YYYY-MM-DD")]
    return {
        f"{p}/reconcile": {
            "post": {
                "summary": "Reconcile an HIS claim (XML3, GIAMDINHHS envelope or CSV list) with the"
                " archive: per claim line matched / not_found / ambiguous (facts about records), and PACS"
                " studies with no claim line; the run is stored",
                "parameters": [
                    *period,
                    q("scope", "all: every line, not only imaging"),
                    q("format", "json|csv|xlsx"),
                ],
                "requestBody": {"content": {"application/xml": {}, "text/csv": {}}},
                "responses": {"200": {"description": "The run"}, "400": problem, "413": problem},
            }
        },
        f"{p}/reconcile/{{run}}": {
            "get": {
                "summary": "A stored run",
                "parameters": [q("format", "json|csv|xlsx")],
                "responses": {"200": {"description": "The run"}, "404": problem},
            }
        },
        f"{p}/devices/unregistered": {
            "get": {
                "summary": "Devices seen in DICOM but not in the device register",
                "parameters": period[1:],
                "responses": {"200": {"description": "Devices"}},
            }
        },
        f"{p}/totals": {
            "get": {
                "summary": "Studies, series and images per study date and device",
                "parameters": [q("format", "json|csv")],
                "responses": {"200": {"description": "Totals"}},
            }
        },
        f"{p}/evidence/{{id}}": {
            "get": {
                "summary": "Evidence pack of one claim line (accession, study UID or record id): printable"
                " HTML or JSON, with the SHA-256 of its canonical JSON",
                "parameters": [q("format", "html|json")],
                "responses": {"200": {"description": "The pack"}, "404": problem},
            }
        },
        f"{p}/evidence.zip": {
            "get": {
                "summary": "A zip of evidence packs (ids=a,b or run=N&lines=1,2)",
                "responses": {"200": {"description": "zip"}, "400": problem},
            },
            "post": {
                "summary": 'A zip of evidence packs ({"ids": [...]} or {"run": N, "lines": [...]})',
                "responses": {"200": {"description": "zip"}, "400": problem},
            },
        },
    }
