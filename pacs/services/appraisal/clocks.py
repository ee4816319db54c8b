"""Device clocks as observed: offsets between the device's acquisition times and their receipt.

Facts only: the offset of each series (its last image acquisition time on the device minus the
time the archive received that image), the time-synchronised flags the device wrote
(AcquisitionTimeSynchronized, PS3.3 C.7.4.1.1.1) and whether offsets are beyond the configured
tolerance. Never a verdict on a device or a service.
"""

from __future__ import annotations

import statistics
from datetime import datetime, timezone
from typing import Any

from pacs.services.appraisal.people import names
from pacs.services.appraisal.registers import Registers
from pacs.services.appraisal.times import as_utc, iso, series_times

OFFSET_BASIS = (
    "last image acquisition time on the device minus the time the archive received it; includes "
    "transfer delay (negative = device behind or images sent later)"
)


def clock_facts(
    clock: dict[str, Any], s: dict[str, Any], last: datetime | None, r_last: datetime | None, tol: int
) -> None:
    """Fold one series' clock values into a device's ``clock`` facts (in a record)."""
    if s["tz_min"]:
        clock["timezone_offset_from_utc"] = (
            s["tz_min"] if s["tz_min"] == s["tz_max"] else f"{s['tz_min']}..{s['tz_max']}"
        )
    sync = {v for v in (s["sync_min"], s["sync_max"]) if v}
    if sync:
        clock["acquisition_time_synchronized"] = "/".join(sorted(sync))
        if sync == {"Y"}:
            clock["time_synchronised"] = clock["time_synchronised"] is not False
        elif "N" in sync:
            clock["time_synchronised"] = False
    if last and r_last:
        offset = round((last - r_last).total_seconds(), 1)
        prev = clock["clock_offset_seconds"]
        clock["clock_offset_seconds"] = offset if prev is None else max(prev, offset)
        clock["clock_offset_beyond_tolerance"] = abs(clock["clock_offset_seconds"]) > tol
        clock["device_clock_ahead_of_archive"] = clock["clock_offset_seconds"] > tol


def device_key(s: dict[str, Any]) -> tuple[Any, ...]:
    """What tells one device from another in a series summary."""
    return (
        s["modality"],
        s["manufacturer"],
        s["manufacturer_model_name"],
        s["device_serial_number"],
        s["station_name"],
    )


def device_clocks(
    rows: list[dict[str, Any]],
    device_filter: str,
    registers: Registers,
    device_tz: timezone,
    assumed: str,
    tol: int,
) -> list[dict[str, Any]]:
    """Per device (modality, manufacturer, model, serial, station): the clock facts of its series.

    ``rows`` are per-series summaries in receipt order; ``device_filter`` keeps the devices with
    that serial number or station name (all when empty).
    """
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for s in rows:
        if device_filter and device_filter not in (s["device_serial_number"], s["station_name"]):
            continue
        key = device_key(s)
        d = out.get(key)
        if d is None:
            d = out[key] = {
                "modality": s["modality"],
                "manufacturer": s["manufacturer"],
                "manufacturer_model_name": s["manufacturer_model_name"],
                "device_serial_number": s["device_serial_number"],
                "station_name": s["station_name"],
                "sending_ae_titles": [],
                "_offsets": [],
                "_sync": set(),
                "_tz": set(),
                "time_source": None,
                "series_count": 0,
            }
        d["series_count"] += 1
        d["sending_ae_titles"] = names(*d["sending_ae_titles"], s["ae_min"], s["ae_max"])
        d["_sync"].update(v for v in (s["sync_min"], s["sync_max"]) if v)
        d["_tz"].update(v for v in (s["tz_min"], s["tz_max"]) if v)
        d["time_source"] = d["time_source"] or s["time_source"]
        _first, last, _src, _tzs = series_times(s, device_tz, assumed)
        r_last = as_utc(s["last_received"])
        if last and r_last:
            d["_offsets"].append((r_last, round((last - r_last).total_seconds(), 1)))
    return [_device(d, registers, tol) for d in out.values()]


def _device(d: dict[str, Any], registers: Registers, tol: int) -> dict[str, Any]:
    offsets = d.pop("_offsets")
    sync = d.pop("_sync")
    tz = sorted(d.pop("_tz"))
    values = [o for _t, o in offsets]
    median = statistics.median(values) if values else None
    latest = offsets[-1] if offsets else None
    return {
        **d,
        "machine_code": registers.machine_code(d["device_serial_number"], d["station_name"]).current or None,
        "clock": {
            "samples": len(values),
            "clock_offset_median_seconds": median,
            "clock_offset_latest_seconds": latest[1] if latest else None,
            "latest_received_at": iso(latest[0]) if latest else None,
            "clock_offset_min_seconds": min(values) if values else None,
            "clock_offset_max_seconds": max(values) if values else None,
            "clock_offset_basis": OFFSET_BASIS,
            "tolerance_seconds": tol,
            "clock_offset_beyond_tolerance": abs(median) > tol if median is not None else None,
            "latest_clock_offset_beyond_tolerance": abs(latest[1]) > tol if latest else None,
            "acquisition_time_synchronized": "/".join(sorted(sync)) or None,
            "time_synchronised": (True if sync == {"Y"} else False if "N" in sync else None),
            "timezone_offsets_from_utc": tz,
        },
    }
