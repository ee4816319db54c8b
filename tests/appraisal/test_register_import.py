"""Registers refuse ambiguous rows at import; identifiers are never typed by their shape (issue 16).

Findings 1-3 of issue 16: a 12-digit local PatientID is not a citizen ID (CCCD) unless explicit
data says so; two staff rows for one DICOM name (namesakes) or any other key given two answers
stop the import with the file, the lines and the key; a reference time needs its citation and is
shown as reference only.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from pacs.model import Origin
from pacs.runtime import Runtime
from pacs.services.appraisal.people import patient_ids
from pacs.services.appraisal.registers import RegisterError, load_registers
from tests.appraisal.conftest import FACILITY, REGISTERS
from tests.appraisal.excel import csv_export
from tests.factories import make_dataset, to_bytes

MODALITY = Origin(address="10.0.0.5", calling_ae="CT01AE", protocol="dimse")
STAFF_HEADER = "dicom_name,licence_code,role"
DEVICE_HEADER = "serial_number,station_name,machine_group,funding_source,asset_code,note"
SERVICE_HEADER = "match_kind,match,service_code,service_name"
REFERENCE_HEADER = "service_code,reference_minutes,citation,note"
REFERENCE_ONLY = "chỉ để tham khảo / reference only"
CITED = "Quyết định 9999/QĐ-BYT ngày 01/01/2030, Phụ lục 1, mục 2"  # a made-up citation, for tests only


def _write(tmp_path: Path, name: str, *lines: str) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _csv_rows(content: bytes) -> list[dict[str, str]]:
    return csv_export(content)[1]


# ---------------------------------------------------------------- 1. identifier types


def test_a_12_digit_local_patient_id_is_not_a_citizen_id() -> None:
    got = patient_ids("079123456789", None, None)
    assert got["citizen_id"] is None and got["insurance_card_code"] is None
    assert got["patient_id"] == "079123456789" and got["patient_id_type"] == "unknown"
    # nor are untyped other IDs of the shapes of a CCCD or a card code
    got = patient_ids("P-1", "BV Bạch Mai", "001234567890\\HC4010123456789")
    assert got["citizen_id"] is None and got["insurance_card_code"] is None
    assert got["patient_id_type"] == "unknown"


def test_an_identifier_type_comes_from_the_issuer() -> None:
    got = patient_ids("079123456789", "CCCD", None)
    assert got["patient_id_type"] == "citizen_id" and got["citizen_id"] == "079123456789"
    assert patient_ids("079123456789", "căn cước công dân", None)["citizen_id"] == "079123456789"
    card = patient_ids("HC4010123456789", "BHYT", None)
    assert card["patient_id_type"] == "insurance_card_code" and card["citizen_id"] is None
    assert card["insurance_card_code"] == "HC4010123456789"
    assert patient_ids("", "CCCD", None)["patient_id_type"] == "unknown"


def test_a_12_digit_local_id_in_every_output(rt: Runtime, client: TestClient) -> None:
    ds = make_dataset(study_uid=generate_uid(), patient_id="079123456789", accession="ACC-LOCAL-12")
    ds.OtherPatientIDs = ["001234567890", "HC4010123456789"]
    rt.archive.store_bytes(to_bytes(ds), MODALITY)
    rec = client.get("/api/appraisal/v1/records/acc:ACC-LOCAL-12").json()
    assert rec["patient"] == {
        "patient_id": "079123456789",
        "issuer_of_patient_id": None,
        "patient_id_type": "unknown",
        "citizen_id": None,
        "insurance_card_code": None,
    }
    [row] = _csv_rows(client.get("/api/appraisal/v1/export.csv").content)
    assert row["MA_BN"] == "079123456789" and row["SO_CCCD"] == "" and row["MA_THE_BHYT"] == ""
    [item] = ET.fromstring(client.get("/api/appraisal/v1/export.xml").content).iter("CHI_TIET_DVKT")
    assert item.findtext("MA_BN") == "079123456789"
    assert not item.findtext("SO_CCCD") and not item.findtext("MA_THE_BHYT")
    # the same ID with an issuer saying what it is
    typed = make_dataset(
        study_uid=generate_uid(), patient_id="079123456789", accession="ACC-CCCD", IssuerOfPatientID="CCCD"
    )
    rt.archive.store_bytes(to_bytes(typed), MODALITY)
    got = client.get("/api/appraisal/v1/records/acc:ACC-CCCD").json()["patient"]
    assert got["citizen_id"] == "079123456789" and got["patient_id_type"] == "citizen_id"


# ---------------------------------------------------------------- 2. ambiguous rows


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Nguyễn^Văn An", "Nguyễn^Văn An"),
        ("Nguyễn^Văn An", "NGUYEN^Van An"),  # the same name once case and accents are folded
        ("Nguyễn^Văn An", "Nguyễn^Văn Ân"),  # look-ups ignore accents: these cannot be told apart
    ],
)
def test_staff_namesakes_are_refused(tmp_path: Path, first: str, second: str) -> None:
    staff = _write(
        tmp_path,
        "staff.csv",
        "# staff",
        STAFF_HEADER,
        "Trần^Thị Bình,000123/BYT-CCHN,referring",
        f"{first},001111/HNO-CCHN,performing",
        "Lê^Văn Cường,004567/HNO-CCHN,performing",
        f"{second},002222/HCM-CCHN,operator",
    )
    with pytest.raises(RegisterError) as err:
        load_registers(FACILITY, staff=staff)
    msg = str(err.value)
    assert str(staff) in msg and "lines 4, 6" in msg and repr(first) in msg and repr(second) in msg
    assert "nothing loaded" in msg and "licence codes" in msg


def test_distinct_staff_names_load(tmp_path: Path) -> None:
    staff = _write(
        tmp_path,
        "staff.csv",
        STAFF_HEADER,
        "Nguyễn^Văn An,001111/HNO-CCHN,performing",
        "Nguyễn^Văn Bảo,002222/HCM-CCHN,operator",
        "Nguyễn^Thị An,003333/HCM-CCHN,operator",
        "Trần^Thị Bình,000123/BYT-CCHN,referring",
        "Trần^Thị Bình,000123/BYT-CCHN,performing",  # one person, two roles, one code: not ambiguous
    )
    regs = load_registers(FACILITY, staff=staff)
    assert regs.licence("Nguyễn^Văn An") == "001111/HNO-CCHN"
    assert regs.licence("nguyen^van bao") == "002222/HCM-CCHN"
    assert regs.licence("Nguyễn^Thị An") == "003333/HCM-CCHN"
    assert regs.licence("Trần^Thị Bình") == "000123/BYT-CCHN"
    assert len(regs.staff) == 4


def test_the_shipped_registers_load() -> None:
    regs = load_registers(
        FACILITY,
        REGISTERS / "devices.csv",
        REGISTERS / "services.csv",
        REGISTERS / "staff.csv",
        REGISTERS / "reference_times.csv",
    )
    assert regs.staff and regs.devices_by_serial and regs.services_by_code
    assert regs.reference_times == {}  # shipped empty: no unverified value ships as sourced
    text = (REGISTERS / "reference_times.csv").read_text(encoding="utf-8")
    header = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert header == [REFERENCE_HEADER]
    assert "reference only" in text.lower() and "citation" in text


@pytest.mark.parametrize(
    ("rows", "where"),
    [
        (["SN-1,CT01,CL,1,,", "sn-1,CT02,CL,2,,"], r"lines 2, 3 .*serial_number 'SN-1' / 'sn-1'"),
        (["SN-1,CT01,CL,1,,", "SN-2,ct01,CL,1,,"], r"lines 2, 3 .*station_name 'CT01' / 'ct01'"),
    ],
)
def test_devices_with_one_key_and_two_answers_are_refused(
    tmp_path: Path, rows: list[str], where: str
) -> None:
    devices = _write(tmp_path, "devices.csv", DEVICE_HEADER, *rows)
    with pytest.raises(RegisterError, match=where):
        load_registers(FACILITY, devices=devices)


def test_devices_repeated_identically_and_distinct_load(tmp_path: Path) -> None:
    devices = _write(
        tmp_path, "devices.csv", DEVICE_HEADER, "SN-1,CT01,CL,1,,", "SN-1,CT01,CL,1,,", "XR-1,DR01,XQ,1,,"
    )
    regs = load_registers(FACILITY, devices=devices)
    assert set(regs.devices_by_serial) == {"SN-1", "XR-1"} and set(regs.devices_by_station) == {
        "CT01",
        "DR01",
    }


@pytest.mark.parametrize(
    ("rows", "where"),
    [
        (
            ["procedure_code,CT-SN,18.0001.0001,CT sọ não", "procedure_code,CT-SN,18.0002.0001,CT ngực"],
            r"lines 2, 3 .*procedure_code 'CT-SN'",
        ),
        (
            ["study_description,CT sọ não,18.0001.0001,A", "study_description,ct so nao,18.0002.0001,B"],
            r"lines 2, 3 .*study_description 'CT sọ não' / 'ct so nao'",
        ),
    ],
)
def test_services_with_one_key_and_two_answers_are_refused(
    tmp_path: Path, rows: list[str], where: str
) -> None:
    services = _write(tmp_path, "services.csv", SERVICE_HEADER, *rows)
    with pytest.raises(RegisterError, match=where):
        load_registers(FACILITY, services=services)


# ---------------------------------------------------------------- 3. reference times


@pytest.mark.parametrize(
    "lines",
    [
        [REFERENCE_HEADER, "18.0001.0001,30,,"],  # the column, empty
        ["service_code,reference_minutes,note", "18.0001.0001,30,x"],  # no column
        ["service_code,reference_minutes,source,note", "18.0001.0001,30,Quyết định 2775/QĐ-BYT,x"],  # old
    ],
)
def test_a_reference_time_without_citation_is_refused(tmp_path: Path, lines: list[str]) -> None:
    path = _write(tmp_path, "reference_times.csv", "# reference times", *lines)
    with pytest.raises(RegisterError, match=re.escape(f"{path}:3: column 'citation'")) as err:
        load_registers(FACILITY, reference_times=path)
    assert "document number, date, article or appendix" in str(err.value)


def test_one_reference_time_cited_twice_with_two_values_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "reference_times.csv",
        REFERENCE_HEADER,
        f'18.0001.0001,30,"{CITED}",',
        f'18.0001.0001,25,"{CITED}",',
    )
    with pytest.raises(RegisterError, match="lines 2, 3"):
        load_registers(FACILITY, reference_times=path)


def test_a_cited_reference_time_is_shown_as_reference_only(
    rt: Runtime, client: TestClient, tmp_path: Path
) -> None:
    path = _write(
        tmp_path,
        "reference_times.csv",
        REFERENCE_HEADER,
        f'18.0001.0001,30,"{CITED}",trung bình',
        f'18.0001.0001,20,"{CITED} (b)",',
    )
    rt.appraisal.registers = load_registers(
        FACILITY, REGISTERS / "devices.csv", REGISTERS / "services.csv", REGISTERS / "staff.csv", path
    )
    rt.archive.store_bytes(to_bytes(make_dataset(study_uid=generate_uid(), accession="ACC-REF")), MODALITY)
    rec = client.get("/api/appraisal/v1/records/acc:ACC-REF").json()
    refs = rec["reference_times"]
    assert [(r["reference_minutes"], r["source"]) for r in refs] == [(30.0, CITED), (20.0, f"{CITED} (b)")]
    for ref in refs:
        assert ref["reference_only"] is True
        assert "chỉ để tham khảo" in ref["note"] and "reference only" in ref["note"]
    assert refs[0]["note"] == f"{REFERENCE_ONLY}: trung bình"  # the register's note kept after it
    html = client.get("/api/appraisal/v1/records/acc:ACC-REF.html").text
    assert html.count("chỉ để tham khảo") >= 2 and html.count("reference only") >= 2
    # the list, the CSV and the XML: a reference time is never shown without the words
    listed = client.get("/api/appraisal/v1/records").json()["records"]
    assert all(REFERENCE_ONLY in r["note"] for rec in listed for r in rec["reference_times"])
    for fmt in ("csv", "xml"):  # the extracts do not show reference times at all
        assert CITED not in client.get(f"/api/appraisal/v1/export.{fmt}").text
