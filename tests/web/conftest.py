"""Fixtures for the DICOMweb tests: an app over a fresh archive (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs import runtime
from pacs.model import Origin, StoreResult

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture
def client(rt: runtime.Runtime) -> Iterator[TestClient]:
    """An HTTP client on the app (in process)."""
    with TestClient(runtime.web_app(rt)) as c:
        yield c


@pytest.fixture
def sqlite_client(sqlite_rt: runtime.Runtime) -> Iterator[TestClient]:
    """An HTTP client on a SQLite-backed app."""
    with TestClient(runtime.web_app(sqlite_rt)) as c:
        yield c


def relabel(name: str, study: str | None = None, series: str | None = None, **changes: object) -> Dataset:
    """A pydicom test file with fresh UIDs (several of them share one SOP Instance UID)."""
    path = get_testdata_file(name)
    assert path is not None, name
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientID = ds.get("PatientID") or "PID-TEST"
    for k, v in changes.items():
        setattr(ds, k, v)
    return ds


def part10(ds: Dataset) -> bytes:
    """Encode with file meta, keeping the transfer syntax."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def store(rt: runtime.Runtime, ds: Dataset) -> StoreResult:
    """Store a dataset through the archive (the C-STORE path)."""
    return rt.archive.store_bytes(part10(ds), Origin(protocol="internal"))


def split_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Parse a multipart/related response independently of the server's code."""
    boundary = next(
        p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary=")
    )
    delim = b"--" + boundary.encode()
    chunks = body.split(b"\r\n" + delim)
    first = chunks[0]
    assert first.startswith(delim), "body must start with the boundary"
    chunks[0] = first[len(delim) :]
    out = []
    for chunk in chunks:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        out.append((headers, content))
    return out
