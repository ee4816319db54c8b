"""The HIS side of an appraisal record: NGAY_YL / NGAY_TH_YL / NGAY_KQ and the reading doctor.

Those times come only from the HIS orders behind a line (never from a device); the reading doctor
is the HIS report's reporting doctor when the HIS sent one, else DICOM NameOfPhysiciansReadingStudy,
each mapped to a licence code through the staff register (never guessed).
"""

from __future__ import annotations

from typing import Any

from pacs.services.appraisal.times import VIETNAM, claim_time, parse_dicom_datetime

NO_STAFF = (
    "chưa có trong danh mục nhân sự (để trống mã chứng chỉ hành nghề) / "
    "not in the staff register (licence code left empty): "
)

#: Where the reading doctor came from: (Vietnamese, English).
_READER_HIS = ("bác sĩ đọc kết quả do HIS gửi", "reporting doctor sent by the HIS")
_READER_DICOM = (
    "DICOM NameOfPhysiciansReadingStudy (0008,1060)",
    "DICOM NameOfPhysiciansReadingStudy (0008,1060)",
)
_READER_CODED = ("mã qua danh mục nhân sự", "licence code through the staff register")
_READER_UNCODED = ("chưa có trong danh mục nhân sự: để trống", "not in the staff register: left empty")
_READER_NONE = (
    "HIS chưa gửi bác sĩ đọc kết quả, DICOM không có NameOfPhysiciansReadingStudy: để trống / "
    "no reporting doctor from the HIS and no NameOfPhysiciansReadingStudy in DICOM: left empty"
)

#: Where NGAY_YL, NGAY_TH_YL and NGAY_KQ come from: the HIS only (not connected: left empty).
HIS_SOURCE = "HIS (chưa kết nối / not connected): để trống / left empty"
#: ... and when the HIS sent no such time for this line (an order without a report, say).
HIS_NOT_SENT = "HIS: chưa gửi / not sent for this service line: để trống / left empty"
#: The order / result / performed time of each claim field, as the orders table keeps it.
_HIS_FIELDS = (
    ("NGAY_YL", "ordered_at", "order time"),
    ("NGAY_TH_YL", "performed_at", "time the service was carried out"),
    ("NGAY_KQ", "reported_at", "result time"),
)
HIS_TIMES = ("NGAY_YL", "NGAY_TH_YL", "NGAY_KQ")
HIS_NOTE = (
    "NGAY_YL, NGAY_TH_YL, NGAY_KQ chỉ lấy từ HIS (chưa có y lệnh HIS cho dịch vụ này): để trống; thời "
    "gian thiết bị nằm ở TG_THIET_BI_* (trường mở rộng của PACS), không bao giờ ở trường của chuẩn dữ "
    "liệu / NGAY_YL, NGAY_TH_YL, NGAY_KQ come only from the HIS (no HIS order for this service line): left "
    "empty; device times are in TG_THIET_BI_* (PACS extension fields), never in a field of the data standard"
)


class HisFacts:
    """The HIS side of a record: its order, performed and result times, and the reading doctor."""

    def licence_of_his(self, value: str) -> str | None:
        """The licence code of a person the HIS named (see :class:`RecordBuilder`)."""
        raise NotImplementedError

    def his_times(
        self, line: dict[str, Any], study_rows: list[dict[str, Any]], orders: list[dict[str, Any]]
    ) -> tuple[dict[str, str], dict[str, str], list[dict[str, Any]]]:
        """NGAY_YL / NGAY_TH_YL / NGAY_KQ of a line from the HIS orders behind it (by Accession
        Number, else by study), each with its source; empty with the reason when the HIS did
        not send it. An HIS time without an offset is taken as Vietnam time, and says so."""
        uids = {s["study_instance_uid"] for s in study_rows}
        acc = line["accession_number"]
        mine = [
            o
            for o in orders
            if (acc and o["accession_number"] == acc)
            or o["study_instance_uid"] in uids
            or o["linked_study_instance_uid"] in uids
        ]
        if not mine:
            return dict.fromkeys(HIS_TIMES, ""), dict.fromkeys(HIS_TIMES, HIS_SOURCE), []
        times: dict[str, str] = {}
        sources: dict[str, str] = {}
        for field, column, what in _HIS_FIELDS:
            found = next((o for o in mine if o[column]), None)
            parsed = parse_dicom_datetime(found[column], VIETNAM) if found else None
            if found is None or parsed is None:
                times[field], sources[field] = "", HIS_NOT_SENT
                continue
            value, own_offset = parsed
            tz = (
                "offset sent by the HIS" if own_offset else "no offset sent: Vietnam time (UTC+07:00) assumed"
            )
            times[field] = claim_time(value)
            sources[field] = (
                f"HIS {what}: {found[column + '_source'] or 'HIS'}, order {found['order_key'][2:]} ({tz})"
            )
        out = [
            {
                "order": o["order_key"][2:],
                "accession_number": o["accession_number"],
                "status": o["status"],
                "ordered_at": o["ordered_at"],
                "performed_at": o["performed_at"],
                "reported_at": o["reported_at"],
                "report_status": o["report_status"],
                "reporting_doctor": o.get("reporting_doctor"),
                "source": o["source"],
            }
            for o in mine
        ]
        return times, sources, out

    def reader(
        self, his: list[dict[str, Any]], reading: list[dict[str, Any]], notes: list[str]
    ) -> tuple[str, str]:
        """The reading doctor's licence code(s) and where they came from: the HIS report's
        reporting doctor when the HIS sent one, else NameOfPhysiciansReadingStudy; a person the
        staff register does not know gets no code (never guessed) and is named in ``notes``."""
        sent = [str(o["reporting_doctor"]).strip() for o in his if (o.get("reporting_doctor") or "").strip()]
        if sent:
            codes, unknown = [], []
            for doctor in dict.fromkeys(sent):
                code = self.licence_of_his(doctor)
                if code:
                    codes.append(code)
                else:
                    unknown.append(doctor)
            if unknown:
                notes.append(NO_STAFF + "; ".join(unknown))
            return ";".join(dict.fromkeys(codes)), _reader_source(_READER_HIS, bool(codes))
        if not reading:
            return "", _READER_NONE
        codes = [p["licence_code"] for p in reading if p["licence_code"]]
        return ";".join(dict.fromkeys(codes)), _reader_source(_READER_DICOM, bool(codes))


def _reader_source(origin: tuple[str, str], coded: bool) -> str:
    via = _READER_CODED if coded else _READER_UNCODED
    return f"{origin[0]}, {via[0]} / {origin[1]}, {via[1]}"
