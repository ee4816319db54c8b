"""pacs.hl7.messages: IHE-shaped HL7 v2 messages into the orders model, and their ACKs (parsed
back with hl7apy)."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from pacs.hl7.messages import Hl7Error, ack, parse
from pacs.services.orders.model import (
    Code,
    Control,
    OrderMessage,
    OtherId,
    PatientMerge,
    PatientUpdate,
    Report,
)
from tests.hl7 import samples as S


def read_ack(payload: bytes, codec: str = "utf-8") -> dict[str, Any]:
    """The fields of an ACK that matter, read with hl7apy (so the ACK is valid ER7)."""
    m = parse_message(payload.decode(codec), find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)
    names = [s.name for s in m.children]
    out: dict[str, Any] = {
        "segments": names,
        "msh3": m.msh.msh_3.to_er7(),
        "msh4": m.msh.msh_4.to_er7(),
        "msh5": m.msh.msh_5.to_er7(),
        "msh6": m.msh.msh_6.to_er7(),
        "msh9": m.msh.msh_9.to_er7(),
        "msh12": m.msh.msh_12.to_er7(),
        "msh18": m.msh.msh_18.to_er7(),
        "msa1": m.msa.msa_1.to_er7(),
        "msa2": m.msa.msa_2.to_er7(),
        "msa3": m.msa.msa_3.to_er7(),
    }
    if "ERR" in names:
        err = m.err
        out["err1"] = err.err_1.to_er7()
        if m.version >= "2.5":
            out["err3"] = err.err_3.to_er7()
            out["err4"] = err.err_4.to_er7()
            out["err8"] = err.err_8.to_er7()
    return out


def refused(raw: str | bytes) -> Hl7Error:
    with pytest.raises(Hl7Error) as info:
        parse(raw.encode() if isinstance(raw, str) else raw)
    return info.value


# ---------------------------------------------------------------------- orders


def test_orm_o01_v231_new_order() -> None:
    p = parse(S.orm().encode())
    assert p.kind == "order"
    assert (p.message_id.sender, p.message_id.control_id) == ("HIS^BV01", "ORM0001")
    o = p.body
    assert isinstance(o, OrderMessage)
    assert o.control is Control.NEW
    assert (o.placer_order_number, o.filler_order_number) == ("ORD1001", "F9001")
    assert (o.accession_number, o.requested_procedure_id) == ("ACC1001", "RP1001")
    assert o.requested_procedure_code == Code("CT-SN", "BYT", "CT sọ não")
    assert o.requested_procedure_description == "CT sọ não"
    assert o.study_instance_uid == "1.2.840.113619.2.55.3.1001"  # ZDS-1
    assert o.ordered_at == "20261203080400+0700" and o.ordered_at_source == "HL7 ORC-9"
    assert o.requesting_physician == "Lê^Thị Hoa"  # ORC-12
    assert o.referring_physician == "Trần^Văn Bình^^BS"  # PV1-8, prefix in the 4th PN component
    assert o.priority == "STAT"  # OBR-27.6 S
    assert o.reason == "Đau đầu kéo dài"  # OBR-31.2
    assert o.admission_id == "VN2026001" and o.patient_location == "CDHA P101 01"
    assert o.patient is not None
    assert o.patient.patient_id == "BN001" and o.patient.issuer_of_patient_id == "BV01"
    assert o.patient.name == "Nguyễn^Văn An"
    assert (o.patient.birth_date, o.patient.sex) == ("19800102", "M")
    assert o.patient.other_ids == (OtherId("079080001234", "BYT", "NI"),)
    (step,) = o.steps
    assert (step.step_id, step.modality, step.station_ae_title) == ("SPS1001", "CT", "CT01AE")
    assert step.start == "20261203090000+0700"  # OBR-27.4, offset kept
    assert step.protocol_code == Code("P-SN1", "LOCAL", "Sọ não không cản quang")  # OBR-4.4-6
    assert step.description == "Sọ não không cản quang"
    assert step.performing_physician == "Phạm^Minh"  # OBR-34.1 (CN subcomponents)


def test_orm_station_ae_from_orc18_and_start_from_orc7_when_obr_silent() -> None:
    raw = S.orm().replace("|CT01AE|||CT|||^^^20261203090000+0700^^S|", "||||CT||||")
    o = parse(raw.encode()).body
    assert isinstance(o, OrderMessage)
    (step,) = o.steps
    assert step.station_ae_title == "CT01AE"  # ORC-18
    assert step.start == "20261203090000+0700"  # ORC-7.4
    assert o.priority == "ROUTINE"  # ORC-7.6 R


def test_omi_o23_three_ipc_segments_three_steps() -> None:
    p = parse(S.omi().encode())
    o = p.body
    assert isinstance(o, OrderMessage)
    assert o.control is Control.NEW and o.order_status == "SC"
    assert o.accession_number == "ACC2001" and o.requested_procedure_id == "RP2001"
    assert o.study_instance_uid == "1.2.840.113619.2.55.3.2001"
    assert o.requested_procedure_code == Code("MR-CSTL", "BYT", "MRI cột sống thắt lưng")  # OBR-44
    assert o.priority == "HIGH"  # TQ1-9 A
    assert [s.step_id for s in o.steps] == ["SPS2001", "SPS2002", "SPS2003"]
    for k, s in enumerate(o.steps, 1):
        assert (s.modality, s.station_ae_title, s.station_name, s.location) == ("MR", "MR01AE", "MR1", "P201")
        assert s.start == "20261203100000+0700"  # TQ1-7
        assert s.protocol_code == Code(f"P-MR{k}", "LOCAL", f"Chuỗi xung {k}")
        assert (s.accession_number, s.requested_procedure_id) == ("ACC2001", "RP2001")
        assert s.study_instance_uid == "1.2.840.113619.2.55.3.2001"


def test_cancel_and_change() -> None:
    ca = parse(S.orm("CA", "ORM0002").encode()).body
    assert isinstance(ca, OrderMessage)
    assert ca.control is Control.CANCEL and ca.steps == ()
    assert ca.reason == "Bệnh nhân đổi lịch"  # ORC-16, not the reason for the study
    xo = parse(S.orm("XO", "ORM0003", accession="ACC1001").encode()).body
    assert isinstance(xo, OrderMessage)
    assert xo.control is Control.CHANGE and len(xo.steps) == 1
    oc = parse(S.orm("OC", "ORM0004").encode()).body  # the filler's own cancel
    assert isinstance(oc, OrderMessage) and oc.control is Control.CANCEL
    sc = parse(S.orm("SC", "ORM0005", status="IP").encode()).body
    assert isinstance(sc, OrderMessage) and sc.control is Control.STATUS and sc.order_status == "IP"


# ---------------------------------------------------------------------- patients, reports


def test_adt_a08_patient_update() -> None:
    p = parse(S.adt_a08().encode())
    assert p.kind == "patient"
    assert isinstance(p.body, PatientUpdate)
    assert p.body.patient.patient_id == "BN001" and p.body.patient.name == "Nguyễn^Văn Anh"


def test_adt_a40_merge() -> None:
    p = parse(S.adt_a40().encode())
    assert p.kind == "merge"
    m = p.body
    assert isinstance(m, PatientMerge)
    assert m.surviving.patient_id == "BN001"
    assert (m.prior_patient_id, m.prior_issuer) == ("BN900", "BV01")


def test_oru_r01_report() -> None:
    p = parse(S.oru().encode())
    r = p.body
    assert isinstance(r, Report)
    assert (r.placer_order_number, r.filler_order_number, r.accession_number) == (
        "ORD1001",
        "F9001",
        "ACC1001",
    )
    assert r.reported_at == "20261203103000+0700" and r.reported_at_source == "HL7 OBR-22"
    assert r.performed_at == "20261203091500+0700" and r.performed_at_source == "HL7 OBR-7"
    assert r.reporting_doctor == "Đỗ^Quang^Minh" and r.status == "F"
    assert r.text == "Không thấy tổn thương.\nNhu mô não bình thường.\nTheo dõi\nsau 6 tháng"


def test_oru_reporter_given_by_licence_code_only() -> None:
    r = parse(S.oru().replace("BS05&Đỗ&Quang&Minh", "CCHN-0012345").encode()).body
    assert isinstance(r, Report) and r.reporting_doctor == "CCHN-0012345"


# ---------------------------------------------------------------------- characters


def test_vietnamese_utf8_names_intact_with_or_without_msh18() -> None:
    name = "Nguyễn^Thị Đức Hạnh"
    for charset in ("UNICODE UTF-8", "UNICODE", ""):
        raw = S.orm(charset=charset, patient=S.pid(name=name)).encode("utf-8")
        o = parse(raw).body
        assert isinstance(o, OrderMessage) and o.patient is not None
        assert o.patient.name == name


def test_decomposed_accents_are_normalised() -> None:
    nfd = unicodedata.normalize("NFD", "Nguyễn^Văn An")
    o = parse(S.orm(patient=S.pid(name=nfd)).encode()).body
    assert isinstance(o, OrderMessage) and o.patient is not None
    assert o.patient.name == "Nguyễn^Văn An"


def test_latin1_message() -> None:
    raw = (
        S.msh("ADT^A08^ADT_A01", "ADT0009", "2.5", "8859/1")
        + "\r"
        + S.seg("PID", {1: "1", 3: "P77^^^BV02^MR", 5: "Müller^José^Ñ", 7: "19700101", 8: "F"})
        + "\r"
    ).encode("latin-1")
    p = parse(raw)
    assert isinstance(p.body, PatientUpdate)
    assert p.body.patient.name == "Müller^José^Ñ"
    back = read_ack(ack(p.header, "AE", "fehlgeschlagen: Müller", 207), "latin-1")
    assert back["msh18"] == "8859/1" and back["msa3"] == "fehlgeschlagen: Müller"


def test_escape_sequences_and_hl7_null() -> None:
    raw = S.orm(patient=S.pid(name="O\\T\\Brien\\F\\X^Ann\\S\\Marie\\E\\\\X41\\", sex='""'))
    o = parse(raw.encode()).body
    assert isinstance(o, OrderMessage) and o.patient is not None
    # separators become spaces in the PN component they would break, & | \ stay
    assert o.patient.name == "O&Brien|X^Ann Marie A"
    assert o.patient.sex == ""


def test_custom_encoding_characters_echoed_in_ack() -> None:
    raw = S.orm().replace("MSH|^~\\&|", "MSH|#~\\&|").replace("^", "#")
    p = parse(raw.encode())
    assert isinstance(p.body, OrderMessage) and p.body.patient is not None
    assert p.body.patient.name == "Nguyễn^Văn An"
    payload = ack(p.header, "AA")
    assert payload.startswith(b"MSH|#~\\&|PACS|RAD|HIS|BV01|")
    assert b"ACK#O01#ACK" in payload


# ---------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("raw", "reject", "code", "says"),
    [
        (b"", True, 100, "no MSH"),
        (b"PID|1||BN001^^^BV01^MR||Nguyen^An\r", True, 100, "no MSH"),
        (b"MSH|^~\\&|HIS|BV01|PACS|RAD|20261203", True, 101, "MSH-10"),
        (S.orm().split("\rORC")[0] + "\r", False, 100, "without ORC"),
        (S.orm().split("\rOBR")[0] + "\r", False, 100, "without OBR"),
        (S.orm().replace("ORM^O01", "SIU^S12"), True, 200, "not supported"),
        (S.orm().replace("ORM^O01", "ADT^A01"), True, 201, "event not supported"),
        (S.orm(charset="ISO IR87"), True, 203, "character set"),
        (S.orm(version="2.9"), True, 203, "version"),
        (S.orm(version="2.3.1").replace("\rZDS", "\rIPC|A|B\rZDS"), True, 100, "IPC is not an HL7 v2.3.1"),
        (S.orm().replace("\rPV1|", "\rpv 1|"), True, 100, "segment name"),
        (S.orm("ZZ"), False, 103, "ORC-1"),
        (S.orm().replace("20261203080400+0700", "2026-12-03 08:04"), False, 102, "ORC-9"),
        (S.orm().replace("ORD1001^HIS", "").replace("F9001^RIS", ""), False, 101, "ORC-2"),
        (S.orm(patient="PID|1||"), False, 101, "PID-3"),
        (S.omi().split("\rIPC")[0] + "\r", False, 100, "without IPC"),
        (S.orm().replace("|P|2.3.1|", "|X|2.3.1|"), True, 202, "MSH-11"),
        (S.oru().replace("20261203103000+0700", ""), False, 101, "OBR-22"),
        (S.adt_a40().split("\rMRG")[0] + "\r", False, 100, "MRG"),
    ],
)
def test_refused(raw: str | bytes, reject: bool, code: int, says: str) -> None:
    exc = refused(raw)
    assert (exc.reject, exc.code) == (reject, code), exc.reason
    assert says in exc.reason


def test_invalid_utf8_is_rejected() -> None:
    raw = S.orm().encode("utf-8").replace("Nguyễn".encode(), b"Nguy\xe1n")
    exc = refused(raw)
    assert exc.reject and exc.code == 102 and "UTF-8" in exc.reason
    assert exc.header is not None and exc.header.control_id == "ORM0001"


def test_two_orders_in_one_message_are_refused() -> None:
    raw = S.orm()
    orc = "\rORC" + raw.split("\rORC")[1]
    exc = refused(raw.rstrip("\r") + orc)
    assert not exc.reject and "one order per message" in exc.reason


def test_lf_line_ends_and_bom_are_read() -> None:
    raw = b"\xef\xbb\xbf" + S.orm().replace("\r", "\r\n").encode()
    assert isinstance(parse(raw).body, OrderMessage)


# ---------------------------------------------------------------------- ACKs


def test_ack_aa_swaps_sender_and_receiver_and_echoes_control_id() -> None:
    p = parse(S.omi().encode())
    a = read_ack(ack(p.header, "AA", "created"))
    assert a["segments"] == ["MSH", "MSA"]
    assert (a["msh3"], a["msh4"], a["msh5"], a["msh6"]) == ("PACS", "RAD", "HIS", "BV01")
    assert a["msh9"] == "ACK^O23^ACK" and a["msh12"] == "2.5" and a["msh18"] == "UNICODE UTF-8"
    assert (a["msa1"], a["msa2"], a["msa3"]) == ("AA", "OMI0001", "created")


def test_ack_ae_v25_has_err_3_4_8() -> None:
    p = parse(S.omi().encode())
    a = read_ack(ack(p.header, "AE", "no order ORD9 | to cancel ^ & ~ \\", 204))
    assert a["msa1"] == "AE" and a["msa2"] == "OMI0001"
    assert a["msa3"] == "no order ORD9 \\F\\ to cancel \\S\\ \\T\\ \\R\\ \\E\\"  # escaped ER7
    assert a["err3"] == "204^Unknown key identifier^HL70357"
    assert a["err4"] == "E"
    assert a["err8"].startswith("no order ORD9")


def test_ack_ar_v231_has_err_1() -> None:
    p = parse(S.orm().encode())
    a = read_ack(ack(p.header, "AR", "internal error", 207))
    assert a["msh12"] == "2.3.1" and a["msa1"] == "AR"
    assert a["err1"] == "^^^207&Application internal error&HL70357"


def test_ack_without_header() -> None:
    a = read_ack(ack(None, "AR", "no MSH segment: not an HL7 v2 message", 100))
    assert a["msa1"] == "AR" and a["msa2"] == "" and a["msh12"] == "2.5"
    assert a["err3"].startswith("100^")


def test_ack_of_refused_charset_and_version_keeps_control_id() -> None:
    exc = refused(S.orm(charset="ISO IR87"))
    a = read_ack(ack(exc.header, "AR", exc.reason, exc.code))
    assert a["msa2"] == "ORM0001" and a["msh5"] == "HIS"
    assert a["msh18"] == "" and a["msh12"] == "2.3.1"
    exc = refused(S.orm(version="2.9"))
    payload = ack(exc.header, "AR", exc.reason, exc.code)  # hl7apy cannot read 2.9: check the bytes
    assert b"|ACK^O01^ACK|" in payload and b"|P|2.9|" in payload
    assert b"\rMSA|AR|ORM0001|" in payload and b"\rERR|||203^Unsupported version id^HL70357|E|" in payload


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6"])
def test_orm_in_each_supported_version(version: str) -> None:
    o = parse(S.orm(version=version).encode()).body
    assert isinstance(o, OrderMessage) and o.accession_number == "ACC1001"
    assert o.steps[0].start == "20261203090000+0700"


def test_v25_orm_timing_from_tq1() -> None:
    raw = S.orm(version="2.5").replace("\rOBR|", "\rTQ1|1||||||20261204070000+0700||S\rOBR|")
    o = parse(raw.encode()).body
    assert isinstance(o, OrderMessage)
    assert o.steps[0].start == "20261204070000+0700" and o.priority == "STAT"
