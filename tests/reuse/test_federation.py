"""Federated look-up across facilities (issue 18) against real peers on loopback.

Three facilities hold different studies of one person (CCCD 079080001234) under different local
IDs, and each a colliding local ID of a different person:

* A, ``pacs serve`` (79001), the facility searching: P as A-100@79001 (a CT); peers below.
* B, ``pacs serve`` (79002): P as B-200@79002 (an MR, CCCD in OtherPatientIDsSequence); Q as
  A-100@79099 (A's number for P, another issuer).
* C, Orthanc 1.10 + DICOMweb plugin (79003), asked over DICOMweb and over DIMSE: P as 777@79003
  (a CT, CCCD in OtherPatientIDs); Q' as 777@79088 (Orthanc makes them one patient).
* a stopped peer (connection refused) and a hung one (accepts, never answers).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from tests.conftest import require_peer
from tests.reuse.conftest import real_file
from tests.reuse.peers import (
    Hung,
    Orthanc,
    hung_peer,
    orthanc,
    orthanc_available,
    pacs_import,
    peers_config,
    stopped_port,
    with_identity,
)
from tests.serve import Served, serve
from tests.web.conftest import part10

CCCD = "urn:vn:cccd|079080001234"
DEADLINE = 2.0
UIDS = {k: generate_uid() for k in ("a_ct", "b_mr", "b_q", "c_ct", "c_xr", "c_q")}
SERIES = {k: generate_uid() for k in UIDS}
SOPS: dict[str, list[str]] = {}


def _study(key: str, name: str, n: int, patient: tuple[str, str], **extra: Any) -> list[Any]:
    out = []
    for i in range(1, n + 1):
        ds = real_file(
            name,
            patient_id=patient[0],
            issuer=patient[1],
            study=UIDS[key],
            series=SERIES[key],
            InstanceNumber=i,
            **extra,
        )
        SOPS.setdefault(key, []).append(ds.SOPInstanceUID)
        out.append(ds)
    return out


@pytest.fixture(scope="module")
def facilities(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A, B and C running; A knows B, C (DICOMweb and DIMSE), a stopped and a hung peer."""
    ok, why = orthanc_available()
    require_peer(ok, why)
    tmp = tmp_path_factory.mktemp("federation")
    nid = (("079080001234", "", "NI"),)
    a_files = _study(
        "a_ct",
        "CT_small.dcm",
        2,
        ("A-100", "79001"),
        others=nid,
        StudyDescription="CT ngực",
        StudyDate="20240105",
        AccessionNumber="A1",
    )
    b_files = _study(
        "b_mr",
        "MR_small.dcm",
        2,
        ("B-200", "79002"),
        others=nid,
        StudyDescription="MR sọ",
        StudyDate="20230611",
        AccessionNumber="B1",
    )
    b_files += _study("b_q", "CT_small.dcm", 1, ("A-100", "79099"), StudyDescription="Q at B")
    with orthanc(tmp / "orthanc", ae_title="STORESCU") as c, hung_peer() as hung:
        for ds in _study(
            "c_ct", "CT_small.dcm", 3, ("777", "79003"), StudyDescription="CT bụng", StudyDate="20220301"
        ):
            c.upload(part10(with_identity(ds, "777", "79003", ("079080001234",))))
        for ds in _study(
            "c_xr", "CT_small.dcm", 2, ("777", "79003"), StudyDescription="CT cũ", StudyDate="20200101"
        ):
            c.upload(part10(with_identity(ds, "777", "79003", ("079080001234",))))
        for ds in _study("c_q", "CT_small.dcm", 1, ("777", "79088"), StudyDescription="Q at C"):
            c.upload(part10(ds))
        b_storage, b_db = pacs_import(tmp, "b", b_files)
        a_storage, a_db = pacs_import(tmp, "a", a_files)
        (tmp / "b").mkdir()
        with serve(
            tmp / "b", b_db, storage=b_storage, extra_config='[appraisal]\nfacility_code = "79002"\n'
        ) as b:
            a_cfg = _a_config(b, c, hung)
            (tmp / "a").mkdir()
            with serve(tmp / "a", a_db, storage=a_storage, extra_config=a_cfg) as a:
                _register(c, "A", "PACS", a.dicom_port)
                yield {"a": a, "b": b, "c": c, "hung": hung, "tmp": tmp}


def _a_config(b: Served, c: Orthanc, hung: Hung) -> str:
    cccd_other = {"system": "urn:vn:cccd", "attribute": "OtherPatientIDs", "issuer": "*"}
    c_local = {"system": "urn:vn:issuer:79003", "attribute": "PatientID", "issuer": "79003"}
    peers = [
        {"name": "bv-b", "facility_code": "79002", "kind": "pacs", "url": b.base_url},
        {
            "name": "orthanc-c",
            "facility_code": "79003",
            "kind": "dicomweb",
            "url": c.dicomweb,
            "match": [cccd_other, c_local],
        },
        {
            "name": "orthanc-c-dimse",
            "facility_code": "79003",
            "kind": "dimse",
            "ae_title": c.ae_title,
            "host": "127.0.0.1",
            "port": c.dicom_port,
            "match": [cccd_other, c_local],
        },
        {
            "name": "stopped",
            "facility_code": "79004",
            "kind": "pacs",
            "url": f"http://127.0.0.1:{stopped_port()}",
        },
        {
            "name": "hung",
            "facility_code": "79005",
            "kind": "dicomweb",
            "url": hung.url,
            "timeout_seconds": 30.0,
            "match": [{"system": "urn:vn:cccd", "attribute": "PatientID", "issuer": "*"}],
        },
    ]
    text = peers_config(peers, deadline_seconds=DEADLINE, prefetch_poll_seconds=0.2, cache_mb=64)
    return '[appraisal]\nfacility_code = "79001"\n' + text


def _register(c: Orthanc, name: str, ae: str, port: int) -> None:
    body = json.dumps({"AET": ae, "Host": "127.0.0.1", "Port": port}).encode()
    req = urllib.request.Request(f"{c.url}/modalities/{name}", data=body, method="PUT")
    with urllib.request.urlopen(req, timeout=10) as res:
        assert res.status == 200


@pytest.fixture(scope="module")
def http(facilities: dict[str, Any]) -> Iterator[httpx.Client]:
    """A client of facility A."""
    with httpx.Client(base_url=facilities["a"].base_url, timeout=30) as c:
        yield c


def _search(http: httpx.Client, token: str = CCCD, **params: Any) -> tuple[httpx.Response, dict[str, Any]]:
    r = http.get("/api/reuse/studies", params={"identifier": token, **params})
    assert r.status_code == 200, r.text
    return r, r.json()


# ---------------------------------------------------------------- search


def test_search_finds_the_persons_studies_and_none_of_the_others(http: httpx.Client) -> None:
    start = time.monotonic()
    r, body = _search(http)
    took = time.monotonic() - start
    found = {s["StudyInstanceUID"]: s for s in body["studies"]}
    assert set(found) == {UIDS["b_mr"], UIDS["c_ct"], UIDS["c_xr"]}  # A's own CT is local, not a peer's
    assert not ({UIDS["b_q"], UIDS["c_q"]} & set(found))
    # Orthanc answered over DICOMweb and DIMSE: one study, two sources.
    assert {s["peer"] for s in found[UIDS["c_ct"]]["sources"]} == {"orthanc-c", "orthanc-c-dimse"}, body[
        "peers"
    ]
    assert found[UIDS["b_mr"]]["facility"] == "79002"
    url = found[UIDS["b_mr"]]["dicom"]["00081190"]["Value"][0]
    assert url.endswith(f"/api/reuse/peers/bv-b/dicom-web/studies/{UIDS['b_mr']}")
    peers = {p["peer"]: p for p in body["peers"]}
    assert peers["orthanc-c"]["dropped"] == 1  # Q', one Orthanc patient with P
    assert peers["bv-b"]["status"] == peers["orthanc-c"]["status"] == "ok"
    # A dead peer and a hung one are named, and cost at most the deadline.
    assert peers["stopped"]["status"] == "error" and "connect" in peers["stopped"]["detail"]
    assert peers["hung"]["status"] == "timeout"
    assert body["complete"] is False and "299" in r.headers["warning"] and "hung" in r.headers["warning"]
    assert took < DEADLINE + 1.0, took


def test_a_local_number_is_matched_with_its_issuer(http: httpx.Client) -> None:
    # A-100@79099 at B is another person: asking for A-100@79001 (P at A) finds nothing at B.
    _, body = _search(http, "urn:vn:issuer:79001|A-100", peer=["bv-b"])
    assert body["studies"] == [] and body["complete"]
    _, body = _search(http, "urn:vn:issuer:79003|777", peer=["orthanc-c", "orthanc-c-dimse"])
    assert [s["StudyInstanceUID"] for s in body["studies"]] == [UIDS["c_ct"], UIDS["c_xr"]]
    assert {p["peer"]: p["dropped"] for p in body["peers"]} == {"orthanc-c": 0, "orthanc-c-dimse": 0}
    r = http.get("/api/reuse/studies", params={"identifier": "|A-100"})
    assert r.status_code == 400 and "system|value" in r.json()["detail"]


def test_a_search_without_slow_peers_is_quick(http: httpx.Client) -> None:
    start = time.monotonic()
    _, body = _search(http, peer=["bv-b", "orthanc-c"])
    assert body["complete"] and len(body["studies"]) == 3
    assert time.monotonic() - start < 1.5


# ---------------------------------------------------------------- proxy


def test_proxy_renders_and_serves_frames_of_a_peer_study(http: httpx.Client) -> None:
    base = f"/api/reuse/peers/orthanc-c/dicom-web/studies/{UIDS['c_ct']}/series/{SERIES['c_ct']}"
    url = f"{base}/instances/{SOPS['c_ct'][0]}/rendered"
    first = http.get(url, headers={"Accept": "image/jpeg"})
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert first.content[:2] == b"\xff\xd8" and first.headers["x-reuse-cache"] == "miss"
    again = http.get(url, headers={"Accept": "image/jpeg"})
    assert again.headers["x-reuse-cache"] == "hit" and again.content == first.content
    frames = http.get(
        f"/api/reuse/peers/bv-b/dicom-web/studies/{UIDS['b_mr']}/series/{SERIES['b_mr']}"
        f"/instances/{SOPS['b_mr'][0]}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    assert frames.status_code == 200 and frames.headers["content-type"].startswith("multipart/related")
    assert len(frames.content) > 64 * 64
    listed = http.get(f"{base}/instances", headers={"Accept": "application/dicom+json"})
    assert {i["00080018"]["Value"][0] for i in listed.json()} == set(SOPS["c_ct"])
    # No browsing of a peer's archive through us: a request names one study.
    assert http.get("/api/reuse/peers/bv-b/dicom-web/studies").status_code == 400
    assert http.get("/api/reuse/peers/nobody/dicom-web/studies/1.2.3").status_code == 404


# ---------------------------------------------------------------- import


def _records(http: httpx.Client) -> set[str]:
    r = http.get("/api/appraisal/v1/records", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return {uid for rec in r.json()["records"] for uid in rec["service_line"]["study_instance_uids"]}


def test_import_keeps_provenance_and_makes_no_appraisal_record(http: httpx.Client) -> None:
    assert UIDS["a_ct"] in _records(http)  # A's own exam has its record
    # An order of A that happens to have the accession number of B's MR.
    order = {
        "placer_order_number": "ORD-1",
        "accession_number": "B1",
        "patient": {"patient_id": "A-100", "issuer": "79001"},
        "steps": [{"modality": "MR"}],
    }
    assert http.post("/api/orders", json=order).status_code in (200, 201)
    r = http.post("/api/reuse/import", json={"peer": "bv-b", "study": UIDS["b_mr"], "identifier": CCCD})
    assert r.status_code == 201, r.text
    row = r.json()
    assert (row["status"], row["instances"], row["method"], row["facility_code"]) == (
        "done",
        2,
        "wado-rs",
        "79002",
    )
    assert (row["patient_id"], row["issuer_of_patient_id"], row["identifier"]) == ("B-200", "79002", CCCD)
    assert row["started_at"] and row["finished_at"] and row["imported_by"]
    moved = http.post("/api/reuse/import", json={"peer": "orthanc-c-dimse", "study": UIDS["c_ct"]})
    assert moved.status_code == 201, moved.text
    assert (moved.json()["method"], moved.json()["instances"]) == ("c-move", 3)
    # Labelled in QIDO-RS, never an appraisal record, never linked to A's order with that accession.
    qido = http.get("/dicom-web/studies", params={"PatientName": "*"}).json()
    labels = {s["0020000D"]["Value"][0]: s.get("00111003") for s in qido}
    assert labels[UIDS["b_mr"]] and labels[UIDS["c_ct"]] and labels[UIDS["a_ct"]] is None
    records = _records(http)
    assert UIDS["b_mr"] not in records and UIDS["c_ct"] not in records and UIDS["a_ct"] in records
    linked = http.get("/api/orders/ORD-1").json()
    assert linked.get("linked_study_instance_uid") in (None, ""), linked
    again = http.post("/api/reuse/import", json={"peer": "bv-b", "study": UIDS["b_mr"]})
    assert again.json()["status"] == "done"  # not fetched twice
    ours = http.post("/api/reuse/import", json={"peer": "bv-b", "study": UIDS["a_ct"]})
    assert ours.status_code == 409
    _, body = _search(http, peer=["bv-b"])
    assert [s["imported"] for s in body["studies"]] == ["done"]


# ---------------------------------------------------------------- prefetch, audit


def _job(http: httpx.Client, job: int, timeout: float = 60) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        row = http.get(f"/api/reuse/jobs/{job}").json()
        if row["status"] in ("done", "failed"):
            return row  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"prefetch job {job} still {row['status']}")


def test_an_order_prefetches_the_priors_into_the_cache(http: httpx.Client) -> None:
    order = {
        "placer_order_number": "ORD-9",
        "accession_number": "A9",
        "patient": {
            "patient_id": "A-100",
            "issuer": "79001",
            "name": "Nguyễn^Thị Hồng Nhung",
            "other_ids": [{"value": "079080001234", "type": "NI"}],
        },
        "steps": [{"modality": "CT"}],
    }
    r = http.post("/api/orders", json=order)
    assert r.status_code in (200, 201), r.text
    jobs = http.get("/api/reuse/jobs").json()["jobs"]
    mine = [j for j in jobs if j["trigger"] == "order" and j["order_key"] == "P:ORD-9"]
    assert mine and CCCD in mine[0]["identifiers"]
    done = _job(http, mine[0]["id"])
    assert done["status"] == "done", done
    # B's MR and C's CT were imported (local now); C's older CT is fetched into the cache.
    assert done["result"]["studies"] == [UIDS["c_xr"]] and done["result"]["answered"]
    base = f"/api/reuse/peers/orthanc-c/dicom-web/studies/{UIDS['c_xr']}/series/{SERIES['c_xr']}"
    for sop in SOPS["c_xr"]:
        r = http.get(
            f"{base}/instances/{sop}/rendered", params={"quality": "90"}, headers={"Accept": "image/jpeg"}
        )
        assert r.status_code == 200 and r.headers["x-reuse-cache"] == "hit"
    listed = http.get(
        f"{base}/instances",
        params={"includefield": "PhotometricInterpretation"},
        headers={"Accept": "application/dicom+json, application/json"},
    )
    assert listed.headers["x-reuse-cache"] == "hit"
    # On demand: queued (202), run by the worker.
    q = http.post("/api/reuse/prefetch", json={"identifier": "urn:vn:issuer:79003|777", "peer": "orthanc-c"})
    assert q.status_code == 202
    assert _job(http, q.json()["job"])["status"] == "done"


def test_every_cross_facility_access_is_audited(http: httpx.Client) -> None:
    _search(http, peer=["bv-b"])
    rows = http.get("/api/audit", params={"kind": "reuse.", "limit": 1000}).json()["events"]
    kinds = {r["kind"] for r in rows}
    assert {"reuse.query", "reuse.fetch", "reuse.import", "reuse.prefetch"} <= kinds
    query = next(r for r in rows if r["kind"] == "reuse.query")
    assert CCCD in query["details"]["identifiers"]
    assert {p["peer"] for p in query["details"]["peers"]} and query["peer_address"]
    imp = next(r for r in rows if r["kind"] == "reuse.import" and r["study_instance_uid"] == UIDS["b_mr"])
    assert imp["details"]["peer"] == "bv-b"


def test_peer_check_from_the_command_line(facilities: dict[str, Any]) -> None:
    import subprocess
    import sys

    a: Served = facilities["a"]
    cfg = Path(facilities["tmp"]) / "a" / "config.toml"
    out = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "peer", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stdout + out.stderr  # stopped and hung are unreachable
    lines = {line.split("\t")[0]: line for line in out.stdout.splitlines()}
    assert "\treachable" in lines["bv-b"] and "\treachable" in lines["orthanc-c"]
    assert "\treachable" in lines["orthanc-c-dimse"] and "UNREACHABLE" in lines["stopped"]
    listed = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "peer", "list", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "orthanc-c\t79003\tdicomweb" in listed.stdout and a.base_url


# ---------------------------------------------------------------- viewer panel (real Chromium)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh Vietnamese page; a script error fails the test."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, locale="vi-VN")
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(20_000)
    try:
        yield pg
        assert not errors, errors
    finally:
        ctx.close()


def test_viewer_panel_lists_and_opens_studies_at_other_facilities(
    facilities: dict[str, Any], page: Any
) -> None:
    base = facilities["a"].base_url
    imported = httpx.post(
        f"{base}/api/reuse/import", json={"peer": "bv-b", "study": UIDS["b_mr"]}, timeout=60
    )
    assert imported.json()["status"] == "done"  # (done already when the whole module runs)
    page.goto(f"{base}/#/?identifier=urn:vn:cccd%7C079080001234")
    page.wait_for_selector("#reuse-panel[data-done='ok']")
    assert page.inner_text("#reuse-panel h2") == "Ca chụp ở cơ sở khác"
    rows = {
        r.get_attribute("data-study"): r.inner_text() for r in page.locator("#reuse-panel tbody tr").all()
    }
    assert set(rows) == {UIDS["b_mr"], UIDS["c_ct"], UIDS["c_xr"]}
    assert "đã nhập về" in rows[UIDS["b_mr"]] and "79003" in rows[UIDS["c_xr"]]
    warned = page.locator("#reuse-panel .warn p").all_inner_texts()
    assert any("79005" in w for w in warned) and any("79004" in w for w in warned)  # hung, stopped
    # Imported studies are labelled in our own list.
    page.goto(f"{base}/#/?PatientName=*")
    page.wait_for_selector(f"#studies tr[data-study='{UIDS['b_mr']}'] .reuse-badge")
    assert not page.locator(f"#studies tr[data-study='{UIDS['a_ct']}'] .reuse-badge").count()
    # A peer's study opens in our viewer through the proxy.
    page.goto(f"{base}/#/?identifier=urn:vn:cccd%7C079080001234")
    page.wait_for_selector("#reuse-panel[data-done='ok']")
    page.click(f"#reuse-panel tr[data-study='{UIDS['c_xr']}'] a")
    page.wait_for_function("() => (i => !i.hidden && i.naturalWidth > 0)(document.querySelector('#image'))")
    assert "/reuse/peers/orthanc-c/" in page.url
    assert "79003" not in page.inner_text(".reuse-banner") and "orthanc-c" in page.inner_text(".reuse-banner")
    # The study view of our own study has the panel too, by the patient's identifiers.
    page.goto(f"{base}/#/study/{UIDS['a_ct']}")
    page.wait_for_selector("#reuse-study[data-done='ok']")
    shown = {r.get_attribute("data-study") for r in page.locator("#reuse-study tbody tr").all()}
    assert UIDS["c_xr"] in shown and UIDS["a_ct"] not in shown
