"""The grayscale lookup table gives exactly what the per-pixel pipeline gives (PS3.3 C.11)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from pacs.dicom import pixels


def _ds(**values: object) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    for k, v in values.items():
        setattr(ds, k, v)
    return ds


def _voi_lut() -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = list(range(0, 256))
    return item


def _modality_lut() -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "HU"
    item.LUTData = [(i * 7) % 4096 for i in range(4096)]
    return item


CASES = [
    ("int16 CT", "<i2", _ds(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400), None),
    (
        "uint16 M1",
        "<u2",
        _ds(PhotometricInterpretation="MONOCHROME1", WindowCenter=900, WindowWidth=1200),
        None,
    ),
    ("explicit window", "<i2", _ds(RescaleSlope=0.5, RescaleIntercept=3), pixels.Window(10, 300)),
    ("sigmoid", "<i2", _ds(), pixels.Window(0, 2000, "SIGMOID")),
    ("linear exact", "<u2", _ds(), pixels.Window(1000, 1, "LINEAR_EXACT")),
    ("width 1", "<i2", _ds(), pixels.Window(5, 1)),
    ("uint8", "u1", _ds(WindowCenter=128, WindowWidth=100), None),
    ("int8 M1", "i1", _ds(PhotometricInterpretation="MONOCHROME1"), pixels.Window(0, 50)),
    ("no window int16", "<i2", _ds(RescaleSlope=-2, RescaleIntercept=100), None),
    ("no window uint8", "u1", _ds(), None),
    ("VOI LUT sequence", "<u2", _ds(VOILUTSequence=[_voi_lut()]), None),
    ("modality LUT + window", "<u2", _ds(ModalityLUTSequence=[_modality_lut()]), pixels.Window(2000, 1000)),
]


@pytest.mark.parametrize(("dtype", "ds", "window"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_lut_equals_per_pixel_pipeline(dtype: str, ds: Dataset, window: pixels.Window | None) -> None:
    rng = np.random.default_rng(7)
    info = np.iinfo(np.dtype(dtype))
    lo, hi = (max(info.min, -3000), min(info.max, 5000))
    arr = rng.integers(lo, hi, size=(300, 300), endpoint=True).astype(dtype)
    if "ModalityLUTSequence" in ds:
        arr = (arr % 4096).astype(dtype)
    photometric = str(ds.PhotometricInterpretation)
    expected = np.rint(pixels._grayscale(ds, arr, window, photometric)).astype(np.uint8)
    assert pixels._grayscale_lut(ds, arr, window, photometric) is not None  # the table is used
    for _ in range(2):  # computed, then (where cacheable) from the cache
        got = pixels.to_display(ds, arr, window)
        assert got.dtype == np.uint8 and got.shape == arr.shape
        np.testing.assert_array_equal(got, expected)


def test_small_image_without_window_uses_its_own_range() -> None:
    ds = _ds()
    arr = np.array([[10, 20], [30, 40]], dtype="<i2")
    assert pixels._grayscale_lut(ds, arr, None, "MONOCHROME2") is None
    np.testing.assert_array_equal(pixels.to_display(ds, arr), [[0, 85], [170, 255]])
