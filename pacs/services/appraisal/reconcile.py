"""Reconciliation of an HIS claim (XML3, or a list of MA_LK / accession numbers) with the archive.

Each claim line gets one category, a fact about records (never a judgement on the service):

- ``matched`` (*đã khớp*): one PACS service line answers it, with a summary of its evidence;
- ``not_found`` (*không tìm thấy trong PACS*): none does (lines of the same patient and service
  on other days nearby are listed as facts);
- ``ambiguous`` (*nhiều ca chụp có thể tương ứng*): several do; all are listed;

and each PACS service line of the period with images and no claim line is listed as
``pacs_only``. Keys, in order; the first that finds a candidate decides:

1. the Accession Number, when the claim line carries one (:data:`.xml3.ACCESSION_ELEMENTS`);
2. the HIS order link: the orders whose visit (AdmissionID, sent by the HIS with the order) is
   the line's MA_LK, their Accession Numbers and studies; several are narrowed by service code,
   then by day;
3. patient (MA_BN / SO_CCCD / MA_THE_BHYT of the line, of the XML1 TONG_HOP of its MA_LK, or of
   its HIS orders, equal to the PatientID or one of the OtherPatientIDs) + service code (the
   service register's code of the PACS line) + day (NGAY_TH_YL, else NGAY_YL, else NGAY_KQ).

A claim line with several candidates, all but one of which are the single candidate of another
claim line, is matched to the one left, and says so. Every run is stored (who, when, the SHA-256
of the upload, the counts, each result) and audited.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from pacs.dicom.text import normalise_date
from pacs.errors import InvalidQuery, NotFound
from pacs.index import claims as sql
from pacs.model import Origin
from pacs.services.appraisal.candidates import PacsLines
from pacs.services.appraisal.devices import MACHINE_GROUPS
from pacs.services.appraisal.xml3 import ClaimLine, ClaimUpload, read_upload

if TYPE_CHECKING:
    from pacs.services.appraisal.service import Appraisal

#: Categories: code -> (Vietnamese, English).
CATEGORIES = {
    "matched": ("đã khớp với ca chụp trong PACS", "matched to a PACS study"),
    "not_found": ("không khớp: không tìm thấy ca chụp trong PACS", "not matched: not found in PACS"),
    "ambiguous": (
        "không khớp: nhiều ca chụp có thể tương ứng (liệt kê bên dưới)",
        "not matched: several candidate PACS studies (listed)",
    ),
    "pacs_only": ("ca chụp trong PACS không có dòng XML3 tương ứng", "PACS study with no claim line"),
}
MATCHED_BY = {
    "accession": (
        "số phiếu chỉ định (Accession Number) trên dòng XML3",
        "accession number on the claim line",
    ),
    "his_order": ("y lệnh HIS của MA_LK (AdmissionID)", "HIS order of the MA_LK (AdmissionID)"),
    "patient_service_date": ("người bệnh + mã dịch vụ + ngày", "patient + service code + day"),
}
NOTICE = (
    "Đối chiếu bản ghi: «khớp» / «không khớp» là sự kiện về dữ liệu (dòng XML3 và ca chụp trong PACS), "
    "không phải kết luận giám định / Record reconciliation: «matched» / «not matched» is a fact about "
    "records (the claim line and the PACS study), not an appraisal conclusion"
)
#: Candidate PACS lines are read this many days either side of the period.
MARGIN_DAYS = 7


def _bi(pair: tuple[str, str]) -> str:
    return f"{pair[0]} / {pair[1]}"


def period_of(params: dict[str, str], upload: ClaimUpload) -> tuple[str, str]:
    """(from, to) as YYYYMMDD: ``month`` (YYYY-MM), else ``from`` / ``to``, else the claim's days."""
    month = (params.get("month") or "").strip().replace("-", "")
    if month:
        if len(month) != 6 or not month.isdigit() or not 1 <= int(month[4:]) <= 12:
            raise InvalidQuery(f"month must be YYYY-MM, got {params['month']!r}")
        first = datetime(int(month[:4]), int(month[4:]), 1)
        last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        return first.strftime("%Y%m%d"), last.strftime("%Y%m%d")
    bounds = []
    for name in ("from", "to"):
        value = normalise_date((params.get(name) or "").strip())
        if value and (len(value) != 8 or not value.isdigit()):
            raise InvalidQuery(f"{name} must be a date YYYY-MM-DD, got {params[name]!r}")
        bounds.append(value)
    days = sorted(d for d in (line.date() for line in upload.lines) if d)
    date_from = bounds[0] or (days[0] if days else "")
    date_to = bounds[1] or (days[-1] if days else "")
    if not date_from or not date_to:
        raise InvalidQuery("give month=YYYY-MM (or from / to): the claim lines carry no date")
    return date_from, date_to


def _shift(day: str, days: int) -> str:
    return (datetime.strptime(day, "%Y%m%d") + timedelta(days=days)).strftime("%Y%m%d")


class Reconciler:
    """Reconciles claim uploads with the archive (see the module notes); runs are stored."""

    def __init__(self, appraisal: Appraisal) -> None:
        self.appraisal = appraisal

    def imaging_codes(self) -> frozenset[str]:
        """Service codes of the service register (the imaging services the archive can answer)."""
        regs = self.appraisal.registers
        return frozenset(
            e.service_code for e in (*regs.services_by_code.values(), *regs.services_by_description.values())
        )

    def in_scope(self, line: ClaimLine, codes: frozenset[str], kind: str) -> bool:
        """Whether a claim line is an imaging service line (the others are counted, not listed)."""
        if kind == "csv" or line.accession or line.get("MA_DICH_VU") in codes:
            return True
        groups = {code.split(".")[0].upper() for code in line.get("MA_MAY").split(";") if code}
        return bool(groups & MACHINE_GROUPS)

    def reconcile(
        self, data: bytes, content_type: str, params: dict[str, str], origin: Origin
    ) -> dict[str, Any]:
        """Read an upload, reconcile its lines with the archive, store and audit the run."""
        upload = read_upload(data, content_type)
        date_from, date_to = period_of(params, upload)
        every = (params.get("scope") or "").strip() == "all"
        codes = self.imaging_codes()
        claims = [c for c in upload.lines if every or self.in_scope(c, codes, upload.kind)]
        outside = len(upload.lines) - len(claims)
        a = self.appraisal
        with a.db.read() as conn:
            pacs = PacsLines(
                a.registers,
                sql.lines_of_period(conn, _shift(date_from, -MARGIN_DAYS), _shift(date_to, MARGIN_DAYS)),
            )
            pacs.add(sql.lines_by_accession(conn, {c.accession for c in claims} - set(pacs.by_acc)))
            links: dict[str, list[dict[str, Any]]] = {}
            for row in sql.his_links(conn, [c.get("MA_LK") for c in claims if c.get("MA_LK")]):
                links.setdefault(row["admission_id"], []).append(row)
            rows = [r for rs in links.values() for r in rs]
            accs = {r[k] for r in rows for k in ("accession_number", "step_accession_number") if r[k]}
            pacs.add(sql.lines_by_accession(conn, accs - set(pacs.by_acc)))
            uids = {r[k] for r in rows for k in ("study_instance_uid", "linked_study_instance_uid") if r[k]}
            pacs.add(sql.lines_of_studies(conn, uids - set(pacs.by_study)))
        found = [self._candidates(c, pacs, links.get(c.get("MA_LK"), [])) for c in claims]
        results = self._decide(claims, found, pacs)
        matched = {r["pacs"]["record_id"] for r in results if r["category"] == "matched"}
        wanted = {rid for r in results for rid in r.get("candidate_ids", [])}
        pacs_only = [
            self._pacs_only(pacs, line_id, n, wanted)
            for n, line_id in enumerate(
                (
                    i
                    for i, ln in sorted(pacs.by_id.items())
                    if date_from <= (ln["day"] or "") <= date_to
                    and ln["series"]
                    and ln["line_key"] not in matched
                ),
                len(results) + 1,
            )
        ]
        counts = {
            key: sum(1 for r in results if r["category"] == key) for key in CATEGORIES if key != "pacs_only"
        }
        counts.update(pacs_only=len(pacs_only), claim_lines=len(claims), outside_imaging=outside)
        now = a.clock()
        run = {
            "created_at": now,
            "user_name": (origin.user or "")[:128] or None,
            "address": origin.address[:64] or None,
            "source_kind": upload.kind,
            "upload_sha256": hashlib.sha256(data).hexdigest(),
            "upload_bytes": len(data),
            "date_from": date_from,
            "date_to": date_to,
            "counts": orjson.dumps(counts).decode(),
        }
        with a.db.write() as conn:
            run_id = sql.run_insert(conn, run)
            sql.results_insert(conn, [_stored(run_id, r) for r in (*results, *pacs_only)])
        a._audit(origin, "reconcile", {"run": run_id, "from": date_from, "to": date_to}, len(results))
        return self._document(run_id, run, counts, results, pacs_only)

    def _document(
        self,
        run_id: int,
        run: dict[str, Any],
        counts: dict[str, int],
        results: list[dict[str, Any]],
        pacs_only: list[dict[str, Any]],
    ) -> dict[str, Any]:
        created = run["created_at"]
        return {
            "run": run_id,
            "label": self.appraisal.label,
            "notice": NOTICE,
            "categories": {k: _bi(v) for k, v in CATEGORIES.items()},
            "period": {"from": run["date_from"], "to": run["date_to"]},
            "created_at": created.isoformat() if isinstance(created, datetime) else str(created),
            "upload": {
                "kind": run["source_kind"],
                "sha256": run["upload_sha256"],
                "bytes": run["upload_bytes"],
            },
            "counts": counts,
            "lines": results,
            "pacs_only": pacs_only,
        }

    def get_run(self, run_id: int, origin: Origin) -> dict[str, Any]:
        """A stored run, as :meth:`reconcile` returned it. Raises NotFound."""
        a = self.appraisal
        with a.db.read() as conn:
            run = sql.run_get(conn, run_id)
            rows = sql.results_of(conn, run_id) if run else []
        if run is None:
            raise NotFound(f"no reconciliation run {run_id}")
        results = [orjson.loads(r["result"]) for r in rows]
        a._audit(origin, "reconcile.get", {"run": run_id}, len(results))
        return self._document(
            run_id,
            run,
            orjson.loads(run["counts"]),
            [r for r in results if r["category"] != "pacs_only"],
            [r for r in results if r["category"] == "pacs_only"],
        )

    # ------------------------------------------------------------------ matching

    def _candidates(
        self, c: ClaimLine, pacs: PacsLines, links: list[dict[str, Any]]
    ) -> tuple[list[int], str | None, list[int]]:
        """(candidate line ids, the key that found them, same patient and service on nearby days)."""
        if c.accession and c.accession in pacs.by_acc:
            return list(pacs.by_acc[c.accession]), "accession", []
        code, day = c.get("MA_DICH_VU"), c.date()
        if links:
            ids: list[int] = []
            for r in links:
                for acc in (r["accession_number"], r["step_accession_number"]):
                    ids += pacs.by_acc.get(acc or "", [])
                for uid in (
                    r["study_instance_uid"],
                    r["linked_study_instance_uid"],
                    r["step_study_instance_uid"],
                ):
                    if uid in pacs.by_study:
                        ids.append(pacs.by_study[uid])
            ids = list(dict.fromkeys(ids))
            if len(ids) > 1 and code:
                ids = [i for i in ids if pacs.by_id[i]["service_code"] == code] or ids
            if len(ids) > 1 and day:
                ids = [i for i in ids if pacs.by_id[i]["day"] == day] or ids
            if ids:
                return ids, "his_order", []
        pids = list(c.patient_ids) + [r["patient_id"] for r in links if r["patient_id"]]
        same: list[int] = []
        for pid in dict.fromkeys(pids):
            same += [
                i for i in pacs.by_patient.get(pid, []) if code and pacs.by_id[i]["service_code"] == code
            ]
        same = list(dict.fromkeys(same))
        if day:
            exact = [i for i in same if pacs.by_id[i]["day"] == day]
            if exact:
                return exact, "patient_service_date", []
            near = [
                i
                for i in same
                if pacs.by_id[i]["day"] and abs(_days(pacs.by_id[i]["day"], day)) <= MARGIN_DAYS
            ]
            return [], None, near
        return [], None, []

    def _decide(
        self, claims: list[ClaimLine], found: list[tuple[list[int], str | None, list[int]]], pacs: PacsLines
    ) -> list[dict[str, Any]]:
        single = {ids[0]: c.position for c, (ids, _, _) in zip(claims, found, strict=True) if len(ids) == 1}
        claimed: dict[int, list[int]] = {}
        chosen: list[int | None] = []
        for c, (ids, _, _) in zip(claims, found, strict=True):
            pick: int | None = ids[0] if len(ids) == 1 else None
            if len(ids) > 1:
                left = [i for i in ids if i not in single]
                pick = left[0] if len(left) == 1 else None
            chosen.append(pick)
            if pick is not None:
                claimed.setdefault(pick, []).append(c.position)
        out = []
        for c, (ids, key, near), pick in zip(claims, found, chosen, strict=True):
            out.append(self._result(c, ids, key, near, pick, pacs, single, claimed))
        return out

    def _result(
        self,
        c: ClaimLine,
        ids: list[int],
        key: str | None,
        near: list[int],
        pick: int | None,
        pacs: PacsLines,
        single: dict[int, int],
        claimed: dict[int, list[int]],
    ) -> dict[str, Any]:
        category = "matched" if pick is not None else "ambiguous" if ids else "not_found"
        facts: list[str] = []
        res: dict[str, Any] = {
            "position": c.position,
            "kind": "claim",
            "category": category,
            "category_text": _bi(CATEGORIES[category]),
            "claim": {
                **{k: c.get(k) for k in ("MA_LK", "STT", "MA_DICH_VU", "TEN_DICH_VU", "MA_KHOA")},
                **{k: c.get(k) for k in ("NGAY_YL", "NGAY_TH_YL", "NGAY_KQ", "MA_MAY", "MA_BAC_SI")},
                "accession_number": c.accession or None,
                "day": c.date() or None,
            },
            "matched_by": key if ids else None,
            "matched_by_text": _bi(MATCHED_BY[key]) if key and ids else None,
            "pacs": None,
            "candidates": [],
            "facts": facts,
        }
        if pick is not None:
            summary = res["pacs"] = pacs.summary(pick)
            same_day = bool(c.date()) and summary["study_date"] == c.date()
            res["same_day"] = same_day if c.date() and summary["study_date"] else None
            if res["same_day"] is not None:
                facts.append(
                    f"ngày trên dòng XML3 {c.date()}, ngày chụp trong PACS {summary['study_date']}: "
                    + ("cùng ngày / same day" if same_day else "khác ngày / different days")
                    + f" (claim day {c.date()}, PACS study date {summary['study_date']})"
                )
            claim_codes = {m for m in c.get("MA_MAY").split(";") if m}
            pacs_codes = {d["MA_MAY"] for d in summary["devices"] if d["MA_MAY"]}
            if claim_codes:
                res["same_machine_code"] = bool(claim_codes & pacs_codes) if pacs_codes else None
                mine, theirs = ";".join(sorted(claim_codes)), ";".join(sorted(pacs_codes))
                facts.append(
                    f"MA_MAY trên dòng XML3 {mine}, theo danh mục thiết bị PACS {theirs or '(trống)'} / "
                    f"claim MA_MAY {mine}, PACS device register {theirs or '(empty)'}"
                )
            others = [p for p in claimed.get(pick, []) if p != c.position]
            if others:
                res["same_study_as_claim_lines"] = others
                facts.append(
                    f"cùng ca chụp với dòng XML3 số {', '.join(map(str, others))} / the same PACS study as "
                    f"claim line(s) {', '.join(map(str, others))}"
                )
            if len(ids) > 1:
                taken = ", ".join(map(str, sorted({single[i] for i in ids if i in single})))
                facts.append(
                    f"các ca chụp khác có thể tương ứng đã khớp với dòng XML3 số {taken} / "
                    f"the other candidate studies are matched to claim line(s) {taken}"
                )
        elif ids:
            res["candidates"] = [pacs.summary(i) for i in ids]
        elif near:
            res["same_patient_and_service_other_days"] = [pacs.summary(i) for i in near]
            facts.append(
                "cùng người bệnh và mã dịch vụ vào ngày khác (liệt kê) / the same patient and service "
                "code on other days (listed)"
            )
        res["candidate_ids"] = [pacs.by_id[i]["line_key"] for i in ids]
        return res

    def _pacs_only(self, pacs: PacsLines, line_id: int, position: int, wanted: set[str]) -> dict[str, Any]:
        summary = pacs.summary(line_id)
        return {
            "position": position,
            "kind": "pacs_only",
            "category": "pacs_only",
            "category_text": _bi(CATEGORIES["pacs_only"]),
            "claim": None,
            "pacs": summary,
            "candidate_of_ambiguous_line": summary["record_id"] in wanted,
            "facts": [],
        }


def _days(a: str, b: str) -> int:
    return (datetime.strptime(a, "%Y%m%d") - datetime.strptime(b, "%Y%m%d")).days


def _stored(run_id: int, r: dict[str, Any]) -> dict[str, Any]:
    claim = r.get("claim") or {}
    pacs = r.get("pacs") or {}
    return {
        "run_fk": run_id,
        "position": r["position"],
        "kind": r["kind"],
        "category": r["category"],
        "ma_lk": (claim.get("MA_LK") or "")[:100] or None,
        "stt": (claim.get("STT") or "")[:16] or None,
        "ma_dich_vu": (claim.get("MA_DICH_VU") or "")[:64] or None,
        "accession_number": ((claim.get("accession_number") or pacs.get("accession_number")) or "")[:64]
        or None,
        "line_key": pacs.get("record_id"),
        "result": orjson.dumps(r).decode(),
    }
