"""Every change this archive makes to pynetdicom's module globals, made once (:func:`apply`).

Pinned to pynetdicom 3.0 (``pyproject.toml``: ``pynetdicom>=3.0,<3.1``). Each patch replaces a
name pynetdicom looks up at run time in its own module, so installing it once per process is
enough and installing it again changes nothing. The patches, and why:

1. ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET = True`` (a documented setting): every
   C-STORE data set streams to a file as it arrives, never whole in memory.
2. ``pynetdicom.dimse_messages.NamedTemporaryFile`` -> :class:`pacs.scp.receive.ReceiveFile`:
   the file of that chunked receive (3.0 ``DIMSEMessage.decode_msg``) is a new blob of the
   association's archive, written in place; a full disk answers 0xA700 instead of aborting the
   association. Outside our listeners' associations it is an ordinary temporary file.
3. ``pynetdicom.dimse_messages.create_file_meta`` / ``write_file_meta_info`` ->
   :func:`pacs.scp.receive.create_meta` / :func:`~pacs.scp.receive.write_meta`: that receive
   (their only users in ``dimse_messages`` in 3.0) then writes our file meta and skips building
   pynetdicom's (a tenth of a C-STORE); for any other file the stand-ins write pynetdicom's.
4. ``pynetdicom.association.DULServiceProvider`` -> :class:`pacs.scp.reactor.WakeupDUL`, and
   ``pynetdicom.ae.Association`` -> :class:`~pacs.scp.reactor.WakeupAssociation`: associations
   this process opens (C-MOVE to a destination) and accepts wait on their socket instead of
   pynetdicom's 1 ms polling sleeps (see :mod:`pacs.scp.reactor`; acceptors are converted by
   its ``WakeupRequestHandler``, which is not a patch).

5. ``pynetdicom.service_class.encode`` -> :func:`pacs.scp.preencoded.encode`: identifiers a
   handler yields as :class:`~pacs.scp.preencoded.PreEncoded` (worklist answers) are encoded
   from their element triples, not by pydicom's general writer (half of a response's time);
   anything else goes to pynetdicom's own ``encode``.

:func:`set_pdu_dumps` sets three more pynetdicom settings (``_config.LOG_HANDLER_LEVEL``,
``LOG_*_IDENTIFIERS``) from our log level. :data:`PINNED` lists every pynetdicom name these
patches and :mod:`pacs.scp.reactor` / :mod:`pacs.scp.fastrsp` / :mod:`pacs.scp.faststore` /
:mod:`pacs.scp.listener` / :mod:`pacs.scp.commitment` replace or use that is not public API;
``tests/unit/test_pynetdicom_patches.py`` fails when one disappears.
"""

from __future__ import annotations

from types import ModuleType

from pynetdicom import _config, dimse_messages, service_class
from pynetdicom import ae as pynetdicom_ae
from pynetdicom import association as pynetdicom_association

from pacs.scp.preencoded import encode as preencoded_encode
from pacs.scp.reactor import WakeupAssociation, WakeupDUL
from pacs.scp.receive import ReceiveFile, create_meta, write_meta

#: The pynetdicom series these patches and the reactor's run loops are written against.
PYNETDICOM_SERIES = "3.0"

#: (module, attribute path) of every non-public pynetdicom name we patch, override or use.
#: Class attributes and methods are looked up on the class.
PINNED: tuple[tuple[str, str], ...] = (
    # patched module globals (apply)
    ("pynetdicom._config", "STORE_RECV_CHUNKED_DATASET"),
    ("pynetdicom._config", "LOG_HANDLER_LEVEL"),
    ("pynetdicom.dimse_messages", "NamedTemporaryFile"),
    ("pynetdicom.dimse_messages", "create_file_meta"),
    ("pynetdicom.dimse_messages", "write_file_meta_info"),
    ("pynetdicom.association", "DULServiceProvider"),
    ("pynetdicom.ae", "Association"),
    ("pynetdicom.service_class", "encode"),
    ("pynetdicom._config", "LOG_RESPONSE_IDENTIFIERS"),
    ("pynetdicom._config", "LOG_REQUEST_IDENTIFIERS"),
    # overridden or called by pacs.scp.reactor
    ("pynetdicom.dul", "DULServiceProvider.run_reactor"),
    ("pynetdicom.dul", "DULServiceProvider._read_pdu_data"),
    ("pynetdicom.dul", "DULServiceProvider._decode_pdu"),
    ("pynetdicom.dul", "DULServiceProvider._process_recv_primitive"),
    ("pynetdicom.dul", "DULServiceProvider._is_transport_event"),
    ("pynetdicom.dul", "DULServiceProvider.send_pdu"),
    ("pynetdicom.dul", "DULServiceProvider.kill_dul"),
    ("pynetdicom.dul", "DULServiceProvider.stop_dul"),
    ("pynetdicom.dul", "DULServiceProvider.idle_timer_expired"),
    ("pynetdicom.association", "Association._run_reactor"),
    ("pynetdicom.association", "Association._serve_request"),
    ("pynetdicom.association", "Association.kill"),
    ("pynetdicom.transport", "RequestHandler._create_association"),
    # used by pacs.scp.listener
    ("pynetdicom.ae", "ApplicationEntity.make_server"),
    ("pynetdicom.transport", "ThreadedAssociationServer.process_request_thread"),
    ("pynetdicom.transport", "AssociationServer.active_associations"),
    # used by pacs.scp.commitment (an N-EVENT-REPORT on an association we accepted, sent from
    # another thread with the reactor paused: _reactor_checkpoint, _is_paused, dimse.msg_queue)
    ("pynetdicom.dul", "DULServiceProvider.peek_next_pdu"),
    ("pynetdicom.dsutils", "encode"),
)

#: Instance attributes (set in ``__init__``) that the reactor, the fast path and the listener
#: read or write: checked on instances of these classes.
PINNED_INSTANCE: dict[str, tuple[str, ...]] = {
    "pynetdicom.association.Association": (
        "_reactor_checkpoint",
        "_is_paused",
        "_kill",
        "_dul_ready",
        "_sent_release",
        "_accepted_cx",
        "dimse",
        "acse",
        "dul",
    ),
    "pynetdicom.dul.DULServiceProvider": (
        "_idle_timer",
        "_kill_thread",
        "_run_loop_delay",
        "_recv_pdu",
        "artim_timer",
        "event_queue",
        "state_machine",
        "socket",
    ),
    "pynetdicom.dimse.DIMSEServiceProvider": (
        "message",
        "msg_queue",
        "send_msg",
        "maximum_pdu_size",
        "assoc",
    ),
    "pynetdicom.ae.ApplicationEntity": ("_servers",),
}


#: The patched module globals: (module, name, our value), in the order of the module docstring.
PATCHES: tuple[tuple[ModuleType, str, object], ...] = (
    (_config, "STORE_RECV_CHUNKED_DATASET", True),
    (dimse_messages, "NamedTemporaryFile", ReceiveFile),
    (dimse_messages, "create_file_meta", create_meta),
    (dimse_messages, "write_file_meta_info", write_meta),
    (pynetdicom_association, "DULServiceProvider", WakeupDUL),
    (pynetdicom_ae, "Association", WakeupAssociation),
    (service_class, "encode", preencoded_encode),
)


def apply() -> None:
    """Install the patches of this module's docstring (idempotent: the same values each time).

    Raises :class:`RuntimeError` when a name to patch is not there (another pynetdicom): setting
    it would change nothing pynetdicom reads.
    """
    for module, name, value in PATCHES:
        if not hasattr(module, name):
            raise RuntimeError(
                f"{module.__name__}.{name} is gone: pacs.scp.pynetdicom_patches needs pynetdicom 3.0"
            )
        if getattr(module, name) is not value:
            setattr(module, name, value)


def applied() -> bool:
    """Whether every patch is in place."""
    return all(getattr(module, name, None) is value for module, name, value in PATCHES)


def set_pdu_dumps(enabled: bool) -> None:
    """pynetdicom's own PDU / DIMSE dump handlers on or off (``_config.LOG_HANDLER_LEVEL``).

    They cost about a quarter of a C-FIND response; our log has one line per association and
    per instance. They stay on at ``[log] level = "DEBUG"``, for debugging a peer. The same goes
    for ``LOG_RESPONSE_IDENTIFIERS`` / ``LOG_REQUEST_IDENTIFIERS``: pynetdicom formats every C-FIND
    identifier for a DEBUG line even when nothing logs at DEBUG (a third of a worklist response).
    """
    _config.LOG_HANDLER_LEVEL = "standard" if enabled else "none"
    _config.LOG_RESPONSE_IDENTIFIERS = enabled
    _config.LOG_REQUEST_IDENTIFIERS = enabled
