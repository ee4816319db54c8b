"""Device clocks as observed: receive delays, and a clock offset only where the evidence shows one.

Per series the archive knows the acquisition time the device wrote (its best source:
:func:`.times.series_times`) and when it received the images. Their difference is the **receive
delay** (thời gian nhận): the time between the acquisition time the device wrote and the archive
receiving the image. It includes the time the device took to send, so a device that sends late has
a long receive delay with a correct clock: a receive delay is a fact, never a clock offset or a
device fault.

An image cannot reach the archive before it was acquired, so a receive delay below zero shows that
the device's clock (or the offset it writes) is ahead of the archive's by at least that much
(``clock_ahead_at_least_seconds``). A clock behind cannot be told from a late sending and is never
inferred: ``clock_ahead_beyond_tolerance`` is true only when shown, else null (not shown either
way). The time-synchronised flags the device wrote (AcquisitionTimeSynchronized, PS3.3
C.7.4.1.1.1) are reported as written. Never a verdict on a device or a service.

Compatibility (API v1, issue 16): ``clock_offset_seconds`` (records) and
``clock_offset_{median,latest,min,max}_seconds`` (devices), which were device time minus receipt,
are replaced by ``receive_delay_min_seconds`` and ``receive_delay_{median,latest,min,max}_seconds``
(receipt minus device time: the sign is reversed); ``device_clock_ahead_of_archive`` and
``latest_clock_offset_beyond_tolerance`` by ``clock_ahead_beyond_tolerance`` and
``latest_clock_ahead_beyond_tolerance``; ``clock_offset_basis`` now explains the clock evidence and
``receive_delay_basis`` the delay. ``clock_offset_beyond_tolerance`` is kept, deprecated, as an alias
of ``clock_ahead_beyond_tolerance``: it is no longer true (nor false) for a device that only sends late.
"""

from __future__ import annotations

import statistics
from datetime import datetime, timezone
from typing import Any

from pacs.services.appraisal.people import names
from pacs.services.appraisal.registers import Registers
from pacs.services.appraisal.times import as_utc, iso, series_times

RECEIVE_DELAY_BASIS = (
    "receive delay (thời gian nhận): time the archive received the last image of a series minus the "
    "last acquisition time the device wrote in it; includes the time the device took to send, so it "
    "is not a clock offset"
)
OFFSET_BASIS = (
    "shown only by a device-written acquisition time later than the archive's receipt of the image "
    "(an image cannot arrive before it is acquired): the device clock, or the offset it writes, is then "
    "ahead of the archive clock by at least that much; a clock behind cannot be told from a late "
    "sending and is never inferred (null = not shown either way)"
)


def receive_delay(last: datetime | None, received: datetime | None) -> float | None:
    """Archive receipt minus the device-written acquisition time, in seconds (None if either is missing)."""
    if last is None or received is None:
        return None
    return round((received - last).total_seconds(), 1)


def clock_evidence(smallest_delay: float | None, tol: int) -> dict[str, Any]:
    """What the smallest receive delay shows about the device clock (see the module notes)."""
    ahead = -smallest_delay if smallest_delay is not None and smallest_delay < 0 else None
    beyond = True if ahead is not None and ahead > tol else None
    return {
        "clock_ahead_at_least_seconds": ahead,
        "clock_offset_basis": OFFSET_BASIS,
        "tolerance_seconds": tol,
        "clock_ahead_beyond_tolerance": beyond,
        "clock_offset_beyond_tolerance": beyond,  # deprecated alias (API v1 compatibility)
    }


def clock_facts(clock: dict[str, Any], s: dict[str, Any], delay: float | None, tol: int) -> None:
    """Fold one series' clock values and receive delay into a device's ``clock`` facts (in a record)."""
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
    if delay is not None:
        prev = clock["receive_delay_min_seconds"]
        clock["receive_delay_min_seconds"] = delay if prev is None else min(prev, delay)
        clock.update(clock_evidence(clock["receive_delay_min_seconds"], tol))


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
                "_delays": [],
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
        _first, last, _src, _tz_first, _tz_last = series_times(s, device_tz, assumed)
        r_last = as_utc(s["last_received"])
        delay = receive_delay(last, r_last)
        if r_last is not None and delay is not None:
            d["_delays"].append((r_last, delay))
    return [_device(d, registers, tol) for d in out.values()]


def _device(d: dict[str, Any], registers: Registers, tol: int) -> dict[str, Any]:
    delays = d.pop("_delays")
    sync = d.pop("_sync")
    tz = sorted(d.pop("_tz"))
    values = [v for _t, v in delays]
    latest = delays[-1] if delays else None
    latest_ahead = clock_evidence(latest[1], tol) if latest else None
    return {
        **d,
        "machine_code": registers.machine_code(d["device_serial_number"], d["station_name"]).current or None,
        "clock": {
            "samples": len(values),
            "receive_delay_median_seconds": statistics.median(values) if values else None,
            "receive_delay_latest_seconds": latest[1] if latest else None,
            "latest_received_at": iso(latest[0]) if latest else None,
            "receive_delay_min_seconds": min(values) if values else None,
            "receive_delay_max_seconds": max(values) if values else None,
            "receive_delay_basis": RECEIVE_DELAY_BASIS,
            **clock_evidence(min(values) if values else None, tol),
            "latest_clock_ahead_beyond_tolerance": (
                latest_ahead["clock_ahead_beyond_tolerance"] if latest_ahead else None
            ),
            "acquisition_time_synchronized": "/".join(sorted(sync)) or None,
            "time_synchronised": (True if sync == {"Y"} else False if "N" in sync else None),
            "timezone_offsets_from_utc": tz,
        },
    }
