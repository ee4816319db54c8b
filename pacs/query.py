"""One query model for C-FIND (PS3.4 C.2.2.2) and QIDO-RS (PS3.18 8.3.4).

Both edges parse their requests into a :class:`Query`; ``pacs.index.sql`` turns it into
parameterised SQL. Matching kinds per attribute come from the catalogue in
``pacs.dicom.attributes``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacs.dicom.attributes import (
    ATTRIBUTES,
    BY_KEYWORD,
    UNIQUE_KEY,
    WORKLIST_BY_TAG,
    Attribute,
    Match,
    lookup,
)
from pacs.dicom.text import is_valid_uid, name_key, normalise_date, normalise_time
from pacs.errors import InvalidQuery
from pacs.model import Level

# ---------------------------------------------------------------- matchers


@dataclass(frozen=True)
class Equal:
    """Single value matching (C.2.2.2.1)."""

    value: str | int


@dataclass(frozen=True)
class AnyOf:
    """List of UID matching (C.2.2.2.2), also used for lists of other values in QIDO."""

    values: tuple[str | int, ...]


@dataclass(frozen=True)
class Wildcard:
    """Wild card matching with ``*`` and ``?`` (C.2.2.2.4)."""

    pattern: str


@dataclass(frozen=True)
class Range:
    """Range matching (C.2.2.2.5); bounds are normalised and inclusive, ``None`` for an open end."""

    lower: str | None
    upper: str | None


@dataclass(frozen=True)
class NameMatch:
    """Person name matching on the folded search key (case- and accent-insensitive).

    ``fuzzy`` (QIDO ``fuzzymatching=true``) matches each word of the query against the start of
    any name component, in any order.
    """

    key_pattern: str
    fuzzy: bool = False


@dataclass(frozen=True)
class DateTimeRange:
    """Combined date and time range matching (C.2.2.2.5.1) over a DA attribute and its TM partner."""

    time_attribute: Attribute
    lower: tuple[str, str] | None  # (date, time)
    upper: tuple[str, str] | None


Matcher = Equal | AnyOf | Wildcard | Range | NameMatch | DateTimeRange


@dataclass(frozen=True)
class Condition:
    """One attribute constrained by one matcher."""

    attribute: Attribute
    matcher: Matcher


@dataclass(frozen=True)
class Query:
    """A search at one level: conditions (ANDed), the attributes to return, and paging."""

    level: Level
    conditions: tuple[Condition, ...] = ()
    return_keys: tuple[Attribute, ...] = ()
    limit: int | None = None
    offset: int = 0
    patient_root: bool = False
    unsupported_return_keys: tuple[int, ...] = field(default=())

    def with_limit(self, limit: int | None, offset: int = 0) -> Query:
        """A copy with other paging."""
        return replace(self, limit=limit, offset=offset)


# ---------------------------------------------------------------- value parsing

_DATE_RE = re.compile(r"^\d{8}$")
_TIME_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DT_RE = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
_COMBINED = {
    "StudyDate": "StudyTime",
    "SeriesDate": "SeriesTime",
    "AcquisitionDate": "AcquisitionTime",
    "ContentDate": "ContentTime",
    "PerformedProcedureStepStartDate": "PerformedProcedureStepStartTime",
    "ScheduledProcedureStepStartDate": "ScheduledProcedureStepStartTime",
}


def _date_bound(text: str, attr: Attribute) -> str:
    value = normalise_date(text)
    if not _DATE_RE.fullmatch(value) or not (1 <= int(value[4:6]) <= 12 and 1 <= int(value[6:8]) <= 31):
        raise InvalidQuery(f"{attr.keyword}: {text!r} is not a date (YYYYMMDD)")
    return value


def _time_bound(text: str, attr: Attribute, *, upper: bool) -> str:
    value = text.strip().replace(":", "")
    if not _TIME_RE.fullmatch(value) or not _time_in_range(value):
        raise InvalidQuery(f"{attr.keyword}: {text!r} is not a time (HHMMSS.FFFFFF)")
    main, _, frac = value.partition(".")
    if upper:
        main = main + "5959"[: 6 - len(main)]
        return f"{main}.{frac.ljust(6, '9')}"
    return normalise_time(value)


def _time_in_range(value: str) -> bool:
    """HH < 24, MM < 60, SS <= 60 (a leap second), PS3.5 Table 6.2-1."""
    main = value.partition(".")[0]
    limits = (23, 59, 60)
    return all(int(main[i : i + 2]) <= limits[i // 2] for i in range(0, len(main), 2))


def _dt_bound(text: str, attr: Attribute, *, upper: bool) -> str:
    value = text.strip()
    if not _DT_RE.fullmatch(value):
        raise InvalidQuery(f"{attr.keyword}: {text!r} is not a date-time (YYYYMMDDHHMMSS.FFFFFF&ZZXX)")
    value = re.sub(r"[+-]\d{4}$", "", value)
    if upper:
        full = "99991231235959.999999"
        return value + full[len(value) :]
    return value


def _split_range(text: str, attr: Attribute) -> tuple[str, str] | None:
    if "-" not in text:
        return None
    if text.count("-") != 1:
        raise InvalidQuery(f"{attr.keyword}: {text!r} is not a valid range")
    lo, hi = text.split("-")
    if not lo.strip() and not hi.strip():
        raise InvalidQuery(f"{attr.keyword}: a range needs at least one bound")
    return lo.strip(), hi.strip()


def _has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def parse_value(attr: Attribute, raw: str, *, fuzzy: bool = False, fold_names: bool = True) -> Matcher | None:
    """Parse one key's value into a matcher; ``None`` means universal matching (return only).

    Raises :class:`InvalidQuery` for values that the attribute's matching kind does not allow.
    """
    if "\x00" in raw or (not raw.isprintable() and not _encodable(raw)):
        raise InvalidQuery(f"{attr.keyword}: the value holds a NUL or a character that is not Unicode")
    text = raw.strip()
    if text == "" or text == "*":
        return None
    if attr.computed and attr.keyword != "ModalitiesInStudy":
        raise InvalidQuery(f"{attr.keyword} can be returned but not matched")
    kind = attr.match
    if kind is Match.UID:
        values = [v.strip() for v in re.split(r"[\\,]", text) if v.strip()]
        for v in values:
            if not is_valid_uid(v):
                raise InvalidQuery(f"{attr.keyword}: {v[:80]!r} is not a valid UID")
        return Equal(values[0]) if len(values) == 1 else AnyOf(tuple(values))
    if kind is Match.DA:
        rng = _split_range(text, attr)
        if rng is None:
            if "\\" in text:
                return AnyOf(tuple(_date_bound(v, attr) for v in text.split("\\")))
            return Equal(_date_bound(text, attr))
        lo, hi = rng
        return Range(_date_bound(lo, attr) if lo else None, _date_bound(hi, attr) if hi else None)
    if kind is Match.TM:
        rng = _split_range(text, attr)
        if rng is None:
            return Range(_time_bound(text, attr, upper=False), _time_bound(text, attr, upper=True))
        lo, hi = rng
        return Range(
            _time_bound(lo, attr, upper=False) if lo else None,
            _time_bound(hi, attr, upper=True) if hi else None,
        )
    if kind is Match.DT:
        rng = _split_range(text, attr)
        if rng is None:
            return Range(_dt_bound(text, attr, upper=False), _dt_bound(text, attr, upper=True))
        lo, hi = rng
        return Range(
            _dt_bound(lo, attr, upper=False) if lo else None,
            _dt_bound(hi, attr, upper=True) if hi else None,
        )
    if kind is Match.NUM:
        try:
            nums = tuple(int(v) for v in re.split(r"[\\,]", text))
        except ValueError:
            raise InvalidQuery(f"{attr.keyword}: {text!r} is not a number") from None
        if any(not -(2**63) <= n < 2**63 for n in nums):  # IS is 32-bit; the columns are 64-bit
            raise InvalidQuery(f"{attr.keyword}: {text!r} is out of range")
        return Equal(nums[0]) if len(nums) == 1 else AnyOf(nums)
    if kind is Match.PN:
        if fold_names:
            return NameMatch(name_key(text).replace(" *", "*") if not fuzzy else name_key(text), fuzzy=fuzzy)
        return Wildcard(text) if _has_wildcard(text) else Equal(text)
    # STR and MULTI
    if "\\" in text:
        return AnyOf(tuple(v for v in text.split("\\") if v))
    return Wildcard(text) if _has_wildcard(text) else Equal(text)


def _combine_datetimes(conditions: list[Condition]) -> list[Condition]:
    by_kw = {c.attribute.keyword: c for c in conditions}
    out = list(conditions)
    for date_kw, time_kw in _COMBINED.items():
        dc, tc = by_kw.get(date_kw), by_kw.get(time_kw)
        if dc is None or tc is None or not isinstance(tc.matcher, Range):
            continue
        dlo: str | None
        dhi: str | None
        if isinstance(dc.matcher, Equal):
            dlo = dhi = str(dc.matcher.value)
        elif isinstance(dc.matcher, Range):
            dlo, dhi = dc.matcher.lower, dc.matcher.upper
        else:
            continue
        tlo, thi = tc.matcher.lower, tc.matcher.upper
        lower = (dlo, tlo or "000000") if dlo else None
        upper = (dhi, thi or "235959.999999") if dhi else None
        out.remove(dc)
        out.remove(tc)
        out.append(Condition(dc.attribute, DateTimeRange(tc.attribute, lower, upper)))
    return out


# ---------------------------------------------------------------- C-FIND identifiers

_IGNORED_FIND_KEYS = {
    0x00080005,  # SpecificCharacterSet
    0x00080052,  # QueryRetrieveLevel
    0x00080054,  # RetrieveAETitle
    0x00080056,  # InstanceAvailability
    0x00080201,  # TimezoneOffsetFromUTC (as a query modifier)
    0x00081190,  # RetrieveURL
}


def from_identifier(
    identifier: Dataset,
    *,
    patient_root: bool,
    max_results: int | None = None,
    fold_names: bool = True,
) -> Query:
    """Parse a C-FIND request identifier (PS3.4 C.4.1.2.1) into a :class:`Query`."""
    level_text = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level(level_text)
    except ValueError:
        raise InvalidQuery(f"invalid QueryRetrieveLevel {level_text!r}") from None
    if level is Level.PATIENT and not patient_root:
        raise InvalidQuery("the Study Root model has no PATIENT level")
    conditions: list[Condition] = []
    returns: list[Attribute] = []
    unsupported: list[int] = []
    for elem in identifier:
        tag = int(elem.tag)
        if tag in _IGNORED_FIND_KEYS or elem.tag.group in (0x0002, 0x0000) or elem.tag.is_private:
            continue
        attr = lookup(f"{tag:08X}")
        if elem.VR == "SQ":
            # Sequence matching (C.2.2.2.6) on sequences we do not index: return them empty.
            unsupported.append(tag)
            continue
        if attr is None:
            unsupported.append(tag)
            continue
        try:
            text = _raw_text(elem.value)
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. IS "two" decoded lazily by pydicom
            raise InvalidQuery(f"{attr.keyword}: unreadable value ({exc})") from None
        if _effective_level(attr, patient_root).depth > level.depth:
            if text:
                raise InvalidQuery(f"{attr.keyword} is below the {level.value} query level")
            continue
        returns.append(attr)
        matcher = parse_value(attr, text, fold_names=fold_names)
        if matcher is not None:
            conditions.append(Condition(attr, matcher))
    if level is not Level.PATIENT or patient_root:
        unique = BY_KEYWORD[UNIQUE_KEY[level]]
        if unique not in returns:
            returns.append(unique)
    return Query(
        level=level,
        conditions=tuple(_combine_datetimes(conditions)),
        return_keys=tuple(returns),
        limit=max_results,
        patient_root=patient_root,
        unsupported_return_keys=tuple(unsupported),
    )


def from_worklist_identifier(
    identifier: Dataset, *, max_results: int | None = None, fold_names: bool = True
) -> Query:
    """Parse a Modality Worklist C-FIND identifier (PS3.4 K.6.1.2) into a :class:`Query` over the
    worklist catalogue: top-level keys and those of the (one) Scheduled Procedure Step Sequence
    item. Sequences we keep as coded entries are returned, not matched; other unknown keys are
    returned empty (``unsupported_return_keys``)."""
    conditions: list[Condition] = []
    returns: list[Attribute] = []
    unsupported: list[int] = []
    elements = list(identifier)
    sps = identifier.get("ScheduledProcedureStepSequence")
    if sps is not None:
        if len(sps) > 1:
            raise InvalidQuery("ScheduledProcedureStepSequence: a query has at most one item")
        if len(sps) == 1:
            elements += [e for e in sps[0]]
    for elem in elements:
        tag = int(elem.tag)
        if tag in _IGNORED_FIND_KEYS or elem.tag.group in (0x0002, 0x0000) or elem.tag.is_private:
            continue
        if tag == 0x00400100:  # the Scheduled Procedure Step Sequence itself
            continue
        attr = WORKLIST_BY_TAG.get(tag)
        if attr is None or elem.VR == "SQ":
            unsupported.append(tag)
            continue
        try:
            text = _raw_text(elem.value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidQuery(f"{attr.keyword}: unreadable value ({exc})") from None
        returns.append(attr)
        matcher = parse_value(attr, text, fold_names=fold_names)
        if matcher is not None:
            conditions.append(Condition(attr, matcher))
    return Query(
        level=Level.WORKLIST,
        conditions=tuple(_combine_datetimes(conditions)),
        return_keys=tuple(returns),
        limit=max_results,
        unsupported_return_keys=tuple(unsupported),
    )


def _raw_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _effective_level(attr: Attribute, patient_root: bool) -> Level:
    """Patient attributes are study-level keys in the Study Root model."""
    if attr.level is Level.PATIENT and not patient_root:
        return Level.STUDY
    return attr.level


# ---------------------------------------------------------------- QIDO-RS parameters

_QIDO_RESERVED = {"limit", "offset", "fuzzymatching", "includefield", "orderby"}


def qido_default_keys(level: Level, scoped_to: Level | None) -> tuple[Attribute, ...]:
    """Default return attributes of a QIDO-RS search (PS3.18 Tables 6.7.1-2/2a/2b)."""
    levels = {
        Level.STUDY: [Level.PATIENT, Level.STUDY],
        Level.SERIES: [Level.SERIES] if scoped_to else [Level.PATIENT, Level.STUDY, Level.SERIES],
        Level.IMAGE: (
            [Level.IMAGE]
            if scoped_to is Level.SERIES
            else [Level.SERIES, Level.IMAGE]
            if scoped_to is Level.STUDY
            else [Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE]
        ),
    }[level]
    keys = [a for a in ATTRIBUTES if a.level in levels and a.qido_default]
    if level is not Level.STUDY:
        # Parent UIDs are always useful to a client navigating the hierarchy.
        keys += [BY_KEYWORD["StudyInstanceUID"]]
        if level is Level.IMAGE:
            keys += [BY_KEYWORD["SeriesInstanceUID"]]
    return tuple(dict.fromkeys(keys))


def from_qido(
    level: Level,
    params: Sequence[tuple[str, str]],
    *,
    scope: Mapping[str, str] | None = None,
    default_limit: int,
    max_limit: int,
    fold_names: bool = True,
) -> Query:
    """Parse QIDO-RS query parameters (PS3.18 8.3.4) into a :class:`Query`.

    ``scope`` holds the UIDs from the resource path (``StudyInstanceUID`` and maybe
    ``SeriesInstanceUID``). Unknown attributes and bad values raise :class:`InvalidQuery`.
    """
    scope = dict(scope or {})
    fuzzy = False
    limit = default_limit
    offset = 0
    include: list[Attribute] = []
    include_all = False
    matches: list[tuple[Attribute, str]] = []
    for name, value in params:
        if name == "fuzzymatching":
            if value.lower() not in {"true", "false"}:
                raise InvalidQuery("fuzzymatching must be true or false")
            fuzzy = value.lower() == "true"
        elif name == "limit":
            limit = _non_negative(name, value)
            if limit == 0:
                raise InvalidQuery("limit must be at least 1")
            limit = min(limit, max_limit)
        elif name == "offset":
            offset = _non_negative(name, value)
        elif name == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if not item:
                    continue
                if item == "all":
                    include_all = True
                    continue
                attr = lookup(item)
                if attr is None:
                    if _known_dicom_key(item):
                        continue  # a real attribute we do not index: nothing to include
                    raise InvalidQuery(f"includefield: unknown attribute {item!r}")
                include.append(attr)
        elif name == "orderby":
            continue  # optional in PS3.18; results come newest first / in series and instance order
        elif name.startswith("_"):
            continue  # cache busters and the like
        else:
            attr = lookup(name)
            if attr is None:
                raise InvalidQuery(f"unknown or unsupported query attribute {name!r}")
            matches.append((attr, value))
    scoped_to = Level.SERIES if "SeriesInstanceUID" in scope else Level.STUDY if scope else None
    for keyword, uid in scope.items():
        if not is_valid_uid(uid):
            raise InvalidQuery(f"{keyword}: {uid[:80]!r} is not a valid UID")
        matches.append((BY_KEYWORD[keyword], uid))
    conditions: list[Condition] = []
    returns = list(qido_default_keys(level, scoped_to))
    for attr, value in matches:
        if attr.level.depth > level.depth:
            raise InvalidQuery(f"{attr.keyword} cannot be matched at the {_qido_name(level)} level")
        matcher = parse_value(attr, value, fuzzy=fuzzy, fold_names=fold_names)
        if matcher is not None:
            conditions.append(Condition(attr, matcher))
        returns.append(attr)
    if include_all:
        returns += [a for a in ATTRIBUTES if a.level.depth <= level.depth]
    returns += [a for a in include if a.level.depth <= level.depth]
    return Query(
        level=level,
        conditions=tuple(_combine_datetimes(conditions)),
        return_keys=tuple(dict.fromkeys(returns)),
        limit=limit,
        offset=offset,
    )


def _qido_name(level: Level) -> str:
    return {Level.STUDY: "study", Level.SERIES: "series", Level.IMAGE: "instance"}.get(level, level.value)


def _non_negative(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidQuery(f"{name} must be a whole number, got {value[:40]!r}") from None
    if n < 0:
        raise InvalidQuery(f"{name} must not be negative")
    if n > 2**31 - 1:
        raise InvalidQuery(f"{name} is too large")
    return n


def _encodable(text: str) -> bool:
    """True when ``text`` is valid Unicode (no lone surrogates), as SQL drivers require."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _known_dicom_key(item: str) -> bool:
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(item) is not None or bool(re.fullmatch(r"[0-9A-Fa-f]{8}", item))
