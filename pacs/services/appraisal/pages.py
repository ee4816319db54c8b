"""The printable HTML view of one record (headings and row names Vietnamese first)."""

from __future__ import annotations

from html import escape
from typing import Any

from pacs.services.appraisal.exports import EXTRACT_NOTE_EN, EXTRACT_NOTE_VI


def render_html(rec: dict[str, Any]) -> str:
    """Printable HTML of one record: the label first, then facts in tables, headings and row
    names Vietnamese first (``"<vi> / <en>"``)."""

    def row(k: str, v: Any) -> str:
        return f"<tr><th>{escape(k)}</th><td>{escape('' if v is None else str(v))}</td></tr>"

    def table(title: str, items: dict[str, Any]) -> str:
        return f"<h2>{escape(title)}</h2><table>{''.join(row(k, v) for k, v in items.items())}</table>"

    label = rec["label"]
    parts = [
        "<!doctype html><html lang='vi'><head><meta charset='utf-8'>",
        f"<title>PACS — {escape(rec['id'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
        "th,td{border:1px solid #999;padding:2px 6px;text-align:left;vertical-align:top}"
        ".label{border:2px solid #333;padding:.5em;margin-bottom:1em}@media print{body{margin:0}}</style>",
        "</head><body>",
        f"<p><strong>{escape(EXTRACT_NOTE_VI)} / {escape(EXTRACT_NOTE_EN)}</strong></p>",
        f"<div class='label'><p><strong>{escape(label['code'])}</strong></p>"
        f"<p lang='vi'>{escape(label['vi'])}</p><p lang='en'>{escape(label['en'])}</p></div>",
        table("Dịch vụ / Service", {**rec["service_line"], **rec["service"]}),
        table("Người bệnh / Patient", rec["patient"]),
        table("Các trường theo bảng XML3 / Claim-shaped fields (XML3)", rec["claim_fields"]),
        table(
            "Nguồn của các trường / Sources of the claim-shaped fields", rec.get("claim_field_sources") or {}
        ),
    ]
    stamps = rec["device_timestamps"]
    first, last = stamps["first_acquisition"] or {}, stamps["last_acquisition"] or {}
    first_vi, last_vi = "Thu nhận ảnh đầu tiên", "Thu nhận ảnh cuối cùng"
    step_vi, zone_vi = "Bắt đầu bước thực hiện (MPPS)", "nguồn múi giờ"
    times = {
        f"{first_vi} / first_acquisition": first.get("value"),
        f"{first_vi}: nguồn / source": first.get("source"),
        f"{first_vi}: {zone_vi} / timezone source": first.get("timezone_source"),
        f"{last_vi} / last_acquisition": last.get("value"),
        f"{last_vi}: nguồn / source": last.get("source"),
        f"{last_vi}: {zone_vi} / timezone source": last.get("timezone_source"),
        f"{step_vi} / procedure_step_start": stamps["procedure_step_start"],
        f"{step_vi}: nguồn / source": stamps.get("procedure_step_start_source"),
        f"{step_vi}: {zone_vi} / timezone source": stamps.get("procedure_step_start_timezone_source"),
        "PACS nhận ảnh đầu tiên / first_received (archive)": rec["archive_receipt"]["first_received"],
        "PACS nhận ảnh cuối cùng / last_received (archive)": rec["archive_receipt"]["last_received"],
        "Nguồn thời điểm nhận / received source": rec["archive_receipt"]["source"],
    }
    span = rec["device_acquisition_span"]
    if span:
        measured = span.get("seconds") is not None
        span_name = "Khoảng thu nhận ảnh của thiết bị / device_acquisition_span"
        times[f"{span_name} (giây / s)"] = span["seconds"] if measured else "không xác định / unknown"
        if not measured:
            times[f"{span_name}: lý do / reason"] = span.get("reason")
    parts.append(table("Mốc thời gian thiết bị / Device timestamps", times))
    for i, step in enumerate(rec["procedure_steps"], 1):
        parts.append(
            table(
                f"Bước thực hiện (MPPS) {i} / Procedure step (MPPS) {i}",
                {k: v for k, v in step.items() if k != "performed_series"},
            )
        )
    for i, dev in enumerate(rec["devices"], 1):
        flat = {k: v for k, v in dev.items() if k not in ("machine_code", "clock", "series")}
        flat.update({f"MA_MAY {k}": v for k, v in dev["machine_code"].items()})
        flat.update({f"clock {k}": v for k, v in dev["clock"].items()})
        parts.append(table(f"Thiết bị / Device {i}", flat))
    parts.append(
        table(
            "Nhân sự / People",
            {
                f"{role}: {p['dicom_name']}": p["licence_code"]
                or "(chưa có trong danh mục nhân sự / not in the staff register)"
                for role, group in rec["people"].items()
                for p in group
            },
        )
    )
    parts.append(
        table(
            "Kiểm tra thứ tự thời gian / Ordering checks",
            {c["check"]: f"{c['result']} {c['timestamps']}" for c in rec["ordering_checks"]},
        )
    )
    for ref in rec["reference_times"]:
        parts.append(table("Thời gian tham chiếu (chỉ để tham khảo) / Reference time (reference only)", ref))
    parts.append(
        "<h2>Ghi chú / Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in rec["notes"]) + "</ul>"
    )
    parts.append("</body></html>")
    return "".join(parts)
