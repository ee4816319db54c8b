"""Helpers of the reuse tests (issue 18): pydicom's real files given patient identifiers, an app
over a fresh archive (SQLite and PostgreSQL), FHIR validation with ``fhir.resources`` (R4B, the
same ImagingStudy as R4)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs import runtime
from pacs.model import Origin, StoreResult
from tests.browser.conftest import browser as browser  # Chromium, for the IID test
from tests.web.conftest import part10

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

VIET_NAME = "Nguyễn^Thị Hồng Nhung"


def real_file(
    name: str = "CT_small.dcm",
    *,
    patient_id: str = "12345",
    issuer: str | None = "BV01",
    others: tuple[tuple[str, str, str], ...] = (),
    qualifiers: dict[str, str] | None = None,
    study: str | None = None,
    series: str | None = None,
    **changes: object,
) -> Dataset:
    """A pydicom test file with fresh UIDs, a Vietnamese UTF-8 name (ISO_IR 192), PatientID and
    IssuerOfPatientID, and OtherPatientIDsSequence items ``(value, issuer, type code)`` (the type
    in the item's IssuerOfPatientIDQualifiersSequence, IdentifierTypeCode)."""
    path = get_testdata_file(name)
    assert path is not None, name
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = VIET_NAME
    ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    if qualifiers:
        q = Dataset()
        for k, v in qualifiers.items():
            setattr(q, k, v)
        ds.IssuerOfPatientIDQualifiersSequence = [q]
    items = []
    for value, item_issuer, type_code in others:
        item = Dataset()
        item.PatientID = value
        if item_issuer:
            item.IssuerOfPatientID = item_issuer
        if type_code:
            q = Dataset()
            q.IdentifierTypeCode = type_code
            item.IssuerOfPatientIDQualifiersSequence = [q]
        item.TypeOfPatientID = "TEXT"
        items.append(item)
    if items:
        ds.OtherPatientIDsSequence = items
    for k, v in changes.items():
        setattr(ds, k, v)
    return ds


def store(rt: runtime.Runtime, ds: Dataset) -> StoreResult:
    """Store through the archive's one store path."""
    return rt.archive.store_bytes(part10(ds), Origin(protocol="internal"))


def tokens_of(rt: runtime.Runtime, token: str) -> list[set[str]]:
    """For each local patient the token names: the FHIR tokens of all its identifiers."""
    found = rt.identifiers.find_patients([token], Origin(protocol="internal"), audit=False)
    return [{i.token for i in p.identifiers} for p in found if p.indexed]


def validate(resource: dict[str, Any]) -> Any:
    """Parse a FHIR resource with fhir.resources (raises on anything invalid)."""
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource["resourceType"]).model_validate(resource)


@pytest.fixture
def client(rt: runtime.Runtime) -> Iterator[TestClient]:
    """An HTTP client on the app (authentication off)."""
    with TestClient(runtime.web_app(rt)) as c:
        yield c
