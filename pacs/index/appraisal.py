"""SQL for appraisal acquisition logs: MPPS rows and the per-study facts a record is built from.

Every function takes an open :class:`~sqlalchemy.Connection`; the caller owns the transaction.
Listing pages by ``studies.id`` (keyset), and aggregates instance facts per series with one
``GROUP BY`` for the studies of the page only, so a page costs the same on a large index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, exists, func, or_, select

from pacs.index.schema import instances, mpps, patients, series, studies


@dataclass(frozen=True)
class RecordFilter:
    """Filters of the appraisal record list; dates are ``YYYYMMDD`` on the study date."""

    date_from: str | None = None
    date_to: str | None = None
    modality: str | None = None
    device: str | None = None  # DeviceSerialNumber or StationName
    accession: str | None = None
    patient_id: str | None = None  # PatientID, citizen ID or insurance card code
    study_descriptions: tuple[str, ...] | None = None  # from a service-code filter
    procedure_codes: tuple[str, ...] | None = None  # from a service-code filter
    study_uids: tuple[str, ...] = field(default_factory=tuple)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_studies(conn: Connection, flt: RecordFilter, after_id: int, limit: int) -> list[dict[str, Any]]:
    """Study + patient rows matching ``flt`` with ``studies.id > after_id``, by id, at most ``limit``."""
    stmt = (
        select(
            studies.c.id,
            studies.c.study_instance_uid,
            studies.c.study_date,
            studies.c.study_time,
            studies.c.accession_number,
            studies.c.study_id,
            studies.c.study_description,
            studies.c.requested_procedure_id,
            studies.c.referring_physician_name,
            studies.c.requesting_physician,
            studies.c.name_of_physicians_reading_study,
            studies.c.number_of_study_related_series,
            studies.c.number_of_study_related_instances,
            patients.c.patient_id,
            patients.c.issuer_of_patient_id,
            patients.c.other_patient_ids,
        )
        .join(patients, studies.c.patient_fk == patients.c.id)
        .where(studies.c.id > after_id)
        .order_by(studies.c.id)
        .limit(limit)
    )
    if flt.study_uids:
        stmt = stmt.where(studies.c.study_instance_uid.in_(flt.study_uids))
    if flt.date_from:
        stmt = stmt.where(studies.c.study_date >= flt.date_from)
    if flt.date_to:
        stmt = stmt.where(studies.c.study_date <= flt.date_to)
    if flt.accession:
        stmt = stmt.where(studies.c.accession_number == flt.accession)
    if flt.patient_id:
        stmt = stmt.where(
            or_(
                patients.c.patient_id == flt.patient_id,
                patients.c.other_patient_ids.like(f"%{_like_escape(flt.patient_id)}%", escape="\\"),
            )
        )
    if flt.modality:
        stmt = stmt.where(
            exists().where(and_(series.c.study_fk == studies.c.id, series.c.modality == flt.modality))
        )
    if flt.device:
        stmt = stmt.where(
            exists().where(
                and_(
                    series.c.study_fk == studies.c.id,
                    or_(series.c.device_serial_number == flt.device, series.c.station_name == flt.device),
                )
            )
        )
    if flt.study_descriptions is not None or flt.procedure_codes is not None:
        conds = []
        if flt.study_descriptions:
            conds.append(studies.c.study_description.in_(flt.study_descriptions))
        if flt.procedure_codes:
            coded = select(mpps.c.study_instance_uid).where(mpps.c.procedure_code.in_(flt.procedure_codes))
            coded_acc = select(mpps.c.accession_number).where(mpps.c.procedure_code.in_(flt.procedure_codes))
            conds.append(studies.c.study_instance_uid.in_(coded))
            conds.append(studies.c.accession_number.in_(coded_acc))
        stmt = stmt.where(or_(*conds) if conds else studies.c.id < 0)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def series_facts(conn: Connection, study_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Per series of the given studies: device identity, people, and min/max of each time source."""
    if not study_ids:
        return []
    i = instances.c
    adt = i.acquisition_date_time
    ad_at = i.acquisition_date + i.acquisition_time
    cd_ct = i.content_date + i.content_time
    stmt = (
        select(
            series.c.id,
            series.c.study_fk,
            series.c.series_instance_uid,
            series.c.modality,
            series.c.series_date,
            series.c.series_time,
            series.c.manufacturer,
            series.c.manufacturer_model_name,
            series.c.device_serial_number,
            series.c.station_name,
            series.c.software_versions,
            series.c.operators_name,
            series.c.performing_physician_name,
            series.c.performed_procedure_step_id,
            func.count(i.id).label("instance_count"),
            func.min(adt).label("min_adt"),
            func.max(adt).label("max_adt"),
            func.min(ad_at).label("min_ad_at"),
            func.max(ad_at).label("max_ad_at"),
            func.min(cd_ct).label("min_cd_ct"),
            func.max(cd_ct).label("max_cd_ct"),
            func.min(i.received_at).label("first_received"),
            func.max(i.received_at).label("last_received"),
            func.min(i.timezone_offset_from_utc).label("tz_min"),
            func.max(i.timezone_offset_from_utc).label("tz_max"),
            func.min(i.acquisition_time_synchronized).label("sync_min"),
            func.max(i.acquisition_time_synchronized).label("sync_max"),
            func.max(i.time_source).label("time_source"),
            func.min(i.calling_ae).label("ae_min"),
            func.max(i.calling_ae).label("ae_max"),
        )
        .join(instances, instances.c.series_fk == series.c.id)
        .where(series.c.study_fk.in_(list(study_ids)))
        .group_by(series.c.id)
        .order_by(series.c.study_fk, series.c.series_number, series.c.id)
    )
    return [dict(r) for r in conn.execute(stmt).mappings()]


def mpps_for(conn: Connection, study_uids: Sequence[str], accessions: Sequence[str]) -> list[dict[str, Any]]:
    """MPPS rows linked to any of the studies (by Study Instance UID) or accession numbers."""
    conds = []
    if study_uids:
        conds.append(mpps.c.study_instance_uid.in_(list(study_uids)))
    if accessions:
        conds.append(mpps.c.accession_number.in_(list(accessions)))
    if not conds:
        return []
    stmt = select(mpps).where(or_(*conds)).order_by(mpps.c.id)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def mpps_get(conn: Connection, sop_instance_uid: str, *, for_update: bool = False) -> dict[str, Any] | None:
    """One MPPS row by SOP Instance UID."""
    stmt = select(mpps).where(mpps.c.sop_instance_uid == sop_instance_uid)
    if for_update and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).mappings().first()
    return dict(row) if row else None


def mpps_insert(conn: Connection, values: dict[str, Any]) -> None:
    """Insert an MPPS row (a duplicate UID raises IntegrityError)."""
    conn.execute(mpps.insert().values(**values))


def mpps_update(conn: Connection, sop_instance_uid: str, values: dict[str, Any]) -> None:
    """Update an MPPS row."""
    conn.execute(mpps.update().where(mpps.c.sop_instance_uid == sop_instance_uid).values(**values))
