"""SQL schema, derived from the attribute catalogue.

Four tables (patients, studies, series, instances) carry one column per catalogue attribute of
their level (``<column>_key`` beside each person name holds its accent- and case-folded search
key), the computed counts as counters maintained by the store transaction, and archive facts.
``events`` is the append-only log of acquisition and archive facts (stores, associations, MPPS)
written in the same transaction as the index change it describes, and of every access (the
audit trail), hash-chained for tamper evidence.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)

from pacs.dicom.attributes import WORKLIST, Attribute, Match, at_level
from pacs.model import Level

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: Attributes indexed with a B-tree (beyond unique keys and foreign keys).
_INDEXED = {
    "patient_id",
    "patient_name_key",
    "patient_birth_date",
    "study_date",
    "accession_number",
    "modality",
    "series_number",
    "instance_number",
    "device_serial_number",
    "station_name",
    "referring_physician_name_key",
    "study_id",
}


def _columns(level: Level) -> list[Column]:  # type: ignore[type-arg]
    cols: list[Column] = []  # type: ignore[type-arg]
    for attr in at_level(level):
        if attr.keyword == "ModalitiesInStudy":
            continue  # computed per query from the series table
        cols.append(_column(attr))
        if attr.match is Match.PN:
            cols.append(
                Column(attr.column + "_key", String(attr.length), index=attr.column + "_key" in _INDEXED)
            )
    return cols


def _column(attr: Attribute) -> Column:  # type: ignore[type-arg]
    unique = attr.keyword in {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}
    if attr.computed:
        return Column(attr.column, Integer, nullable=False, server_default="0")
    if attr.is_integer:
        return Column(attr.column, BigInteger, index=attr.column in _INDEXED)
    return Column(
        attr.column,
        String(attr.length),
        nullable=not unique,
        unique=unique or None,
        index=(attr.column in _INDEXED) or None,
    )


patients = Table(
    "patients",
    metadata,
    Column("id", Integer, primary_key=True),
    # PatientID + issuer (or the name, when the ID is empty): one row per real-world patient identity.
    Column("identity", String(512), nullable=False, unique=True),
    *_columns(Level.PATIENT),
)

studies = Table(
    "studies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_fk", Integer, ForeignKey("patients.id"), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    *_columns(Level.STUDY),
)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_fk", Integer, ForeignKey("studies.id"), nullable=False, index=True),
    *_columns(Level.SERIES),
)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_fk", Integer, ForeignKey("series.id"), nullable=False, index=True),
    *_columns(Level.IMAGE),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("blob_key", String(128), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("dataset_sha256", String(64)),  # of the data set after the file meta: filled when needed
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("calling_ae", String(16)),
    Column("called_ae", String(16)),
    Column("peer_address", String(64)),
    Column("origin_protocol", String(16)),
)

#: Superseded versions of instances (``[storage] duplicate_policy = "keep-versions"``): one row
#: per stored file that was an instance's current object until a different one arrived under its
#: SOP Instance UID. The current version is the ``instances`` row; its archive facts move here
#: unchanged, in the store transaction that supersedes it. ``pacs reindex`` rebuilds them.
instance_versions = Table(
    "instance_versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False, index=True),
    Column("blob_key", String(128), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("dataset_sha256", String(64)),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("calling_ae", String(16)),
    Column("called_ae", String(16)),
    Column("peer_address", String(64)),
    Column("origin_protocol", String(16)),
    Column("superseded_at", DateTime(timezone=True), nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("kind", String(32), nullable=False, index=True),
    Column("study_instance_uid", String(64), index=True),
    Column("series_instance_uid", String(64)),
    Column("sop_instance_uid", String(64)),
    Column("calling_ae", String(16)),
    Column("peer_address", String(64)),
    Column("user_name", String(64)),
    Column("details", Text),
    Column("patient_id", String(64), index=True),  # the one patient an access touched, if one
    # The hash chain (pacs.index.audit_chain): NULL until the audit writer seals the row, then set
    # once (the append-only trigger allows nothing else).
    Column("seq", BigInteger, index=True, unique=True),
    Column("prev_hash", String(64)),
    Column("row_hash", String(64)),
)
Index(
    "ix_events_unsealed",
    events.c.id,
    sqlite_where=events.c.row_hash.is_(None),
    postgresql_where=events.c.row_hash.is_(None),
)

#: Modality Performed Procedure Steps (PS3.4 Annex F), one row per MPPS SOP Instance. Times are
#: the device's local DICOM date/time strings as sent; ``attributes`` is a JSON subset (performed
#: series, scheduled step attributes, people), never pixel data.
mpps = Table(
    "mpps",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("start_date", String(8)),
    Column("start_time", String(16)),
    Column("end_date", String(8)),
    Column("end_time", String(16)),
    Column("performed_procedure_step_id", String(64)),
    Column("performed_station_ae_title", String(16)),
    Column("performed_station_name", String(64)),
    Column("modality", String(16)),
    Column("study_instance_uid", String(64), index=True),
    Column("accession_number", String(64), index=True),
    Column("requested_procedure_id", String(64)),
    Column("scheduled_procedure_step_id", String(64)),
    Column("procedure_code", String(64)),
    Column("procedure_code_meaning", String(256)),
    Column("description", String(256)),
    Column("patient_id", String(64)),
    Column("attributes", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("calling_ae", String(16)),
    Column("peer_address", String(64)),
)

Index("ix_studies_study_date_time", studies.c.study_date, studies.c.study_time)

#: Orders from the HIS (one row per order: an imaging service request with its requested
#: procedure). ``order_key`` is the placer order number, else the filler's. Times are the HIS's
#: DICOM DT strings as sent (``ordered_at``, ``reported_at``, ``performed_at``), each with where
#: it came from; they are the only source of the appraisal's NGAY_YL / NGAY_TH_YL / NGAY_KQ.
orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_key", String(160), nullable=False, unique=True),
    Column("placer_order_number", String(64)),
    Column("filler_order_number", String(64)),
    Column("accession_number", String(64), index=True),
    Column("requested_procedure_id", String(64)),
    Column("study_instance_uid", String(64), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("patient_id", String(64), index=True),
    Column("issuer_of_patient_id", String(64)),
    Column("patient_name", String(324)),
    Column("ordered_at", String(32)),
    Column("ordered_at_source", String(64)),
    Column("reported_at", String(32)),
    Column("reported_at_source", String(64)),
    Column("report_status", String(8)),
    Column("reporting_doctor", String(324)),
    Column("performed_at", String(32)),
    Column("performed_at_source", String(64)),
    Column("facility_code", String(64)),
    # The study the images arrived in, when it is not the one assigned at order time (a modality
    # that did not take the worklist's Study Instance UID): linked by Accession Number.
    Column("linked_study_instance_uid", String(64), index=True),
    Column("attributes", Text),  # JSON: the whole order as last received, and the report text
    Column("source", String(16), nullable=False),  # "hl7" or "rest"
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, index=True),
)


def _worklist_columns() -> list[Column]:  # type: ignore[type-arg]
    cols: list[Column] = []  # type: ignore[type-arg]
    for attr in WORKLIST:
        cols.append(Column(attr.column, String(attr.length), index=attr.column in _WORKLIST_INDEXED or None))
        if attr.match is Match.PN:
            cols.append(
                Column(attr.column + "_key", String(attr.length), index=attr.column == "patient_name" or None)
            )
    return cols


_WORKLIST_INDEXED = {"accession_number", "patient_id", "study_instance_uid"}

#: Modality Worklist items: one row per scheduled procedure step, a column per attribute of the
#: worklist catalogue (``pacs.dicom.attributes.WORKLIST``) so that C-FIND matching is the same SQL
#: translation as for the archive. ``open`` is 1 while the step is on the worklist.
worklist_items = Table(
    "worklist_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_fk", Integer, ForeignKey("orders.id"), nullable=False, index=True),
    Column("step_key", String(160), nullable=False, unique=True),  # order_key + step id
    Column("open", Boolean, nullable=False),
    *_worklist_columns(),
    Column("requested_procedure_code", Text),  # JSON [value, scheme, meaning]
    Column("scheduled_protocol_code", Text),
    Column("mpps_sop_instance_uid", String(64), index=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
# The keys a modality's worklist query starts from (PS3.4 K.6.1.2.2): its station AE title or
# its modality with the day (composite indexes ending in date and time, so the answer comes out
# in scheduled order without a sort), or an accession number, a patient (the column indexes
# above). There is no index on ``open``: without statistics SQLite preferred it to the selective
# ones and read every open item to find one accession number.
_W = worklist_items.c
_WHEN = (_W.scheduled_procedure_step_start_date, _W.scheduled_procedure_step_start_time)
Index("ix_worklist_items_start", *_WHEN)
Index("ix_worklist_items_station_start", _W.scheduled_station_ae_title, *_WHEN)
Index("ix_worklist_items_modality_start", _W.modality, *_WHEN)

#: Messages applied (HL7 MSH-3/4 + MSH-10, or a REST Idempotency-Key), so that a resend is
#: acknowledged again without being applied twice. Written in the message's own transaction.
order_messages = Table(
    "order_messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sender", String(256), nullable=False),
    Column("control_id", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("result", Text),  # JSON of what applying it did
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
)
Index(
    "uq_order_messages_sender_control_id", order_messages.c.sender, order_messages.c.control_id, unique=True
)

#: Patient identifiers (``pacs.services.identifiers``): one row per FHIR-style ``system|value``
#: a local patient is known by, from the headers of its instances (``source`` "dicom", rebuilt by
#: ``pacs reindex``) or from HIS orders and patient updates (``source`` "order", kept). The local
#: patient is ``patients.identity`` (PatientID + issuer), so an order's identifiers wait for the
#: images of its patient. ``value`` is what matches (for a BHYT card: its 10-digit social-insurance
#: number); ``full_value`` is as given (the whole 15-character card).
patient_identifiers = Table(
    "patient_identifiers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("system", String(256), nullable=False),
    Column("value", String(64), nullable=False),
    Column("full_value", String(64), nullable=False),
    Column("type_code", String(16), nullable=False, server_default=""),
    Column("patient_identity", String(512), nullable=False, index=True),
    Column("source", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_patient_identifiers_system_value", patient_identifiers.c.system, patient_identifiers.c.value)
Index(
    "uq_patient_identifiers_row",
    patient_identifiers.c.system,
    patient_identifiers.c.full_value,
    patient_identifiers.c.patient_identity,
    patient_identifiers.c.source,
    unique=True,
)

TABLES: dict[Level, Table] = {
    Level.PATIENT: patients,
    Level.STUDY: studies,
    Level.SERIES: series,
    Level.IMAGE: instances,
    Level.WORKLIST: worklist_items,
}

#: Web users (PS3.15 has no user model; roles are ours: admin, radiologist, appraiser,
#: modality-upload). ``password_hash`` is an argon2id PHC string, never the password.
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(32), nullable=False),
    Column("password_hash", String(256), nullable=False),
    Column("disabled", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: Bearer tokens: only the SHA-256 of each random token is kept, with its expiry.
auth_tokens = Table(
    "auth_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("user_fk", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    Column("address", String(64)),
)

#: Appraisal service lines (one row per imaging service line: AccessionNumber, else
#: RequestedProcedureID, else ScheduledProcedureStepID, else the study), maintained in the same
#: transaction as the store or MPPS write that changes them. ``line_key`` is the record id.
#: ``modalities`` / ``devices`` are backslash-delimited sets (``\CT\DX\``) for filtering.
appraisal_lines = Table(
    "appraisal_lines",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("line_key", String(160), nullable=False, unique=True),
    Column("key_source", String(32), nullable=False),
    Column("accession_number", String(64), index=True),
    Column("requested_procedure_id", String(64)),
    Column("scheduled_procedure_step_id", String(64)),
    Column("line_date", String(8)),
    Column("patient_id", String(64), index=True),
    Column("issuer_of_patient_id", String(64)),
    Column("other_patient_ids", String(512)),
    Column("procedure_code", String(64)),
    Column("procedure_coding_scheme", String(64)),
    Column("procedure_code_meaning", String(256)),
    Column("procedure_code_source", String(64)),
    Column("description", String(256)),
    Column("description_key", String(256)),
    Column("modalities", String(128), nullable=False, server_default=""),
    Column("devices", String(1024), nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_appraisal_lines_line_date_id", appraisal_lines.c.line_date, appraisal_lines.c.id)

#: Members of a service line: studies (kind ``study``) and MPPS steps (kind ``mpps``) by UID.
appraisal_line_members = Table(
    "appraisal_line_members",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("line_fk", Integer, ForeignKey("appraisal_lines.id"), nullable=False, index=True),
    Column("kind", String(8), nullable=False),
    Column("uid", String(64), nullable=False),
)
Index(
    "uq_appraisal_line_members_kind_uid",
    appraisal_line_members.c.kind,
    appraisal_line_members.c.uid,
    unique=True,
)

#: Acquisition facts per series (count, min/max of each device time source, first/last receipt,
#: clock-trust values, sending AE titles), updated by one statement per stored instance.
appraisal_series = Table(
    "appraisal_series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_instance_uid", String(64), nullable=False, unique=True),
    Column("study_instance_uid", String(64), nullable=False),
    Column("line_fk", Integer, ForeignKey("appraisal_lines.id"), nullable=False, index=True),
    Column("series_number", BigInteger),
    Column("modality", String(16)),
    Column("series_date", String(8)),
    Column("series_time", String(16)),
    Column("manufacturer", String(64)),
    Column("manufacturer_model_name", String(64)),
    Column("device_serial_number", String(64)),
    Column("station_name", String(64)),
    Column("software_versions", String(256)),
    Column("operators_name", String(324)),
    Column("performing_physician_name", String(324)),
    Column("instance_count", Integer, nullable=False, server_default="0"),
    Column("min_adt", String(32)),
    Column("max_adt", String(32)),
    Column("min_ad_at", String(32)),
    Column("max_ad_at", String(32)),
    Column("min_cd_ct", String(32)),
    Column("max_cd_ct", String(32)),
    Column("first_received", DateTime(timezone=True)),
    Column("last_received", DateTime(timezone=True), index=True),
    Column("tz_min", String(16)),
    Column("tz_max", String(16)),
    Column("sync_min", String(16)),
    Column("sync_max", String(16)),
    Column("time_source", String(64)),
    Column("ae_min", String(16)),
    Column("ae_max", String(16)),
)

#: Storage Commitment requests (PS3.4 Annex J), one per N-ACTION (``transaction_uid`` unique).
#: ``items`` is the request's JSON list of ``[ReferencedSOPClassUID, ReferencedSOPInstanceUID]``;
#: ``result`` the JSON verdict fixed when the request was accepted (``{"success": [[class, uid],
#: ...], "failed": [[class, uid, FailureReason], ...]}``), written in the same transaction as the
#: row, before the N-ACTION response. ``status`` is ``pending`` until the N-EVENT-REPORT is
#: acknowledged (``delivered``) or given up (``failed``); a delivery attempt holds the row with a
#: lease (``locked_by`` until ``locked_until``) so that a node killed mid-attempt leaves it to another.
commitments = Table(
    "commitments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("transaction_uid", String(64), nullable=False, unique=True),
    Column("calling_ae", String(16)),
    Column("called_ae", String(16)),
    Column("peer_address", String(64)),
    Column("items", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("result", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("locked_by", String(128)),
    Column("locked_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
)
Index("ix_commitments_status_next_attempt_at", commitments.c.status, commitments.c.next_attempt_at)

#: Blobs of ``[storage] backend = "s3"`` (pacs.services.uploads): one row per blob that was
#: queued for upload, written in the store transaction of its instance. ``state`` is ``queued``
#: until the object is uploaded and verified (size, ETag = MD5), then ``remote`` (the local copy
#: is removed after that commit); no row: the blob is local only. An upload holds its row with a
#: lease (``locked_by`` until ``locked_until``, renewed while it runs) so that a node killed
#: mid-upload leaves it to another; rows are taken ``FOR UPDATE SKIP LOCKED`` on PostgreSQL.
blob_uploads = Table(
    "blob_uploads",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("blob_key", String(128), nullable=False, unique=True),
    Column("state", String(16), nullable=False),
    Column("size", BigInteger),
    Column("md5", String(32)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("locked_by", String(128)),
    Column("locked_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("uploaded_at", DateTime(timezone=True)),
)
Index("ix_blob_uploads_state_next_attempt_at", blob_uploads.c.state, blob_uploads.c.next_attempt_at)


#: Reconciliations of an HIS claim (XML3 or a list of MA_LK / accession numbers) against the
#: archive: one run per upload (who, when, the upload's SHA-256, the period, the counts) and one
#: result row per claim line or per PACS study with no claim line (``kind`` ``claim`` /
#: ``pacs_only``), its category and the matched line (``line_key``); ``result`` is its JSON.
claim_runs = Table(
    "claim_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("user_name", String(128)),
    Column("address", String(64)),
    Column("source_kind", String(16), nullable=False),  # xml3, giamdinhhs, csv
    Column("upload_sha256", String(64), nullable=False),
    Column("upload_bytes", BigInteger, nullable=False),
    Column("date_from", String(8), nullable=False),
    Column("date_to", String(8), nullable=False),
    Column("counts", Text, nullable=False),  # JSON
)
claim_results = Table(
    "claim_results",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_fk", Integer, ForeignKey("claim_runs.id"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("category", String(16), nullable=False),
    Column("ma_lk", String(100)),
    Column("stt", String(16)),
    Column("ma_dich_vu", String(64)),
    Column("accession_number", String(64)),
    Column("line_key", String(160)),
    Column("result", Text, nullable=False),
)

#: Studies imported from another facility (issue 18, :mod:`pacs.services.federation`): where from
#: (``peer``, its ``facility_code``, the peer's ``source_url``), when and by whom. Written before
#: the first instance is stored, so the store transactions (appraisal lines, order links) see that
#: a study comes from elsewhere; ``status`` importing -> done | failed. Such studies never make
#: local appraisal records.
reuse_imports = Table(
    "reuse_imports",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("peer", String(64), nullable=False),
    Column("facility_code", String(16)),
    Column("source_url", Text),
    Column("method", String(16), nullable=False),  # wado-rs, c-move
    Column("patient_id", String(64)),  # as the peer names the patient
    Column("issuer_of_patient_id", String(64)),
    Column("identifier", String(330)),  # the system|value the study was found by
    Column("imported_by", String(128), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(16), nullable=False),
    Column("instances", Integer, nullable=False, server_default="0"),
    Column("detail", Text),
)

#: Background work of the federation (prefetch of a patient's priors into the proxy cache): one
#: row per job, taken with a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) so any node runs it
#: and a dead node's job is taken again after ``locked_until``. ``status`` pending -> running ->
#: done | failed (after ``attempts`` reached the limit).
reuse_jobs = Table(
    "reuse_jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),  # prefetch
    Column("identifiers", Text, nullable=False),  # JSON list of system|value tokens
    Column("study_instance_uid", String(64)),  # one study only (else the newest priors)
    Column("peer", String(64)),  # one peer only (else every peer)
    Column("trigger", String(16), nullable=False),  # order, api
    Column("order_key", String(80)),
    Column("requested_by", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("locked_by", String(128)),
    Column("locked_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("result", Text),
)
Index("ix_reuse_jobs_status_next_attempt_at", reuse_jobs.c.status, reuse_jobs.c.next_attempt_at)
