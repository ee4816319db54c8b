"""The C-STORE fast path's wire formats, against pynetdicom's own encoder and decoder."""

from __future__ import annotations

import io
import struct

import pytest
from pydicom.uid import CTImageStorage
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from pacs.scp.faststore import (
    MalformedPDU,
    encode_store_response,
    parse_command,
    pdata_pdu,
    split_pdvs,
)

SOP = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789"


def _pynetdicom_rsp(status: int, comment: str = "") -> bytes:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = SOP
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    (pdata,) = list(msg.encode_msg(1, 16384))
    ((context_id, data),) = pdata.presentation_data_value_list
    assert context_id == 1 and data[0] == 0x03  # command, last fragment
    return bytes(data[1:])


@pytest.mark.parametrize(("status", "comment"), [(0x0000, ""), (0xA700, "no space left"), (0xC000, "odd")])
def test_store_response_is_byte_equal_to_pynetdicoms(status: int, comment: str) -> None:
    ours = encode_store_response(7, CTImageStorage, SOP, status, comment)
    assert ours == _pynetdicom_rsp(status, comment)


def test_response_pdu_decodes_with_pynetdicom() -> None:
    command = encode_store_response(9, CTImageStorage, SOP, 0x0000)
    pdu = P_DATA_TF()
    pdu.decode(pdata_pdu(3, command))
    ((context_id, data),) = pdu.to_primitive().presentation_data_value_list
    assert context_id == 3 and data[0] == 0x03 and bytes(data[1:]) == command


def _store_request_pdvs(max_pdu: int) -> list[tuple[int, bytes]]:
    req = C_STORE()
    req.MessageID = 5
    req.AffectedSOPClassUID = CTImageStorage
    req.AffectedSOPInstanceUID = SOP
    req.Priority = 2
    req.DataSet = io.BytesIO(bytes(range(256)) * 20)  # opaque to the fast path
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return [item for p in msg.encode_msg(1, max_pdu) for item in p.presentation_data_value_list]


def test_split_and_parse_a_pynetdicom_store_request() -> None:
    items = _store_request_pdvs(1024)
    body = b"".join(struct.pack(">LB", len(d) + 1, cid) + d for cid, d in items)
    pdvs = split_pdvs(struct.pack(">BBL", 4, 0, len(body)) + body)
    assert [(cid, ctrl) for cid, ctrl, _ in pdvs] == [(cid, d[0]) for cid, d in items]
    command = b"".join(bytes(v) for _, ctrl, v in pdvs if ctrl & 1)
    fields = parse_command(command)
    assert int.from_bytes(fields[0x0100], "little") == 0x0001
    assert int.from_bytes(fields[0x0110], "little") == 5
    assert fields[0x1000].rstrip(b"\0").decode() == SOP
    assert int.from_bytes(fields[0x0800], "little") != 0x0101
    data = [ctrl for _, ctrl, _ in pdvs if not ctrl & 1]
    assert data[-1] & 2 and not any(c & 2 for c in data[:-1])  # only the last fragment says so
    assert b"".join(bytes(v) for _, ctrl, v in pdvs if not ctrl & 1) == bytes(range(256)) * 20


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no items
        struct.pack(">LBB", 1, 1, 3),  # an item shorter than its own header
        struct.pack(">LBB", 100, 1, 3) + b"x" * 10,  # longer than the PDU
        struct.pack(">LBB", 4, 1, 3) + b"ab" + b"\x00\x00",  # trailing bytes that are no item
    ],
)
def test_malformed_pdus_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedPDU):
        split_pdvs(struct.pack(">BBL", 4, 0, len(body)) + body)


def test_command_outside_group_0000_is_refused() -> None:
    with pytest.raises(MalformedPDU):
        parse_command(struct.pack("<HHL", 8, 0x18, 2) + b"1\0")
    with pytest.raises(MalformedPDU):
        parse_command(struct.pack("<HHL", 0, 0x100, 10) + b"\x01\x00")
