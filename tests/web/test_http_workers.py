"""``[http] workers``: several web server processes share the HTTP port and die with ``pacs serve``."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from tests.serve import children_of, kill_and_expect_gone, serve


def test_http_workers_share_the_port_and_die_with_serve(tmp_path: Path) -> None:

    with serve(tmp_path, f"sqlite:///{tmp_path / 'i.sqlite'}", env={"PACS_HTTP_WORKERS": "2"}) as srv:
        pids: set[str] = set()
        deadline = time.monotonic() + 60  # the second web process starts after READY
        while time.monotonic() < deadline and len(pids) < 2:
            # A new connection each time: the kernel spreads connections over the processes.
            r = httpx.get(f"{srv.base_url}/dicom-web/studies", headers={"Accept": "application/dicom+json"})
            assert r.status_code == 200 and r.json() == []
            pids = set(re.findall(r"\[(\d+)\] http GET /dicom-web/studies status=200", srv.log()))
        assert len(pids) == 2, f"expected answers from two processes, got {pids}"
        children = children_of(srv.process.pid)
        assert any(str(c) in pids for c in children), "the second web process is a child of serve"
        kill_and_expect_gone(srv.process, children)
