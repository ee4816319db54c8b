"""HL7 v2 messages shaped like the IHE Radiology Scheduled Workflow samples (and a Vietnamese
hospital's HIS), built field by field so that positions are explicit."""

from __future__ import annotations

from collections.abc import Mapping

CR = "\r"


def seg(name: str, fields: Mapping[int, str]) -> str:
    """One segment from ``{field number: ER7 value}`` (MSH: field 1 is the separator, 2 the
    encoding characters; give from 3 on)."""
    last = max(fields) if fields else 0
    if name == "MSH":
        return "MSH|^~\\&|" + "|".join(fields.get(i, "") for i in range(3, last + 1))
    return name + "|" + "|".join(fields.get(i, "") for i in range(1, last + 1))


def msh(
    message_type: str,
    control_id: str,
    version: str = "2.5",
    charset: str = "UNICODE UTF-8",
    **extra: str,
) -> str:
    """An MSH from the HIS (HIS^BV01) to the archive (PACS^RAD)."""
    fields = {
        3: "HIS",
        4: "BV01",
        5: "PACS",
        6: "RAD",
        7: "20261203080500+0700",
        9: message_type,
        10: control_id,
        11: "P",
        12: version,
        15: "AL",
        16: "NE",
    }
    if charset:
        fields[18] = charset
    fields.update({int(k[1:]): v for k, v in extra.items()})
    return seg("MSH", fields)


def pid(
    patient_id: str = "BN001",
    name: str = "Nguyễn^Văn An",
    *,
    birth: str = "19800102",
    sex: str = "M",
    other: str = "~079080001234^^^BYT^NI",
) -> str:
    return seg("PID", {1: "1", 3: f"{patient_id}^^^BV01^MR{other}", 5: name, 7: birth, 8: sex, 18: "V123"})


PV1 = seg("PV1", {1: "1", 2: "O", 3: "CDHA^P101^01", 8: "BS01^Trần^Văn Bình^^^BS", 19: "VN2026001"})


def orm(
    control: str = "NW",
    control_id: str = "ORM0001",
    placer: str = "ORD1001",
    *,
    accession: str = "ACC1001",
    status: str = "",
    with_zds: bool = True,
    version: str = "2.3.1",
    charset: str = "UNICODE UTF-8",
    patient: str | None = None,
) -> str:
    """ORM^O01 (RAD-4 / RAD-13, v2.3.1 IHE shape): one requested procedure, one step."""
    segments = [
        msh("ORM^O01", control_id, version, charset),
        patient or pid(),
        PV1,
        seg(
            "ORC",
            {
                1: control,
                2: f"{placer}^HIS",
                3: "F9001^RIS",
                5: status,
                7: "^^^20261203090000+0700^^R",
                9: "20261203080400+0700",
                12: "BS02^Lê^Thị Hoa",
                16: "" if control == "NW" else "^Bệnh nhân đổi lịch",
                18: "CT01AE",
            },
        ),
        seg(
            "OBR",
            {
                1: "1",
                2: f"{placer}^HIS",
                3: "F9001^RIS",
                4: "CT-SN^CT sọ não^BYT^P-SN1^Sọ não không cản quang^LOCAL",
                16: "BS02^Lê^Thị Hoa",
                18: accession,
                19: "RP1001",
                20: "SPS1001",
                21: "CT01AE",
                24: "CT",
                27: "^^^20261203090000+0700^^S",
                31: "^Đau đầu kéo dài",
                34: "KTV01&Phạm&Minh",
            },
        ),
    ]
    if with_zds:
        segments.append(seg("ZDS", {1: "1.2.840.113619.2.55.3.1001^100^Application^DICOM"}))
    return CR.join(segments) + CR


def omi(control: str = "NW", control_id: str = "OMI0001", placer: str = "ORD2001", steps: int = 3) -> str:
    """OMI^O23 (v2.5): ORC, TQ1, OBR and one IPC per scheduled step."""
    segments = [
        msh("OMI^O23^OMI_O23", control_id, "2.5"),
        pid("BN002", "Trần^Thị^Bích"),
        PV1,
        seg(
            "ORC",
            {
                1: control,
                2: f"{placer}^HIS",
                3: "F9002^RIS",
                5: "SC",
                9: "20261203081000+0700",
                12: "BS03^Võ^An",
            },
        ),
        seg("TQ1", {1: "1", 7: "20261203100000+0700", 9: "A"}),
        seg(
            "OBR",
            {
                1: "1",
                2: f"{placer}^HIS",
                3: "F9002^RIS",
                4: "MR-CS^MRI cột sống^BYT",
                18: "ACC2001",
                19: "RP2001",
                24: "MR",
                44: "MR-CSTL^MRI cột sống thắt lưng^BYT",
            },
        ),
    ]
    for k in range(1, steps + 1):
        segments.append(
            seg(
                "IPC",
                {
                    1: "ACC2001",
                    2: "RP2001",
                    3: "1.2.840.113619.2.55.3.2001",
                    4: f"SPS200{k}",
                    5: "MR",
                    6: f"P-MR{k}^Chuỗi xung {k}^LOCAL",
                    7: "MR1",
                    8: "P201",
                    9: "MR01AE",
                },
            )
        )
    return CR.join(segments) + CR


def adt_a08(control_id: str = "ADT0001", name: str = "Nguyễn^Văn Anh") -> str:
    return (
        CR.join(
            [
                msh("ADT^A08^ADT_A01", control_id),
                seg("EVN", {1: "A08", 2: "20261203090000"}),
                pid(name=name),
                PV1,
            ]
        )
        + CR
    )


def adt_a40(control_id: str = "ADT0002", surviving: str = "BN001", prior: str = "BN900") -> str:
    return (
        CR.join(
            [
                msh("ADT^A40^ADT_A39", control_id),
                seg("EVN", {1: "A40", 2: "20261203090000"}),
                pid(surviving),
                seg("MRG", {1: f"{prior}^^^BV01^MR"}),
            ]
        )
        + CR
    )


def oru(control_id: str = "ORU0001", placer: str = "ORD1001", accession: str = "ACC1001") -> str:
    return (
        CR.join(
            [
                msh("ORU^R01^ORU_R01", control_id, "2.5"),
                pid(),
                seg("ORC", {1: "RE", 2: f"{placer}^HIS", 3: "F9001^RIS"}),
                seg(
                    "OBR",
                    {
                        1: "1",
                        2: f"{placer}^HIS",
                        3: "F9001^RIS",
                        4: "CT-SN^CT sọ não^BYT",
                        7: "20261203091500+0700",
                        18: accession,
                        22: "20261203103000+0700",
                        25: "F",
                        32: "BS05&Đỗ&Quang&Minh",
                    },
                ),
                seg(
                    "OBX",
                    {
                        1: "1",
                        2: "TX",
                        3: "IMP^Impression",
                        5: "Không thấy tổn thương.~Nhu mô não bình thường.",
                    },
                ),
                seg("OBX", {1: "2", 2: "FT", 3: "REC^Recommendation", 5: "Theo dõi\\.br\\sau 6 tháng"}),
            ]
        )
        + CR
    )
