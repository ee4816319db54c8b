"""A generated month of imaging for the appraisal tests and ``bench/appraisal.py``.

Rows go straight into the index (patients, studies, series, instances, MPPS; bulk inserts), then
the service lines are rebuilt, as after an upgrade. November 2026, 24 devices (single-image
X-ray, multi-phase CT, MR, ultrasound, mammography, DSA; three of them not in the device register,
one recoded mid-month, one taken out of service on the 20th), Vietnamese names, MPPS steps with
and without images, and a few patients with two same-service studies on one day.
"""

from __future__ import annotations

import base64
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from pacs.index.schema import instances, mpps, patients, series, studies

YEAR, MONTH = 2026, 11
DAYS = 30
FACILITY = "01001"
FAMILY = ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Võ", "Đặng", "Bùi", "Đỗ", "Hồ", "Ngô", "Dương")
MIDDLE = ("Văn", "Thị", "Minh", "Quốc", "Thu", "Ngọc", "Hoàng", "Đức", "Thanh", "Mỹ")
GIVEN = ("An", "Bình", "Cường", "Dũng", "Hằng", "Lan", "Phúc", "Ánh", "Bảo", "Hùng", "Tùng", "Linh", "Ngọc")
#: Per modality: (description, service code, series shape: list of image counts at scale 1).
KINDS: dict[str, tuple[str, str, list[int]]] = {
    "DX": ("X-quang ngực thẳng", "18.0067.0028", [1]),
    "CR": ("X-quang cột sống thắt lưng", "18.0072.0001", [1]),
    "CT": ("CT bụng 3 thì", "18.0040.0001", [8, 10, 10]),
    "MR": ("MRI cột sống thắt lưng", "18.0100.0001", [6, 6, 6, 6]),
    "US": ("Siêu âm ổ bụng", "18.0010.0001", [5]),
    "MG": ("Chụp nhũ ảnh", "18.0200.0001", [4]),
    "XA": ("Chụp mạch DSA", "18.0300.0001", [10, 10]),
}
SCALED = {"CT", "MR", "US", "XA"}  # image counts multiplied by ``scale``


@dataclass(frozen=True)
class Device:
    """One device as DICOM names it, and how the register declares it."""

    modality: str
    manufacturer: str
    model: str
    serial: str
    station: str
    registered: bool = True
    department: str = "K01"


def _devices() -> list[Device]:
    out = [Device("DX", "Fujifilm", "FDR Smart X", f"XR-{i:02d}", f"DR{i:02d}") for i in range(1, 5)]
    out += [
        Device("DX", "Carestream", "DRX-Evolution", f"XR-{i:02d}", f"DR{i:02d}", True, "K02") for i in (5, 6)
    ]
    out += [Device("CR", "Agfa", "CR 30-X", f"CR-{i:02d}", f"CR{i:02d}") for i in (1, 2)]
    out += [Device("CT", "Siemens", "SOMATOM go.Up", f"CT-{i:02d}", f"CT{i:02d}") for i in (1, 2)]
    out += [Device("CT", "GE", "Revolution EVO", f"CT-{i:02d}", f"CT{i:02d}") for i in (3, 4)]
    out += [Device("MR", "Siemens", "MAGNETOM Sempra", f"MR-{i:02d}", f"MR{i:02d}") for i in (1, 2)]
    out += [Device("US", "GE", "LOGIQ P9", f"US-{i:02d}", f"SA{i:02d}") for i in (1, 2)]
    out += [Device("US", "Philips", "EPIQ 7", "US-03", "SA03", True, "K03")]
    out += [Device("US", "Mindray", "DC-70", f"US-{i:02d}", f"SA{i:02d}", True, "K02") for i in (4, 5)]
    out += [Device("MG", "Hologic", "Selenia Dimensions", "MG-01", "MG01")]
    out += [Device("XA", "Philips", "Azurion 7", "DSA-01", "DSA01", True, "K03")]
    out += [
        Device("US", "Mindray", "Resona 7", "US-99", "SA99", registered=False),
        Device("DX", "Shimadzu", "MobileDaRt", "", "PORTABLE", registered=False),
        Device("CT", "Canon", "Aquilion Lightning", "CT-99", "CT99", registered=False),
    ]
    return out


DEVICES = _devices()
GROUP = {"DX": "XQ", "CR": "XQ", "CT": "CL", "MR": "MRI", "US": "SA", "MG": "MMO", "XA": "DSA"}
RECODED = "XR-01"  # XQ.1.XR-01 to 2026-11-15, XQ.2.XR-01B from 2026-11-16
RETIRED = "CT-04"  # in force to 2026-11-20


def register_csv() -> str:
    """The device register of the generated month (declared codes, departments, periods)."""
    lines = [
        "serial_number,station_name,machine_group,funding_source,asset_code,note,ma_may,ma_khoa,valid_from,valid_to"
    ]
    for d in DEVICES:
        if not d.registered:
            continue
        g = GROUP[d.modality]
        if d.serial == RECODED:
            lines.append(f"{d.serial},{d.station},,,,,{g}.1.{d.serial},{d.department},2026-01-01,2026-11-15")
            lines.append(f"{d.serial},{d.station},,,,thay mã,{g}.2.{d.serial}B,{d.department},2026-11-16,")
        elif d.serial == RETIRED:
            lines.append(f"{d.serial},{d.station},{g},1,,,,{d.department},2025-06-01,2026-11-20")
        else:
            lines.append(f"{d.serial},{d.station},{g},1,,,,{d.department},,")
    return "\n".join(lines) + "\n"


def services_csv() -> str:
    """The service register: each description -> its service code."""
    rows = ["match_kind,match,service_code,service_name"]
    rows += [f"study_description,{desc},{code},{desc}" for desc, code, _ in KINDS.values()]
    return "\n".join(rows) + "\n"


def machine_code(d: Device, day: int) -> str:
    """The MA_MAY the register gives device ``d`` on day ``day`` of the month ("" when none)."""
    if not d.registered or (d.serial == RETIRED and day > 20):
        return ""
    if d.serial == RECODED:
        return f"XQ.1.{d.serial}" if day <= 15 else f"XQ.2.{d.serial}B"
    return f"{GROUP[d.modality]}.1.{d.serial}"


@dataclass
class Study:
    """What the generator put in the index for one study."""

    n: int
    uid: str
    accession: str
    patient: int
    day: int
    minute: int  # minutes after 07:00
    device: Device
    images: int
    series: int

    @property
    def date(self) -> str:
        return f"{YEAR}{MONTH:02d}{self.day:02d}"

    @property
    def service_code(self) -> str:
        return KINDS[self.device.modality][1]

    @property
    def description(self) -> str:
        return KINDS[self.device.modality][0]

    def local(self) -> datetime:
        return datetime(YEAR, MONTH, self.day, 7, 0) + timedelta(minutes=self.minute)

    def patient_id(self) -> str:
        return f"BN{self.patient:06d}"


@dataclass
class Month:
    """The generated month."""

    studies: list[Study] = field(default_factory=list)
    steps_without_images: int = 0
    instances: int = 0
    twins: list[tuple[Study, Study]] = field(default_factory=list)  # same patient, service and day

    def by_accession(self) -> dict[str, Study]:
        return {s.accession: s for s in self.studies}


def patient_name(p: int) -> str:
    return f"{FAMILY[p % len(FAMILY)]}^{MIDDLE[(p // 13) % len(MIDDLE)]} {GIVEN[(p // 7) % len(GIVEN)]}"


def citizen_id(p: int) -> str:
    return f"0791{p:08d}"


def card(p: int) -> str:
    return f"HC401{p:010d}"


def plan(n_studies: int = 10_000, n_patients: int = 3_000, scale: float = 1.0, seed: int = 16) -> Month:
    """Which study goes where (no database)."""
    rnd = random.Random(seed)
    weights = {"DX": 40, "CR": 8, "CT": 18, "MR": 7, "US": 20, "MG": 4, "XA": 3}
    by_mod: dict[str, list[Device]] = {}
    for d in DEVICES:
        by_mod.setdefault(d.modality, []).append(d)
    mods = list(weights)
    month = Month()
    for n in range(n_studies):
        p, k = n % n_patients, n // n_patients
        day = (p + 7 * k) % DAYS + 1
        mod = rnd.choices(mods, [weights[m] for m in mods])[0]
        dev = by_mod[mod][n % len(by_mod[mod])]
        shape = KINDS[mod][2]
        counts = [max(1, round(c * scale)) if mod in SCALED else c for c in shape]
        s = Study(
            n,
            f"1.2.826.0.1.3680043.10.16.{n + 1}",
            f"A26{n + 1:06d}",
            p,
            day,
            (n * 7) % 600,
            dev,
            sum(counts),
            len(counts),
        )
        month.studies.append(s)
    # twins: a second same-service study of the same patient on the same day (ambiguous by patient)
    for t in range(5):
        first = next(s for s in month.studies[1000 + t * 97 :] if s.device.modality == "DX")
        n = len(month.studies)
        twin = Study(
            n,
            f"1.2.826.0.1.3680043.10.16.{n + 1}",
            f"A26{n + 1:06d}",
            first.patient,
            first.day,
            first.minute + 20,
            first.device,
            1,
            1,
        )
        month.studies.append(twin)
        month.twins.append((first, twin))
    month.instances = sum(s.images for s in month.studies)
    return month


def insert(engine: Engine, month: Month, *, steps_without_images: int = 150, batch: int = 20_000) -> None:
    """Bulk-insert ``month`` into an empty, migrated index."""
    t0 = time.perf_counter()
    now = datetime(YEAR, MONTH, DAYS, 23, tzinfo=UTC)
    used = sorted({s.patient for s in month.studies})
    with engine.begin() as conn:
        conn.execute(
            patients.insert(),
            [
                {
                    "id": p + 1,
                    "identity": f"BN{p:06d}\\",
                    "patient_id": f"BN{p:06d}",
                    "patient_name": patient_name(p),
                    "other_patient_ids": f"{citizen_id(p)}\\{card(p)}",
                }
                for p in used
            ],
        )
        st: list[dict[str, Any]] = []
        se: list[dict[str, Any]] = []
        mp: list[dict[str, Any]] = []
        inst: list[dict[str, Any]] = []
        series_id = 0
        iid = 0
        for s in month.studies:
            start = s.local()
            d = s.device
            st.append(
                {
                    "id": s.n + 1,
                    "patient_fk": s.patient + 1,
                    "created_at": now,
                    "updated_at": now,
                    "study_instance_uid": s.uid,
                    "study_date": s.date,
                    "study_time": start.strftime("%H%M%S"),
                    "accession_number": s.accession,
                    "study_description": s.description,
                    "referring_physician_name": "Trần^Thị Bình",
                    "name_of_physicians_reading_study": "Lê^Văn Cường",
                    "number_of_study_related_series": s.series,
                    "number_of_study_related_instances": s.images,
                }
            )
            shape = _split(s.images, s.series)
            for k, count in enumerate(shape, 1):
                series_id += 1
                se.append(
                    {
                        "id": series_id,
                        "study_fk": s.n + 1,
                        "series_instance_uid": f"{s.uid}.{k}",
                        "series_number": k,
                        "modality": d.modality,
                        "series_date": s.date,
                        "series_time": start.strftime("%H%M%S"),
                        "device_serial_number": d.serial or None,
                        "station_name": d.station,
                        "manufacturer": d.manufacturer,
                        "manufacturer_model_name": d.model,
                        "operators_name": "Phạm^Thu",
                        "performing_physician_name": "Ngô^Thanh Tùng",
                        "number_of_series_related_instances": count,
                    }
                )
                for i in range(count):
                    iid += 1
                    acq = start + timedelta(seconds=90 * (k - 1) + 2 * i)
                    inst.append(
                        {
                            "id": iid,
                            "series_fk": series_id,
                            "sop_instance_uid": f"{s.uid}.{k}.{i + 1}",
                            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                            "instance_number": i + 1,
                            "acquisition_date": s.date,
                            "acquisition_time": acq.strftime("%H%M%S"),
                            "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                            "blob_key": f"k{iid}",
                            "size": 1000,
                            "sha256": "0" * 64,
                            "received_at": (acq - timedelta(hours=7) + timedelta(seconds=30)).replace(
                                tzinfo=UTC
                            ),
                            "calling_ae": f"{d.station}AE"[:16],
                        }
                    )
                    if len(inst) >= batch:
                        _flush(conn, st, se, inst)
            if s.n % 3 == 0:
                mp.append(_step(len(mp) + 1, s, "COMPLETED", now))
        for j in range(steps_without_images):
            s = month.studies[j * 53 % len(month.studies)]
            ghost = Study(
                -1,
                f"1.2.826.0.1.3680043.10.17.{j + 1}",
                f"P26{j + 1:06d}",
                s.patient,
                s.day,
                s.minute,
                s.device,
                0,
                0,
            )
            mp.append(_step(len(mp) + 1, ghost, "DISCONTINUED" if j % 2 else "IN PROGRESS", now))
        month.steps_without_images = steps_without_images
        _flush(conn, st, se, inst)
        conn.execute(mpps.insert(), mp)
        if conn.dialect.name == "postgresql":
            for t in ("patients", "studies", "series", "instances", "mpps"):
                conn.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{t}','id'), (SELECT max(id) FROM {t}))")
                )
    month.insert_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]


def _split(total: int, parts: int) -> list[int]:
    base = total // parts
    return [base + (1 if i < total - base * parts else 0) for i in range(parts)]


def _flush(conn: Any, st: list[dict[str, Any]], se: list[dict[str, Any]], inst: list[dict[str, Any]]) -> None:
    for table, rows in ((studies, st), (series, se), (instances, inst)):
        if rows:
            conn.execute(table.insert(), rows)
            rows.clear()


def _step(i: int, s: Study, status: str, now: datetime) -> dict[str, Any]:
    start = s.local()
    ended = status != "IN PROGRESS"
    return {
        "id": i,
        "sop_instance_uid": f"1.2.826.0.1.3680043.10.18.{i}",
        "status": status,
        "start_date": s.date,
        "start_time": start.strftime("%H%M%S"),
        "end_date": s.date if ended else None,
        "end_time": (start + timedelta(minutes=12)).strftime("%H%M%S") if ended else None,
        "performed_station_name": s.device.station,
        "modality": s.device.modality,
        "study_instance_uid": s.uid,
        "accession_number": s.accession,
        "patient_id": s.patient_id(),
        "attributes": "{}",
        "created_at": now,
        "updated_at": now,
    }


def write_registers(folder: Path) -> dict[str, Path]:
    """The month's device and service registers, and the example staff register, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    devices, services = folder / "devices.csv", folder / "services.csv"
    devices.write_text(register_csv(), encoding="utf-8")
    services.write_text(services_csv(), encoding="utf-8")
    return {"devices": devices, "services": services}


def config_toml(storage: Path, db_url: str, registers: dict[str, Path], staff: Path) -> str:
    """A config file for a runtime over the generated month."""
    return (
        f'[storage]\npath = "{storage}"\n[database]\nurl = "{db_url}"\n[appraisal]\n'
        f'facility_code = "{FACILITY}"\ndevice_register = "{registers["devices"]}"\n'
        f'service_register = "{registers["services"]}"\nstaff_register = "{staff}"\n'
    )


# ---------------------------------------------------------------------- the HIS claim of the month


def _line(s: Study, stt: int, *, accession: bool, day_shift: int = 0, code: str | None = None) -> str:
    day = s.day + day_shift
    when = f"2026{11:02d}{day:02d}" if day <= 30 else f"202612{day - 30:02d}"
    t = s.local()
    fields = {
        "MA_LK": f"LK{s.patient:06d}-{s.day:02d}",
        "STT": str(stt),
        "MA_DICH_VU": code or s.service_code,
        "TEN_DICH_VU": s.description,
        "MA_KHOA": s.device.department,
        "MA_BAC_SI": "000123/BYT-CCHN",
        "NGAY_YL": f"{when}{t:%H%M}",
        "NGAY_TH_YL": f"{when}{t:%H%M}",
        "NGAY_KQ": f"{when}{(t.hour + 2) % 24:02d}{t:%M}",
        "MA_MAY": "",
    }
    if accession:
        fields["PACS_SO_PHIEU_CHI_DINH"] = s.accession
    return "<CHI_TIET_DVKT>" + "".join(f"<{k}>{v}</{k}>" for k, v in fields.items()) + "</CHI_TIET_DVKT>"


def xml3(lines: list[str]) -> bytes:
    body = "".join(lines)
    return (
        "<?xml version='1.0' encoding='utf-8'?><CHITIEU_CHITIET_DVKT_VTYT><DSACH_CHI_TIET_DVKT>"
        f"{body}</DSACH_CHI_TIET_DVKT></CHITIEU_CHITIET_DVKT_VTYT>"
    ).encode()


def _xml1(ma_lks: dict[str, int]) -> bytes:
    rows = []
    for ma_lk, p in ma_lks.items():
        ids = f"<MA_BN>BN{p:06d}</MA_BN>" if p % 2 else f"<SO_CCCD>{citizen_id(p)}</SO_CCCD>"
        rows.append(f"<TONG_HOP><MA_LK>{ma_lk}</MA_LK>{ids}<MA_THE_BHYT>{card(p)}</MA_THE_BHYT></TONG_HOP>")
    return f"<?xml version='1.0' encoding='utf-8'?><DSACH_TONG_HOP>{''.join(rows)}</DSACH_TONG_HOP>".encode()


def _envelope(xml1: bytes, xml3: bytes) -> bytes:
    files = "".join(
        f"<FILEHOSO><LOAIHOSO>{kind}</LOAIHOSO><NOIDUNGFILE>{base64.b64encode(data).decode()}</NOIDUNGFILE></FILEHOSO>"
        for kind, data in (("XML1", xml1), ("XML3", xml3))
    )
    return (
        "<?xml version='1.0' encoding='utf-8'?><GIAMDINHHS>"
        "<THONGTINDONVI><MACSKCB>01001</MACSKCB></THONGTINDONVI>"
        f"<THONGTINHOSO><DANHSACHHOSO><HOSO>{files}</HOSO></DANHSACHHOSO></THONGTINHOSO></GIAMDINHHS>"
    ).encode()


@dataclass
class Claim:
    """A generated claim and what each line should get."""

    body: bytes
    expected: list[tuple[str, str | None]]  # per claim line: (category, record id or None)
    pacs_only: set[str]  # record ids
    outside: int
    moved: dict[int, str]  # position of a line moved to another day -> its study's record id


def make_claim(month: Month) -> Claim:
    """The month's claim with its deliberate differences (see the module notes)."""
    twins = {s.n for pair in month.twins for s in pair}
    dropped = {s.n for s in month.studies[100:125]}
    moved_plain = {s.n for s in month.studies[200:210]}
    moved_acc = {s.n for s in month.studies[300:305]}
    lines: list[str] = []
    expected: list[tuple[str, str | None]] = []
    ma_lks: dict[str, int] = {}
    moved: dict[int, str] = {}
    for s in month.studies:
        if s.n in dropped:
            continue
        ma_lks[f"LK{s.patient:06d}-{s.day:02d}"] = s.patient
        rid = f"acc:{s.accession}"
        if s.n in twins:
            lines.append(_line(s, len(lines) + 1, accession=False))
            expected.append(("ambiguous", None))
        elif s.n in moved_plain:
            lines.append(_line(s, len(lines) + 1, accession=False, day_shift=2))
            expected.append(("not_found", None))
            moved[len(lines)] = rid
        elif s.n in moved_acc:
            lines.append(_line(s, len(lines) + 1, accession=True, day_shift=3))
            expected.append(("matched", rid))
        else:
            lines.append(_line(s, len(lines) + 1, accession=s.n < 2000))
            expected.append(("matched", rid))
    # claim lines for studies that do not exist: a service the patient did not have that day
    for s in month.studies[400:410]:
        other = "18.0300.0001" if s.service_code != "18.0300.0001" else "18.0200.0001"
        lines.append(_line(s, len(lines) + 1, accession=False, code=other))
        expected.append(("not_found", None))
    # non-imaging lines (a laboratory test): counted, not listed
    for s in month.studies[500:507]:
        lines.append(_line(s, len(lines) + 1, accession=False, code="22.0001.0001"))
    pacs_only = {f"acc:{s.accession}" for s in month.studies if s.n in dropped | moved_plain | twins}
    return Claim(_envelope(_xml1(ma_lks), xml3(lines)), expected, pacs_only, 7, moved)
