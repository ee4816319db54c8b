"""The original-mode acknowledgement (HL7 v2.5 2.9.2) of a message, in its own charset."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from pacs.hl7.header import AckCode, Header

#: HL7 table 0357 (message error condition codes) used here.
ERRORS = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}
_VERSION_SHAPE = re.compile(r"^\d\.\d(\.\d)?$")
#: Versions whose ERR layout the ACK follows as such; any other version is answered in the v2.5
#: layout (ERR-3/4/8), those before 2.5 in the v2.3/2.4 one (ERR-1 only).
_ACK_VERSIONS = ("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.1", "2.8.2")


def escape(text: str, encoding: dict[str, str]) -> str:
    """Text as an ER7 value: the separators and escape character escaped (HL7 v2.5 2.7.1)."""
    e = encoding["ESCAPE"]
    out = text.replace(e, f"{e}E{e}")
    for key, letter in (("FIELD", "F"), ("COMPONENT", "S"), ("SUBCOMPONENT", "T"), ("REPETITION", "R")):
        out = out.replace(encoding[key], f"{e}{letter}{e}")
    return re.sub(r"[\r\n]+", " ", out)


def ack(
    header: Header | None,
    code: AckCode,
    text: str = "",
    error: int = 0,
    *,
    now: datetime | None = None,
) -> bytes:
    """The original-mode acknowledgement of a message (HL7 v2.5 2.9.2), encoded in its charset.

    ``header`` None (no MSH could be read) answers in v2.5 with default encoding characters and
    an empty MSA-2."""
    h = header or Header(version="2.5")
    enc = h.encoding
    version = h.version if _VERSION_SHAPE.fullmatch(h.version or "") else "2.5"
    lib = version if version in _ACK_VERSIONS else "2.5"
    c, s = enc["COMPONENT"], enc["SUBCOMPONENT"]
    chars = c + enc["REPETITION"] + enc["ESCAPE"] + s
    if lib >= "2.7" and enc.get("TRUNCATION"):
        chars += enc["TRUNCATION"]
    stamp = (now or datetime.now().astimezone()).strftime("%Y%m%d%H%M%S%z")
    msh = [
        "MSH",
        chars,
        h.receiving_application,
        h.receiving_facility,
        h.sending_application,
        h.sending_facility,
        stamp,
        "",
        f"ACK{c}{escape(h.trigger, enc)}{c}ACK" if h.trigger else "ACK",
        uuid.uuid4().hex[:20].upper(),
        escape(h.processing_id or "P", enc),
        version,
        "",
        "",
        "",
        "",
        "",
        escape(h.charset, enc),
    ]
    msa = ["MSA", code, escape(h.control_id, enc), escape(text[:80], enc) if text else ""]
    segments = [msh, msa]
    if code != "AA":
        label = ERRORS.get(error, ERRORS[207])
        if lib >= "2.5":
            err = ["ERR", "", "", f"{error}{c}{label}{c}HL70357", "E", "", "", ""]
            err.append(escape(text[:250], enc) if text else "")
        else:
            err = ["ERR", f"{c}{c}{c}{error}{s}{label}{s}HL70357"]
        segments.append(err)
    sep = enc["FIELD"]
    out = "\r".join(_join(seg, sep) for seg in segments)
    return out.encode(h.codec, errors="replace")


def _join(fields: list[str], sep: str) -> str:
    """One ER7 segment, trailing empty fields left out (MSH: field 1 is the separator itself)."""
    while fields and not fields[-1]:
        fields.pop()
    return sep.join(fields)
