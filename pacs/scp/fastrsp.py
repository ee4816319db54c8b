"""C-FIND responses sent without building a pynetdicom message for each one.

pynetdicom sends every response of a C-FIND as its own DIMSE message: it builds a command
Dataset from the primitive, encodes it twice (once more for the group length) with pydicom's
general writer, and queues the command and the identifier as two P-DATA-TF PDUs. For a worklist
answer of a hundred items that was over half of the server's time per item. Within one request
only the Status changes between responses, so :class:`FastResponses` encodes each distinct
command set once (through pynetdicom itself, so the bytes are pynetdicom's) and sends the command
and the identifier as two PDVs of one P-DATA-TF PDU (PS3.8 9.3.5: a PDU carries one or more
PDVs, in order) when they fit the peer's maximum PDU length; otherwise, or when anything listens
for ``EVT_DIMSE_SENT`` (pynetdicom's debug logging), it hands the primitive to pynetdicom.

Installed on accepted associations by :meth:`pacs.scp.reactor.WakeupAssociation._install`.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA

#: Command sets kept per association (a request needs two or three: pending, pending with
#: optional-key warning, final).
_KEEP = 8
#: Each PDV item costs 6 bytes of the PDU: a 4-byte length, the context ID and the header byte.
_PDV_OVERHEAD = 6


class FastResponses(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, with the C-FIND response path above."""

    _pacs_commands: dict[tuple[Any, ...], bytes]

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """Send a DIMSE message; C-FIND responses by the short path when they can be."""
        if not isinstance(primitive, C_FIND) or primitive.MessageIDBeingRespondedTo is None:
            super().send_msg(primitive, context_id)
            return
        listened = self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        if listened or primitive.OffendingElement or primitive.ErrorComment:
            super().send_msg(primitive, context_id)
            return
        identifier = primitive.Identifier
        data = identifier.getvalue() if identifier is not None else b""
        if identifier is not None and not data:  # an empty identifier: pynetdicom decides
            super().send_msg(primitive, context_id)
            return
        command = self._command(primitive, bool(data))
        size = len(command) + _PDV_OVERHEAD + (len(data) + _PDV_OVERHEAD if data else 0)
        limit = self.maximum_pdu_size
        if limit and size > limit:
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        if data:
            pdata.presentation_data_value_list.append((context_id, b"\x02" + data))
        self.dul.send_pdu(pdata)

    def _command(self, primitive: C_FIND, has_data: bool) -> bytes:
        """The encoded command set of a response (pynetdicom's encoding, kept for reuse)."""
        try:
            cache = self._pacs_commands
        except AttributeError:
            cache = self._pacs_commands = {}
        key = (
            str(primitive.AffectedSOPClassUID),
            primitive.MessageIDBeingRespondedTo,
            primitive.Status,
            has_data,
        )
        command = cache.get(key)
        if command is None:
            msg = C_FIND_RSP()
            msg.primitive_to_message(primitive)
            command = encode(msg.command_set, True, True)
            assert command is not None
            if len(cache) >= _KEEP:
                cache.clear()
            cache[key] = command
        return command
