"""``/api/orders`` and ``/api/patients`` (issue 15), on SQLite and PostgreSQL: the same orders
as the HL7 door, JSON in and out; resends with an Idempotency-Key applied once; every bad
request a 4xx with a reason and nothing written."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from pacs import runtime
from pacs.index.schema import orders, worklist_items
from pacs.runtime import Runtime

ORDER: dict[str, Any] = {
    "placer_order_number": "HIS-2026-0001",
    "accession_number": "A20261203001",
    "patient": {
        "patient_id": "BN42",
        "issuer": "BV01",
        "name": "Trần^Thị Ánh Tuyết",
        "birth_date": "19751130",
        "sex": "F",
        "other_ids": [{"value": "079175000123", "issuer": "BCA", "type": "NI"}],
    },
    "requested_procedure": {
        "id": "RP42",
        "description": "X-quang ngực thẳng",
        "code": {"value": "18.0001.0001", "scheme": "BYT", "meaning": "Chụp X-quang ngực thẳng"},
    },
    "referring_physician": "Lê^Minh",
    "ordered_at": "20261203071500+0700",
    "steps": [{"step_id": "1", "modality": "DX", "station_ae_title": "DR01AE", "start": "20261203080000"}],
}


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(runtime.web_app(rt)) as c:
        yield c


def _rows(rt: Runtime, table: Any) -> int:
    with rt.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_order_lifecycle_over_rest(client: TestClient, rt: Runtime) -> None:
    r = client.post("/api/orders", json=ORDER, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["applied"]["steps"] == 1 and body["order"]["status"] == "SCHEDULED"
    assert body["order"]["patient"]["name"] == "Trần^Thị Ánh Tuyết"
    assert body["order"]["steps"][0]["on_worklist"] is True
    again = client.post("/api/orders", json=ORDER, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json()["applied"]["duplicate"] is True
    assert _rows(rt, worklist_items) == 1

    got = client.get("/api/orders/HIS-2026-0001")
    assert got.status_code == 200 and got.json()["accession_number"] == "A20261203001"
    assert [
        o["order_key"] for o in client.get("/api/orders", params={"patient_id": "BN42"}).json()["orders"]
    ] == ["P:HIS-2026-0001"]
    rep = client.post(
        "/api/orders/HIS-2026-0001/report",
        json={"reported_at": "20261203100000+0700", "reporting_doctor": "Phạm^Văn Hùng"},
    )
    assert rep.status_code == 200, rep.text
    assert client.get("/api/orders/HIS-2026-0001").json()["reported_at"] == "20261203100000+0700"
    assert client.delete("/api/orders/HIS-2026-0001").status_code == 200
    after = client.get("/api/orders/HIS-2026-0001").json()
    assert after["status"] == "CANCELED" and after["steps"][0]["on_worklist"] is False


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, "JSON"),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400, "object"),
        (b"<order/>", {"Content-Type": "application/xml"}, 415, "application/json"),
        (b"{" + b" " * (2 << 20) + b"}", {"Content-Type": "application/json"}, 413, "MiB"),
    ],
)
def test_unreadable_bodies(
    client: TestClient, rt: Runtime, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    r = client.post("/api/orders", content=body, headers=headers)
    assert r.status_code == status and reason in r.json()["detail"]
    assert _rows(rt, orders) == 0


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"patient": None}, 422, "patient ID"),
        ({"control": "ZZ"}, 422, "control"),
        ({"steps": [{"step_id": "1", "modality": ""}]}, 422, "modality"),
        ({"steps": [{"step_id": "1", "modality": "CT", "start": "03/12/2026"}]}, 422, "date-time"),
        ({"steps": "CT"}, 422, "list"),
        ({"study_instance_uid": "not-a-uid"}, 422, "UID"),
        ({"control": "XO", "placer_order_number": "UNKNOWN"}, 404, "no order"),
    ],
)
def test_invalid_orders(
    client: TestClient, rt: Runtime, change: dict[str, Any], status: int, reason: str
) -> None:
    r = client.post("/api/orders", json={**ORDER, **change})
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]
    assert _rows(rt, orders) == 0 and _rows(rt, worklist_items) == 0
    assert client.post("/api/orders", json=ORDER).status_code == 201  # still serving


def test_patient_update_and_merge_over_rest(client: TestClient) -> None:
    assert client.post("/api/orders", json=ORDER).status_code == 201
    r = client.post("/api/patients/update", json={"patient": {**ORDER["patient"], "name": "Trần^Thị Tuyết"}})
    assert r.status_code == 200, r.text
    assert client.get("/api/orders/HIS-2026-0001").json()["steps"][0]["on_worklist"]
    r = client.post(
        "/api/patients/merge",
        json={
            "surviving": {"patient_id": "BN01", "issuer": "BV01"},
            "prior_patient_id": "BN42",
            "prior_issuer": "BV01",
        },
    )
    assert r.status_code == 200, r.text
    assert client.get("/api/orders", params={"patient_id": "BN01"}).json()["orders"]
    assert client.post("/api/patients/merge", json={"surviving": {}}).status_code == 422
