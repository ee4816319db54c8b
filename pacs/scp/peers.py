"""Associations this archive opens to the peers of ``[dicom] destinations``.

C-MOVE sends its instances to a destination, Storage Commitment sends its N-EVENT-REPORT to the
requester's entry: both look the AE title up here and open the association with the same
options (TLS when the entry says ``tls = true``: the peer verified against ``[dicom] tls_ca``,
our ``tls_cert`` presented when one is set, PS3.15 B.9; ``TCP_NODELAY`` as on accepted sockets).
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

from pynetdicom import evt

from pacs import tls
from pacs.config import Destination, Settings


class Peers:
    """The ``[dicom] destinations`` of one process, with the TLS client context they share."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tls: ssl.SSLContext | None = None  # made on the first association to a TLS peer
        self._lock = threading.Lock()

    def find(self, ae_title: str) -> Destination | None:
        """The destination entry of an AE title, or None."""
        title = ae_title.strip()
        return next((d for d in self.settings.dicom.destinations if d.ae_title == title), None)

    def tls_client(self) -> ssl.SSLContext:
        """The TLS context of associations to destinations with ``tls = true``."""
        with self._lock:
            if self._tls is None:
                d = self.settings.dicom
                cert = d.tls_cert if str(d.tls_cert) not in ("", ".") else None
                key = d.tls_key if str(d.tls_key) not in ("", ".") else None
                self._tls = tls.client_context(d.tls_ca, cert, key)
            return self._tls

    def associate_options(self, dest: Destination) -> dict[str, Any]:
        """Keyword arguments of ``AE.associate`` (and of a C-MOVE handler's destination yield)
        for ``dest``: ``tls_args`` when it is a TLS peer, and an ``EVT_ACCEPTED`` handler that
        turns Nagle off (pynetdicom leaves it on for the associations it opens: each message
        would wait ~40 ms for the peer's delayed ACK)."""
        options: dict[str, Any] = {"evt_handlers": [(evt.EVT_ACCEPTED, self._accepted)]}
        if dest.tls:
            options["tls_args"] = (self.tls_client(), dest.host)
        return options

    def _accepted(self, event: evt.Event) -> None:
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is not None and self.settings.dicom.tcp_nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


__all__ = ["Peers"]
