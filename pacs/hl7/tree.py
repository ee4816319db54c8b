"""Reading python-hl7 trees: segments, fields, repetitions, components as unescaped text.

python-hl7 (the ``hl7`` package) splits a message into nested containers; :class:`Seg` reads a
segment's values by HL7 position, unescapes them (HL7 v2.5 2.7) and normalises them to NFC;
:class:`Msg` finds segments by name. :class:`Hl7Error` is a message refused with its reason.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING, Any

from pacs.services.orders.model import Code

if TYPE_CHECKING:
    from pacs.hl7.header import Header

_TS = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,4})?)?)?)?)?)?([+-]\d{4})?$")


class Hl7Error(Exception):
    """A message answered AE (``reject=False``) or AR (``reject=True``) with ``code`` (table
    0357) and ``reason`` (fit for the sender to read; values it quotes are the sender's own)."""

    def __init__(self, reason: str, code: int = 207, *, reject: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.reject = reject
        self.header: Header | None = None


def pick(node: Any, k: int) -> Any:
    """Child ``k`` (1-based) of one level of a python-hl7 tree, or None. python-hl7 keeps a
    level as a plain str when its text has no separator of that level or below (a field without
    ``~^&`` is ``Field([text])``, a repetition without ``^&`` ``Repetition([text])`` and so on):
    that str is then its own first child, and has no others."""
    if node is None:
        return None
    if isinstance(node, str):
        return node if k == 1 else None
    return node[k - 1] if 0 < k <= len(node) else None


class Text:
    """Unescapes and normalises text values of one message."""

    def __init__(self, encoding: dict[str, str], codec: str) -> None:
        self.enc = encoding
        self.codec = codec
        e = re.escape(encoding["ESCAPE"])
        self._escape = re.compile(f"{e}([^{e}]*){e}")

    def raw(self, sub: Any) -> str:
        """The text of one subcomponent (a str, None when absent), unescaped (HL7 v2.5 2.7)."""
        if not sub:
            return ""
        text = str(sub)
        if text == '""':  # the HL7 null: "no value"
            return ""
        if self.enc["ESCAPE"] in text:
            text = self._escape.sub(self._unescape, text)
        return unicodedata.normalize("NFC", text).strip()

    def _unescape(self, m: re.Match[str]) -> str:
        body = m.group(1)
        simple = {
            "F": self.enc["FIELD"],
            "S": self.enc["COMPONENT"],
            "T": self.enc["SUBCOMPONENT"],
            "R": self.enc["REPETITION"],
            "E": self.enc["ESCAPE"],
            "H": "",
            "N": "",
            ".br": "\n",
        }
        if body in simple:
            return simple[body]
        if body.startswith(".sp"):
            return "\n"
        if body.startswith("X") and re.fullmatch(r"X([0-9A-Fa-f]{2})+", body):
            return bytes.fromhex(body[1:]).decode(self.codec, errors="replace")
        if body[:1] in ("C", "M", "Z", "."):  # charset switches, local escapes, formatting
            return ""
        return m.group(0)


class Seg:
    """One segment: fields by number, repetitions, components, subcomponents as text."""

    def __init__(self, seg: Any, text: Text) -> None:
        # python-hl7: seg[0] is the name, seg[n] field n; in MSH seg[1] is the field separator
        # (MSH-1) and seg[2] the encoding characters (MSH-2, not split), so MSH-n is seg[n] too.
        # A segment without any separator (a bare name) is a plain str.
        self._seg = (seg,) if isinstance(seg, str) else seg
        self.name: str = str(pick(self._seg[0], 1) or "")
        self._t = text

    def reps(self, n: int) -> list[Any]:
        """The repetitions of field ``n`` (none when the field is absent or empty)."""
        if n < 1 or n >= len(self._seg):
            return []
        f = self._seg[n]
        if isinstance(f, str) or (len(f) == 1 and f[0] == ""):
            return [f] if f else []
        return list(f)

    def get(self, n: int, c: int = 1, s: int = 1, rep: int = 0) -> str:
        """Field ``n``, repetition ``rep``, component ``c``, subcomponent ``s`` as text."""
        reps = self.reps(n)
        if rep >= len(reps):
            return ""
        return self.sub(reps[rep], c, s)

    def sub(self, field_rep: Any, c: int = 1, s: int = 1) -> str:
        """Component ``c``, subcomponent ``s`` of one field repetition as text."""
        return self._t.raw(pick(pick(field_rep, c), s))

    def code(self, n: int, first: int = 1, rep: int = 0) -> Code | None:
        """A CE/CWE triple at components ``first``.. (value, meaning, scheme) or None."""
        value = self.get(n, first, rep=rep)
        if not value:
            return None
        return Code(
            value=value, meaning=self.get(n, first + 1, rep=rep), scheme=self.get(n, first + 2, rep=rep)
        )

    def pn_xpn(self, n: int) -> str:
        """XPN (family&..^given^middle^suffix^prefix) -> DICOM PN family^given^middle^prefix^suffix."""
        return pn([self.get(n, 1), self.get(n, 2), self.get(n, 3), self.get(n, 5), self.get(n, 4)])

    def pn_xcn(self, n: int) -> str:
        """XCN (id^family&..^given^middle^suffix^prefix) -> PN, else the ID."""
        name = pn([self.get(n, 2), self.get(n, 3), self.get(n, 4), self.get(n, 6), self.get(n, 5)])
        return name or self.get(n, 1)

    def pn_cnn(self, n: int) -> str:
        """Component 1 as CNN/CN (id&family&given&middle&suffix&prefix) -> PN, else the ID."""
        name = pn([self.get(n, 1, k) for k in (2, 3, 4, 6, 5)])
        return name or self.get(n, 1, 1)

    def ts(self, n: int, c: int = 1, s: int = 1, where: str = "") -> str:
        """An HL7 time stamp -> DICOM DT (offset kept); a malformed one is AE 102."""
        value = self.get(n, c, s)
        if value and not _TS.fullmatch(value):
            raise Hl7Error(f"{where or f'{self.name}-{n}'} is not an HL7 time stamp", 102)
        return value


def pn(parts: list[str]) -> str:
    clean = [re.sub(r"[\^=\\]", " ", p).strip() for p in parts]
    return "^".join(clean).rstrip("^")


#: The segments the messages below read (MSH aside): only these are parsed.
READ = frozenset({"PID", "PV1", "ORC", "TQ1", "OBR", "IPC", "OBX", "MRG", "ZDS"})


class Msg:
    """The segments of one message by name (those of :data:`READ`)."""

    def __init__(self, segments: list[Seg]) -> None:
        self.segments = segments

    def all(self, name: str) -> list[Seg]:
        assert name in READ, f"{name} is read: add it to READ"
        return [s for s in self.segments if s.name == name]

    def one(self, name: str) -> Seg | None:
        found = self.all(name)
        return found[0] if found else None
