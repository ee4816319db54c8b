"""A reconciliation run as a table: CSV (UTF-8 with a BOM, ``#`` header cells) and XLSX.

One row per claim line, then one per PACS study with no claim line; the category in Vietnamese
then English; the claim's fields as the HIS sent them; the matched PACS study's ids, day,
service, MA_MAY, series and images; the candidates of an ambiguous line; the facts.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from pacs.services.appraisal.exports import csv_cell, csv_comment
from pacs.services.appraisal.reconcile import CATEGORIES, NOTICE
from pacs.services.appraisal.xlsx import simple_workbook

RESULTS_SHEET = "Đối chiếu - Reconciliation"
#: (code, Vietnamese heading, English heading, kind).
RESULT_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("DONG", "Dòng", "Row", "int"),
    ("PHAN_LOAI", "Phân loại (mã)", "Category (code)", "text"),
    ("PHAN_LOAI_TEN", "Phân loại", "Category", "text"),
    ("MA_LK", "Mã liên kết (HIS)", "Episode key (HIS)", "text"),
    ("STT", "Số thứ tự (XML3)", "Row number (XML3)", "text"),
    ("MA_DICH_VU", "Mã dịch vụ (XML3)", "Service code (XML3)", "text"),
    ("TEN_DICH_VU", "Tên dịch vụ (XML3)", "Service name (XML3)", "text"),
    ("NGAY_YL", "Thời điểm y lệnh (XML3)", "Order time (XML3)", "text"),
    ("NGAY_TH_YL", "Thời điểm thực hiện y lệnh (XML3)", "Time the order was carried out (XML3)", "text"),
    ("NGAY_KQ", "Thời điểm có kết quả (XML3)", "Result time (XML3)", "text"),
    ("MA_MAY", "Mã máy (XML3)", "Machine code (XML3)", "text"),
    ("SO_PHIEU", "Số phiếu chỉ định (XML3)", "Accession number (XML3)", "text"),
    ("KHOA_DOI_CHIEU", "Khóa đối chiếu", "Matching key", "text"),
    ("PACS_MA_BAN_GHI", "Mã bản ghi PACS", "PACS record id", "text"),
    ("PACS_SO_PHIEU", "Số phiếu chỉ định (PACS)", "Accession number (PACS)", "text"),
    ("PACS_STUDY_UID", "UID ca chụp", "Study Instance UID", "text"),
    ("PACS_NGAY_CHUP", "Ngày chụp (PACS)", "Study date (PACS)", "text"),
    ("PACS_MA_DICH_VU", "Mã dịch vụ (danh mục PACS)", "Service code (PACS register)", "text"),
    ("PACS_MA_MAY", "Mã máy (danh mục thiết bị PACS)", "Machine code (PACS device register)", "text"),
    ("PACS_SO_LOAT_ANH", "Số loạt ảnh", "Series", "int"),
    ("PACS_SO_ANH", "Số ảnh", "Images", "int"),
    ("CA_CHUP_CO_THE", "Các ca chụp có thể tương ứng", "Candidate PACS records", "text"),
    ("SU_KIEN", "Sự kiện ghi nhận", "Facts", "text"),
)
RESULT_CODES = tuple(f[0] for f in RESULT_FIELDS)


def result_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The flat rows of a run document."""
    out = []
    for r in [*doc["lines"], *doc["pacs_only"]]:
        claim = r.get("claim") or {}
        pacs = r.get("pacs") or {}
        others = r.get("candidates") or r.get("same_patient_and_service_other_days") or []
        out.append(
            {
                "DONG": r["position"],
                "PHAN_LOAI": r["category"],
                "PHAN_LOAI_TEN": r["category_text"],
                **{k: claim.get(k) or "" for k in ("MA_LK", "STT", "MA_DICH_VU", "TEN_DICH_VU", "MA_MAY")},
                **{k: claim.get(k) or "" for k in ("NGAY_YL", "NGAY_TH_YL", "NGAY_KQ")},
                "SO_PHIEU": claim.get("accession_number") or "",
                "KHOA_DOI_CHIEU": r.get("matched_by_text") or "",
                "PACS_MA_BAN_GHI": pacs.get("record_id") or "",
                "PACS_SO_PHIEU": pacs.get("accession_number") or "",
                "PACS_STUDY_UID": ";".join(pacs.get("study_instance_uids") or []),
                "PACS_NGAY_CHUP": pacs.get("study_date") or "",
                "PACS_MA_DICH_VU": pacs.get("service_code") or "",
                "PACS_MA_MAY": ";".join(d["MA_MAY"] for d in pacs.get("devices") or [] if d["MA_MAY"]),
                "PACS_SO_LOAT_ANH": pacs.get("series") if pacs else None,
                "PACS_SO_ANH": pacs.get("images") if pacs else None,
                "CA_CHUP_CO_THE": ";".join(o["record_id"] for o in others),
                "SU_KIEN": " | ".join(r.get("facts") or []),
            }
        )
    return out


def _head(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    label = doc["label"]
    rows: list[tuple[str, Any]] = [
        ("Nhãn (tiếng Việt)", label["vi"]),
        ("Label (English)", label["en"]),
        ("Mã nhãn / Label code", label["code"]),
        ("Ghi chú / Notice", NOTICE),
        ("Lần đối chiếu / Run", str(doc["run"])),
        ("Kỳ / Period", f"{doc['period']['from']}..{doc['period']['to']}"),
        ("Thời điểm / Created at", doc["created_at"]),
        ("Tệp tải lên (SHA-256) / Upload (SHA-256)", doc["upload"]["sha256"]),
        ("Dòng XML3 dịch vụ hình ảnh / Imaging claim lines", doc["counts"]["claim_lines"]),
        ("Dòng XML3 khác (không liệt kê) / Other claim lines (not listed)", doc["counts"]["outside_imaging"]),
    ]
    rows += [(f"{vi} / {en}", doc["counts"].get(code, 0)) for code, (vi, en) in CATEGORIES.items()]
    return rows


def result_csv(doc: dict[str, Any]) -> bytes:
    """The run as CSV (BOM, ``#`` header cells, the codes, one row per result)."""
    out = io.StringIO()
    out.write("\ufeff")
    for item, value in _head(doc):
        out.write(csv_comment(f"# {item}: {value}") + "\n")
    columns = "; ".join(f"{c} = {vi} / {en}" for c, vi, en, _ in RESULT_FIELDS)
    out.write(csv_comment(f"# cot: {columns}") + "\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULT_CODES)
    for row in result_rows(doc):
        writer.writerow([csv_cell("" if row[c] is None else row[c]) for c in RESULT_CODES])
    return out.getvalue().encode("utf-8")


def result_xlsx(doc: dict[str, Any]) -> bytes:
    """The run as XLSX: the label sheet, then the results (IDs, codes and times as text)."""
    return simple_workbook(_head(doc), [(RESULTS_SHEET, RESULT_FIELDS, result_rows(doc))])
