"""Fuzzing (issue 7) with hypothesis: the DICOM store path and the QIDO parameter parser.

The store path gets mutated bytes of real files (pydicom's test corpus: explicit/implicit/big
endian, deflated, RLE, JPEG 2000, SR, RT plan): bit flips, overwritten length fields, truncations,
inserted bytes. Only :class:`InvalidInstance` / :class:`DuplicateInstance` may escape
``Archive.store`` (C-STORE 0xC000 / 0x0111, STOW 409); what is stored must decode or fail with a
domain error; the archive stays consistent (``verify().ok``). The QIDO parser and the HTTP
endpoint get arbitrary parameter names and values: ``InvalidQuery`` / 400 only, never a 500.
Examples are bounded so the file runs in seconds.
"""

from __future__ import annotations

import functools
import io
import os
import time
import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from pacs import query as q
from pacs.dicom import pixels
from pacs.dicom.attributes import ATTRIBUTES
from pacs.errors import DuplicateInstance, InvalidInstance, InvalidQuery, NoPixelData, NotFound
from pacs.model import Level
from pacs.services.archive import Archive
from tests.robustness.conftest import ORIGIN

SEEDS = (
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "image_dfl.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "rtplan.dcm",
    "reportsi.dcm",
    "nested_priv_SQ.dcm",
)
FUZZ = settings(
    max_examples=int(os.environ.get("PACS_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@functools.cache
def _seed(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    with open(path, "rb") as fh:
        return fh.read()


_LENGTHS = st.sampled_from([0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF, 0x10000])
_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("length32"), st.integers(0, 1 << 20), _LENGTHS),
    st.tuples(st.just("length16"), st.integers(0, 1 << 20), st.integers(0, 0xFFFF)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.integers(0, 255)),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in mutations:
        if not buf:
            break
        # Mutations land in the header (the first 2 kB) three times out of four.
        pos = pos % min(len(buf), 2048) if pos % 4 else pos % len(buf)
        if kind == "flip":
            buf[pos] ^= 1 << value
        elif kind == "length32":
            buf[pos : pos + 4] = value.to_bytes(4, "little")
        elif kind == "length16":
            buf[pos : pos + 2] = value.to_bytes(2, "little")
        elif kind == "truncate":
            del buf[max(pos, 1) :]
        else:
            buf.insert(pos, value)
    return bytes(buf)


def _read_pixels(archive: Archive, sop: str) -> None:
    """What was stored can be opened and its first frame decoded, or fails with a domain error."""
    [inst] = archive.instances(sop_instance_uid=sop)
    with archive.open(inst) as fh:
        try:
            info = pixels.locate(fh)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pixels.decode_frame(fh, info, 1)
        except (InvalidInstance, NoPixelData, NotFound):
            pass


@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    mutations=st.lists(_MUTATION, min_size=1, max_size=4),
)
def test_store_path_fuzz(archive: Archive, seed: str, mutations: list[tuple[str, int, int]]) -> None:
    data = _mutate(_seed(seed), mutations)
    t0 = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = archive.store(io.BytesIO(data), ORIGIN)
        except (InvalidInstance, DuplicateInstance):
            result = None
    if result is not None:
        _read_pixels(archive, result.sop_instance_uid)
    assert time.monotonic() - t0 < 10
    report = archive.verify()
    assert report.ok, report


# ------------------------------------------------------------------ QIDO parameters

_KEYWORDS = [a.keyword for a in ATTRIBUTES] + [f"{a.tag:08X}" for a in ATTRIBUTES]
_NAMES = st.one_of(
    st.sampled_from(
        [*_KEYWORDS, "limit", "offset", "fuzzymatching", "includefield", "orderby", "PatientName.x"]
    ),
    st.text(max_size=20),
)
_NASTY = st.sampled_from(
    [
        "' OR 1=1 --",
        "'; DROP TABLE study; --",
        "%_\\",
        "*",
        "?",
        "-",
        "20250101-",
        "-20250101",
        "20251301",
        "1.2.3\\4.5.6",
        "\x00",
        "\udcff",
        "9" * 40,
        "-1",
        "all",
        "1e309",
        "Nguyễn*",
        "^^^^",
        "=",
        "",
    ]
)
_VALUES = st.one_of(_NASTY, st.text(max_size=40), st.integers(-(10**20), 10**20).map(str))
_LEVELS = st.sampled_from([Level.STUDY, Level.SERIES, Level.IMAGE])


@FUZZ
@given(level=_LEVELS, params=st.lists(st.tuples(_NAMES, _VALUES), max_size=6))
def test_qido_parser_fuzz(archive: Archive, level: Level, params: list[tuple[str, str]]) -> None:
    """``from_qido`` and the SQL it leads to: a result or InvalidQuery, nothing else."""
    try:
        query = q.from_qido(level, params, default_limit=100, max_limit=1000)
    except InvalidQuery:
        return
    try:
        archive.search(query)
    except InvalidQuery:
        pass


@settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    path=st.sampled_from(["studies", "series", "instances"]),
    params=st.lists(st.tuples(_NAMES, _VALUES), max_size=5),
)
def test_qido_http_fuzz(sqlite_client, path: str, params: list[tuple[str, str]]) -> None:  # type: ignore[no-untyped-def]
    """The HTTP endpoint: 200 or 400 with a problem+json reason, never a 5xx."""
    clean = [
        (k.encode("utf-8", "replace").decode(), v.encode("utf-8", "replace").decode()) for k, v in params
    ]
    r = sqlite_client.get(f"/dicom-web/{path}", params=clean)
    assert r.status_code in (200, 400), (clean, r.status_code, r.text)
    if r.status_code == 400:
        assert r.json()["detail"]
