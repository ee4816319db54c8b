"""extract() reads common elements from their raw bytes (pacs.dicom.extract._raw_value); the
result must equal pydicom's conversion for every file we have: pydicom's test files (many
encoders, character sets, VRs), the Vietnamese samples and the hostile corpus."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from pacs.dicom import extract as ex
from pacs.errors import InvalidInstance
from tests.robustness.hostile import corpus

ROOT = Path(__file__).resolve().parents[2]


def _inputs() -> list[tuple[str, bytes]]:
    out = []
    for name in sorted(get_testdata_files("*.dcm")):
        out.append((Path(name).name, Path(name).read_bytes()))
    for path in sorted((ROOT / "sample_dicom").rglob("*.dcm")):
        out.append((path.name, path.read_bytes()))
    out += [(f"hostile:{name}", data) for name, data, _kind in corpus()]
    return out


def _both(data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    def run() -> object:
        try:
            header = ex.read_header(io.BytesIO(data))
            return ex.extract(header).values
        except InvalidInstance as exc:
            return ("invalid", str(exc).split(":")[0])

    fast = run()
    with monkeypatch.context() as m:
        m.setattr(ex, "_raw_value", lambda raw, attr, codec: ex._SLOW)
        slow = run()
    return fast, slow


def test_fast_extraction_equals_pydicoms(monkeypatch: pytest.MonkeyPatch) -> None:
    compared = differ = 0
    problems = []
    paths = {"fast": 0, "slow": 0}
    raw_value = ex._raw_value

    def counting(raw: object, attr: object, codec: str | None) -> object:
        value = raw_value(raw, attr, codec)
        paths["slow" if value is ex._SLOW else "fast"] += 1
        return value

    monkeypatch.setattr(ex, "_raw_value", counting)
    for name, data in _inputs():
        try:
            pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception:
            continue  # not readable at all: nothing to compare
        fast, slow = _both(data, monkeypatch)
        compared += 1
        if fast != slow:
            differ += 1
            if isinstance(fast, dict) and isinstance(slow, dict):
                diff = {k: (fast.get(k), slow.get(k)) for k in fast if fast.get(k) != slow.get(k)}
            else:
                diff = (fast, slow)
            problems.append((name, diff))
    assert compared > 100
    assert not problems, problems[:5]
    assert paths["fast"] > 2 * paths["slow"], paths  # the fast path is the one mostly taken
