"""The Host header check (DNS rebinding) and the archive's own URL.

A browser on the hospital network that visits a hostile page can be made to send requests to
the archive under the attacker's host name (DNS rebinding); the archive then answers them as if
they were its own pages, and URLs built from the Host header point wherever the attacker says.
Only host names the archive is known by are served (``[http] allowed_hosts``), and returned URLs
use ``[http] public_url`` when it is set.
"""

from __future__ import annotations

import logging
import socket

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from pacs.config import Settings
from pacs.web.errors import problem

log = logging.getLogger("pacs.web")


def default_hosts(settings: Settings) -> set[str]:
    """Loopback names, the bind address, this machine's host names and their addresses."""
    names = {"localhost", "127.0.0.1", "::1", settings.http.host}
    try:
        names |= {socket.gethostname(), socket.getfqdn()}
    except OSError:
        pass
    for name in list(names):
        try:
            names |= {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
        except (OSError, UnicodeError):
            pass
    names.discard("0.0.0.0")
    names.discard("::")
    return {n.lower() for n in names if n}


def host_of(value: str) -> str:
    """The host of a Host header value: without the port, IPv6 without brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


class HostCheck:
    """Answer 400 to a request whose Host header names a host the archive is not known by."""

    def __init__(self, app: ASGIApp, allowed: set[str]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.allowed = {a.lower() for a in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.any:
            await self.app(scope, receive, send)
            return
        host = host_of(Headers(scope=scope).get("host", ""))
        if host in self.allowed or any(a.startswith("*.") and host.endswith(a[1:]) for a in self.allowed):
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("", 0)
        log.warning(
            "request refused: Host %r is not in [http] allowed_hosts (from %s)", host[:100], client[0]
        )
        response = problem(400, f"host {host[:100]!r} is not served here; add it to [http] allowed_hosts")
        await response(scope, receive, send)
