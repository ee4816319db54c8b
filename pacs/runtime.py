"""Composition root: the only place that wires concrete classes together."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydicom.config
from sqlalchemy import Engine

from pacs.blobstore import FileBlobStore
from pacs.config import Settings, StorageSettings
from pacs.index.database import Database
from pacs.index.engine import make_engine, migrate
from pacs.services.archive import Archive

if TYPE_CHECKING:  # imported where built: a CLI command that needs none of them stays quick
    from pacs.blobstore.tiered import TieredBlobStore
    from pacs.services.appraisal import Appraisal
    from pacs.services.audit import Audit
    from pacs.services.auth import Auth
    from pacs.services.commitment import Commitment, DeliveryWorker
    from pacs.services.dicomweb import DicomWeb
    from pacs.services.federation.service import Federation
    from pacs.services.fhir import Fhir
    from pacs.services.identifiers import Identifiers
    from pacs.services.orders import Orders
    from pacs.services.render import Renderer
    from pacs.services.uploads import Uploader

log = logging.getLogger("pacs")


@dataclass
class Runtime:
    """Everything a running archive needs, built from settings."""

    settings: Settings
    db: Database
    blobs: FileBlobStore | TieredBlobStore
    archive: Archive
    appraisal: Appraisal
    auth: Auth
    audit: Audit
    dicomweb: DicomWeb
    renderer: Renderer
    orders: Orders
    identifiers: Identifiers
    fhir: Fhir
    federation: Federation
    #: The S3 uploader of ``[storage] backend = "s3"`` (running in the process that owns the storage).
    uploader: Uploader | None = None

    def close(self) -> None:
        """Stop the uploader and the peer clients, flush the audit trail, release database connections."""
        if self.uploader is not None:
            self.uploader.stop()
        self.federation.close()
        self.audit.close()
        self.archive.close()
        if not isinstance(self.blobs, FileBlobStore):
            self.blobs.close()
        self.db.close()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine behind :attr:`db` (for migrations and tests)."""
        return self.db.engine


def build(
    settings: Settings,
    *,
    run_migrations: bool = True,
    clean_tmp: bool = False,
    background: bool | None = None,
) -> Runtime:
    """Create the engine (migrating the schema), blob store and services for ``settings``.

    ``clean_tmp`` removes leftovers of writes interrupted by a crash; only the process that owns
    the storage at start-up (``pacs serve``) may do that. ``background`` (default: ``clean_tmp``)
    starts that process's background work here: the S3 uploader of ``backend = "s3"``.
    """
    settings.storage.path.mkdir(parents=True, exist_ok=True)
    # Instances are stored as received and judged structurally (pacs.dicom.extract); pydicom's
    # per-value checks while reading only emit warnings nobody reads, and cost ~40 % of parsing
    # a header on every C-STORE and rendered frame.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    engine = make_engine(
        settings.database_url, echo=settings.database.echo, busy_timeout=settings.database.busy_timeout
    )
    if run_migrations:
        migrate(engine)
    db = Database(engine)
    blobs = blob_store(settings.storage)
    if clean_tmp:
        removed = (blobs if isinstance(blobs, FileBlobStore) else blobs.local).clean_tmp()
        if removed:
            log.warning("removed %d unfinished write(s) left by an interrupted run", removed)
    archive = Archive(
        db,
        blobs,
        duplicate_policy=settings.storage.duplicate_policy,
        max_instance_bytes=settings.storage.max_instance_mb << 20,
    )
    if settings.storage.backend == "s3":
        from pacs.services.uploads import UploadQueue

        archive.index_hooks.append(UploadQueue())  # the blob queued in its store transaction
    appraisal = _appraisal(settings, db)
    archive.index_hooks.append(appraisal)  # service lines kept in step in the store transaction
    appraisal.rebuild_lines_if_needed()
    orders = _orders(settings, db)
    archive.index_hooks.append(orders)  # images linked to their order in the store transaction
    appraisal.step_hooks.append(orders.step_changed)  # MPPS moves the scheduled step along
    auth, audit = _security(settings, db)
    identifiers, fhir = _reuse(settings, db, audit)
    archive.index_hooks.append(identifiers)  # patient identifiers kept in step in the store transaction
    dicomweb, renderer = _web_services(settings, archive)
    federation = _federation(settings, archive, db, identifiers, audit)
    orders.order_hooks.append(federation.order_created)  # a new order queues a prefetch of priors
    rt = Runtime(
        settings=settings,
        db=db,
        blobs=blobs,
        archive=archive,
        appraisal=appraisal,
        auth=auth,
        audit=audit,
        dicomweb=dicomweb,
        renderer=renderer,
        orders=orders,
        identifiers=identifiers,
        fhir=fhir,
        federation=federation,
    )
    if (clean_tmp if background is None else background) and settings.storage.backend == "s3":
        rt.uploader = upload_worker(rt)
        rt.uploader.start()
    return rt


def blob_store(s: StorageSettings) -> FileBlobStore | TieredBlobStore:
    """The file store under ``[storage] path``; with an S3 bucket set, the file store in front of
    the bucket (reads fall back to it; with ``backend = "file"`` nothing new is uploaded, which is
    how ``pacs storage migrate --to file`` leaves S3)."""
    local = FileBlobStore(s.path, fsync=s.fsync)
    if not s.s3_bucket:
        return local
    from pacs.blobstore.s3 import S3BlobStore, S3Config
    from pacs.blobstore.tiered import TieredBlobStore

    config = S3Config(
        bucket=s.s3_bucket,
        endpoint=s.s3_endpoint.rstrip("/"),
        region=s.s3_region,
        prefix=s.s3_prefix,
        access_key=s.s3_access_key,
        secret_key=s.s3_secret(),
        verify_tls=s.s3_verify_tls,
        ca_file=s.s3_ca_file if str(s.s3_ca_file) not in ("", ".") else None,
        connect_timeout=s.s3_connect_timeout,
        read_timeout=s.s3_read_timeout,
        max_connections=s.s3_upload_concurrency + 8,
    )
    return TieredBlobStore(local, S3BlobStore(config))


def upload_worker(rt: Runtime) -> Uploader:
    """An uploader of this runtime's queue (not started; ``pacs serve`` runs one, the storage
    migration drives one in the foreground)."""
    from pacs.services.uploads import Uploader

    if isinstance(rt.blobs, FileBlobStore):
        from pacs.config import ConfigError

        raise ConfigError("[storage] s3_bucket is not set")
    return Uploader(rt.db, rt.blobs, rt.settings.storage)


def _federation(
    settings: Settings, archive: Archive, db: Database, identifiers: Identifiers, audit: Audit
) -> Federation:
    """Federated look-up across the facilities of ``[[peers]]`` (DIMSE peers through pacs.scp)."""
    from pacs.services.federation.service import Federation

    dimse = None
    if any(p.kind == "dimse" for p in settings.peers):
        from pacs.scp.federation import DimseFederation

        dimse = DimseFederation(settings.dicom.ae_title)
    return Federation(settings, archive, db, identifiers, audit, dimse=dimse)


def _reuse(settings: Settings, db: Database, audit: Audit) -> tuple[Identifiers, Fhir]:
    """Patient identifiers (look-ups audited) and the FHIR ImagingStudy view over them."""
    from pacs.services.fhir import Fhir
    from pacs.services.identifiers import Identifiers

    identifiers = Identifiers(db, audit)
    return identifiers, Fhir(identifiers, utc_offset=settings.appraisal.device_utc_offset)


def _orders(settings: Settings, db: Database) -> Orders:
    """The scheduled workflow: orders from the HIS, worklist items, their links."""
    from pacs.services.orders import Orders

    return Orders(db, facility_code=settings.appraisal.facility_code)


def _web_services(settings: Settings, archive: Archive) -> tuple[DicomWeb, Renderer]:
    """DICOMweb metadata/frames and rendering, with their caches under the storage root."""
    from pacs.services.dicomweb import DicomWeb
    from pacs.services.render import Renderer

    cache = settings.storage.path / "cache"
    return DicomWeb(archive, cache), Renderer(archive, cache)


def _security(settings: Settings, db: Database) -> tuple[Auth, Audit]:
    """Users and tokens, and the audit trail (its spool under the storage root, syslog if set)."""
    from datetime import timedelta

    from pacs.services.audit import Audit, FileSpool, SyslogSender
    from pacs.services.auth import Auth

    auth = Auth(db, token_lifetime=timedelta(minutes=settings.auth.token_lifetime_minutes))
    a = settings.audit
    spool_dir = a.spool_dir if str(a.spool_dir) not in ("", ".") else settings.storage.path / "audit-spool"
    syslog = None
    if a.syslog_url:
        syslog = SyslogSender(
            a.syslog_url,
            ca=a.syslog_ca if str(a.syslog_ca) not in ("", ".") else None,
            cert=a.syslog_cert if str(a.syslog_cert) not in ("", ".") else None,
            key=a.syslog_key if str(a.syslog_key) not in ("", ".") else None,
        )
    audit = Audit(
        db,
        source_id=settings.dicom.ae_title,
        spool=FileSpool(spool_dir, fsync=settings.storage.fsync),
        syslog=syslog,
        wait_seconds=a.wait_seconds,
        interval=a.interval_seconds,
    )
    return auth, audit


def _appraisal(settings: Settings, db: Database) -> Appraisal:
    """The appraisal service with its registers (a bad register file fails start-up, with the line)."""
    from pacs.config import ConfigError
    from pacs.services.appraisal import Appraisal
    from pacs.services.appraisal.registers import RegisterError, load_registers

    a = settings.appraisal
    try:
        registers = load_registers(
            a.facility_code,
            a.device_register,
            a.service_register,
            a.staff_register,
            a.reference_time_register,
        )
    except RegisterError as exc:
        raise ConfigError(str(exc)) from exc
    return Appraisal(db, a, registers)


def dimse_extensions(rt: Runtime) -> list[Any]:
    """DIMSE services beyond Verification and Storage (Query/Retrieve, MPPS, worklist, commitment)."""
    from pacs.limits import DecodeLimits
    from pacs.scp import commitment, mpps, qr, worklist
    from pacs.services.retrieve import Retrieve

    h = rt.settings.http
    retrieve = Retrieve(
        rt.archive, DecodeLimits.from_mb(h.max_decoded_mb_per_instance, h.max_decoded_mb_per_request)
    )
    return [
        qr.extension(rt.archive, rt.settings, rt.audit, retrieve),
        mpps.extension(rt.appraisal),
        worklist.extension(rt.orders, rt.settings, rt.audit),
        commitment.extension(commitment_service(rt), rt.settings),
    ]


def commitment_service(rt: Runtime) -> Commitment:
    """The storage commitment service of this runtime, made once: the DIMSE handlers and the
    delivery worker of a process must share it (one lease holder, one wake-up)."""
    from pacs.services.commitment import Commitment

    made = rt.__dict__.get("_commitment")
    if made is None:
        made = rt.__dict__["_commitment"] = Commitment(rt.db, rt.blobs, rt.settings.commitment)
    return made  # type: ignore[no-any-return]


def commitment_worker(rt: Runtime) -> DeliveryWorker:
    """The background thread of ``pacs serve`` that sends due storage commitment reports on new
    associations to the requesters' ``[dicom] destinations`` (started and stopped by serve)."""
    from pacs.scp.commitment import ReportSender
    from pacs.services.commitment import DeliveryWorker

    return DeliveryWorker(commitment_service(rt), ReportSender(rt.settings))


def web_app(rt: Runtime) -> Any:
    """The starlette application serving DICOMweb, the viewer and the APIs."""
    from pacs.web.app import create_app

    return create_app(rt)
