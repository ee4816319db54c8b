"""STOW-RS under ``/dicom-web`` (PS3.18 10.5): ``POST /studies[/{study}]``.

The body is spooled to a temporary file within ``[http] max_upload_mb`` (a larger Content-Length
gets 413 before anything is read), split into parts, and every part stored through the archive's
one store path (:mod:`pacs.services.dicomweb`); the response lists ReferencedSOPSequence and
FailedSOPSequence with the status table's FailureReasons (:mod:`pacs.dicom.status`).
"""

from __future__ import annotations

import tempfile
from typing import Any, BinaryIO, cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from pacs.dicom import status as status_table
from pacs.errors import NotAcceptable, StorageUnavailable
from pacs.services.dicomweb import StowOutcome
from pacs.web.dicomweb import _root, _service, _uid, dicom_json
from pacs.web.errors import HttpProblem
from pacs.web.multipart import (
    FileSlice,
    MediaRange,
    MultipartError,
    parse_accept,
    split_parts,
)
from pacs.web.origin import origin_of

# ---------------------------------------------------------------- STOW-RS (PS3.18 10.5)


async def _spool(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HttpProblem(400, "invalid Content-Length") from None
        if size > limit:
            raise HttpProblem(
                413, f"the request body ({size} bytes) exceeds the {limit >> 20} MiB upload limit"
            )
    tmp_dir = request.app.state.settings.storage.path / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fh = tempfile.TemporaryFile(dir=tmp_dir)  # noqa: SIM115 - closed by the caller
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise HttpProblem(413, f"the request body exceeds the {limit >> 20} MiB upload limit")
            fh.write(chunk)
        fh.flush()
    except OSError as exc:  # disk full while spooling: retry later (503), like C-STORE 0xA700
        fh.close()
        raise StorageUnavailable(f"cannot receive the request body: {exc.strerror}") from exc
    except BaseException:
        fh.close()
        raise
    return fh


async def store_instances(request: Request) -> Response:
    """Store instances from ``multipart/related; type="application/dicom"`` (PS3.18 10.5)."""
    study = _uid(request, "study") if "study" in request.path_params else None
    content_type = request.headers.get("content-type", "")
    ct = parse_accept(content_type)[0] if content_type else MediaRange("")
    if ct.media_type != "multipart/related" or ct.related_type not in ("", "application/dicom"):
        raise HttpProblem(
            415, f'STOW-RS takes multipart/related; type="application/dicom", not {content_type[:120]!r}'
        )
    boundary = ct.params.get("boundary")
    if not boundary:
        raise HttpProblem(400, "the multipart Content-Type has no boundary")
    settings = request.app.state.settings
    fh = await _spool(request, settings.http.max_upload_mb * 1024 * 1024)
    try:
        try:
            parts = await run_in_threadpool(split_parts, fh, boundary)
        except MultipartError as exc:
            raise HttpProblem(400, f"malformed multipart body: {exc}") from exc
        if not parts:
            raise HttpProblem(400, "the request holds no body parts")
        origin = origin_of(request)
        outcomes: list[StowOutcome] = []
        readable: list[BinaryIO] = []
        for part in parts:
            pt = part.content_type.media_type
            if pt not in ("application/dicom", "application/octet-stream"):
                outcomes.append(
                    StowOutcome("", "", error=NotAcceptable(f"part of type {pt} is not application/dicom"))
                )
                continue
            # Not wrapped in io.BufferedReader: pydicom reopens a BufferedReader by its name to read
            # deferred (large) header values, which fails for a part of a spooled body.
            readable.append(cast(BinaryIO, FileSlice(fh, part.start, part.end)))  # a binary file
        outcomes += await run_in_threadpool(_service(request).store_instances, iter(readable), study, origin)
    finally:
        fh.close()
    return _stow_response(request, outcomes)


def _stow_response(request: Request, outcomes: list[StowOutcome]) -> Response:
    root = _root(request)
    referenced, failed = [], []
    studies = set()
    for o in outcomes:
        if o.result is not None:
            r = o.result
            studies.add(r.study_instance_uid)
            item: dict[str, Any] = {
                "00081150": {"vr": "UI", "Value": [r.sop_class_uid]},
                "00081155": {"vr": "UI", "Value": [r.sop_instance_uid]},
                "00081190": {
                    "vr": "UR",
                    "Value": [
                        f"{root}/studies/{r.study_instance_uid}/series/{r.series_instance_uid}"
                        f"/instances/{r.sop_instance_uid}"
                    ],
                },
            }
            warning = status_table.STORE_OUTCOMES[r.outcome].stow_warning
            if warning is not None:
                item["00081196"] = {"vr": "US", "Value": [warning]}  # WarningReason (replaced)
            referenced.append(item)
        else:
            failed.append(
                {
                    "00081150": {"vr": "UI", "Value": [o.sop_class_uid]} if o.sop_class_uid else {"vr": "UI"},
                    "00081155": {"vr": "UI", "Value": [o.sop_instance_uid]}
                    if o.sop_instance_uid
                    else {"vr": "UI"},
                    "00081197": {  # FailureReason: the C-STORE status (PS3.18 10.5.3)
                        "vr": "US",
                        "Value": [status_table.stow_failure_reason(o.error, study_mismatch=o.mismatch)],
                    },
                }
            )
    body: dict[str, Any] = {}
    if len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{root}/studies/{next(iter(studies))}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    status = status_table.stow_http_status(len(referenced), [o.error for o in outcomes if o.result is None])
    reasons = "; ".join(f"{o.sop_instance_uid or '?'}: {o.error}" for o in outcomes if o.error)[:500]
    request.state.detail = f"stored={len(referenced)} failed={len(failed)}" + (
        f" ({reasons})" if reasons else ""
    )
    response = dicom_json(request, body, status=status)
    if status == status_table.HTTP_SERVICE_UNAVAILABLE:
        response.headers["Retry-After"] = "30"  # the store can be sent again (RFC 9110 10.2.3)
    return response
