"""Fixtures for the appraisal tests: a runtime with the example registers, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from pacs import runtime
from pacs.config import load
from pacs.web.appraisal import routes
from pacs.web.errors import EXCEPTION_HANDLERS

REGISTERS = Path(__file__).resolve().parents[2] / "registers"
FACILITY = "01001"


def appraisal_config(storage: Path, db_url: str) -> str:
    """The [appraisal] section used by the tests (example registers, facility 01001)."""
    return f"""
[appraisal]
facility_code = "{FACILITY}"
device_register = "{REGISTERS / "devices.csv"}"
service_register = "{REGISTERS / "services.csv"}"
staff_register = "{REGISTERS / "staff.csv"}"
reference_time_register = "{REGISTERS / "reference_times.csv"}"
clock_tolerance_seconds = 300
"""


@pytest.fixture
def rt(db_url: str, storage_dir: Path, tmp_path: Path) -> Iterator[runtime.Runtime]:
    """A runtime (archive + appraisal) on a fresh database."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[storage]\npath = "{storage_dir}"\n[database]\nurl = "{db_url}"\n'
        + appraisal_config(storage_dir, db_url),
        encoding="utf-8",
    )
    settings = load(cfg, env={})
    settings = replace(settings, storage=replace(settings.storage, fsync=False))
    r = runtime.build(settings)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def client(rt: runtime.Runtime) -> Iterator[TestClient]:
    """An HTTP client on the appraisal routes (with the application's error handlers)."""
    app = Starlette(routes=routes(), exception_handlers=EXCEPTION_HANDLERS)
    app.state.appraisal = rt.appraisal
    with TestClient(app) as c:
        yield c
