"""Reading an HIS claim for reconciliation: an XML3 table, a GIAMDINHHS envelope, or a CSV list.

- **XML3** (Decision 130/QĐ-BYT as amended by 4750/QĐ-BYT: ``CHITIEU_CHITIET_DVKT_VTYT /
  DSACH_CHI_TIET_DVKT / CHI_TIET_DVKT``): one claim line per ``CHI_TIET_DVKT`` (``MA_LK``,
  ``STT``, ``MA_DICH_VU``, ``TEN_DICH_VU``, ``MA_KHOA``, ``MA_BAC_SI``, ``NGUOI_THUC_HIEN``,
  ``NGAY_YL``, ``NGAY_TH_YL``, ``NGAY_KQ``, ``MA_MAY``...). An Accession Number is read from an
  extension element when the HIS adds one (:data:`ACCESSION_ELEMENTS`), patient identifiers from
  ``MA_BN`` / ``SO_CCCD`` / ``MA_THE_BHYT`` on the line or from the XML1 ``TONG_HOP`` of its MA_LK.
- **GIAMDINHHS** (the envelope the HIS sends): each ``FILEHOSO`` of type XML1 or XML3, its
  ``NOIDUNGFILE`` base64-decoded and read as above.
- **CSV** (UTF-8, a header row): columns ``MA_LK``, ``accession_number`` (or ``so_phieu``),
  ``MA_DICH_VU``, ``ngay`` (or ``NGAY_TH_YL`` / ``NGAY_YL``), ``patient_id`` (or ``MA_BN``), ``STT``.

Parsing is defensive (defusedxml: no DTD, no entity, no external reference; elements cleared as
they are read), and refuses what it cannot read with the reason (:class:`ClaimUploadError`): a
hostile document stops at its DTD, before any expansion.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from pacs.errors import InvalidQuery

#: Extension elements an HIS may add to a line with the Accession Number of the imaging order.
ACCESSION_ELEMENTS = ("PACS_SO_PHIEU_CHI_DINH", "SO_PHIEU_CHI_DINH", "ACCESSION_NUMBER", "SO_PHIEU")
PATIENT_ELEMENTS = ("MA_BN", "SO_CCCD", "MA_THE_BHYT")
XML3_FIELDS = (
    "MA_LK",
    "STT",
    "MA_DICH_VU",
    "TEN_DICH_VU",
    "MA_KHOA",
    "MA_BAC_SI",
    "NGUOI_THUC_HIEN",
    "NGAY_YL",
    "NGAY_TH_YL",
    "NGAY_KQ",
    "MA_MAY",
)
_CSV_ALIASES = {
    "ma_lk": "MA_LK",
    "stt": "STT",
    "ma_dich_vu": "MA_DICH_VU",
    "service_code": "MA_DICH_VU",
    "accession_number": "accession",
    "accession": "accession",
    "so_phieu": "accession",
    "so_phieu_chi_dinh": "accession",
    "pacs_so_phieu_chi_dinh": "accession",
    "ngay": "NGAY_TH_YL",
    "date": "NGAY_TH_YL",
    "ngay_th_yl": "NGAY_TH_YL",
    "ngay_yl": "NGAY_YL",
    "ngay_kq": "NGAY_KQ",
    "ma_may": "MA_MAY",
    "patient_id": "MA_BN",
    "ma_bn": "MA_BN",
    "so_cccd": "SO_CCCD",
    "ma_the_bhyt": "MA_THE_BHYT",
}
#: At most this many claim lines in one upload.
MAX_LINES = 500_000


class ClaimUploadError(InvalidQuery):
    """An upload that cannot be read as a claim (the reason says why and where)."""


@dataclass
class ClaimLine:
    """One claim line as the HIS wrote it (``fields``: the XML3 elements by name)."""

    position: int
    fields: dict[str, str]
    accession: str = ""
    patient_ids: tuple[str, ...] = ()

    def get(self, name: str) -> str:
        """A field's text ("" when absent)."""
        return self.fields.get(name, "")

    def date(self) -> str:
        """The line's day (YYYYMMDD): NGAY_TH_YL, else NGAY_YL, else NGAY_KQ; "" when none."""
        for name in ("NGAY_TH_YL", "NGAY_YL", "NGAY_KQ"):
            digits = "".join(c for c in self.get(name) if c.isdigit())
            if len(digits) >= 8:
                return digits[:8]
        return ""


@dataclass
class ClaimUpload:
    """The claim lines of an upload and what the document was."""

    kind: str  # xml3, giamdinhhs, csv
    lines: list[ClaimLine] = field(default_factory=list)
    patients: dict[str, tuple[str, ...]] = field(default_factory=dict)  # MA_LK -> ids (XML1)


def _text(elem: ET.Element) -> str:
    return (elem.text or "").strip()


def _child(elem: ET.Element, name: str) -> str:
    found = elem.find(name)
    return _text(found) if found is not None else ""


def _record(elem: ET.Element) -> dict[str, str]:
    return {child.tag: _text(child) for child in elem}


def _events(data: bytes) -> Iterator[tuple[str, ET.Element]]:
    try:
        yield from iterparse(io.BytesIO(data), events=("end",), forbid_dtd=True)
    except DefusedXmlException as exc:
        raise ClaimUploadError(
            f"the XML is refused: {type(exc).__name__} (no DTD, entity or external reference is read)"
        ) from None
    except ET.ParseError as exc:
        raise ClaimUploadError(f"the body is not well-formed XML: {exc}") from None


def _read_xml(data: bytes, upload: ClaimUpload, depth: int = 0) -> None:
    for _event, elem in _events(data):
        tag = elem.tag
        if tag == "CHI_TIET_DVKT":
            rec = _record(elem)
            _add(upload, rec)
            elem.clear()
        elif tag == "TONG_HOP":
            rec = _record(elem)
            ids = tuple(rec[k] for k in PATIENT_ELEMENTS if rec.get(k))
            if rec.get("MA_LK") and ids:
                upload.patients[rec["MA_LK"]] = ids
            elem.clear()
        elif tag == "FILEHOSO":
            if depth:
                raise ClaimUploadError("a FILEHOSO inside a FILEHOSO is not read")
            upload.kind = "giamdinhhs"
            kind = _child(elem, "LOAIHOSO").upper()
            if kind in ("XML1", "XML3"):
                try:
                    inner = base64.b64decode(_child(elem, "NOIDUNGFILE"), validate=True)
                except (binascii.Error, ValueError):
                    raise ClaimUploadError(f"NOIDUNGFILE of a {kind} FILEHOSO is not base64") from None
                _read_xml(inner, upload, depth + 1)
            elem.clear()


def _add(upload: ClaimUpload, rec: dict[str, str]) -> None:
    if len(upload.lines) >= MAX_LINES:
        raise ClaimUploadError(f"more than {MAX_LINES} claim lines in one upload")
    accession = next((rec[k] for k in ACCESSION_ELEMENTS if rec.get(k)), "")
    ids = tuple(rec[k] for k in PATIENT_ELEMENTS if rec.get(k))
    upload.lines.append(ClaimLine(len(upload.lines) + 1, rec, accession, ids))


def _read_csv(data: bytes, upload: ClaimUpload) -> None:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ClaimUploadError(f"the CSV is not UTF-8 (byte {exc.start})") from None
    rows = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.reader(rows)
    header = next(reader, None)
    if header is None:
        raise ClaimUploadError("the CSV is empty")
    names = [_CSV_ALIASES.get(h.strip().lower(), "") for h in header]
    if not {"MA_LK", "accession"} & set(names):
        raise ClaimUploadError("the CSV header needs a column MA_LK or accession_number (line 1)")
    for n, row in enumerate(reader, 2):
        rec = {name: value.strip() for name, value in zip(names, row, strict=False) if name}
        if not rec.get("MA_LK") and not rec.get("accession"):
            raise ClaimUploadError(f"CSV line {n}: neither MA_LK nor accession_number is given")
        accession = rec.pop("accession", "")
        _add(upload, {**rec, "PACS_SO_PHIEU_CHI_DINH": accession} if accession else rec)


def read_upload(data: bytes, content_type: str = "") -> ClaimUpload:
    """The claim lines of an upload: XML (XML3 or GIAMDINHHS) or CSV, told apart by the media
    type, else by the first character. Raises :class:`ClaimUploadError` with the reason."""
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    is_xml = "xml" in content_type or (not content_type.startswith("text/csv") and head == b"<")
    upload = ClaimUpload(kind="xml3" if is_xml else "csv")
    if is_xml:
        _read_xml(data, upload)
    else:
        _read_csv(data, upload)
    if not upload.lines:
        raise ClaimUploadError(
            "no claim line found: expected CHI_TIET_DVKT elements (XML3), FILEHOSO of type XML3, "
            "or CSV rows with MA_LK / accession_number"
        )
    for line in upload.lines:
        if not line.patient_ids and line.get("MA_LK") in upload.patients:
            line.patient_ids = upload.patients[line.get("MA_LK")]
    return upload
