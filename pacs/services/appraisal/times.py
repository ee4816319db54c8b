"""Device and archive times: DICOM DA/TM/DT values -> aware instants, and the forms records print.

Device times are read in the offset the images carry (TimezoneOffsetFromUTC, or the offset inside
AcquisitionDateTime), else in the configured device offset, and each says which; MPPS times (DA +
TM, no offset) are always in the configured offset, labelled as assumed. Archive times are UTC.
A device acquisition span is measured only from two different image acquisition times; otherwise
it is ``unknown`` with the reason, never 0. Nothing here judges a time: it only reads and prints
it (PS3.5 6.2 value representations DA, TM, DT).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from pacs.config import AppraisalSettings

VIETNAM = timezone(timedelta(hours=7))
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")


def parse_offset(text: str | None) -> timezone | None:
    """``+0700`` -> a fixed offset; None for an empty or malformed value."""
    m = re.fullmatch(r"([+-])(\d{2})(\d{2})", (text or "").strip())
    if not m:
        return None
    delta = timedelta(hours=int(m[2]), minutes=int(m[3]))
    return timezone(-delta if m[1] == "-" else delta)


@lru_cache(maxsize=65536)
def parse_dicom_datetime(text: str | None, default_tz: timezone) -> tuple[datetime, bool] | None:
    """A DICOM DT (or DA+TM concatenation) -> (aware datetime, whether it carried its own offset)."""
    if text and len(text) == 14 and text.isascii() and text.isdigit():  # YYYYMMDDHHMMSS: most values
        try:
            value = datetime(
                int(text[:4]),
                int(text[4:6]),
                int(text[6:8]),
                int(text[8:10]),
                int(text[10:12]),
                int(text[12:]),
                tzinfo=default_tz,
            )
        except ValueError:
            return None
        return value, False
    text = (text or "").strip().replace(":", "").replace("-", "", 2) if text else ""
    if not text:
        return None
    m = _DT.match(text)
    if not m:
        return None
    year, month, day, hour, minute, sec, frac, off = m.groups()
    try:
        value = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(sec or 0),
            int((frac or ".0")[1:].ljust(6, "0")),
        )
    except ValueError:
        return None
    tz = parse_offset(off)
    return value.replace(tzinfo=tz or default_tz), tz is not None


def as_utc(value: datetime | str | None) -> datetime | None:
    """An archive time as an aware UTC datetime (naive values are UTC, as the index stores them)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_iso(value: datetime | str | None) -> str | None:
    """ISO-8601 in UTC of an archive time (naive values are UTC, as the index stores them)."""
    if type(value) is datetime and value.tzinfo is None:
        return value.isoformat() + "+00:00"
    return iso(as_utc(value))


def iso(value: datetime | None) -> str | None:
    """ISO-8601 with offset (device times in their own offset, archive times in UTC).

    Not memoised: aware datetimes of the same instant in different offsets are equal and hash
    alike, so a cache would print a device time with the offset of an archive time.
    """
    return value.isoformat() if value else None


def claim_time(value: datetime | None) -> str:
    """``yyyymmddHHMM`` in Vietnam time (UTC+7), truncated to the minute, as the claim tables use."""
    if not value:
        return ""
    v = value.astimezone(VIETNAM)
    if v.year < 1000:
        return v.strftime("%Y%m%d%H%M")
    return f"{v.year}{v.month:02d}{v.day:02d}{v.hour:02d}{v.minute:02d}"


def assumed_offset(settings: AppraisalSettings) -> str:
    """Where a device time's offset came from when the images carry none."""
    return f"assumed {settings.device_utc_offset} ([appraisal] device_utc_offset)"


#: Where each first / last acquisition time of a series may come from, best first (domain notes).
ACQUISITION_SOURCES = (
    "AcquisitionDateTime",
    "AcquisitionDate+AcquisitionTime",
    "ContentDate+ContentTime",
    "SeriesDate+SeriesTime",
)
#: The source that gives one time per series (its start), never a time per image.
SERIES_SOURCE = "SeriesDate+SeriesTime"


def series_times(
    s: dict[str, Any], device_tz: timezone, assumed: str
) -> tuple[datetime | None, datetime | None, str | None, str | None, str | None]:
    """First/last acquisition of a series from the best source present (domain notes table).

    Returns (first, last, attribute used, where the first's offset came from, where the last's
    offset came from); ``assumed`` names the configured device offset used when the images carry
    none. SeriesDate without SeriesTime gives no time (a date is not a time of day).
    """
    tz = parse_offset(s["tz_min"]) if s["tz_min"] and s["tz_min"] == s["tz_max"] else None
    default = tz or device_tz
    series_dt = (s["series_date"] + s["series_time"]) if s["series_date"] and s["series_time"] else None
    for name, lo, hi in zip(
        ACQUISITION_SOURCES,
        (s["min_adt"], s["min_ad_at"], s["min_cd_ct"], series_dt),
        (s["max_adt"], s["max_ad_at"], s["max_cd_ct"], series_dt),
        strict=True,
    ):
        if not lo or not hi:
            continue
        first = parse_dicom_datetime(lo, default)
        last = parse_dicom_datetime(hi, default)
        if first and last:
            return (
                first[0],
                last[0],
                name,
                _tz_source(first[1], name, tz, assumed),
                _tz_source(last[1], name, tz, assumed),
            )
    return None, None, None, None, None


def _tz_source(own: bool, name: str, tz: timezone | None, assumed: str) -> str:
    """Where the offset of one device time came from: its own value, the images, or the setting."""
    if own:
        return f"offset in {name}"
    return "TimezoneOffsetFromUTC" if tz else assumed


def step_time(
    date: str | None, time: str | None, device_tz: timezone, assumed: str
) -> tuple[datetime, str] | None:
    """An MPPS date + time (PS3.4 F.7.2: DA and TM, no offset) -> (instant, where its offset came from)."""
    if not date:
        return None
    got = parse_dicom_datetime(date + (time or ""), device_tz)
    if got is None:
        return None
    return got[0], ("offset in the value" if got[1] else assumed)


def acquisition_span(
    first: tuple[datetime, str, str] | None,
    last: tuple[datetime, str, str] | None,
    images: int,
    texts: tuple[str | None, str | None],
    basis: str,
) -> dict[str, Any]:
    """The device acquisition span, first to last image acquisition time; ``unknown`` with the
    reason whenever those times cannot measure one (never 0 for a span nobody measured).

    ``first`` / ``last`` are (instant, attribute, offset source), ``images`` the number of images
    they were read from and ``texts`` their ISO forms.
    """
    span: dict[str, Any] = {"from": texts[0], "to": texts[1], "seconds": None, "status": "unknown"}
    if first is None or last is None:
        reason = "no image acquisition time (no image yet, or none carries an acquisition time)"
    elif SERIES_SOURCE in (first[1], last[1]):
        reason = (
            "SeriesDate/SeriesTime only: one start time per series, not a time per image; "
            "a span needs two image acquisition times"
        )
    elif images <= 1:
        reason = "one image: a span needs two acquisition times"
    elif first[0] == last[0]:
        reason = "every image carries the same acquisition time: a span needs two different acquisition times"
    else:
        span.update(seconds=round((last[0] - first[0]).total_seconds(), 1), status="measured")
        reason = None
    if reason:
        span["reason"] = reason
    span["basis"] = basis
    return span


def ordering_check(
    name: str,
    left: tuple[str, datetime | None, str | None],
    right: tuple[str, datetime | None, str | None],
) -> dict[str, Any]:
    """An ordering check: consistent / inconsistent / unknown, with the timestamps compared.

    Each side is (name, instant, its ISO form).
    """
    a, b = left[1], right[1]
    result = "unknown" if a is None or b is None else ("consistent" if a <= b else "inconsistent")
    return {"check": name, "result": result, "timestamps": {left[0]: left[2], right[0]: right[2]}}


def stamp(value: tuple[datetime, str, str] | None, text: str | None) -> dict[str, Any] | None:
    """A device timestamp (``text`` is its ISO form) with the attribute and offset it came from."""
    if value is None:
        return None
    return {"value": text, "source": value[1], "timezone_source": value[2]}
