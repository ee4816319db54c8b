"""Fixtures for the appraisal tests: a runtime with the example registers, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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


@dataclass
class MonthRuntime:
    """A runtime over the generated month (:mod:`tests.appraisal.month`) and what was generated."""

    rt: runtime.Runtime
    month: Any
    client: TestClient
    registers: dict[str, Path]
    folder: Path


def month_runtime(folder: Path, db_url: str, month: Any) -> runtime.Runtime:
    """A runtime on ``db_url`` with the month's registers, the month bulk-inserted and lines rebuilt."""
    from tests.appraisal import month as gen

    regs = gen.write_registers(folder / "registers")
    storage = folder / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    cfg = folder / "config.toml"
    cfg.write_text(gen.config_toml(storage, db_url, regs, REGISTERS / "staff.csv"), encoding="utf-8")
    settings = load(cfg, env={})
    r = runtime.build(replace(settings, storage=replace(settings.storage, fsync=False)))
    gen.insert(r.appraisal.db.engine, month)
    r.appraisal.rebuild_lines()
    return r


@pytest.fixture(scope="session")
def generated_month(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonthRuntime]:
    """10,005 studies over 24 devices in November 2026 (SQLite), built once per session."""
    from tests.appraisal import month as gen

    folder = tmp_path_factory.mktemp("month")
    month = gen.plan()
    r = month_runtime(folder, f"sqlite:///{folder / 'index.sqlite'}", month)
    app = Starlette(routes=routes(), exception_handlers=EXCEPTION_HANDLERS)
    app.state.appraisal = r.appraisal
    try:
        with TestClient(app) as c:
            yield MonthRuntime(r, month, c, gen.write_registers(folder / "registers"), folder)
    finally:
        r.close()
