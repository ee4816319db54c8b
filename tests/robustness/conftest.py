"""Fixtures and helpers for the robustness tests: limits, faults, hostile input, fuzzing."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from pacs import runtime
from pacs.model import Origin
from tests.factories import to_bytes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

ORIGIN = Origin(address="127.0.0.1", calling_ae="FUZZ", protocol="test")
BOUNDARY = "robustness-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@pytest.fixture
def client(rt: runtime.Runtime) -> Iterator[TestClient]:
    """An HTTP client on the app (in process)."""
    with TestClient(runtime.web_app(rt), raise_server_exceptions=False) as c:
        yield c


def stow_body(*parts: bytes) -> bytes:
    """A multipart/related STOW-RS body of Part-10 parts."""
    out = io.BytesIO()
    for p in parts:
        out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        out.write(p)
        out.write(b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def c_store(port: int, datasets: list[Dataset], ae_title: str = "PYNETDICOM") -> list[int]:
    """Send datasets over one association; the status of each (-1 when no response came)."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established, "association not established"
    out = []
    try:
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            out.append(int(rsp.Status) if rsp is not None and "Status" in rsp else -1)
        assoc.release()
    finally:
        if assoc.is_alive():
            assoc.abort()
        ae.shutdown()
    return out


def part10(ds: Dataset) -> bytes:
    """Part-10 bytes of a dataset."""
    return to_bytes(ds)


@pytest.fixture
def sqlite_client(sqlite_rt: runtime.Runtime) -> Iterator[TestClient]:
    """An HTTP client on a SQLite-backed app."""
    with TestClient(runtime.web_app(sqlite_rt), raise_server_exceptions=False) as c:
        yield c
