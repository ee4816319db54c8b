"""Query/Retrieve SCP (C-FIND, C-MOVE, C-GET). Placeholder: being written."""

from __future__ import annotations

from pacs.config import Settings
from pacs.scp.server import Extension
from pacs.services.archive import Archive


def extension(archive: Archive, settings: Settings) -> Extension:
    """Presentation contexts and handlers of the Q/R services."""
    return Extension(contexts=[], handlers=[])
