"""Who is asking, as the web edge sees it."""

from __future__ import annotations

from starlette.requests import Request

from pacs.model import Origin


def origin_of(request: Request) -> Origin:
    """The :class:`Origin` of an HTTP request: client address and the signed-in user, if any."""
    principal = request.scope.get("user")
    return Origin(
        address=request.client.host if request.client else "",
        user=str(getattr(principal, "display_name", "") or "")[:64],
        protocol="http",
    )
