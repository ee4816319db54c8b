"""Typed, frozen settings, loaded once.

Precedence (lowest to highest): built-in defaults, the TOML file (``--config PATH``, default
``config.toml`` in the working directory when present), environment variables
``PACS_<SECTION>_<KEY>`` (for example ``PACS_DICOM_PORT=11113``), explicit overrides from the CLI.
This is the only module that reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DuplicatePolicy = Literal["keep-versions", "reject", "replace"]


#: The DIMSE services an allowed AE can be granted (``services = [...]``; ``"all"`` for every one).
SERVICES = ("store", "find", "move", "get", "mpps", "worklist", "commitment")
#: What an AE gets when its entry names no services: what a modality does. Query and retrieve
#: (patient data leaving the archive) must be granted by name.
MODALITY_SERVICES = ("store", "mpps", "worklist", "commitment")


@dataclass(frozen=True)
class AllowedAE:
    """A calling AE title allowed to associate, optionally pinned to a peer host address, with
    the DIMSE services it may use (C-ECHO is always allowed)."""

    ae_title: str
    host: str | None = None
    services: tuple[str, ...] = MODALITY_SERVICES
    #: With DICOM TLS: the commonName the AE's client certificate must carry (None: any
    #: certificate the CA signed, or none when client certificates are not required).
    certificate: str | None = None


@dataclass(frozen=True)
class Destination:
    """A C-MOVE destination: where to open a Storage association for an AE title."""

    ae_title: str
    host: str
    port: int
    #: Open the association over TLS, verifying the destination against ``[dicom] tls_ca`` and
    #: presenting ``tls_cert`` / ``tls_key`` as our certificate (PS3.15 B.9).
    tls: bool = False
    #: Allow lossy compressed copies (JPEG Baseline/Extended, JPEG 2000, JPEG-LS near-lossless,
    #: each a new instance) when the destination accepts only those for an instance. Off: lossless only.
    lossy: bool = False


@dataclass(frozen=True)
class DicomSettings:
    """The DIMSE listener."""

    ae_title: str = "PACS"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_aes: tuple[AllowedAE, ...] = ()
    destinations: tuple[Destination, ...] = ()
    max_associations: int = 32  # established associations per listener process
    # Connections whose association is not negotiated yet (peer not identified): in all per
    # listener process, and per peer address; over either, the one negotiating longest is dropped.
    max_unidentified: int = 64
    max_unidentified_per_host: int = 8
    max_pdu: int = 262144
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    workers: int = 0  # listener processes, associations given to the least busy; 0 = one per core
    tcp_nodelay: bool = True
    fast_store: bool = True  # C-STORE handled on the association's reader thread (pacs.scp.faststore)
    max_find_results: int = 10000
    # DICOM TLS (PS3.15 B.9 / BCP 195): PEM files; an empty tls_cert means plain TCP.
    tls_cert: Path = Path()
    tls_key: Path = Path()
    tls_ca: Path = Path()  # CA bundle to verify client certificates
    tls_require_client_cert: bool = False


@dataclass(frozen=True)
class HttpSettings:
    """The web application (DICOMweb, viewer, APIs)."""

    host: str = "127.0.0.1"
    port: int = 8042
    cors_origins: tuple[str, ...] = ()
    max_upload_mb: int = 2048
    # Decoded pixel data (MiB) one WADO-RS / rendering request may produce, per instance and in all
    # (pacs.limits.DecodeLimits: a 9 KB JPEG 2000 object can decode to gigabytes); over it is 413
    # before anything is decoded. The defaults are pacs.limits.DECODED_PER_INSTANCE / _PER_REQUEST.
    max_decoded_mb_per_instance: int = 1024
    max_decoded_mb_per_request: int = 4096
    # Seconds a client has to send one request's headers: from a new connection, and on a keep-alive
    # connection from the first byte of each further request. 0 = no limit.
    header_timeout: float = 10.0
    # Request bodies must keep arriving: at most body_timeout seconds without a byte (time the app
    # itself is not reading does not count), and the whole body within body_deadline seconds
    # (generous: 2 GiB over a 5 Mbit/s link take ~1 h). Then 408 and the connection is closed.
    # 0 = no limit.
    body_timeout: float = 30.0
    body_deadline: float = 3600.0
    # Open connections per web server process; more are answered 503 (Retry-After) and closed at
    # once. Keep under the file-descriptor limit (ulimit -n). 0 = no cap.
    max_connections: int = 512
    # Host header values served (DNS rebinding). Empty: loopback names, the bind address, this
    # machine's host names and their addresses. ["*"] turns the check off.
    allowed_hosts: tuple[str, ...] = ()
    # Reverse proxies whose X-Forwarded-For / -Proto are believed (addresses or CIDR nets, as
    # uvicorn's forwarded_allow_ips). Empty: none, so the audit shows the real peer address.
    trusted_proxies: tuple[str, ...] = ()
    # The archive's URL as clients see it (e.g. https://pacs.benhvien.vn), used for every URL the
    # server returns (STOW RetrieveURL, BulkDataURI); empty: built from the checked Host header.
    public_url: str = ""
    max_query_limit: int = 1000
    default_query_limit: int = 1000
    # Web server processes sharing the port (SO_REUSEPORT); 0 = one per CPU core. Each has its own
    # login rate limiter, so a client gets up to workers x login_attempts tries per window.
    workers: int = 1
    # HTTPS: PEM files; an empty tls_cert means plain HTTP.
    tls_cert: Path = Path()
    tls_key: Path = Path()


@dataclass(frozen=True)
class StorageSettings:
    """Where the Part-10 files live."""

    path: Path = Path("storage")
    duplicate_policy: DuplicatePolicy = "keep-versions"
    fsync: bool = True
    # Largest instance (Part-10 file) accepted over C-STORE, STOW-RS or import, MiB; 0 = no limit.
    # Enhanced multi-frame CT/MR and long ultrasound clips run to a few hundred MiB.
    max_instance_mb: int = 4096
    # "file": blobs stay under ``path``. "s3": blobs are written there first (a C-STORE is
    # acknowledged after the local fsync and index commit, as with "file"), queued for upload in
    # the same transaction, uploaded by ``pacs serve``'s background uploader and then removed
    # locally (pacs.services.uploads). Reads use the local copy while it exists, else S3.
    backend: str = "file"
    s3_endpoint: str = ""  # http(s)://host:port of an S3-compatible server; empty = AWS for s3_region
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_prefix: str = ""  # prepended to every blob key (e.g. "pacs/"); keys stay opaque
    s3_access_key: str = ""  # empty (both): the client's own chain (AWS_* variables, ~/.aws, instance role)
    # The secret: better from PACS_STORAGE_S3_SECRET_KEY or a file (s3_secret_key_file, one line)
    # than in this file. Never logged (left out of the settings' repr).
    s3_secret_key: str = field(default="", repr=False)
    s3_secret_key_file: Path = Path()
    s3_verify_tls: bool = True
    s3_ca_file: Path = Path()  # CA bundle verifying an https endpoint; empty = the system's
    s3_connect_timeout: float = 5.0  # seconds; every S3 call is bounded, a hung server fails it
    s3_read_timeout: float = 30.0
    s3_upload_concurrency: int = 4  # objects uploaded at once by one node
    # How long a node holds a taken upload (renewed while it uploads): a node killed meanwhile
    # leaves its uploads to another after at most this.
    s3_lease_seconds: float = 30.0
    # Backoff after a failed round of uploads (S3 down): initial, doubled each time, capped.
    s3_retry_initial_seconds: float = 1.0
    s3_retry_max_seconds: float = 300.0

    def s3_secret(self) -> str:
        """The S3 secret key: ``s3_secret_key``, else the first line of ``s3_secret_key_file``."""
        if self.s3_secret_key or not _set(self.s3_secret_key_file):
            return self.s3_secret_key
        try:
            return self.s3_secret_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"[storage] s3_secret_key_file: cannot read it: {exc.strerror}") from exc


@dataclass(frozen=True)
class DatabaseSettings:
    """The SQL index. An empty URL means a SQLite file under the storage root."""

    url: str = ""
    echo: bool = False
    busy_timeout: float = 60.0  # SQLite: seconds a write waits for the writer lock before giving up


@dataclass(frozen=True)
class QuerySettings:
    """Matching behaviour shared by C-FIND and QIDO-RS."""

    names_accent_insensitive: bool = True


@dataclass(frozen=True)
class AuthSettings:
    """Web authentication: users, roles and bearer tokens (``pacs user add``)."""

    # true (default) or false. Sign-in no longer follows the bind address: behind a local reverse
    # proxy a loopback bind is reachable from the network. "auto" (older configs) means true.
    enabled: str = "true"
    token_lifetime_minutes: int = 480
    login_attempts: int = 10  # per client address per window; more get 429
    login_window_seconds: int = 60


@dataclass(frozen=True)
class AuditSettings:
    """The audit trail (PS3.15 A.5): durable spool, waiting for rows, shipping to syslog."""

    # Rows the database cannot take now are appended here (JSON lines, fsynced) and replayed in
    # order when it answers again; empty = ``<storage>/audit-spool``.
    spool_dir: Path = Path()
    # Seconds a DICOM query or retrieve waits for its audit row to be durable (in the database or
    # the spool) before its final response; 0 = do not wait.
    wait_seconds: float = 5.0
    # Seconds between the audit writer's rounds when idle: spool replay and sealing into the hash
    # chain the rows other writers appended (stores, associations, MPPS).
    interval_seconds: float = 1.0
    # Copy every sealed row to a syslog collector as an RFC 5424 message carrying the DICOM audit
    # message (IHE ATNA): ``udp://host:514`` (RFC 5426), ``tcp://host:601`` or ``tls://host:6514``
    # (RFC 5425, octet-counted). Empty = off.
    syslog_url: str = ""
    syslog_ca: Path = Path()  # CA bundle verifying the collector's certificate (tls://); empty = system
    syslog_cert: Path = Path()  # client certificate chain to present (tls://, PEM); optional
    syslog_key: Path = Path()


@dataclass(frozen=True)
class LogSettings:
    """Logging."""

    level: str = "INFO"


#: Default label of every appraisal record that carries a device time (appraisal domain notes).
LABEL_VI = (
    "Các mốc thời gian trong bản ghi này lấy từ thiết bị chụp, hệ thống PACS và tệp DICOM, chỉ phản "
    "ánh thời gian vận hành máy (thu nhận hình ảnh) — chỉ là một phần của quy trình kỹ thuật, vốn còn "
    "gồm tiếp đón người bệnh, xác nhận thông tin, khai thác tiền sử, hướng dẫn tư thế, giải thích, "
    "đọc và đánh giá kết quả, tư vấn và trả kết quả. Theo Bộ Y tế, thời gian trong hướng dẫn quy "
    "trình kỹ thuật (Quyết định 2775/QĐ-BYT, 2776/QĐ-BYT) chỉ mang tính tham chiếu, không phải căn cứ "
    "giám định hay từ chối thanh toán chi phí khám bệnh, chữa bệnh BHYT."
)
LABEL_EN = (
    "Times in this record come from the imaging device, the PACS and DICOM files. They reflect only "
    "machine operating (image acquisition) time, which is only one part of the technical procedure; "
    "the procedure also includes patient reception, information checks, history taking, positioning "
    "guidance, explanation, reading and evaluating images, consultation and returning results. "
    "According to the Ministry of Health, the times in the technical procedure guidelines (Decisions "
    "2775/QĐ-BYT and 2776/QĐ-BYT) are reference averages, not grounds for appraisal or for refusing "
    "health-insurance payment."
)


@dataclass(frozen=True)
class AppraisalSettings:
    """Acquisition logs for health-insurance appraisal: facility, registers, label, clock checks.

    Register paths are CSV files the administrator edits (see ``registers/``); a relative path is
    resolved against the directory of the config file; an empty path means "no register".
    """

    facility_code: str = ""  # MA_CSKCB, 5 characters; empty = unknown (MA_MAY 4750 form left empty)
    device_register: Path = Path()
    service_register: Path = Path()
    staff_register: Path = Path()
    reference_time_register: Path = Path()
    label_code: str = "PACS_TG_THIET_BI_v1"
    label_vi: str = LABEL_VI
    label_en: str = LABEL_EN
    device_utc_offset: str = "+0700"  # assumed for device times without TimezoneOffsetFromUTC
    clock_tolerance_seconds: int = 300  # |observed offset| above this is reported as a fact
    max_limit: int = 1000
    default_limit: int = 100


@dataclass(frozen=True)
class WorklistSettings:
    """The Modality Worklist SCP (PS3.4 Annex K)."""

    #: Calling AE titles of old modalities that cannot show UTF-8: their worklist answers carry
    #: names and texts with the accents removed (``Nguyễn Văn Đức`` -> ``Nguyen Van Duc``) in the
    #: default repertoire, instead of bytes they would show as mojibake.
    ascii_fallback_aes: tuple[str, ...] = ()
    #: At most this many items per query (more: the query is refused as too broad).
    max_results: int = 2000


@dataclass(frozen=True)
class Hl7Settings:
    """The HL7 v2 listener (MLLP) of the scheduled workflow: orders, patient updates, reports."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 = off
    #: A larger frame is answered AR and its connection closed; never buffered beyond this.
    max_message_kb: int = 1024
    #: Seconds a connection may stay silent (between messages or between bytes) before it is closed.
    idle_timeout_seconds: float = 60.0
    #: Seconds one message may take to arrive from its first byte (a byte-dribbling sender is cut off).
    message_timeout_seconds: float = 60.0
    #: Open connections at once; more are closed at once. The HIS usually keeps one open.
    max_connections: int = 16
    #: Peer addresses or CIDR networks allowed to connect; empty = any.
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class CommitmentSettings:
    """Storage Commitment Push Model SCP (PS3.4 Annex J): delivery of the N-EVENT-REPORT."""

    #: Seconds between the N-ACTION response and the report (0: at once). Some modalities
    #: want time to start listening; tests use it to stop the archive in between.
    report_delay_seconds: float = 0.0
    #: How long the process holding the requester's association keeps the report for it (the
    #: report is tried there first); afterwards, or as soon as that association ends, any node
    #: sends it on a new association to the requester's ``[dicom] destinations`` entry.
    same_association_wait_seconds: float = 10.0
    #: Backoff between attempts on new associations: initial, doubled each time, capped.
    retry_initial_seconds: float = 5.0
    retry_max_seconds: float = 600.0
    #: Attempts on new associations before the commitment is marked failed (logged).
    max_attempts: int = 10
    #: How long one delivery attempt holds its row (a lease: a node killed meanwhile leaves the
    #: row to another after this). Longer than connecting plus ``[dicom] dimse_timeout``.
    lease_seconds: float = 120.0
    #: How often the delivery thread looks for due reports.
    poll_seconds: float = 1.0


#: Peer kinds: another ``pacs`` (``/api/reuse/local``), a plain DICOMweb server (QIDO-RS and
#: WADO-RS, e.g. Orthanc's plugin), a DIMSE archive (C-FIND and C-MOVE).
PEER_KINDS = ("pacs", "dicomweb", "dimse")
#: Where a peer keeps an identifier: the Patient ID (0010,0020) or Other Patient IDs (0010,1000).
MATCH_ATTRIBUTES = ("PatientID", "OtherPatientIDs")
#: Identifier systems whose values name one person nationwide: a match on them may accept any
#: issuer on the peer's results (``issuer = "*"``).
NATIONAL_SYSTEMS = ("urn:vn:cccd", "urn:vn:bhyt")


@dataclass(frozen=True)
class PeerMatch:
    """How a plain DICOMweb or DIMSE peer keeps the identifiers of one system (``[[peers.match]]``).

    The value is sent as ``attribute``; ``issuer`` is sent as IssuerOfPatientID and every result
    must carry exactly it (``""``: results without an issuer only; ``"*"``: any issuer, only for
    the national systems, CCCD and BHYT). A result that fails the check is another person's.
    """

    system: str = ""
    attribute: str = "PatientID"
    issuer: str = ""


@dataclass(frozen=True)
class PeerSettings:
    """One facility to query and fetch from (``[[peers]]``); see the README's "Reuse"."""

    name: str = ""
    facility_code: str = ""  # its MA_CSKCB
    kind: str = "dicomweb"
    #: pacs: the archive's root URL; dicomweb: the DICOMweb root (e.g. http://host:8042/dicom-web).
    url: str = ""
    auth: str = "none"  # none, basic, bearer
    username: str = ""  # basic
    secret_env: str = ""  # environment variable holding the password (basic) or token (bearer)
    secret_file: Path = Path()  # or a file holding it (first line)
    tls_verify: bool = True
    tls_ca: Path = Path()  # CA bundle verifying the peer (empty: the system's)
    timeout_seconds: float = 5.0
    ae_title: str = ""  # dimse: the peer's AE title, host and port
    host: str = ""
    port: int = 0
    match: tuple[PeerMatch, ...] = ()
    #: The password or token, read from ``secret_env`` / ``secret_file`` at load (never shown).
    secret: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True)
class FederationSettings:
    """Federated look-up across facilities: deadline, the proxy's disk cache, prefetch."""

    deadline_seconds: float = 5.0  # a federated search answers within this, slow peers named
    cache_dir: Path = Path()  # WADO-RS proxy cache; empty = <storage>/reuse-cache
    cache_mb: int = 2048  # bound of the cache (least recently used entries go first)
    prefetch_on_order: bool = True  # a new order queues a prefetch of the patient's priors
    prefetch_max_studies: int = 5  # newest studies prefetched per patient
    prefetch_poll_seconds: float = 2.0
    prefetch_lease_seconds: float = 600.0  # a job taken by a node killed meanwhile is retried after
    prefetch_attempts: int = 3


@dataclass(frozen=True)
class Settings:
    """All settings. Build with :func:`load`."""

    dicom: DicomSettings = field(default_factory=DicomSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    query: QuerySettings = field(default_factory=QuerySettings)
    log: LogSettings = field(default_factory=LogSettings)
    appraisal: AppraisalSettings = field(default_factory=AppraisalSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    worklist: WorklistSettings = field(default_factory=WorklistSettings)
    hl7: Hl7Settings = field(default_factory=Hl7Settings)
    commitment: CommitmentSettings = field(default_factory=CommitmentSettings)
    federation: FederationSettings = field(default_factory=FederationSettings)
    peers: tuple[PeerSettings, ...] = ()

    @property
    def auth_enabled(self) -> bool:
        """Whether the web side requires sign-in: unless explicitly disabled, yes."""
        return self.auth.enabled.lower() not in ("false", "off", "no", "0")

    @property
    def database_url(self) -> str:
        """The effective SQLAlchemy URL (SQLite under the storage root by default)."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.storage.path / 'index.sqlite').resolve()}"


class ConfigError(ValueError):
    """A configuration file or variable that cannot be used."""


_SECTIONS: dict[str, type] = {
    "dicom": DicomSettings,
    "http": HttpSettings,
    "storage": StorageSettings,
    "database": DatabaseSettings,
    "query": QuerySettings,
    "log": LogSettings,
    "appraisal": AppraisalSettings,
    "auth": AuthSettings,
    "audit": AuditSettings,
    "worklist": WorklistSettings,
    "hl7": Hl7Settings,
    "commitment": CommitmentSettings,
    "federation": FederationSettings,
}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Load settings from defaults, a TOML file, the environment and explicit overrides.

    A relative ``storage.path`` is resolved against the directory of the config file.
    """
    env = os.environ if env is None else env
    raw: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    base_dir = Path.cwd()
    if path is None and (Path.cwd() / "config.toml").is_file():
        path = Path.cwd() / "config.toml"
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        base_dir = path.resolve().parent
        peers_raw = data.pop("peers", [])
        for section, values in data.items():
            if section not in _SECTIONS or not isinstance(values, dict):
                raise ConfigError(f"{path}: unknown section [{section}]")
            raw[section].update(values)
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            name = f"PACS_{section.upper()}_{f.name.upper()}"
            if name in env:
                raw[section][f.name] = _from_env(name, env[name], getattr(cls(), f.name))
    for section, values in (overrides or {}).items():
        raw[section].update(values)
    built = {section: _build(cls, raw[section], section) for section, cls in _SECTIONS.items()}
    storage: StorageSettings = built["storage"]
    if not storage.path.is_absolute():
        built["storage"] = dataclasses.replace(storage, path=(base_dir / storage.path).resolve())
    built["appraisal"] = _resolve_registers(built["appraisal"], base_dir)
    built["http"] = _resolve_registers(built["http"], base_dir)
    built["dicom"] = _resolve_registers(built["dicom"], base_dir)
    built["audit"] = _resolve_registers(built["audit"], base_dir)
    built["storage"] = _resolve_registers(built["storage"], base_dir)
    built["federation"] = _resolve_registers(built["federation"], base_dir)
    peers = tuple(_peer(p, n, base_dir, env) for n, p in enumerate(peers_raw if path is not None else []))
    settings = Settings(**built, peers=peers)
    _validate(settings)
    return settings


def _resolve_registers(appraisal: Any, base_dir: Path) -> Any:
    """Paths (registers, certificates) relative to the config file; an empty path stays empty."""
    changes: dict[str, Path] = {}
    for f in dataclasses.fields(appraisal):
        value = getattr(appraisal, f.name)
        if isinstance(value, Path) and str(value) not in ("", ".") and not value.is_absolute():
            changes[f.name] = (base_dir / value).resolve()
    return dataclasses.replace(appraisal, **changes) if changes else appraisal


def _from_env(name: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text.lower() in {"1", "true", "yes", "on"}:
            return True
        if text.lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name}: expected a boolean, got {text!r}")
    if isinstance(default, tuple):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name}: expected a JSON list, got {text!r}") from exc
    return text


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"[{section}] unknown key {key!r}")
        default = getattr(defaults, key)
        try:
            kwargs[key] = _coerce(key, value, default)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[{section}] {key}: {exc}") from exc
    return cls(**kwargs)


def _coerce(key: str, value: Any, default: Any) -> Any:
    if key == "allowed_aes":
        return tuple(AllowedAE(**_ae_entry(v)) for v in value)
    if key == "destinations":
        return tuple(
            Destination(
                ae_title=v["ae_title"],
                host=v["host"],
                port=int(v["port"]),
                tls=bool(v.get("tls", False)),
                lossy=bool(v.get("lossy", False)),
            )
            for v in value
        )
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true or false, got {value!r}")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, Path):
        return Path(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            raise TypeError("expected a list")
        return tuple(value)
    return str(value)


def _ae_entry(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"ae_title": value}
    if isinstance(value, dict) and "ae_title" in value:
        entry: dict[str, Any] = {"ae_title": str(value["ae_title"]), "host": value.get("host")}
        unknown_keys = set(value) - {"ae_title", "host", "services", "certificate"}
        if unknown_keys:
            raise TypeError(f"allowed AE entry: unknown key(s) {sorted(unknown_keys)}")
        if "services" in value:
            entry["services"] = _services(value["services"])
        if value.get("certificate"):
            entry["certificate"] = str(value["certificate"])
        return entry
    raise TypeError(f"allowed AE entry must be a title or {{ae_title, host, services}}, got {value!r}")


def _services(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"services must be a list of names, got {value!r}")
    names = tuple(v.strip().lower() for v in value)
    if "all" in names:
        return SERVICES
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise TypeError(f"unknown service(s) {unknown}; known: {', '.join(SERVICES)} or all")
    return names


def _validate(settings: Settings) -> None:
    for title in [settings.dicom.ae_title, *(a.ae_title for a in settings.dicom.allowed_aes)]:
        if not title.strip() or len(title) > 16 or "\\" in title:
            raise ConfigError(f"invalid AE title {title!r} (1-16 characters, no backslash)")
    for dest in settings.dicom.destinations:
        if dest.tls and str(settings.dicom.tls_ca) in ("", "."):
            raise ConfigError(f"destination {dest.ae_title}: tls = true needs [dicom] tls_ca to verify it")
    if settings.storage.duplicate_policy not in ("keep-versions", "reject", "replace"):
        raise ConfigError("[storage] duplicate_policy must be 'keep-versions', 'reject' or 'replace'")
    if settings.http.workers < 0 or settings.dicom.workers < 0:
        raise ConfigError("[http] workers and [dicom] workers must be 0 (one per CPU core) or more")
    if not 0 < settings.http.default_query_limit <= settings.http.max_query_limit:
        raise ConfigError("[http] default_query_limit must be between 1 and max_query_limit")
    if settings.auth.enabled.lower() not in ("auto", "true", "false", "on", "off", "yes", "no", "1", "0"):
        raise ConfigError('[auth] enabled must be "auto", true or false')
    if settings.auth.token_lifetime_minutes < 1 or settings.auth.login_attempts < 1:
        raise ConfigError("[auth] token_lifetime_minutes and login_attempts must be positive")
    for section in (settings.http, settings.dicom):
        name = "http" if section is settings.http else "dicom"
        if _set(section.tls_cert) != _set(section.tls_key):
            raise ConfigError(f"[{name}] tls_cert and tls_key go together")
        for f in ("tls_cert", "tls_key", "tls_ca"):
            path = getattr(section, f, Path())
            if _set(path) and not path.is_file():
                raise ConfigError(f"[{name}] {f}: no such file {path}")
    if settings.dicom.tls_require_client_cert and not _set(settings.dicom.tls_ca):
        raise ConfigError("[dicom] tls_require_client_cert needs tls_ca (the CA of the client certificates)")
    u = settings.audit.syslog_url
    if u and not re.fullmatch(r"(udp|tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+)(:\d{1,5})?/?", u):
        raise ConfigError(
            "[audit] syslog_url must look like udp://host:514, tcp://host:601 or tls://host:6514"
        )
    a = settings.appraisal
    if a.facility_code and len(a.facility_code) != 5:
        raise ConfigError("[appraisal] facility_code (MA_CSKCB) must be 5 characters")
    if not 0 < a.default_limit <= a.max_limit:
        raise ConfigError("[appraisal] default_limit must be between 1 and max_limit")
    if not re.fullmatch(r"[+-](0\d|1[0-4])[0-5]\d", a.device_utc_offset):
        raise ConfigError("[appraisal] device_utc_offset must look like +0700")
    _validate_hl7(settings.hl7)
    _validate_commitment(settings.commitment)
    _validate_storage(settings.storage)
    _validate_federation(settings)


def _validate_storage(s: StorageSettings) -> None:
    if s.backend not in ("file", "s3"):
        raise ConfigError('[storage] backend must be "file" or "s3"')
    if s.backend == "s3" and not s.s3_bucket:
        raise ConfigError('[storage] backend = "s3" needs s3_bucket')
    if s.s3_endpoint and not re.fullmatch(r"https?://[^\s/]+/?", s.s3_endpoint):
        raise ConfigError("[storage] s3_endpoint must look like https://host:port")
    if bool(s.s3_access_key) != bool(s.s3_secret_key or _set(s.s3_secret_key_file)):
        raise ConfigError("[storage] s3_access_key and s3_secret_key (or s3_secret_key_file) go together")
    for name in ("s3_ca_file", "s3_secret_key_file"):
        path = getattr(s, name)
        if _set(path) and not path.is_file():
            raise ConfigError(f"[storage] {name}: no such file {path}")
    if min(s.s3_connect_timeout, s.s3_read_timeout, s.s3_lease_seconds, s.s3_retry_initial_seconds) <= 0:
        raise ConfigError(
            "[storage] s3 timeouts, s3_lease_seconds and s3_retry_initial_seconds must be positive"
        )
    if s.s3_retry_max_seconds < s.s3_retry_initial_seconds or s.s3_upload_concurrency < 1:
        raise ConfigError(
            "[storage] s3_retry_max_seconds must be at least s3_retry_initial_seconds, "
            "s3_upload_concurrency at least 1"
        )


def _peer(raw: Any, n: int, base_dir: Path, env: Mapping[str, str]) -> PeerSettings:
    """One ``[[peers]]`` entry; its secret read from the environment or a file (never logged)."""
    if not isinstance(raw, dict) or not raw.get("name"):
        raise ConfigError(f"[[peers]] entry {n + 1}: a table with a name is required")
    where = f"[[peers]] {str(raw['name'])[:40]!r}"
    values = dict(raw)
    matches = values.pop("match", [])
    if not isinstance(matches, list):
        raise ConfigError(f"{where}: match must be a list of tables ([[peers.match]])")
    if "secret" in values:
        raise ConfigError(f"{where}: put the secret in secret_env or secret_file, not in the file")
    peer: PeerSettings = _build(PeerSettings, values, f"peers {raw['name']}")
    peer = _resolve_registers(peer, base_dir)
    out: list[PeerMatch] = []
    for m in matches:
        if not isinstance(m, dict) or not m.get("system"):
            raise ConfigError(f"{where}: each match needs a system (e.g. urn:vn:cccd)")
        out.append(_build(PeerMatch, m, f"peers {raw['name']} match"))
    secret = ""
    if peer.secret_env:
        if peer.secret_env not in env:
            raise ConfigError(f"{where}: secret_env {peer.secret_env} is not set")
        secret = env[peer.secret_env]
    elif _set(peer.secret_file):
        try:
            secret = peer.secret_file.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(f"{where}: cannot read secret_file {peer.secret_file}") from exc
    return dataclasses.replace(peer, match=tuple(out), secret=secret)


def _validate_federation(settings: Settings) -> None:
    f = settings.federation
    if f.deadline_seconds <= 0 or f.cache_mb < 1 or f.prefetch_poll_seconds <= 0:
        raise ConfigError(
            "[federation] deadline_seconds, cache_mb and prefetch_poll_seconds must be positive"
        )
    if f.prefetch_max_studies < 0 or f.prefetch_attempts < 1 or f.prefetch_lease_seconds <= 0:
        raise ConfigError("[federation] prefetch_max_studies >= 0, prefetch_attempts and lease positive")
    names: set[str] = set()
    for p in settings.peers:
        where = f"[[peers]] {p.name!r}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", p.name) or p.name in names:
            raise ConfigError(f"{where}: names are unique, letters, digits, '.', '_' or '-'")
        names.add(p.name)
        if p.kind not in PEER_KINDS:
            raise ConfigError(f"{where}: kind must be one of {', '.join(PEER_KINDS)}")
        if p.kind == "dimse":
            if not (p.ae_title and p.host and 0 < p.port < 65536) or len(p.ae_title) > 16:
                raise ConfigError(f"{where}: a dimse peer needs ae_title (1-16), host and port")
        elif not re.fullmatch(r"https?://[^\s/]+(/\S*)?", p.url):
            raise ConfigError(f"{where}: url must be an http:// or https:// URL")
        if p.auth not in ("none", "basic", "bearer"):
            raise ConfigError(f"{where}: auth must be none, basic or bearer")
        if p.auth != "none" and not p.secret:
            raise ConfigError(f"{where}: auth = {p.auth!r} needs secret_env or secret_file")
        if p.auth == "basic" and not p.username:
            raise ConfigError(f"{where}: auth = 'basic' needs a username")
        if p.timeout_seconds <= 0:
            raise ConfigError(f"{where}: timeout_seconds must be positive")
        if _set(p.tls_ca) and not p.tls_ca.is_file():
            raise ConfigError(f"{where}: tls_ca: no such file {p.tls_ca}")
        if p.kind != "pacs" and not p.match:
            raise ConfigError(
                f"{where}: a {p.kind} peer needs [[peers.match]] entries (how it keys patients)"
            )
        for m in p.match:
            if m.attribute not in MATCH_ATTRIBUTES:
                raise ConfigError(f"{where}: match attribute must be one of {', '.join(MATCH_ATTRIBUTES)}")
            if m.issuer == "*" and m.system not in NATIONAL_SYSTEMS:
                raise ConfigError(
                    f"{where}: issuer = '*' (any issuer) only for {', '.join(NATIONAL_SYSTEMS)};"
                    f" {m.system} values are unique only with their issuer"
                )


def _validate_commitment(c: CommitmentSettings) -> None:
    if c.report_delay_seconds < 0 or c.same_association_wait_seconds < 0:
        raise ConfigError(
            "[commitment] report_delay_seconds and same_association_wait_seconds must be 0 or more"
        )
    if c.retry_initial_seconds <= 0 or c.retry_max_seconds < c.retry_initial_seconds:
        raise ConfigError("[commitment] retry_initial_seconds must be positive and at most retry_max_seconds")
    if c.max_attempts < 1 or c.lease_seconds <= 0 or c.poll_seconds <= 0:
        raise ConfigError("[commitment] max_attempts, lease_seconds and poll_seconds must be positive")


def _validate_hl7(h: Hl7Settings) -> None:
    import ipaddress

    if not 0 <= h.port <= 65535:
        raise ConfigError("[hl7] port must be 0 (off) to 65535")
    if h.max_message_kb < 1 or h.max_connections < 1:
        raise ConfigError("[hl7] max_message_kb and max_connections must be positive")
    if h.idle_timeout_seconds <= 0 or h.message_timeout_seconds <= 0:
        raise ConfigError("[hl7] idle_timeout_seconds and message_timeout_seconds must be positive")
    for net in h.allowed_hosts:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ConfigError(f"[hl7] allowed_hosts: {net!r} is not an address or network") from exc


def _set(path: Path) -> bool:
    """A configured (non-empty) path."""
    return str(path) not in ("", ".")
