"""The audit trail: web reads/searches/downloads/stores, logins, DICOM associations and their
operations recorded with who/where/what/outcome (SQLite and PostgreSQL); append-only; PS3.15 A.5
audit messages as JSON and XML; ``pacs audit`` and ``pacs user`` on the command line."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification
from sqlalchemy import text

from pacs import config, runtime
from pacs.config import AllowedAE
from pacs.model import Origin
from pacs.scp.listener import DicomServer
from pacs.services.audit import EventFilter
from tests.factories import make_dataset, to_bytes
from tests.security.conftest import PASSWORD, ROLES, Secured
from tests.security.test_roles import STOW_TYPE, stow_body


def _rows(s: Secured, **flt: object) -> list[dict]:
    return s.rt.audit.query(EventFilter(**flt))  # type: ignore[arg-type]


def test_web_accesses_are_audited(secured: Secured) -> None:
    ds = make_dataset(patient_id="PID-AUDIT")
    res = secured.rt.archive.store_bytes(to_bytes(ds), Origin(protocol="internal"))
    st, se, sop = res.study_instance_uid, res.series_instance_uid, res.sop_instance_uid
    h = secured.headers("radiologist")
    c = secured.client
    assert c.get("/dicom-web/studies?PatientID=PID-AUDIT", headers=h).status_code == 200
    assert c.get(f"/dicom-web/studies/{st}/series/{se}/instances/{sop}", headers=h).status_code == 200
    new = make_dataset(patient_id="PID-AUDIT", study_uid=st)
    r = c.post(
        "/dicom-web/studies", content=stow_body(to_bytes(new)), headers={**h, "Content-Type": STOW_TYPE}
    )
    assert r.status_code == 200
    assert c.get(f"/dicom-web/studies/{st}/metadata", headers=secured.headers("appraiser")).status_code == 403
    assert (
        c.post("/api/auth/login", json={"username": "radiologist-user", "password": "nope!"}).status_code
        == 401
    )

    rows = _rows(secured, user="radiologist-user")
    by_kind = {r["kind"]: r for r in rows}
    search = by_kind["http.search"]
    assert search["peer_address"] == "testclient"
    assert search["details"]["status"] == 200
    assert search["details"]["patient_id"] == "PID-AUDIT"
    assert search["details"]["role"] == "radiologist"
    download = by_kind["http.retrieve"]
    assert (download["study_instance_uid"], download["sop_instance_uid"]) == (st, sop)
    assert download["patient_id"] == "PID-AUDIT"  # joined from the index
    assert download["outcome"] == 0
    assert by_kind["http.store"]["details"]["method"] == "POST"
    failed = by_kind["auth.login_failed"]
    assert failed["outcome"] == 4
    assert failed["peer_address"] == "testclient"
    assert by_kind["auth.login"]["outcome"] == 0
    denied = _rows(secured, user="appraiser-user", kinds=("http.metadata",))
    assert len(denied) == 1
    assert denied[0]["details"]["status"] == 403
    assert denied[0]["study_instance_uid"] == st
    assert denied[0]["outcome"] == 4
    # the STOW itself left an instance-level store event too
    stored = _rows(secured, kinds=("instance.",), study_instance_uid=st)
    assert {r["sop_instance_uid"] for r in stored} == {sop, new.SOPInstanceUID}


def test_events_are_append_only(secured: Secured) -> None:
    secured.rt.archive.record_event("test.event", Origin(address="10.0.0.1", protocol="internal"))
    engine = secured.rt.engine
    for stmt in ("UPDATE events SET user_name = 'mallory'", "DELETE FROM events"):
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(text(stmt))
    assert _rows(secured, kinds=("test.event",))[0]["peer_address"] == "10.0.0.1"


def test_dicom_associations_and_operations_are_audited(db_url: str, tmp_path: Path) -> None:
    settings = config.Settings(
        storage=config.StorageSettings(path=tmp_path / "storage", fsync=False),
        database=config.DatabaseSettings(url=db_url),
        dicom=config.DicomSettings(port=0, allowed_aes=(AllowedAE("AUDITSCU", services=config.SERVICES),)),
    )
    rt = runtime.build(settings)
    server = DicomServer(settings, rt.archive, extensions=runtime.dimse_extensions(rt), audit=rt.audit)
    host, port = server.start()
    try:
        ae = AE(ae_title="AUDITSCU")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ds = make_dataset(patient_id="PID-DIMSE")
        assoc = ae.associate(host, port, ae_title="PACS")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(ds).Status == 0
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = ds.StudyInstanceUID
        results = list(assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind))
        assert results[-1][0].Status == 0
        assoc.release()
        bad = AE(ae_title="INTRUDER")
        bad.add_requested_context(Verification)
        assert not bad.associate(host, port, ae_title="PACS").is_established
    finally:
        server.stop()
    try:
        rows = rt.audit.query(EventFilter(user="AUDITSCU"))
        kinds = [r["kind"] for r in rows]
        assert kinds[0] == "association.open"
        assert kinds[-1] == "association.close"
        assert "instance.stored" in kinds
        assert "query.find" in kinds
        assert all(r["peer_address"] == "127.0.0.1" for r in rows)
        stored = next(r for r in rows if r["kind"] == "instance.stored")
        assert stored["study_instance_uid"] == ds.StudyInstanceUID
        assert stored["patient_id"] == "PID-DIMSE"
        rejected = rt.audit.query(EventFilter(kinds=("association.rejected",)))
        assert rejected and rejected[0]["calling_ae"] == "INTRUDER"
        assert rejected[0]["outcome"] == 4
        # PS3.15 A.5 export: XML parses; EventIDs as the standard codes
        root = ET.fromstring(rt.audit.to_xml(rows + rejected))
        msgs = root.findall("AuditMessage")
        assert len(msgs) == len(rows) + 1
        codes = [m.find("EventIdentification/EventID").get("csd-code") for m in msgs]  # type: ignore[union-attr]
        assert codes[0] == "110114"  # User Authentication (association open)
        assert "110104" in codes  # DICOM Instances Transferred (the C-STORE)
        assert "110112" in codes  # Query (the C-FIND)
        assert codes[-1] == "110113"  # Security Alert (rejected association)
        store_msg = msgs[kinds.index("instance.stored")]
        objs = store_msg.findall("ParticipantObjectIdentification")
        assert {o.get("ParticipantObjectID") for o in objs} == {"PID-DIMSE", ds.StudyInstanceUID}
        req = store_msg.find("ActiveParticipant[@UserIsRequestor='true']")
        assert req is not None
        assert req.get("UserID") == "AUDITSCU"
        assert req.get("NetworkAccessPointID") == "127.0.0.1"
    finally:
        rt.close()


def test_audit_api_exports_atna_json_and_xml(secured: Secured) -> None:
    ds = make_dataset(patient_id="PID-X")
    res = secured.rt.archive.store_bytes(to_bytes(ds), Origin(protocol="internal"))
    c = secured.client
    st = res.study_instance_uid
    assert (
        c.get(f"/dicom-web/studies/{st}/metadata", headers=secured.headers("radiologist")).status_code == 200
    )
    admin = secured.headers("admin")
    r = c.get(f"/api/audit?study={st}&kind=http.&format=json", headers=admin)
    assert r.status_code == 200
    msgs = r.json()["AuditMessages"]
    assert len(msgs) == 1
    m = msgs[0]["AuditMessage"]
    assert m["EventIdentification"]["EventID"] == {
        "csd-code": "110103",
        "codeSystemName": "DCM",
        "originalText": "DICOM Instances Accessed",
    }
    assert m["EventIdentification"]["EventActionCode"] == "R"
    assert m["EventIdentification"]["EventOutcomeIndicator"] == "0"
    assert m["ActiveParticipant"][0]["UserID"] == "radiologist-user"
    assert m["AuditSourceIdentification"]["AuditSourceID"] == "PACS"
    ids = {o["ParticipantObjectID"]: o for o in m["ParticipantObjectIdentification"]}
    assert ids["PID-X"]["ParticipantObjectTypeCodeRole"] == "1"  # patient
    assert ids[st]["ParticipantObjectIDTypeCode"]["csd-code"] == "110180"
    r = c.get("/api/audit?format=xml&kind=auth.", headers=admin)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(r.content)
    logins = root.findall("AuditMessage")
    assert len(logins) == len(ROLES)  # the logins of the fixture, one per role
    assert all(m.find("EventIdentification/EventTypeCode").get("csd-code") == "110122" for m in logins)  # type: ignore[union-attr]
    r = c.get("/api/audit?since=1h&user=admin-user", headers=admin)
    assert r.status_code == 200
    assert {e["kind"] for e in r.json()["events"]} >= {"auth.login", "http.audit"}
    assert c.get("/api/audit?since=yesterday", headers=admin).status_code == 400
    assert c.get("/api/audit?format=pdf", headers=admin).status_code == 400


def test_cli_users_and_audit(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from pacs.cli import main

    common = ["--storage", str(tmp_path / "storage"), "--database-url", db_url]
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["user", "add", "carol", "--role", "appraiser", "--password-stdin", *common]) == 0
    assert main(["user", "add", "carol", "--role", "appraiser", "--password-stdin", *common]) == 1
    assert main(["user", "disable", "carol", *common]) == 0
    assert main(["user", "disable", "nobody", *common]) == 1
    capsys.readouterr()
    assert main(["user", "list", *common]) == 0
    assert capsys.readouterr().out.split("\t")[:3] == ["carol", "appraiser", "disabled"]
    settings = dataclasses.replace(
        config.Settings(),
        storage=config.StorageSettings(path=tmp_path / "storage", fsync=False),
        database=config.DatabaseSettings(url=db_url),
    )
    rt = runtime.build(settings)
    try:
        rt.archive.record_event("query.find", Origin(address="10.9.8.7", calling_ae="WS1", protocol="dimse"))
    finally:
        rt.close()
    out = tmp_path / "audit.xml"
    assert (
        main(["audit", "--since", "1d", "--user", "WS1", "--format", "xml", "--output", str(out), *common])
        == 0
    )
    msgs = ET.parse(out).getroot().findall("AuditMessage")
    assert len(msgs) == 1
    assert msgs[0].find("ActiveParticipant").get("NetworkAccessPointID") == "10.9.8.7"  # type: ignore[union-attr]
    capsys.readouterr()
    assert main(["audit", "--kind", "query.", "--format", "json", *common]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["AuditMessages"][0]["AuditMessage"]["EventIdentification"]["EventID"]["csd-code"] == "110112"
    assert main(["audit", "--verify", *common]) == 0  # the hash chain holds
    assert "audit chain intact" in capsys.readouterr().out


def test_a_search_row_names_every_patient_it_showed(secured: Secured) -> None:
    """QIDO-RS by name, matching two patients: the audit row (durable before the response
    began) lists both patients and their studies, though the query named neither patient."""
    for pid in ("PID-TRAN-1", "PID-TRAN-2"):
        secured.rt.archive.store_bytes(
            to_bytes(make_dataset(patient_id=pid, PatientName="Trần^Thị Lan")), Origin(protocol="internal")
        )
    secured.rt.archive.store_bytes(
        to_bytes(make_dataset(patient_id="PID-OTHER", PatientName="Lý^Văn Nam")), Origin(protocol="internal")
    )
    r = secured.client.get("/dicom-web/studies?PatientName=Tr*", headers=secured.headers("radiologist"))
    assert r.status_code == 200 and len(r.json()) == 2
    rows = [
        x for x in _rows(secured, kinds=("http.search",)) if "PatientName" in x["details"].get("query", "")
    ]
    assert len(rows) == 1  # already there: written before the response started
    assert set(rows[0]["details"]["patients"]) == {"PID-TRAN-1", "PID-TRAN-2"}
    assert len(rows[0]["details"]["studies"]) == 2
