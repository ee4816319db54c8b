"""Shipping audit rows to a collector: RFC 5424 messages over UDP (RFC 5426), TCP or TLS (RFC 5425).

Best effort, as IHE ATNA asks: the ``events`` table is the record.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

_SYSLOG_PORTS = {"udp": 514, "tcp": 601, "tls": 6514}
_UDP_MAX = 65000  # RFC 5426 3.2: a longer message is truncated rather than lost
_SD_ID = "pacs@32473"  # 32473: the enterprise number RFC 5612 reserves for documentation
_AUTHPRIV = 10  # facility "security/authorization messages" (RFC 5424 6.2.1), as IHE ATNA uses


def syslog_message(
    *,
    at: datetime,
    hostname: str,
    app_name: str,
    procid: str,
    msgid: str,
    sd: Mapping[str, str],
    msg: bytes,
    severity: int,
    facility: int = _AUTHPRIV,
) -> bytes:
    """One RFC 5424 message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] BOM MSG``."""
    at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    params = " ".join(f'{k}="{_sd_escape(v)}"' for k, v in sd.items())
    header = " ".join(
        [f"<{facility * 8 + severity}>1", stamp, _header_field(hostname, 255)]
        + [_header_field(v, n) for v, n in ((app_name, 48), (procid, 128), (msgid, 32))]
    )
    structured = f"[{_SD_ID} {params}]" if params else "-"
    return f"{header} {structured} ".encode() + b"\xef\xbb\xbf" + msg


def _header_field(value: str, size: int) -> str:
    value = "".join(c for c in value if 33 <= ord(c) <= 126)[:size]
    return value or "-"


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


class SyslogSender:
    """Send RFC 5424 messages to one collector: ``udp://``, ``tcp://`` or ``tls://host[:port]``.

    Stream transports frame each message as ``LENGTH SP MESSAGE`` (RFC 5425 4.3, RFC 6587 3.4.1);
    TLS verifies the collector against ``ca`` (or the system's CAs) and its host name, and
    presents ``cert``/``key`` when given. A broken connection is re-opened once per batch.
    """

    def __init__(
        self,
        url: str,
        *,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        timeout: float = 5.0,
        hostname: str | None = None,
        app_name: str = "pacs",
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _SYSLOG_PORTS or not parts.hostname:
            raise ValueError(f"syslog URL must be udp://, tcp:// or tls://host[:port], not {url!r}")
        self.url = url
        self.scheme = parts.scheme
        self.address = (parts.hostname, parts.port or _SYSLOG_PORTS[parts.scheme])
        self.timeout = timeout
        self.hostname = hostname or socket.gethostname()
        self.app_name = app_name
        self._tls: ssl.SSLContext | None = None
        if self.scheme == "tls":
            self._tls = ssl.create_default_context(cafile=str(ca) if ca else None)
            self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
            if cert:
                self._tls.load_cert_chain(str(cert), str(key) if key else None)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def send(self, messages: Sequence[bytes]) -> None:
        """Send every message, in order; raises ``OSError`` when the collector cannot be reached."""
        with self._lock:
            done = 0
            for attempt in range(2):
                try:
                    sock = self._connect()
                    for m in messages[done:]:
                        if self.scheme == "udp":
                            sock.send(m[:_UDP_MAX])
                        else:
                            sock.sendall(str(len(m)).encode() + b" " + m)
                        done += 1
                    return
                except OSError:
                    self._close()
                    if attempt:
                        raise

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._close()

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if self.scheme == "udp":
            family = socket.getaddrinfo(*self.address, type=socket.SOCK_DGRAM)[0][0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.connect(self.address)
        else:
            sock = socket.create_connection(self.address, timeout=self.timeout)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.address[0])
        sock.settimeout(self.timeout)
        self._sock = sock
        return sock

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
