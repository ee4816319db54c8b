"""The device register as declared to the insurer (issue 16): exact MA_MAY, department, periods.

A row is in force from ``valid_from`` to ``valid_to``; the MA_MAY of a study is that of the row in
force on its study date, and none gives an empty code with a note, never a guess. Rows that make
a look-up ambiguous are refused at import with the file and the line numbers. Devices seen in
DICOM but not declared are listed for the administrator (API and CLI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pacs import cli
from pacs.model import Origin
from pacs.services.appraisal.devices import RegisterError
from pacs.services.appraisal.registers import load_registers
from tests.appraisal.conftest import MonthRuntime
from tests.appraisal.month import DEVICES, RECODED, RETIRED, machine_code

HEADER = (
    "serial_number,station_name,machine_group,funding_source,asset_code,note,"
    "ma_may,ma_khoa,valid_from,valid_to"
)
API = "/api/appraisal/v1"
ORIGIN = Origin(address="127.0.0.1", protocol="test")


def _load(tmp_path: Path, *rows: str) -> Any:
    path = tmp_path / "devices.csv"
    path.write_text("\n".join(["# a comment", HEADER, *rows]) + "\n", encoding="utf-8")
    return load_registers("01001", devices=path)


def test_the_row_in_force_on_the_study_date_gives_ma_may(tmp_path: Path) -> None:
    regs = _load(
        tmp_path,
        "XR-1,DR1,,,,,XQ.1.XR-1,K01,2026-01-01,2026-11-15",
        "XR-1,DR1,,,,,XQ.2.XR-1B,K02,2026-11-16,",
        "CT-1,CT1,CL,1,,,,K01,,2026-11-20",
        "US-1,,,,,,SA.3.01001.TS-77,K03,,",
    )
    assert regs.machine_code("XR-1", None, "20261115").current == "XQ.1.XR-1"
    got = regs.machine_code("XR-1", None, "20261116")
    assert (got.current, got.previous, got.entry.department) == ("XQ.2.XR-1B", "XQ.2.01001.XR-1B", "K02")
    assert regs.machine_code(None, "dr1", "20261201").current == "XQ.2.XR-1B"  # by station, open-ended
    early = regs.machine_code("XR-1", None, "20251231")
    assert early.current == "" and early.registered
    assert "no device register row in force on 2025-12-31" in early.notes[0]
    assert regs.machine_code("CT-1", None, "20261120").current == "CL.1.CT-1"
    assert regs.machine_code("CT-1", None, "20261121").current == ""
    # a declared 4750 form gives both forms exactly as declared
    us = regs.machine_code("US-1", None, "20261121")
    assert (us.current, us.previous) == ("SA.3.TS-77", "SA.3.01001.TS-77")
    assert regs.machine_code("NOPE", "NOPE", "20261121").registered is False


@pytest.mark.parametrize(
    ("rows", "where"),
    [
        (
            ["XR-1,DR1,XQ,1,,,,K01,2026-01-01,2026-11-30", "XR-1,DR1,XQ,2,,,,K01,2026-11-15,"],
            r"lines 3, 4 give different devices for serial_number 'XR-1' / 'XR-1' on overlapping dates "
            r"\(2026-01-01..2026-11-30 and 2026-11-15..\)",
        ),
        (
            ["XR-1,DR1,,,,,XQ.1.SAME,K01,,", "XR-2,DR2,,,,,XQ.1.SAME,K01,,"],
            r"lines 3, 4 declare MA_MAY 'XQ.1.SAME' for two devices",
        ),
        (["XR-1,DR1,XQ,1,,,,K01,2026-11-30,2026-11-01"], r"devices.csv:3: valid_to 2026-11-01 is before"),
        (["XR-1,DR1,XQ,1,,,,K01,30/11/2026,"], r"devices.csv:3: valid_from '30/11/2026' is not a date"),
        (["XR-1,DR1,CL,1,,,XQ.1.XR-1,K01,,"], r"devices.csv:3: ma_may 'XQ.1.XR-1' does not agree"),
        (["XR-1,DR1,,,,,XQ,K01,,"], r"devices.csv:3: ma_may 'XQ' is not XX.n.Z"),
        (["XR-1,DR1,ZZ,1,,,,K01,,"], r"devices.csv:3: unknown machine_group 'ZZ'"),
        ([",,XQ,1,,,,K01,,"], r"devices.csv:3: give serial_number or station_name"),
    ],
)
def test_rows_that_cannot_be_used_are_refused_with_their_lines(
    tmp_path: Path, rows: list[str], where: str
) -> None:
    with pytest.raises(RegisterError, match=where):
        _load(tmp_path, *rows)


def test_periods_that_follow_each_other_and_repeated_rows_load(tmp_path: Path) -> None:
    regs = _load(
        tmp_path,
        "XR-1,DR1,XQ,1,,,,K01,2026-01-01,2026-06-30",
        "XR-1,DR1,XQ,1,,,,K01,2026-01-01,2026-06-30",  # the same row again: kept once
        "XR-1,DR1,XQ,2,,,,K01,2026-07-01,",
    )
    assert len(regs.device_register.entries) == 2
    assert [e.line for e in regs.device_register.by_serial["XR-1"]] == [3, 5]


def test_the_month_exports_the_code_in_force_on_each_study_date(generated_month: MonthRuntime) -> None:
    a, month = generated_month.rt.appraisal, generated_month.month
    for s in month.studies[:3000]:
        if s.device.serial not in (RECODED, RETIRED) or s.day not in (15, 16, 20, 21):
            continue
        rec = a.get_record(f"acc:{s.accession}", ORIGIN)
        assert rec["claim_fields"]["MA_MAY"] == machine_code(s.device, s.day), (s.device.serial, s.day)
        if not machine_code(s.device, s.day):
            day = f"2026-11-{s.day:02d}"
            assert any(
                f"không có dòng danh mục thiết bị áp dụng vào ngày {day}" in n
                and f"has no device register row in force on {day}: MA_MAY left empty" in n
                for n in rec["notes"]
            ), rec["notes"]
        else:
            assert rec["claim_fields"]["MA_KHOA"] == s.device.department


def test_unregistered_devices_are_listed(generated_month: MonthRuntime, capsys: Any) -> None:
    c = generated_month.client
    expected = {(d.serial or None, d.station) for d in DEVICES if not d.registered}
    for path in (f"{API}/devices/unregistered", "/api/appraisal/devices/unregistered"):
        body = c.get(path, params={"from": "2026-11-01", "to": "2026-11-30"}).json()
        assert {(d["device_serial_number"], d["station_name"]) for d in body["unregistered"]} == expected
        assert body["count"] == 3 and all(d["images"] > 0 and d["manufacturer"] for d in body["unregistered"])
        retired = [d for d in body["outside_register_periods"] if d["device_serial_number"] == RETIRED]
        assert retired and retired[0]["days_without_register_row"][0] == "2026-11-21"
    cfg = str(generated_month.folder / "config.toml")
    assert cli.main(["appraisal", "devices", "--config", cfg, "--month", "2026-11"]) == 0
    out = capsys.readouterr()
    assert out.out.count("unregistered:") == 3 and "serial=US-99" in out.out and "station=PORTABLE" in out.out
    assert f"serial={RETIRED}" in out.out
