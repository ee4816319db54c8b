"""pacs.hl7.handler: messages through the orders service (a fake for the error mapping, the real
one on SQLite and PostgreSQL for the effect) and the ACK each gets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pacs.errors import InvalidOrder, NotFound, StorageUnavailable
from pacs.hl7.handler import handle_message
from pacs.model import Origin
from pacs.runtime import Runtime
from pacs.services.orders.model import Applied, MessageId
from tests.hl7 import samples as S
from tests.hl7.test_messages import read_ack

PACKAGE = Path(__file__).resolve().parents[2] / "pacs"


class FakeOrders:
    """Records calls; answers ``result`` or raises ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, Any, Origin, MessageId | None]] = []
        self.seen: set[tuple[str, str]] = set()

    def _call(self, kind: str, body: Any, origin: Origin, mid: MessageId | None) -> Applied:
        self.calls.append((kind, body, origin, mid))
        if self.error is not None:
            raise self.error
        key = (mid.sender, mid.control_id) if mid else ("", "")
        dup = key in self.seen
        self.seen.add(key)
        return Applied(kind=kind, order_keys=["P:X"], steps=1, duplicate=dup, detail="created")

    def apply(self, msg: Any, origin: Origin, message_id: MessageId | None = None) -> Applied:
        return self._call("order", msg, origin, message_id)

    def update_patient(self, upd: Any, origin: Origin, message_id: MessageId | None = None) -> Applied:
        return self._call("patient", upd, origin, message_id)

    def merge_patients(self, merge: Any, origin: Origin, message_id: MessageId | None = None) -> Applied:
        return self._call("merge", merge, origin, message_id)

    def record_report(self, report: Any, origin: Origin, message_id: MessageId | None = None) -> Applied:
        return self._call("report", report, origin, message_id)


def test_each_kind_reaches_its_service_method_with_origin_and_message_id() -> None:
    fake = FakeOrders()
    for raw, kind in (
        (S.orm(), "order"),
        (S.omi(), "order"),
        (S.adt_a08(), "patient"),
        (S.adt_a40(), "merge"),
        (S.oru(), "report"),
    ):
        answer = handle_message(raw.encode(), fake, "10.0.0.5")
        assert answer.code == "AA", answer.reason
        assert fake.calls[-1][0] == kind
    _, _, origin, mid = fake.calls[0]
    assert origin == Origin(address="10.0.0.5", user="HIS^BV01", protocol="hl7")
    assert mid == MessageId("HIS^BV01", "ORM0001")


def test_resend_is_acknowledged_again() -> None:
    fake = FakeOrders()
    handle_message(S.orm().encode(), fake)
    again = handle_message(S.orm().encode(), fake)
    assert again.code == "AA" and again.applied is not None and again.applied.duplicate
    assert read_ack(again.payload)["msa3"] == "applied before"


@pytest.mark.parametrize(
    ("error", "code", "err"),
    [
        (NotFound("no order ORD1001 to cancel"), "AE", "204"),
        (InvalidOrder("patient birth date '19800' is not YYYYMMDD"), "AE", "207"),
        (StorageUnavailable("database is locked"), "AR", "207"),
        (RuntimeError("boom"), "AR", "207"),
    ],
)
def test_service_errors_map_to_ack_codes(error: Exception, code: str, err: str) -> None:
    answer = handle_message(S.omi().encode(), FakeOrders(error), "10.0.0.5")
    a = read_ack(answer.payload)
    assert (a["msa1"], a["msa2"]) == (code, "OMI0001")
    assert a["err3"].split("^")[0] == err and a["err4"] == "E"
    if isinstance(error, NotFound | InvalidOrder):
        assert a["err8"] == str(error)  # the sender reads the service's reason
    else:
        assert "resend later" in a["err8"]


def test_refusals_are_logged_without_patient_data(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pacs.hl7")
    handle_message(
        S.omi().encode(), FakeOrders(InvalidOrder("patient birth date '19800' is not YYYYMMDD")), "10.0.0.5"
    )
    handle_message(S.orm(charset="ISO IR87").encode(), FakeOrders(), "10.0.0.5")
    handle_message(b"garbage Nguyen", FakeOrders(), "10.0.0.5")
    text = caplog.text
    assert "OMI^O23 OMI0001 from 10.0.0.5 refused AE 207" in text
    assert "ORM^O01 ORM0001 from 10.0.0.5 refused AR 203" in text
    assert "? ? from 10.0.0.5 refused AR 100: no MSH" in text
    for phi in ("19800", "Nguy", "Trần", "BN002", "ISO IR87"):
        assert phi not in text


def test_hl7_edge_imports_no_storage_nor_other_edges() -> None:
    import ast

    for path in sorted((PACKAGE / "hl7").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        bad = [
            n
            for n in names
            if n.split(".")[:2]
            in (["pacs", "index"], ["pacs", "blobstore"], ["pacs", "scp"], ["pacs", "web"])
            or n.startswith("sqlalchemy")
        ]
        assert not bad, f"{path.name} imports {bad}"


# ---------------------------------------------------------------------- the real service


def _ack(rt: Runtime, raw: str, peer: str = "10.0.0.5") -> dict[str, Any]:
    return read_ack(handle_message(raw.encode(), rt.orders, peer).payload)


def test_workflow_through_the_real_service(rt: Runtime) -> None:
    a = _ack(rt, S.orm())
    assert a["msa1"] == "AA", a
    order = rt.orders.get_order("P:ORD1001")
    assert order["accession_number"] == "ACC1001" and order["source"] == "hl7"
    assert order["study_instance_uid"] == "1.2.840.113619.2.55.3.1001"
    assert order["ordered_at"] == "20261203080400+0700" and order["ordered_at_source"] == "HL7 ORC-9"
    assert order["patient"]["name"] == "Nguyễn^Văn An"
    (step,) = order["steps"]
    assert (step["scheduled_procedure_step_id"], step["modality"], step["scheduled_station_ae_title"]) == (
        "SPS1001",
        "CT",
        "CT01AE",
    )
    assert (step["start_date"], step["start_time"]) == ("20261203", "090000")

    # the HIS timed out and resends: acknowledged, not applied twice
    assert _ack(rt, S.orm())["msa1"] == "AA"
    assert len(rt.orders.list_orders(limit=10)) == 1
    # a new order under a number that exists is content the service refuses
    dup = _ack(rt, S.orm(control_id="ORM0099"))
    assert dup["msa1"] == "AE" and "exists already" in dup["msa3"]  # v2.3.1: MSA-3, ERR-1

    assert _ack(rt, S.omi())["msa1"] == "AA"
    omi = rt.orders.get_order("P:ORD2001")
    assert [s["scheduled_procedure_step_id"] for s in omi["steps"]] == ["SPS2001", "SPS2002", "SPS2003"]
    assert all(s["on_worklist"] and s["scheduled_station_ae_title"] == "MR01AE" for s in omi["steps"])

    assert _ack(rt, S.orm("XO", "ORM0002", accession="ACC1002"))["msa1"] == "AA"
    assert rt.orders.get_order("P:ORD1001")["accession_number"] == "ACC1002"

    assert _ack(rt, S.orm("CA", "ORM0003"))["msa1"] == "AA"
    cancelled = rt.orders.get_order("P:ORD1001")
    assert [s["status"] for s in cancelled["steps"]] == ["CANCELED"]
    assert not cancelled["steps"][0]["on_worklist"]

    unknown = _ack(rt, S.orm("CA", "ORM0004", placer="ORD404"))
    assert unknown["msa1"] == "AE" and unknown["err1"].startswith("^^^204&")

    assert _ack(rt, S.adt_a08())["msa1"] == "AA"
    assert _ack(rt, S.adt_a40(surviving="BN777", prior="BN002"))["msa1"] == "AA"
    merged = rt.orders.list_orders(patient_id="BN777", limit=10)
    assert [o["order_key"] for o in merged] == ["P:ORD2001"]

    assert _ack(rt, S.oru(placer="ORD2001", accession="ACC2001"))["msa1"] == "AA"
    reported = rt.orders.get_order("P:ORD2001")
    assert (
        reported["reported_at"] == "20261203103000+0700" and reported["reporting_doctor"] == "Đỗ^Quang^Minh"
    )
    assert _ack(rt, S.oru("ORU0002", placer="ORD405", accession="ACC405"))["msa1"] == "AE"


def test_invalid_order_writes_nothing(rt: Runtime) -> None:
    bad_uid = S.orm().replace("1.2.840.113619.2.55.3.1001", "1.2.03.x")
    a = _ack(rt, bad_uid)
    assert a["msa1"] == "AE" and "Study Instance UID" in a["msa3"]
    assert rt.orders.list_orders(limit=10) == []
    # a message cut off inside OBR (before OBR-24, the modality) is refused as content
    raw = S.orm(control_id="CUT1")
    cut = _ack(rt, raw[: raw.index("\rOBR|") + 60])
    assert cut["msa1"] == "AE" and "modality" in cut["msa3"]
    assert rt.orders.list_orders(limit=10) == []
    # and a corrected resend under the same control ID is applied (the refusal was not recorded)
    assert _ack(rt, S.orm())["msa1"] == "AA"
