"""Evidence packs: what the archive holds for one claim line, in one document with an integrity hash.

A pack is built from the line's appraisal record: the HIS order, the MPPS steps, the series and
image counts, the devices (with the MA_MAY of the register row in force on the study date), the
performer and the reading doctor, the report time, every time with its source, the label and
the standard sentence that device time is only part of the procedure (Vietnamese and English).
``sha256`` is the SHA-256 of the pack's canonical JSON (:func:`canonical`: keys sorted, no
spaces, UTF-8); anyone can recompute it from the JSON (:func:`verify`). A pack reports facts; it
never draws a conclusion from a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pacs.dicom.text import is_valid_uid
from pacs.errors import InvalidQuery, NotFound
from pacs.model import Origin
from pacs.services.appraisal.exports import EXTRACT_NOTE_EN, EXTRACT_NOTE_VI
from pacs.services.appraisal.lines import LINE_KEY, line_key
from pacs.services.appraisal.times import VIETNAM

if TYPE_CHECKING:
    from pacs.services.appraisal.service import Appraisal

FORMAT = "PACS_BANG_CHUNG_v1"
#: The standard sentence every pack carries, beside the configured label.
DEVICE_TIME_LABEL = {
    "vi": (
        "Thời gian ghi nhận từ thiết bị chỉ là một phần của quy trình kỹ thuật, không phải toàn bộ quy trình."
    ),
    "en": "Device time is only part of the procedure, not the whole technical procedure.",
}
#: At most this many packs in one batch.
MAX_BATCH = 500
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def canonical(pack: dict[str, Any]) -> bytes:
    """The canonical JSON of a pack: keys sorted, no spaces, UTF-8 (what ``sha256`` is over)."""
    return json.dumps(pack, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def verify(document: dict[str, Any]) -> bool:
    """Whether ``document["sha256"]`` is the SHA-256 of ``canonical(document["pack"])``."""
    return hashlib.sha256(canonical(document["pack"])).hexdigest() == document.get("sha256")


def _times(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every time of a record: (code, Vietnamese, English, value, source)."""
    claim, sources = rec["claim_fields"], rec.get("claim_field_sources") or {}
    stamps, receipt = rec["device_timestamps"], rec["archive_receipt"]
    first, last = stamps.get("first_acquisition") or {}, stamps.get("last_acquisition") or {}
    out = [
        (
            "NGAY_YL",
            "Thời điểm y lệnh (HIS)",
            "Order time (HIS)",
            claim.get("NGAY_YL"),
            sources.get("NGAY_YL"),
        ),
        (
            "NGAY_TH_YL",
            "Thời điểm thực hiện y lệnh (HIS)",
            "Time the order was carried out (HIS)",
            claim.get("NGAY_TH_YL"),
            sources.get("NGAY_TH_YL"),
        ),
        (
            "NGAY_KQ",
            "Thời điểm có kết quả (HIS)",
            "Result time (HIS)",
            claim.get("NGAY_KQ"),
            sources.get("NGAY_KQ"),
        ),
        (
            "first_acquisition",
            "Thu nhận ảnh đầu tiên (thiết bị ghi)",
            "First image acquisition (written by the device)",
            first.get("value"),
            ", ".join(x for x in (first.get("source"), first.get("timezone_source")) if x) or None,
        ),
        (
            "last_acquisition",
            "Thu nhận ảnh cuối cùng (thiết bị ghi)",
            "Last image acquisition (written by the device)",
            last.get("value"),
            ", ".join(x for x in (last.get("source"), last.get("timezone_source")) if x) or None,
        ),
    ]
    for i, step in enumerate(rec["procedure_steps"], 1):
        out.append(
            (
                f"mpps_{i}_start",
                f"Bắt đầu bước MPPS {i}",
                f"MPPS step {i} start",
                step["start"],
                step["start_source"],
            )
        )
        out.append(
            (
                f"mpps_{i}_end",
                f"Kết thúc bước MPPS {i}",
                f"MPPS step {i} end",
                step["end"],
                step["end_source"],
            )
        )
    out += [
        (
            "first_received",
            "PACS nhận ảnh đầu tiên",
            "First image received by the archive",
            receipt["first_received"],
            receipt["source"],
        ),
        (
            "last_received",
            "PACS nhận ảnh cuối cùng",
            "Last image received by the archive",
            receipt["last_received"],
            receipt["source"],
        ),
    ]
    return [{"code": c, "vi": vi, "en": en, "value": v or None, "source": s} for c, vi, en, v, s in out]


def build_pack(rec: dict[str, Any], generated_at: str) -> dict[str, Any]:
    """The evidence pack of one record (see the module notes)."""
    claim, sources = rec["claim_fields"], rec.get("claim_field_sources") or {}
    series = rec["series"]
    his = rec.get("his_orders") or []
    return {
        "format": FORMAT,
        "notice": f"{EXTRACT_NOTE_VI} / {EXTRACT_NOTE_EN}",
        "label": rec["label"],
        "device_time_label": DEVICE_TIME_LABEL,
        "facility_code": rec.get("facility_code"),
        "generated_at": generated_at,
        "record_id": rec["id"],
        "service_line": rec["service_line"],
        "service": rec["service"],
        "patient": rec["patient"],
        "order": {
            "his_orders": his,
            "MA_BAC_SI": claim.get("MA_BAC_SI"),
            "referring": rec["people"]["referring"],
        },
        "procedure_steps": [
            {k: v for k, v in s.items() if k != "performed_series"} for s in rec["procedure_steps"]
        ],
        "counts": {"series": len(series), "images": sum(s.get("instance_count") or 0 for s in series)},
        "series": [
            {
                k: s.get(k)
                for k in (
                    "series_instance_uid",
                    "modality",
                    "instance_count",
                    "first_acquisition",
                    "last_acquisition",
                    "acquisition_time_source",
                )
            }
            for s in series
        ],
        "devices": [
            {
                **{
                    k: d.get(k)
                    for k in (
                        "modality",
                        "manufacturer",
                        "manufacturer_model_name",
                        "device_serial_number",
                        "station_name",
                        "sending_ae_titles",
                    )
                },
                "machine_code": d["machine_code"],
            }
            for d in rec["devices"]
        ],
        "MA_MAY": claim.get("MA_MAY"),
        "MA_KHOA": claim.get("MA_KHOA"),
        "performer": {
            "NGUOI_THUC_HIEN": claim.get("NGUOI_THUC_HIEN"),
            "performing": rec["people"]["performing"],
            "operators": rec["people"]["operators"],
        },
        "reading_doctor": {
            "PACS_MA_BS_DOC_KQ": claim.get("PACS_MA_BS_DOC_KQ"),
            "source": sources.get("PACS_MA_BS_DOC_KQ"),
            "reading": rec["people"]["reading"],
        },
        "report": {
            "NGAY_KQ": claim.get("NGAY_KQ"),
            "source": sources.get("NGAY_KQ"),
            "report_status": next((o["report_status"] for o in his if o.get("report_status")), None),
        },
        "times": _times(rec),
        "device_acquisition_span": rec["device_acquisition_span"],
        "ordering_checks": rec["ordering_checks"],
        "reference_times": rec["reference_times"],
        "notes": rec["notes"],
    }


class EvidencePacks:
    """Evidence packs over the appraisal records (every pack is audited by the record read)."""

    def __init__(self, appraisal: Appraisal) -> None:
        self.appraisal = appraisal

    def _record(self, identifier: str, origin: Origin) -> dict[str, Any]:
        key = identifier.strip()
        if not key:
            raise InvalidQuery("give an accession number, a Study Instance UID or a record id")
        tries = [key] if LINE_KEY.fullmatch(key) else []
        if is_valid_uid(key):
            tries.append(key)
        tries.append(line_key("acc", key))
        for t in dict.fromkeys(tries):
            try:
                return self.appraisal.get_record(t, origin, what="evidence")
            except NotFound:
                continue
        raise NotFound(f"no appraisal record for {identifier[:80]!r}")

    def pack(self, identifier: str, origin: Origin) -> dict[str, Any]:
        """``{"pack": ..., "sha256": ...}`` for an accession number, a study UID or a record id."""
        rec = self._record(identifier, origin)
        now = self.appraisal.clock().astimezone(VIETNAM).isoformat()
        pack = build_pack(rec, now)
        return {"pack": pack, "sha256": hashlib.sha256(canonical(pack)).hexdigest()}

    def batch(
        self, identifiers: Sequence[str], origin: Origin, render: Callable[[dict[str, Any]], str]
    ) -> bytes:
        """A zip of packs: ``<id>.html`` (``render``) and ``<id>.json`` per identifier found,
        ``manifest.json`` (each pack's hash) and the identifiers not found."""
        ids = list(dict.fromkeys(i.strip() for i in identifiers if i.strip()))
        if not ids:
            raise InvalidQuery("give at least one accession number, Study Instance UID or record id")
        if len(ids) > MAX_BATCH:
            raise InvalidQuery(f"at most {MAX_BATCH} evidence packs in one batch, got {len(ids)}")
        out = io.BytesIO()
        manifest: dict[str, Any] = {"format": FORMAT, "packs": [], "not_found": []}
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for n, ident in enumerate(ids, 1):
                try:
                    doc = self.pack(ident, origin)
                except NotFound:
                    manifest["not_found"].append(ident)
                    continue
                name = f"{n:04d}-{_SAFE.sub('_', ident)[:80]}"
                z.writestr(f"{name}.json", json.dumps(doc, ensure_ascii=False, indent=1))
                z.writestr(f"{name}.html", render(doc))
                manifest["packs"].append({"id": ident, "file": name, "sha256": doc["sha256"]})
            z.writestr("manifest.json", json.dumps(manifest, ensure_ascii=False, indent=1))
        return out.getvalue()
