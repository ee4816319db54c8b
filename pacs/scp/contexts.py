"""The presentation contexts the listener accepts (PS3.8 7.1.1.13, PS3.7 Annex D).

Storage takes every transfer syntax modalities send, kept as received (no transcoding); other
services (Q/R, MPPS) add their contexts and handlers as an :class:`Extension`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

#: Transfer syntaxes accepted for storage: everything modalities send, kept as received.
STORAGE_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent)
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 lossless
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 MP@ML
    "1.2.840.10008.1.2.4.101",  # MPEG2 MP@HL
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 HP@4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 HP@4.2 2D
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 HP@4.2 3D
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo HP@4.2
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10
]


@dataclass(frozen=True)
class Extension:
    """A DIMSE service added to the listener by another module (Q/R, MPPS...)."""

    contexts: list[tuple[str, list[str], dict[str, Any]]]  # (abstract syntax, transfer syntaxes, role kwargs)
    handlers: list[tuple[Any, Callable[..., Any]]]


def add_supported_contexts(ae: AE, extensions: list[Extension]) -> None:
    """Verification, every storage SOP class pynetdicom knows, and the extensions' contexts."""
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), STORAGE_TRANSFER_SYNTAXES)
    for ext in extensions:
        for abstract, syntaxes, roles in ext.contexts:
            ae.add_supported_context(abstract, syntaxes, **roles)
