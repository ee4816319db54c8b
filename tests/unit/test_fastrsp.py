"""The C-FIND response short path (pacs.scp.fastrsp) sends what pynetdicom would, packed."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import ModalityWorklistInformationFind

from pacs.scp.fastrsp import FastResponses


class _Dul:
    def __init__(self) -> None:
        self.sent: list[P_DATA] = []

    def send_pdu(self, pdu: P_DATA) -> None:
        self.sent.append(pdu)


class _Assoc:
    def __init__(self, max_pdu: int, listeners: list[Any] | None = None) -> None:
        self.dul = _Dul()
        self._listeners = listeners or []
        self.acceptor = self.requestor = self  # DIMSEServiceProvider reads maximum_length there
        self.maximum_length = max_pdu
        self.is_requestor = False
        self.abort = self._abort_blocking = self._abort_nonblocking = lambda: None

    def get_handlers(self, event: Any) -> list[Any]:
        return self._listeners if event is evt.EVT_DIMSE_SENT else []


def _provider(cls: type, assoc: _Assoc) -> DIMSEServiceProvider:
    p = DIMSEServiceProvider.__new__(DIMSEServiceProvider)
    p.__class__ = cls
    p._assoc = assoc  # type: ignore[attr-defined]
    return p


def _rsp(status: int, identifier: bytes | None) -> C_FIND:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = ModalityWorklistInformationFind
    rsp.Status = status
    rsp.Identifier = BytesIO(identifier) if identifier is not None else None
    return rsp


def _pdvs(pdus: list[P_DATA]) -> list[tuple[int, bytes]]:
    return [pdv for pdu in pdus for pdv in pdu.presentation_data_value_list]


@pytest.fixture
def max_pdu(monkeypatch: pytest.MonkeyPatch) -> int:
    size = 16382
    monkeypatch.setattr(DIMSEServiceProvider, "maximum_pdu_size", property(lambda self: size))
    return size


@pytest.mark.parametrize(
    "status, identifier", [(0xFF00, b"\x10\x00\x10\x00\x04\x00\x00\x00AB^C"), (0x0000, None)]
)
def test_same_pdvs_as_pynetdicom_in_one_pdu(max_pdu: int, status: int, identifier: bytes | None) -> None:
    """Command and identifier bytes are pynetdicom's own, sent as the PDVs of one PDU."""
    theirs, ours = _Assoc(max_pdu), _Assoc(max_pdu)
    _provider(DIMSEServiceProvider, theirs).send_msg(_rsp(status, identifier), 3)
    fast = _provider(FastResponses, ours)
    for _ in range(3):  # the second and third from the kept command set
        fast.send_msg(_rsp(status, identifier), 3)
    assert len(ours.dul.sent) == 3
    assert _pdvs(ours.dul.sent[:1]) == _pdvs(theirs.dul.sent)
    assert all(_pdvs([p]) == _pdvs(theirs.dul.sent) for p in ours.dul.sent)


def test_status_changes_the_command(max_pdu: int) -> None:
    """A kept command set is per status: pending and final differ."""
    assoc = _Assoc(max_pdu)
    fast = _provider(FastResponses, assoc)
    fast.send_msg(_rsp(0xFF00, b"\x10\x00\x10\x00\x00\x00\x00\x00"), 1)
    fast.send_msg(_rsp(0x0000, None), 1)
    pending, final = (_pdvs([p])[0][1] for p in assoc.dul.sent)
    assert pending != final
    assert pending[-2:] == b"\x00\xff" and final[-2:] == b"\x00\x00"  # Status is the last element


def test_large_identifier_and_listeners_take_pynetdicoms_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the peer's PDU size, or with an EVT_DIMSE_SENT listener, pynetdicom sends it."""
    monkeypatch.setattr(DIMSEServiceProvider, "maximum_pdu_size", property(lambda self: 200))
    big = b"\x10\x00\x10\x00\xf0\x00\x00\x00" + b"A" * 240
    assoc = _Assoc(200)
    _provider(FastResponses, assoc).send_msg(_rsp(0xFF00, big), 1)
    assert len(assoc.dul.sent) > 2  # fragmented by pynetdicom: command, then data in pieces
    heard = _Assoc(16382, listeners=[(lambda e: None, None)])
    monkeypatch.setattr(DIMSEServiceProvider, "maximum_pdu_size", property(lambda self: 16382))
    _provider(FastResponses, heard).send_msg(_rsp(0xFF00, b"\x10\x00\x10\x00\x00\x00\x00\x00"), 1)
    assert len(heard.dul.sent) == 2  # command and data set as two PDUs


def test_other_messages_untouched(max_pdu: int) -> None:
    """Anything but a C-FIND response goes to pynetdicom."""
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.AffectedSOPInstanceUID = "1.2.3"
    rsp.Status = 0
    assoc = _Assoc(max_pdu)
    _provider(FastResponses, assoc).send_msg(rsp, 1)
    assert len(assoc.dul.sent) == 1 and len(_pdvs(assoc.dul.sent)) == 1
