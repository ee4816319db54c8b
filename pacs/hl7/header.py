"""MSH: what a message's header says, read even from an incomplete message, for its ACK."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import hl7

from pacs.hl7.tree import Hl7Error, Seg, Text

AckCode = Literal["AA", "AE", "AR"]

#: HL7 versions read; others are refused (AR 203).
VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6")
#: MSH-18 -> Python codec.
CHARSETS = {"": "utf-8", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8", "ASCII": "utf-8", "8859/1": "latin-1"}
_DEFAULT_ENCODING = {
    "FIELD": "|",
    "COMPONENT": "^",
    "REPETITION": "~",
    "ESCAPE": "\\",
    "SUBCOMPONENT": "&",
    "GROUP": "\r",
    "SEGMENT": "\r",
}


@dataclass(frozen=True)
class Header:
    """What the acknowledgement needs from MSH (ER7 values as received, in ``encoding``)."""

    encoding: dict[str, str] = field(default_factory=lambda: dict(_DEFAULT_ENCODING))
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    processing_id: str = ""
    version: str = ""
    charset: str = ""  # MSH-18 as sent, "" when refused or absent
    codec: str = "utf-8"
    message_type: str = ""  # MSH-9.1
    trigger: str = ""  # MSH-9.2
    sender: str = ""  # MSH-3.1^MSH-4.1, unescaped

    @property
    def name(self) -> str:
        """``ORM^O01`` (for logs)."""
        return f"{self.message_type}^{self.trigger}" if self.trigger else self.message_type


def split_lines(raw: bytes) -> bytes:
    """Segments end with CR; LF and CR LF (files, some engines) are read the same."""
    return raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")


def header_of(raw: bytes) -> Header:
    """Read MSH (and the charset) from the start of a message, even an incomplete one.

    Raises :class:`Hl7Error` (AR) when there is no usable MSH; ``exc.header`` is then as much
    of the header as could be read (or None)."""
    data = raw.lstrip(b" \t\r\n")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.startswith(b"MSH") or len(data) < 8:
        raise Hl7Error("no MSH segment: not an HL7 v2 message", 100, reject=True)
    first = split_lines(data).split(b"\r", 1)[0].decode("latin-1")
    sep = first[3:4] or " "
    fields = first.split(sep)
    seps = fields[1] if len(fields) > 1 else ""
    version = (fields[11].split(seps[:1] or "^")[0] if len(fields) > 11 else "").strip()
    if sep.isspace() or len(seps) < 4 or len(set(sep + seps[:4])) < 5 or (len(seps) > 4 and version < "2.7"):
        raise Hl7Error("MSH-1/MSH-2: unusable encoding characters", 100, reject=True)
    encoding = {
        **_DEFAULT_ENCODING,
        "FIELD": sep,
        "COMPONENT": seps[0],
        "REPETITION": seps[1],
        "ESCAPE": seps[2],
        "SUBCOMPONENT": seps[3],
    }
    if len(seps) == 5:  # v2.7 and later
        encoding["TRUNCATION"] = seps[4]
    elif len(seps) > 5:
        raise Hl7Error("MSH-1/MSH-2: unusable encoding characters", 100, reject=True)
    try:
        msh = hl7.parse(first)[0]
    except (hl7.ParseException, IndexError, ValueError) as exc:
        raise Hl7Error("MSH cannot be parsed", 100, reject=True) from exc
    t = Text(encoding, "latin-1")
    s = Seg(msh, t)

    def er7(n: int) -> str:
        reps = s.reps(n)
        return as_er7(reps[0]) if reps else ""

    charset = s.get(18).upper()
    header = Header(
        encoding=encoding,
        sending_application=er7(3),
        sending_facility=er7(4),
        receiving_application=er7(5),
        receiving_facility=er7(6),
        control_id=s.get(10),
        processing_id=s.get(11),
        version=version,
        charset="",
        codec="utf-8",
        message_type=s.get(9, 1).upper(),
        trigger=s.get(9, 2).upper(),
        sender=f"{s.get(3)}^{s.get(4)}",
    )
    refusal: Hl7Error | None = None
    if charset not in CHARSETS:
        refusal = Hl7Error(
            f"MSH-18 character set {charset[:20]!r} is not supported (UNICODE UTF-8 or 8859/1)",
            203,
            reject=True,
        )
    elif len(s.reps(18)) > 1 and any(s.get(18, rep=k).upper() != charset for k in range(len(s.reps(18)))):
        refusal = Hl7Error(
            "MSH-18 lists several character sets: code switching is not supported", 203, reject=True
        )
    else:
        header = replace_header(header, charset=s.get(18), codec=CHARSETS[charset])
    if refusal is None:
        if not header.control_id:
            refusal = Hl7Error("MSH-10 message control ID is missing", 101, reject=True)
        elif not header.message_type:
            refusal = Hl7Error("MSH-9 message type is missing", 101, reject=True)
        elif not version:
            refusal = Hl7Error("MSH-12 version ID is missing", 101, reject=True)
        elif version not in VERSIONS:
            refusal = Hl7Error(
                f"HL7 version {version[:10]!r} is not supported ({', '.join(VERSIONS)})", 203, reject=True
            )
    if refusal is not None:
        refusal.header = header
        raise refusal
    return header


def as_er7(node: Any) -> str:
    """A python-hl7 node as ER7, trailing empty components and subcomponents left out."""
    if isinstance(node, str):
        return node
    parts = [as_er7(x) for x in node]
    while len(parts) > 1 and not parts[-1]:
        parts.pop()
    return str(node.separator).join(parts)


def replace_header(h: Header, **changes: Any) -> Header:
    return dataclasses.replace(h, **changes)
