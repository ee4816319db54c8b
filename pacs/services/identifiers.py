"""Patient identifiers done right: which ``system|value`` a local patient is known by, and the
look-up by them (FHIR token search, the viewer link, later the federated search).

Identifier systems (URIs; FHIR ``Identifier.system``):

* ``urn:vn:cccd``: the national citizen ID (căn cước công dân), 12 digits. Only when the source
  says so: an HL7 identifier type (PID-3.5 / DICOM IdentifierTypeCode) ``NI``, ``NNVNM``, ``CZ``
  or ``CCCD``, or an issuer ``CCCD`` / ``BCA`` (the Ministry of Public Security issues it). A
  12-digit record number is not assumed to be one.
* ``urn:vn:bhyt``: the health-insurance card (thẻ BHYT), type ``HC`` / ``BHYT`` or issuer
  ``BHYT`` / ``BHXH``: 2-letter object code, benefit level digit, 2-digit province, 10-digit
  social-insurance number. It matches on the social-insurance number (the last 10 digits, stable
  when the card is renewed with another object code or benefit level); the whole card is kept.
* a record number with its issuer: the issuer's universal ID (``urn:oid:<OID>``,
  ``urn:uuid:<UUID>`` or the URI itself), and ``urn:vn:issuer:<issuer>`` for the issuer's name
  (a facility code, MA_CSKCB, is the usual one; percent-encoded). An issuer that already is a URI
  or an OID is used as it is (``urn:oid:`` prefixed).
* no issuer: no system (FHIR ``|value``). Such IDs never link patients across issuers: the local
  patient is PatientID + issuer (``patients.identity``), and a look-up answers every local patient
  an identifier names, each on its own.

:class:`Identifiers` keeps the rows in step with the index (an index hook, in the store
transaction; ``pacs reindex`` rebuilds them) and answers look-ups, each written to the audit trail.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

from sqlalchemy import Connection

from pacs.errors import InvalidQuery
from pacs.index import identifiers as sql
from pacs.index import orders as orders_sql
from pacs.index import repo
from pacs.index.database import Database
from pacs.model import InstanceRecord, Origin, PatientIdentifier, StoreOutcome

CCCD = "urn:vn:cccd"
BHYT = "urn:vn:bhyt"
ISSUER = "urn:vn:issuer:"
NATIONAL_TYPES = frozenset({"NI", "NNVNM", "CZ", "CCCD"})
NATIONAL_ISSUERS = frozenset({"CCCD", "BCA", CCCD.upper()})
INSURANCE_TYPES = frozenset({"HC", "BHYT"})
INSURANCE_ISSUERS = frozenset({"BHYT", "BHXH", BHYT.upper()})
_CARD = re.compile(r"[A-Z]{2}\d{13}")
_OID = re.compile(r"[0-2](\.(0|[1-9]\d*))+")
_TYPE = re.compile(r"[A-Z0-9]{1,8}")

DICOM = "dicom"  # rows from instance headers (rebuilt by pacs reindex)
ORDER = "order"  # rows from HIS orders and patient updates (kept)


@dataclass(frozen=True)
class Identifier:
    """A classified identifier: ``value`` is what matches, ``full_value`` what was given."""

    system: str
    value: str
    full_value: str
    type_code: str = ""  # HL7 table 0203: NI, HC, MR, ... ("" unknown)

    @property
    def token(self) -> str:
        """The FHIR token form ``system|value`` (the full value)."""
        return f"{self.system}|{self.full_value}"

    def row(self) -> tuple[str, str, str, str]:
        """As a ``patient_identifiers`` row (system, value, full_value, type_code)."""
        return self.system, self.value, self.full_value, self.type_code


def issuer_systems(issuer: str, universal_id: str = "", universal_id_type: str = "") -> list[str]:
    """The systems of a record number's issuer: its universal ID's URI, then its name's."""
    out: list[str] = []
    uid, kind = universal_id.strip(), universal_id_type.strip().upper()
    if uid:
        if kind == "UUID":
            out.append(f"urn:uuid:{uid.lower()}")
        elif kind == "URI" or uid.startswith(("urn:", "http://", "https://")):
            out.append(uid)
        elif kind == "ISO" or _OID.fullmatch(uid):
            out.append(f"urn:oid:{uid}")
    name = issuer.strip()
    if name:
        if name.startswith(("urn:", "http://", "https://")):
            system = name
        elif _OID.fullmatch(name):
            system = f"urn:oid:{name}"
        else:
            system = ISSUER + quote(name, safe="")
        if system not in out:
            out.append(system)
    return out


def classify(raw: PatientIdentifier) -> list[Identifier]:
    """The identifiers a source's identifier stands for (see the module docstring); [] if empty."""
    value = raw.value.strip()
    if not value:
        return []
    kind = raw.type_code.strip().upper()
    issuer = raw.issuer.strip().upper()
    compact = re.sub(r"[\s.-]", "", value).upper()
    if (kind in NATIONAL_TYPES or issuer in NATIONAL_ISSUERS) and re.fullmatch(r"\d{12}", compact):
        return [Identifier(CCCD, compact, compact, "NI")]
    if kind in INSURANCE_TYPES or issuer in INSURANCE_ISSUERS:
        if _CARD.fullmatch(compact):
            return [Identifier(BHYT, compact[-10:], compact, "HC")]
        if re.fullmatch(r"\d{10}", compact):
            return [Identifier(BHYT, compact, compact, "HC")]
    type_code = kind if _TYPE.fullmatch(kind) else ""
    systems = issuer_systems(raw.issuer, raw.universal_id, raw.universal_id_type) or [""]
    return [Identifier(s, value[:64], value[:64], type_code) for s in systems]


def classify_all(raws: Iterable[PatientIdentifier]) -> list[Identifier]:
    """:func:`classify` over several, without repeats."""
    return list(dict.fromkeys(i for raw in raws for i in classify(raw)))


def parse_token(text: str) -> sql.Key:
    """A FHIR token (``system|value``, ``|value`` for no system, ``value`` for any) as a match key.

    A CCCD must be 12 digits; a BHYT card (15 characters) or social-insurance number (10 digits)
    matches on the latter. Raises :class:`InvalidQuery` with the reason.
    """
    text = (text or "").strip()
    system: str | None
    if "|" in text:
        system, value = (p.strip() for p in text.split("|", 1))
    else:
        system, value = None, text
    if not value:
        raise InvalidQuery(f"identifier {text[:80]!r}: no value (expected system|value)")
    if len(value) > 64 or len(system or "") > 256:
        raise InvalidQuery("identifier: too long (value at most 64, system at most 256 characters)")
    compact = re.sub(r"[\s.-]", "", value).upper()
    if system == CCCD:
        if not re.fullmatch(r"\d{12}", compact):
            raise InvalidQuery(f"a CCCD ({CCCD}) is 12 digits, not {value[:40]!r}")
        return system, compact
    if system == BHYT:
        if _CARD.fullmatch(compact):
            return system, compact[-10:]
        if re.fullmatch(r"\d{10}", compact):
            return system, compact
        raise InvalidQuery(
            f"a BHYT card ({BHYT}) is 2 letters and 13 digits, or its 10-digit social-insurance number;"
            f" not {value[:40]!r}"
        )
    return system, value


class Auditor(Protocol):
    """Where look-ups are recorded (:class:`pacs.services.audit.Audit`)."""

    def record(self, kind: str, origin: Origin, **details: Any) -> None:
        """Queue one audit row."""


@dataclass
class LocalPatient:
    """A local patient an identifier names, with every identifier known for it."""

    identity: str
    patient_id: str
    issuer_of_patient_id: str
    name: str
    birth_date: str
    sex: str
    indexed: bool  # False: known only from HIS orders (no image yet)
    identifiers: list[Identifier] = field(default_factory=list)


def rows_to_identifiers(rows: Iterable[dict[str, Any]]) -> list[Identifier]:
    """``patient_identifiers`` rows as :class:`Identifier` objects."""
    return [Identifier(r["system"], r["value"], r["full_value"], r["type_code"] or "") for r in rows]


def record_patient(
    conn: Connection,
    patient_id: str,
    issuer: str,
    raws: Sequence[PatientIdentifier],
    now: datetime,
    source: str = ORDER,
) -> list[Identifier]:
    """Write the identifiers a HIS gave for a patient (orders, patient updates), in the caller's
    transaction; returns them. The patient is PatientID + issuer, as the index names it."""
    found = classify_all(raws)
    identity = repo.patient_identity({"patient_id": patient_id, "issuer_of_patient_id": issuer})
    sql.add(conn, identity, (i.row() for i in found), source, now)
    return found


def merge_patients(conn: Connection, prior: tuple[str, str], surviving: tuple[str, str]) -> int:
    """The identifiers of the prior patient (PatientID, issuer) become the surviving one's."""
    name = [
        repo.patient_identity({"patient_id": p, "issuer_of_patient_id": i}) for p, i in (prior, surviving)
    ]
    return sql.move(conn, name[0], name[1])


class Identifiers:
    """The identifier rows (an index hook) and look-ups by ``system|value``."""

    def __init__(
        self,
        db: Database,
        audit: Auditor | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock
        # Studies whose order link this process already looked at (once per study, not per instance).
        self._linked: OrderedDict[str, None] = OrderedDict()

    # ------------------------------------------------------------------ index hook

    def instance_indexed(
        self, conn: Connection, record: InstanceRecord, blob: Any, origin: Origin, outcome: StoreOutcome
    ) -> None:
        """Write the identifiers of a stored instance's header for its patient, in the store
        transaction (index hook). An image without an issuer linked to a HIS order by Accession
        Number, whose Patient ID is the order's, takes the order's identifiers too."""
        if outcome is StoreOutcome.DUPLICATE:
            return
        v = record.values
        identity = repo.patient_identity(v)
        now = blob.received_at if blob is not None else self.clock()
        sql.add(conn, identity, (i.row() for i in classify_all(record.identifiers)), DICOM, now)
        study_uid = record.study_instance_uid
        if v.get("issuer_of_patient_id") or not v.get("accession_number") or study_uid in self._linked:
            return
        self._linked[study_uid] = None
        if len(self._linked) > 4096:
            self._linked.popitem(last=False)
        for order in orders_sql.orders_by_accession(conn, v["accession_number"])[:1]:
            if order["patient_id"] == v.get("patient_id") and order["issuer_of_patient_id"]:
                ordered = repo.patient_identity(order)
                rows = sql.rows_of(conn, ordered, ORDER)
                sql.add(conn, identity, (tuple(r[k] for k in _ROW) for r in rows), DICOM, now)

    def index_cleared(self, conn: Connection) -> None:
        """The index was cleared for a reindex: the header rows go (they are rebuilt), the HIS's stay."""
        sql.clear(conn, DICOM)
        self._linked.clear()

    # ------------------------------------------------------------------ look-ups

    def find_patients(
        self, tokens: Sequence[str], origin: Origin, *, audit: bool = True
    ) -> list[LocalPatient]:
        """Every local patient any of the FHIR tokens names (``system|value``), with all their
        identifiers; audited. Raises :class:`InvalidQuery` for a malformed token."""
        keys = [parse_token(t) for t in tokens]
        with self.db.read() as conn:
            rows = sql.find_patients(conn, keys)
            known = sql.identifiers_of(conn, (r["identity"] for r in rows))
        found = [
            LocalPatient(
                identity=r["identity"],
                patient_id=r["patient_id"] or r["identity"].split("\\")[0],
                issuer_of_patient_id=r["issuer_of_patient_id"] or "",
                name=r["patient_name"] or "",
                birth_date=r["patient_birth_date"] or "",
                sex=r["patient_sex"] or "",
                indexed=r["id"] is not None,
                identifiers=rows_to_identifiers(known.get(r["identity"], [])),
            )
            for r in rows
        ]
        if audit:
            self.audited(origin, tokens, patients=[p.patient_id for p in found if p.indexed])
        return found

    def find_studies(
        self,
        origin: Origin,
        *,
        tokens: Sequence[str] | None = None,
        study_uids: Sequence[str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[dict[str, Any]]]:
        """Studies of the patients the tokens name, and/or with the given Study Instance UIDs:
        ``(total, page)``, each row with its patient's columns and ``identifiers``. Audited when
        tokens are given (the web edge audits the request as well)."""
        keys = [parse_token(t) for t in tokens] if tokens is not None else None
        with self.db.read() as conn:
            total, rows = sql.studies_matching(
                conn, keys=keys, study_uids=study_uids, limit=limit, offset=offset
            )
            known = sql.identifiers_of(conn, (r["identity"] for r in rows))
        for r in rows:
            r["identifiers"] = rows_to_identifiers(known.get(r["identity"], []))
        if tokens is not None:
            self.audited(
                origin,
                tokens,
                patients=sorted({r["patient_id"] for r in rows if r["patient_id"]}),
                studies=[r["study_instance_uid"] for r in rows],
            )
        return total, rows

    def audited(self, origin: Origin, tokens: Sequence[str], **details: Any) -> None:
        """Write a look-up by identifier to the audit trail: who, which identifiers, what it found."""
        if self.audit is not None:
            self.audit.record("query.identifier", origin, identifiers=list(tokens)[:20], **details)

    def series_and_instances(
        self, study_pks: Sequence[int]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The series and instance rows of some studies (for FHIR ImagingStudy)."""
        with self.db.read() as conn:
            series = sql.series_of(conn, study_pks)
            return series, sql.instances_of(conn, [s["id"] for s in series])


_ROW = ("system", "value", "full_value", "type_code")
