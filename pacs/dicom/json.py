"""Dataset and search results -> DICOM JSON (PS3.18 Annex F).

Binary values longer than a threshold become ``BulkDataURI`` (F.2.6) built by a caller-supplied
function from the element's tag path; shorter ones are sent as ``InlineBinary`` (F.2.7).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from json.encoder import encode_basestring as _quote  # what json.dumps(ensure_ascii=False) uses
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacs.dicom.attributes import Attribute

log = logging.getLogger("pacs.dicom.json")

#: VRs whose values are bytes (F.2.7).
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBER_VRS = frozenset({"FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})

#: Builds a BulkDataURI from a tag path such as ``"7FE00010"`` or ``"00540016/0/00181072"``.
BulkURI = Callable[[str], str]


def tag_hex(tag: int) -> str:
    """``0x0020000D`` -> ``"0020000D"``."""
    return f"{tag:08X}"


def person_name_json(value: str) -> dict[str, str]:
    """A PN value as the object of F.2.2: up to three component groups."""
    groups = str(value).split("=")
    out: dict[str, str] = {}
    for key, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if group:
            out[key] = group
    return out


def dataset_to_json(
    ds: Dataset,
    *,
    bulk_uri: BulkURI | None = None,
    threshold: int = 1024,
    _prefix: str = "",
) -> dict[str, Any]:
    """One dataset as a DICOM JSON object (F.2), group 0002 excluded.

    Binary values larger than ``threshold`` bytes get a ``BulkDataURI`` when ``bulk_uri`` is
    given, otherwise they are left without a value.
    """
    out: dict[str, Any] = {}
    for elem in ds:
        tag = int(elem.tag)
        if elem.tag.group == 0x0002:
            continue
        path = f"{_prefix}{tag_hex(tag)}"
        try:
            out[tag_hex(tag)] = _element_json(elem, path, bulk_uri, threshold)
        except Exception as exc:  # a malformed value must not break the whole response
            log.debug("cannot encode %s as JSON: %s", path, exc)
            out[tag_hex(tag)] = {"vr": elem.VR}
    return out


def _element_json(elem: DataElement, path: str, bulk_uri: BulkURI | None, threshold: int) -> dict[str, Any]:
    vr = elem.VR
    if vr == "SQ":
        items = [
            dataset_to_json(item, bulk_uri=bulk_uri, threshold=threshold, _prefix=f"{path}/{i}/")
            for i, item in enumerate(elem.value or [])
        ]
        return {"vr": vr, "Value": items} if items else {"vr": vr}
    if vr in BINARY_VRS or int(elem.tag) in _PIXEL_TAGS:
        value = elem.value
        if vr not in BINARY_VRS:
            vr = "OB"
        if value is None or (isinstance(value, bytes | bytearray) and len(value) == 0):
            if elem.is_undefined_length or int(elem.tag) in _PIXEL_TAGS:
                return {"vr": vr, "BulkDataURI": bulk_uri(path)} if bulk_uri else {"vr": vr}
            return {"vr": vr}
        length = len(value) if isinstance(value, bytes | bytearray) else threshold + 1
        if length > threshold or int(elem.tag) in _PIXEL_TAGS:
            return {"vr": vr, "BulkDataURI": bulk_uri(path)} if bulk_uri else {"vr": vr}
        return {"vr": vr, "InlineBinary": base64.b64encode(bytes(value)).decode("ascii")}
    if elem.VM == 0 or elem.value is None or elem.value == "":
        return {"vr": vr}
    values = list(elem.value) if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]
    return {"vr": vr, "Value": [_scalar(vr, v) for v in values]}


def _scalar(vr: str, v: Any) -> Any:
    if v is None or v == "":
        return None
    if vr == "PN":
        return person_name_json(str(v))
    if vr == "AT":
        return tag_hex(int(v))
    if vr in _NUMBER_VRS:
        return v if isinstance(v, int | float) else float(v)
    if vr == "IS":
        return int(v)
    if vr == "DS":
        f = float(v)
        return int(f) if f.is_integer() and abs(f) < 2**53 else f
    return str(v)


# ---------------------------------------------------------------- search results


def attribute_json(attr: Attribute, value: Any) -> dict[str, Any]:
    """One indexed attribute value (as the index returns it) as a DICOM JSON element."""
    vr = attr.vr
    if value is None or value == "":
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [person_name_json(v) for v in str(value).split("\\")]}
    if attr.is_integer and vr != "CS":
        items: Iterable[Any] = value if isinstance(value, list | tuple) else [value]
        return {"vr": vr, "Value": [int(v) for v in items]}
    if vr == "DS":
        parts = [p for p in str(value).split("\\") if p.strip()]
        try:
            return {"vr": vr, "Value": [_scalar("DS", p) for p in parts]}
        except ValueError:
            return {"vr": vr}
    return {"vr": vr, "Value": [p for p in str(value).split("\\")]}


class ResultPlan:
    """The layout of every match of one QIDO-RS query, worked out once: which catalogue
    attributes (and extra elements such as RetrieveURL) appear, under which tag, in tag order.
    :meth:`text` writes a match's JSON directly (byte for byte what ``json.dumps`` makes of the
    :func:`attribute_json` objects): a 2,000-study search spent most of its time building and
    serialising dicts.
    """

    def __init__(self, return_keys: Iterable[Attribute], extra_tags: Iterable[str] = ()) -> None:
        entries: dict[str, Attribute | None] = {tag_hex(a.tag): a for a in return_keys}
        for tag in extra_tags:
            entries[tag] = None
        self.layout = sorted(entries.items())
        self._texts = [
            (tag, f'"{tag}":', None if a is None else (a.keyword, _text_converter(a)))
            for tag, a in self.layout
        ]

    def text(self, row: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> str:
        """One match as DICOM JSON text (compact, UTF-8 characters unescaped). ``extra`` maps
        further tags to DICOM JSON elements, as objects or as :class:`JsonText`."""
        parts = []
        for tag, key, how in self._texts:
            if how is None:
                if extra and tag in extra:
                    value = extra[tag]
                    parts.append(key + (value if isinstance(value, JsonText) else _dumps(value)))
            elif how[0] in row:
                parts.append(key + how[1](row[how[0]]))
        return "{" + ",".join(parts) + "}"


class JsonText(str):
    """A DICOM JSON element already written as text (see :meth:`ResultPlan.text`)."""


def text_element(vr: str, value: str) -> JsonText:
    """``{"vr": vr, "Value": [value]}`` as JSON text, for a single string value."""
    return JsonText(f'{{"vr":"{vr}","Value":[{_quote(value)}]}}')


_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _text_converter(attr: Attribute) -> Callable[[Any], str]:
    """:func:`attribute_json` for one attribute, as JSON text."""
    vr = attr.vr
    empty = f'{{"vr":"{vr}"}}'
    head = f'{{"vr":"{vr}","Value":['
    if vr == "PN":

        def name(value: Any) -> str:
            if value is None or value == "":
                return empty
            out = []
            for v in str(value).split("\\"):
                groups = [f'"{k}":{_quote(g)}' for k, g in zip(_PN_GROUPS, v.split("="), strict=False) if g]
                out.append("{" + ",".join(groups) + "}")
            return head + ",".join(out) + "]}"

        return name
    if attr.is_integer and vr != "CS" and not attr.vr.startswith("D"):

        def integer(value: Any) -> str:
            if value is None or value == "":
                return empty
            if isinstance(value, int):
                return head + str(value) + "]}"
            return _dumps(attribute_json(attr, value))

        return integer
    if vr == "DS" or attr.is_integer:
        return lambda value: _dumps(attribute_json(attr, value))

    def text(value: Any) -> str:
        if value is None or value == "":
            return empty
        value = str(value)
        if "\\" in value:
            return head + ",".join(_quote(v) for v in value.split("\\")) + "]}"
        return head + _quote(value) + "]}"

    return text
