"""Response identifiers encoded by :func:`pacs.dicom.encode.encode_elements` instead of pydicom's
general writer (about half of a worklist response's server time).

pynetdicom encodes every identifier a handler yields with ``pynetdicom.service_class.encode``;
:mod:`pacs.scp.pynetdicom_patches` replaces that name with :func:`encode`, which encodes a
:class:`PreEncoded` from its element triples and hands anything else to pynetdicom's own.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode as _pynetdicom_encode

from pacs.dicom.encode import Element, encode_elements


class PreEncoded(Dataset):
    """An identifier known by its (tag, VR, value) triples; its Dataset side stays empty (a
    debug dump of it shows nothing)."""

    def __init__(self, elements: Sequence[Element], charset: str) -> None:
        super().__init__()
        self.__dict__["_pacs_elements"] = elements
        self.__dict__["_pacs_charset"] = charset

    def encoded(self, implicit: bool) -> bytes:
        """The Little Endian encoding."""
        return encode_elements(
            self.__dict__["_pacs_elements"], implicit=implicit, charset=self.__dict__["_pacs_charset"]
        )


def encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
    """pynetdicom's ``encode``, with the fast path for :class:`PreEncoded`."""
    if isinstance(ds, PreEncoded) and is_little_endian and not deflated:
        return ds.encoded(is_implicit_vr)
    return _pynetdicom_encode(ds, is_implicit_vr, is_little_endian, deflated)
