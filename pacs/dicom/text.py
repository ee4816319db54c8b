"""Pure text helpers: UID validation (PS3.5 9.1), search keys for person names, DA/TM normalisation."""

from __future__ import annotations

import re
import unicodedata

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_LOOSE_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(uid: str, *, strict: bool = True) -> bool:
    """True for a UID as PS3.5 9.1 defines it: at most 64 characters, components of digits
    separated by single dots, no component starting with ``0`` unless it is ``0`` itself.

    Every edge (C-STORE, STOW-RS, MPPS, C-FIND, QIDO-RS and WADO-RS parameters) checks UIDs
    with this rule. ``strict=False`` also accepts leading zeros (``1.2.03``), for code that must
    read what older versions of the archive let in; nothing new is accepted with it.
    """
    if not uid or len(uid) > 64:
        return False
    return bool((_UID_RE if strict else _UID_LOOSE_RE).fullmatch(uid))


_EXTRA_FOLDS = str.maketrans({"đ": "d", "Đ": "d", "ø": "o", "Ø": "o", "ł": "l", "Ł": "l", "ß": "ss"})


def fold(text: str) -> str:
    """Case- and accent-folded form of free text: ``Nguyễn^Văn An`` -> ``nguyen^van an``.

    Vietnamese đ/Đ has no Unicode decomposition, so it is mapped explicitly.
    """
    text = unicodedata.normalize("NFKD", text.translate(_EXTRA_FOLDS))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return text.casefold()


_ASCII_FOLDS = str.maketrans({"đ": "d", "Đ": "D", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "ß": "ss"})


def ascii_text(text: str) -> str:
    """``text`` with its accents removed, case kept: ``Nguyễn^Văn Đức`` -> ``Nguyen^Van Duc``; a
    character with no Latin base letter becomes ``?`` (for systems limited to the default
    repertoire, PS3.5 6.1.2)."""
    text = unicodedata.normalize("NFKD", text.translate(_ASCII_FOLDS))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return text.encode("ascii", "replace").decode("ascii")


def name_key(name: str) -> str:
    """The search key of a person name: folded, component separators as single spaces.

    ``Nguyễn^Văn An`` -> ``nguyen van an``; all component groups (alphabetic, ideographic,
    phonetic) are kept, separated by spaces.
    """
    folded = fold(name).replace("^", " ").replace("=", " ")
    return " ".join(folded.split())


def normalise_time(value: str) -> str:
    """``10:30`` / ``1030`` / ``103000.5`` -> ``103000.5`` style (colons removed, HHMMSS padded).

    Fractions are kept as sent; returns ``""`` for an empty value.
    """
    value = value.strip().replace(":", "")
    if not value:
        return ""
    main, _, frac = value.partition(".")
    main = main.ljust(6, "0")[:6]
    return f"{main}.{frac}" if frac else main


def normalise_date(value: str) -> str:
    """``2024-01-31`` / ``2024.01.31`` -> ``20240131``."""
    return value.strip().replace("-", "").replace(".", "")
