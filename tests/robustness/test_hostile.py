"""A corpus of hostile inputs checked end to end (issue 7) against a real ``pacs serve`` on SQLite
and PostgreSQL: every item of :mod:`tests.robustness.hostile` through STOW-RS (httpx) and C-STORE
(pynetdicom), SQL metacharacters in every QIDO key and every C-FIND key, path tricks in WADO URLs.
Outcomes: a DICOM failure status or a 4xx with a reason, or (for odd but parsable objects) a
success; never a 5xx, an aborted association or a stopped server; afterwards the archive is
consistent (verify) and holds exactly what was acknowledged.
"""

from __future__ import annotations

import collections
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from pacs.dicom.attributes import ATTRIBUTES
from pacs.model import Level
from tests.factories import make_dataset, to_bytes
from tests.protocol.store_util import open_archive
from tests.robustness.conftest import STOW_TYPE, stow_body
from tests.robustness.hostile import corpus
from tests.serve import Served, serve

SQL_PAYLOADS = [
    "' OR '1'='1",
    "'; DROP TABLE instance; --",
    "%",
    "_",
    "\\",
    "%_\\",
    '" OR ""="',
    "*' --",
    "1) OR (1=1",
]
#: C-FIND runs one DIMSE exchange per key and payload: the payloads that reach SQL differently.
FIND_PAYLOADS = ["' OR '1'='1", "'; DROP TABLE instance; --", "%", "_", "%_\\"]
STORE_OK, STORE_DUPLICATE = 0x0000, 0x0111
FIND_FAILURES = {0xA900, 0xC000, 0xA700}


def _assoc(port: int, contexts: list[tuple[str, list[str]]]) -> tuple[AE, Any]:
    ae = AE(ae_title="PYNETDICOM")
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    # Without TCP_NODELAY on our side each C-FIND (command PDU + identifier PDU) waits ~40 ms
    # for a delayed ACK.
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ae, assoc


def _stow_all(srv: Served, items: list[tuple[str, bytes, str]], tally: collections.Counter[str]) -> set[str]:
    stored: set[str] = set()
    with httpx.Client(base_url=srv.base_url, timeout=120) as client:
        for name, data, _ in items:
            r = client.post(
                "/dicom-web/studies", content=stow_body(data), headers={"Content-Type": STOW_TYPE}
            )
            assert r.status_code < 500, (name, r.status_code, r.text)
            body = r.json() if r.content else {}
            if r.status_code == 200:
                sop = body["00081199"]["Value"][0]["00081155"]["Value"][0]
                stored.add(sop)
                tally[f"STOW 200 stored: {name}"] += 1
            else:
                assert 400 <= r.status_code < 500, (name, r.status_code)
                reason = body.get("00081198", {}).get("Value", [{}])[0].get("00081197", {}).get("Value")
                tally[f"STOW {r.status_code} reason={reason and hex(reason[0])}"] += 1
    return stored


def _c_store_all(
    srv: Served, items: list[tuple[str, bytes, str]], tmp: Path, tally: collections.Counter[str]
) -> set[str]:
    """Send each file as it is (chunked from disk: pynetdicom does not re-encode it)."""
    stored: set[str] = set()
    ae, assoc = _assoc(srv.dicom_port, [(CTImageStorage, ["1.2.840.10008.1.2.1"])])
    try:
        for i, (name, data, _) in enumerate(items):
            path = tmp / f"hostile{i}.dcm"
            path.write_bytes(data)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rsp = assoc.send_c_store(path)
            except Exception as exc:  # pynetdicom will not even send it (no meta, bad UIDs...)
                tally[f"C-STORE not sendable by pynetdicom ({type(exc).__name__})"] += 1
                continue
            if not assoc.is_established:  # must never happen: the server aborted on us
                pytest.fail(f"association lost after {name!r}")
            status = int(rsp.Status) if rsp is not None and "Status" in rsp else -1
            if status in (STORE_OK, STORE_DUPLICATE):
                stored.add(str(assoc.acceptor.ae_title) and _sop_of(data))
            tally[f"C-STORE 0x{status:04X}"] += 1
            assert status in (STORE_OK, STORE_DUPLICATE, 0xC000, 0xA900), (name, hex(status))
        assoc.release()
    finally:
        ae.shutdown()
    return stored


def _sop_of(data: bytes) -> str:
    import io

    from pacs.dicom.extract import read_header

    return str(read_header(io.BytesIO(data)).SOPInstanceUID)


def _qido_sweep(srv: Served, tally: collections.Counter[str]) -> None:
    """Every QIDO key (at its own level) with every SQL payload: 200 or 400; wildcards stay literal."""
    with httpx.Client(base_url=srv.base_url, timeout=60) as client:
        for attr in ATTRIBUTES:
            level = {Level.SERIES: "series", Level.IMAGE: "instances"}.get(attr.level, "studies")
            for payload in SQL_PAYLOADS:
                r = client.get(f"/dicom-web/{level}", params={attr.keyword: payload})
                assert r.status_code in (200, 400), (level, attr.keyword, payload, r.status_code, r.text)
                tally[f"QIDO {r.status_code}"] += 1
                literal = attr.match.name in ("STR", "PN", "MULTI") and not attr.computed
                if r.status_code == 200 and payload in ("%", "_") and literal:
                    assert r.json() == [], (attr.keyword, payload)  # LIKE wildcards stay literal
                if r.status_code == 400:
                    assert r.json()["detail"]


def _c_find_sweep(srv: Served, tally: collections.Counter[str]) -> None:
    """Every string-valued C-FIND key with every SQL payload over one association."""
    ae, assoc = _assoc(
        srv.dicom_port,
        [
            (StudyRootQueryRetrieveInformationModelFind, ["1.2.840.10008.1.2.1"]),
            (Verification, ["1.2.840.10008.1.2.1"]),
        ],
    )
    try:
        for attr in ATTRIBUTES:
            if attr.vr in ("US", "UL", "SS", "SL", "FD", "FL"):
                continue
            level = "STUDY" if attr.level in (Level.PATIENT, Level.STUDY) else attr.level.value
            for payload in FIND_PAYLOADS:
                ds = Dataset()
                ds.QueryRetrieveLevel = level
                ds.SpecificCharacterSet = "ISO_IR 192"
                if level != "STUDY":
                    ds.StudyInstanceUID = ""
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        setattr(ds, attr.keyword, payload)
                        responses = list(assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind))
                    except Exception as exc:  # the SCU cannot encode it (e.g. IS with letters)
                        tally[f"C-FIND not encodable by pynetdicom ({type(exc).__name__})"] += 1
                        continue
                assert assoc.is_established, (attr.keyword, payload)
                final = int(responses[-1][0].Status) if responses and responses[-1][0] else -1
                assert final == 0x0000 or final in FIND_FAILURES, (attr.keyword, payload, hex(final))
                tally[f"C-FIND final 0x{final:04X}"] += 1
                modifier = attr.keyword == "TimezoneOffsetFromUTC"  # a query modifier in C-FIND
                if payload in ("%", "_") and final == 0 and attr.match.name in ("STR", "PN") and not modifier:
                    assert len(responses) == 1, (attr.keyword, payload, len(responses))  # no match
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        ae.shutdown()


def _wado_path_tricks(srv: Served, study: str, tally: collections.Counter[str]) -> None:
    tricks = [
        "/dicom-web/studies/..%2F..%2F..%2Fetc%2Fpasswd",
        "/dicom-web/studies/%2e%2e/series",
        f"/dicom-web/studies/{study}/series/..%2F..%2Fblobs/instances/1",
        "/dicom-web/studies/1.2.3%00.4",
        "/dicom-web/studies/" + "1." * 200 + "1",
        "/dicom-web/studies/1.2.3/series/1.2.3/instances/1.2.3/bulkdata/..%2F..%2F..%2Fetc%2Fpasswd",
        "/dicom-web/studies/1.2.3/series/1.2.3/instances/1.2.3/frames/1,-1,99999999999999999999",
        "/..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/..%2F..%2Fpacs%2Fconfig.py",
        "/%2e%2e/%2e%2e/etc/passwd",
    ]
    with httpx.Client(base_url=srv.base_url, timeout=30) as client:
        for url in tricks:
            r = client.get(url)
            assert 400 <= r.status_code < 500, (url, r.status_code)
            assert b"root:" not in r.content and b"import " not in r.content
            tally[f"WADO path trick {r.status_code}"] += 1


def test_hostile_corpus_end_to_end(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    items = corpus()
    tally: collections.Counter[str] = collections.Counter()
    timings: dict[str, float] = {}
    with serve(tmp_path, db_url) as srv:
        good = make_dataset(patient_name="Lê^Văn Tốt", patient_id="GOOD1")
        r = httpx.post(
            srv.base_url + "/dicom-web/studies",
            content=stow_body(to_bytes(good)),
            headers={"Content-Type": STOW_TYPE},
            timeout=30,
        )
        assert r.status_code == 200
        acknowledged = {good.SOPInstanceUID}
        t0 = time.monotonic()
        acknowledged |= _stow_all(srv, items, tally)
        timings["_stow_all"] = time.monotonic() - t0
        t0 = time.monotonic()
        acknowledged |= _c_store_all(srv, items, tmp_path, tally)
        timings["_c_store_all"] = time.monotonic() - t0
        t0 = time.monotonic()
        _qido_sweep(srv, tally)
        timings["_qido_sweep"] = time.monotonic() - t0
        t0 = time.monotonic()
        _c_find_sweep(srv, tally)
        timings["_c_find_sweep"] = time.monotonic() - t0
        t0 = time.monotonic()
        _wado_path_tricks(srv, good.StudyInstanceUID, tally)
        timings["_wado_path_tricks"] = time.monotonic() - t0
        # Still serving, and the good study is intact.
        found = httpx.get(
            srv.base_url + "/dicom-web/studies", params={"PatientID": "GOOD1"}, timeout=30
        ).json()
        assert [row["0020000D"]["Value"][0] for row in found] == [good.StudyInstanceUID]
        with open_archive(db_url, srv.storage) as archive:
            report = archive.verify()
            assert report.ok, report
            assert archive.count(Level.IMAGE) == len(acknowledged)
            for sop in acknowledged:
                assert archive.instances(sop_instance_uid=sop)
        assert "Traceback" not in srv.log(), srv.log()[-3000:]
    print(f"\nhostile inputs: {len(items)} objects x (STOW, C-STORE) + QIDO/C-FIND/WADO sweeps")
    print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    for key, n in sorted(tally.items()):
        print(f"  {n:5d}  {key}")
