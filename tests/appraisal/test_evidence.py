"""Evidence packs per claim line (issue 16), and no verdict in any new output, in either language.

The printable page carries the label and the "device time is only part of the procedure" sentence
in Vietnamese and English, every time with its source, and a SHA-256 over the pack's canonical
JSON that verifies from the JSON embedded in the page, from ``?format=json`` and from each file
of a batch zip.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import re
import zipfile
from typing import Any

import pytest

from pacs import cli
from pacs.services.appraisal.evidence import DEVICE_TIME_LABEL, canonical, verify
from tests.appraisal.conftest import MonthRuntime
from tests.appraisal.excel import xlsx_text
from tests.appraisal.test_no_verdict import text_of, verdicts
from tests.appraisal.test_reconcile import XML, make_claim

API = "/api/appraisal/v1"


def _embedded(page: str) -> dict[str, Any]:
    m = re.search(r"<script type='application/json' id='pack'>(.*?)</script>", page, re.S)
    assert m, "the pack's JSON is embedded in the page"
    return dict(json.loads(m.group(1)))


def test_the_page_has_the_labels_and_a_hash_that_verifies(generated_month: MonthRuntime) -> None:
    c, s = generated_month.client, generated_month.month.studies[3]  # a CT study with its MPPS step
    label = generated_month.rt.appraisal.label
    r = c.get(f"{API}/evidence/{s.accession}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    text = html.unescape(page)
    for part in (label["vi"], label["en"], DEVICE_TIME_LABEL["vi"], DEVICE_TIME_LABEL["en"]):
        assert part in text
    assert "@media print" in page and "@page" in page
    digest = re.search(r"SHA-256: ([0-9a-f]{64})", page)
    assert digest
    pack = _embedded(page)
    assert hashlib.sha256(canonical(pack)).hexdigest() == digest.group(1)
    # the pack's facts: order, MPPS, counts, device, people, report time, times with sources
    assert pack["counts"] == {"series": s.series, "images": s.images}
    assert len(pack["procedure_steps"]) == 1 and pack["procedure_steps"][0]["status"] == "COMPLETED"
    assert pack["devices"][0]["device_serial_number"] == s.device.serial
    assert pack["devices"][0]["machine_code"]["current"]
    assert pack["reading_doctor"]["reading"][0]["dicom_name"] == "Lê^Văn Cường"
    assert {t["code"] for t in pack["times"]} >= {"NGAY_YL", "NGAY_TH_YL", "NGAY_KQ", "first_acquisition"}
    first = next(t for t in pack["times"] if t["code"] == "first_acquisition")
    assert first["value"] and "AcquisitionDate" in first["source"]
    assert "report" in pack and "order" in pack


def test_json_by_study_uid_and_record_id_verifies_and_tampering_shows(generated_month: MonthRuntime) -> None:
    c, s = generated_month.client, generated_month.month.studies[0]
    by_uid = c.get(f"{API}/evidence/{s.uid}", params={"format": "json"}).json()
    by_id = c.get(f"/api/appraisal/evidence/acc:{s.accession}", params={"format": "json"}).json()
    assert verify(by_uid) and verify(by_id)
    assert by_uid["pack"]["record_id"] == by_id["pack"]["record_id"] == f"acc:{s.accession}"
    by_uid["pack"]["counts"]["images"] += 1
    assert not verify(by_uid)
    assert c.get(f"{API}/evidence/NO-SUCH-ACCESSION").status_code == 404


def test_a_batch_zip_of_claim_lines(generated_month: MonthRuntime) -> None:
    c, studies = generated_month.client, generated_month.month.studies
    ids = [s.accession for s in studies[:5]] + ["NOPE"]
    r = c.get(f"{API}/evidence.zip", params={"ids": ",".join(ids)})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(r.content))
    manifest = json.loads(z.read("manifest.json"))
    assert manifest["not_found"] == ["NOPE"] and len(manifest["packs"]) == 5
    for entry in manifest["packs"]:
        doc = json.loads(z.read(f"{entry['file']}.json"))
        assert verify(doc) and doc["sha256"] == entry["sha256"]
        assert entry["sha256"] in z.read(f"{entry['file']}.html").decode()
    r = c.post(f"{API}/evidence.zip", json={"ids": [studies[7].uid]})
    assert len(json.loads(zipfile.ZipFile(io.BytesIO(r.content)).read("manifest.json"))["packs"]) == 1
    assert c.post(f"{API}/evidence.zip", content=b"[1]").status_code == 400
    assert c.get(f"{API}/evidence.zip").status_code == 400


@pytest.fixture(scope="module")
def run(generated_month: MonthRuntime) -> dict[str, Any]:
    body = make_claim(generated_month.month).body
    r = generated_month.client.post(
        f"{API}/reconcile", params={"month": "2026-11"}, content=body, headers=XML
    )
    return dict(r.json())


def test_a_batch_zip_of_a_run(generated_month: MonthRuntime, run: dict[str, Any]) -> None:
    r = generated_month.client.get(f"{API}/evidence.zip", params={"run": run["run"], "lines": "1,2,3"})
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(r.content)).read("manifest.json"))
    assert [p["id"] for p in manifest["packs"]] == [ln["pacs"]["record_id"] for ln in run["lines"][:3]]


def test_no_verdict_in_any_new_output(
    generated_month: MonthRuntime, run: dict[str, Any], tmp_path: Any
) -> None:
    c, studies = generated_month.client, generated_month.month.studies
    a = generated_month.rt.appraisal
    label = (a.settings.label_vi, a.settings.label_en)
    nov = {"from": "2026-11-01", "to": "2026-11-07"}
    outputs: list[tuple[str, str]] = [("reconcile json", json.dumps(run, ensure_ascii=False))]
    for name, path, params in (
        ("run csv", f"{API}/reconcile/{run['run']}", {"format": "csv"}),
        ("run xlsx", f"{API}/reconcile/{run['run']}", {"format": "xlsx"}),
        ("evidence html", f"{API}/evidence/{studies[3].accession}", {}),
        ("evidence html retired", f"{API}/evidence/{studies[-6].accession}", {}),
        ("evidence json", f"{API}/evidence/{studies[3].accession}", {"format": "json"}),
        ("unregistered", f"{API}/devices/unregistered", {}),
        ("totals", f"{API}/totals", nov),
        ("totals csv", f"{API}/totals", {**nov, "format": "csv"}),
        ("export xlsx (totals sheet)", f"{API}/export.xlsx", {**nov, "department": "K02"}),
        ("export csv filtered", f"{API}/export.csv", {**nov, "machine_code": "XQ.2.XR-01B"}),
    ):
        r = c.get(path, params=params)
        assert r.status_code == 200, name
        outputs.append((name, xlsx_text(r.content) if name.endswith("xlsx") else text_of(r)))
    z = zipfile.ZipFile(
        io.BytesIO(c.get(f"{API}/evidence.zip", params={"run": run["run"], "lines": "1,2"}).content)
    )
    outputs += [(f"zip {n}", z.read(n).decode()) for n in z.namelist()]
    out = tmp_path / "cli.html"
    cfg = str(generated_month.folder / "config.toml")
    assert (
        cli.main(["appraisal", "evidence", studies[0].accession, "--config", cfg, "--output", str(out)]) == 0
    )
    outputs.append(("cli evidence", out.read_text(encoding="utf-8")))
    found = {name: verdicts(text, label)[:5] for name, text in outputs if verdicts(text, label)}
    assert not found, found
    # both languages: every category and key is said in Vietnamese, then in English
    for ln in run["lines"][:50] + run["pacs_only"][:5]:
        vi, _, en = ln["category_text"].partition(" / ")
        assert vi and en and vi != en
