"""Header -> :class:`~pacs.model.InstanceRecord`, driven by the attribute catalogue."""

from __future__ import annotations

from typing import Any, BinaryIO, Literal

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

from pacs.dicom.attributes import ATTRIBUTES, Match
from pacs.dicom.text import is_valid_uid, name_key, normalise_date, normalise_time
from pacs.errors import InvalidInstance
from pacs.model import InstanceRecord, PatientIdentifier

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def _at_pixel_data(tag: Any, vr: str | None, length: int) -> bool:
    return int(tag) in (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float / Double Float


def read_header(fp: BinaryIO | str, *, dataset_at: tuple[int, str] | None = None) -> Dataset:
    """Parse a Part-10 stream up to (not including) the pixel data.

    ``dataset_at`` (offset, transfer syntax UID) skips the preamble and file meta, for a stream
    whose file meta we wrote ourselves (parsing it again was a third of the cost).
    Raises :class:`InvalidInstance` for anything pydicom cannot parse.
    """
    ds: Dataset
    try:
        if dataset_at is None:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=4096, force=False)
        else:
            assert not isinstance(fp, str)
            offset, ts = dataset_at
            syntax = UID(ts)
            fp.seek(offset)
            ds = read_dataset(
                fp, syntax.is_implicit_VR, syntax.is_little_endian, stop_when=_at_pixel_data, defer_size=4096
            )
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = syntax
        stopped_at = 0 if isinstance(fp, str) else fp.tell()  # reading deferred values moves it
        # A truncated or malformed body fails here, not later when a value is read.
        deflated = getattr(ds.file_meta, "TransferSyntaxUID", None) == "1.2.840.10008.1.2.1.99"
        if isinstance(fp, str) or deflated:  # offsets are into the inflated stream: read them all
            for _elem in ds.iterall():
                pass
        else:
            _check_elements(ds, fp.seek(0, 2))
    except InvalidDicomError as exc:
        raise InvalidInstance(f"not a DICOM Part-10 stream: {exc}") from exc
    except (EOFError, ValueError, KeyError, TypeError, OverflowError, NotImplementedError) as exc:
        raise InvalidInstance(f"unparsable DICOM header: {exc}") from exc
    except Exception as exc:  # pydicom raises a wide variety on hostile input
        raise InvalidInstance(f"unparsable DICOM header: {type(exc).__name__}: {exc}") from exc
    if not isinstance(fp, str):
        fp.seek(stopped_at)
        _check_trailing_element(fp, ds)
    return ds


#: Bytes per value of the binary VRs: a value whose length is not a multiple cannot be read.
_VALUE_SIZES = {
    "US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "AT": 4,
    "OW": 2, "OF": 4, "OD": 8, "OL": 4, "OV": 8, "SV": 8, "UV": 8,
}  # fmt: skip


def _value_size(tag: int, vr: str | None) -> int:
    if vr is None:  # implicit VR: the dictionary's
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return 0  # private or unknown: UN, any length
    if " or " in vr:  # ambiguous (US or SS, OB or OW ...): only where every reading agrees
        sizes = {_VALUE_SIZES.get(v, 0) for v in vr.split(" or ")}
        return sizes.pop() if len(sizes) == 1 else 0
    return _VALUE_SIZES.get(vr, 0)


def _check_elements(ds: Dataset, end: int) -> None:
    """Refuse what pydicom parsed but could not read: a binary value whose length is not a
    multiple of its value size, a deferred (large) value past the end of the stream.

    The structural checks that converting every value (``iterall``) made, without converting:
    that was a fifth of the Python time of a C-STORE.
    """
    for elem in ds._dict.values():
        if isinstance(elem, RawDataElement):
            if elem.value is None:
                if elem.length and elem.length != 0xFFFFFFFF and elem.value_tell + elem.length > end:
                    raise InvalidInstance(
                        f"truncated DICOM stream: element {elem.tag} needs {elem.length} bytes past the end"
                    )
                continue
            size = _value_size(elem.tag, elem.VR)
            if size and len(elem.value) % size:
                raise InvalidInstance(
                    f"element {elem.tag} ({elem.VR or 'implicit VR'}) has {len(elem.value)} bytes, "
                    f"not a multiple of {size}"
                )
        elif elem.VR == "SQ":
            for item in elem.value or ():
                _check_elements(item, end)


_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT", b"SV", b"UV"}


def _check_trailing_element(fp: BinaryIO, ds: Dataset) -> None:
    """Refuse a stream whose pixel data (where reading stopped) is longer than what is left.

    ``stop_before_pixels`` leaves the stream at the element that stopped the read; a defined
    length that runs past the end of the stream means the object was truncated.
    """
    if ds.original_encoding == (None, None) or getattr(ds.file_meta, "TransferSyntaxUID", None) == (
        "1.2.840.10008.1.2.1.99"
    ):
        return  # deflated: the header was read through a decompressor, offsets do not apply
    implicit, little = ds.original_encoding
    start = fp.tell()
    end = fp.seek(0, 2)
    fp.seek(start)
    if start > end:  # a deferred (large) element claimed more bytes than the stream holds
        raise InvalidInstance(f"truncated DICOM stream: elements need {start} bytes, only {end} are there")
    head = fp.read(8)
    if len(head) < 8:
        if head.strip(b"\x00"):
            raise InvalidInstance("truncated DICOM stream: incomplete element header at the end")
        return
    order: Literal["little", "big"] = "little" if little else "big"
    if implicit or not (head[4:6].isalpha() and head[4:6].isupper()):
        length = int.from_bytes(head[4:8], order)
        value_at = start + 8
    elif head[4:6] in _LONG_VRS:
        extra = fp.read(4)
        if len(extra) < 4:
            raise InvalidInstance("truncated DICOM stream: incomplete element header at the end")
        length = int.from_bytes(extra, order)
        value_at = start + 12
    else:
        length = int.from_bytes(head[6:8], order)
        value_at = start + 8
    fp.seek(start)
    if length != 0xFFFFFFFF and value_at + length > end:
        raise InvalidInstance(
            f"truncated DICOM stream: element needs {length} bytes, only {end - value_at} are left"
        )


def extract(
    ds: Dataset, transfer_syntax_uid: str | None = None, *, strict_uids: bool = True
) -> InstanceRecord:
    """Build the index record of one instance from its header.

    Validates the four identifying UIDs (present, PS3.5 9.1: digits and dots, at most 64
    characters, no component with a leading zero) and raises :class:`InvalidInstance` with a
    reason otherwise. ``strict_uids=False`` lets leading zeros through, for re-reading files an
    older version archived (``pacs reindex`` must not drop them); new instances never use it.
    """
    record = InstanceRecord()
    try:
        value: Any
        for uid_kw in REQUIRED_UIDS:
            value = str(ds.get(uid_kw, "") or "").strip()
            if not value:
                raise InvalidInstance(f"missing {uid_kw}")
            if not is_valid_uid(value, strict=strict_uids):
                raise InvalidInstance(
                    f"invalid {uid_kw} {value[:80]!r}: a UID is digits and dots, at most 64,"
                    " no component with a leading zero"
                )
        values: dict[str, Any] = {}
        present = ds._dict
        codec = _codec(present.get(_CHARSET))
        for attr, tag in _EXTRACTED:
            # Most catalogue attributes are absent from an image: look before converting.
            raw = present.get(tag)
            if raw is None:
                value = None
            else:
                value = _raw_value(raw, attr, codec)
                if value is _SLOW:  # pydicom's conversion (sequences, other character sets, ...)
                    value = _value(ds[tag].value, attr.match, attr.vr, attr.length)
            values[attr.column] = value
            if attr.match is Match.PN:
                values[attr.column + "_key"] = name_key(value or "") or None
        other_ids = _other_patient_ids(ds)
        values["other_patient_ids"] = "\\".join(other_ids)[:512] or None
        values.update(request_facts(ds, values.get("requested_procedure_id")))
        for key, value in values.items():  # NUL cannot be stored in SQL text (PostgreSQL refuses it)
            if isinstance(value, str) and "\x00" in value:
                values[key] = value.replace("\x00", "").strip() or None
    except InvalidInstance:
        raise
    except Exception as exc:  # bad values in a header we parsed lazily
        raise InvalidInstance(f"cannot read header values: {type(exc).__name__}: {exc}") from exc
    record.values = values
    try:
        record.identifiers = patient_identifiers(ds, values)
    except Exception as exc:  # a malformed sequence item in a header we parsed lazily
        raise InvalidInstance(f"cannot read patient identifiers: {type(exc).__name__}: {exc}") from exc
    record.sop_class_uid = values["sop_class_uid"]
    record.sop_instance_uid = values["sop_instance_uid"]
    record.study_instance_uid = values["study_instance_uid"]
    record.series_instance_uid = values["series_instance_uid"]
    meta = getattr(ds, "file_meta", None)
    record.transfer_syntax_uid = transfer_syntax_uid or str(getattr(meta, "TransferSyntaxUID", "") or "")
    return record


#: The catalogue attributes read from a header, with their tags (looked up once).
_EXTRACTED = [
    (attr, Tag(attr.keyword))
    for attr in ATTRIBUTES
    if not attr.computed  # KeyError-free: keywords checked
]


_CHARSET = Tag(0x00080005)
_SLOW: Any = object()
#: VRs decoded as pydicom's ``multi_string`` does: default repertoire, trailing padding removed,
#: split on backslashes.
_STRING_VRS = {"AE", "AS", "CS", "DA", "DT", "TM", "UI", "IS"}
#: Multi-valued text in the data set's character set (each value's trailing padding removed).
_TEXT_VRS = {"SH", "LO", "UC"}
#: Single-valued text (backslashes are text).
_SINGLE_TEXT_VRS = {"ST", "LT", "UT"}
_INTEGERS = {"US": (2, False), "SS": (2, True), "UL": (4, False), "SL": (4, True)}
_CODECS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}


def _codec(raw: Any) -> str | None:
    """The Python codec of a data set's Specific Character Set when it is a single-byte or UTF-8
    one this module decodes itself (pydicom's default, ISO_IR 6/100/192); None otherwise."""
    if raw is None:
        return "latin_1"  # pydicom's default for no Specific Character Set
    value = raw.value
    if isinstance(value, bytes):
        terms = [t.strip(" \0") for t in value.decode("latin_1").split("\\")]
    elif isinstance(value, str):
        terms = [value.strip()]
    elif isinstance(value, list | MultiValue):
        terms = [str(t).strip() for t in value]
    else:
        return None
    first = terms[0] if terms else ""
    return _CODECS.get(first) if len(terms) == 1 else None


def _raw_value(raw: Any, attr: Any, codec: str | None) -> Any:
    """:func:`_value` straight from the raw bytes of common elements, splitting and trimming as
    pydicom's value conversion does (converting every element through pydicom was a quarter of
    a C-STORE's Python time); ``_SLOW`` where pydicom must convert (other character sets,
    sequences, unusual VRs). ``tests/unit/test_extract_fast.py`` holds the two equal."""
    if not isinstance(raw, RawDataElement) or raw.value is None:
        return _SLOW
    vr = raw.VR or attr.vr
    if vr != attr.vr:
        return _SLOW  # UN, or an unusual VR: pydicom knows
    data = raw.value
    if vr in _INTEGERS:
        size, signed = _INTEGERS[vr]
        if len(data) < size or len(data) % size:
            return _SLOW
        return int.from_bytes(data[:size], "little" if raw.is_little_endian else "big", signed=signed)
    if vr in _STRING_VRS:
        items = data.decode("latin_1").rstrip(" \0").split("\\")
    elif codec is None:
        return _SLOW
    elif vr in _TEXT_VRS:
        items = [v.rstrip("\0 ") for v in data.decode(codec, "replace").split("\\")]
    elif vr in _SINGLE_TEXT_VRS:
        items = [data.decode(codec, "replace").rstrip("\0 ")]
    elif vr == "PN":
        items = data.rstrip(b"\0 ").decode(codec, "replace").split("\\")
    else:
        return _SLOW
    if vr == "IS":
        first = items[0].strip()
        if not first:
            return None
        try:
            return int(first)
        except ValueError:
            try:
                number = float(first)
            except ValueError:
                return None
            return int(number) if number.is_integer() else None
    return _value(items if len(items) > 1 else items[0], attr.match, attr.vr, attr.length)


def _value(elem: Any, match: Match, vr: str, length: int) -> str | int | None:
    if elem is None or elem == "" or (isinstance(elem, MultiValue | list) and len(elem) == 0):
        return None
    if vr in {"US", "UL", "SS", "SL", "IS"}:
        first = elem[0] if isinstance(elem, MultiValue | list) else elem
        try:
            return int(first)
        except (TypeError, ValueError):
            return None
    text = "\\".join(str(v) for v in elem) if isinstance(elem, MultiValue | list) else str(elem)
    if match is Match.DA:
        text = normalise_date(text)
    elif match is Match.TM:
        text = normalise_time(text)
    text = text.strip()
    return text[:length] or None


#: Keys :func:`request_facts` adds to ``InstanceRecord.values`` (not catalogue columns: the index
#: ignores them; the appraisal acquisition log reads them in the store transaction).
REQUEST_FACT_KEYS = (
    "scheduled_procedure_step_id",
    "procedure_code_value",
    "procedure_coding_scheme_designator",
    "procedure_code_meaning",
    "procedure_code_source",
)


def request_facts(ds: Dataset, requested_procedure_id: str | None) -> dict[str, str | None]:
    """Service-line facts of an image: RequestedProcedureID, ScheduledProcedureStepID, procedure code.

    Sources (PS3.3 C.4.10 Request Attributes, C.7.2.1 General Study): top-level
    RequestedProcedureID, else the first RequestAttributesSequence (0040,0275) item's; the
    ScheduledProcedureStepID of that item; the first item of RequestedProcedureCodeSequence
    (0032,1064), else of the request item's, else of ProcedureCodeSequence (0008,1032).
    """
    out: dict[str, str | None] = dict.fromkeys(REQUEST_FACT_KEYS)
    request = _first_item(ds, "RequestAttributesSequence")
    if request is not None:
        if not requested_procedure_id:
            out["requested_procedure_id"] = _text(request, "RequestedProcedureID", 64)
        out["scheduled_procedure_step_id"] = _text(request, "ScheduledProcedureStepID", 64)
    for source, holder, keyword in (
        ("RequestedProcedureCodeSequence", ds, "RequestedProcedureCodeSequence"),
        (
            "RequestAttributesSequence/RequestedProcedureCodeSequence",
            request,
            "RequestedProcedureCodeSequence",
        ),
        ("ProcedureCodeSequence", ds, "ProcedureCodeSequence"),
    ):
        item = _first_item(holder, keyword) if holder is not None else None
        if item is not None and _text(item, "CodeValue", 64):
            out["procedure_code_value"] = _text(item, "CodeValue", 64)
            out["procedure_coding_scheme_designator"] = _text(item, "CodingSchemeDesignator", 64)
            out["procedure_code_meaning"] = _text(item, "CodeMeaning", 256)
            out["procedure_code_source"] = source
            break
    return out


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


def _text(ds: Dataset, keyword: str, length: int) -> str | None:
    value = ds.get(keyword)
    if value is None or isinstance(value, Dataset):
        return None
    return str(value).strip()[:length] or None


def _other_patient_ids(ds: Dataset) -> list[str]:
    ids: list[str] = []
    raw = ds.get("OtherPatientIDs")
    if raw:
        ids.extend(str(v) for v in (raw if isinstance(raw, MultiValue | list) else [raw]))
    for item in ds.get("OtherPatientIDsSequence", []) or []:
        pid = str(item.get("PatientID", "") or "").strip()
        if pid and pid not in ids:
            ids.append(pid)
    return [i.strip() for i in ids if i and i.strip()]


_ISSUER_QUALIFIERS = Tag(0x00100024)  # IssuerOfPatientIDQualifiersSequence
_TYPE_OF_PATIENT_ID = Tag(0x00100022)
_OTHER_IDS = Tag(0x00101000)  # OtherPatientIDs (retired): values without an issuer
_OTHER_IDS_SEQUENCE = Tag(0x00101002)


def patient_identifiers(ds: Dataset, values: dict[str, Any]) -> tuple[PatientIdentifier, ...]:
    """Every patient identifier of a header, unclassified: PatientID with IssuerOfPatientID, its
    qualifiers (PS3.3 C.7.1.1) and TypeOfPatientID; each OtherPatientIDsSequence (0010,1002) item
    the same way; OtherPatientIDs (0010,1000) values, which carry no issuer.

    Only elements present are read (most images have none of the sequences).
    """
    present = ds._dict
    out: list[PatientIdentifier] = []
    pid = values.get("patient_id")
    if pid:
        out.append(_identifier(ds, pid, values.get("issuer_of_patient_id") or "", present))
    if _OTHER_IDS_SEQUENCE in present:
        for item in ds[_OTHER_IDS_SEQUENCE].value or []:
            value = _text(item, "PatientID", 64)
            if value:
                out.append(_identifier(item, value, _text(item, "IssuerOfPatientID", 64) or "", item._dict))
    if _OTHER_IDS in present:
        raw = ds[_OTHER_IDS].value
        for v in raw if isinstance(raw, MultiValue | list) else [raw]:
            text = str(v or "").replace("\x00", "").strip()[:64]
            if text and all(i.value != text for i in out):
                out.append(PatientIdentifier(text))
    return tuple(dict.fromkeys(out))


def _identifier(ds: Dataset, value: str, issuer: str, present: Any) -> PatientIdentifier:
    """One identifier with its issuer's qualifiers and type (from ``ds``, the data set or item)."""
    universal_id = universal_type = type_code = ""
    if _ISSUER_QUALIFIERS in present:
        qualifiers = _first_item(ds, "IssuerOfPatientIDQualifiersSequence")
        if qualifiers is not None:
            universal_id = _text(qualifiers, "UniversalEntityID", 64) or ""
            universal_type = (_text(qualifiers, "UniversalEntityIDType", 16) or "").upper()
            type_code = (_text(qualifiers, "IdentifierTypeCode", 16) or "").upper()
    if not type_code and _TYPE_OF_PATIENT_ID in present:
        type_code = (_text(ds, "TypeOfPatientID", 16) or "").upper()
    return PatientIdentifier(
        value=value.replace("\x00", "").strip(),
        issuer=issuer.replace("\x00", "").strip(),
        type_code=type_code,
        universal_id=universal_id,
        universal_id_type=universal_type,
    )
