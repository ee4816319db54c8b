"""``[storage] max_instance_mb`` (issue 14): one data set over the limit is refused on every store
path, as it arrives, with nothing left behind and the server's memory flat; smaller instances are
stored as before. Against a real ``pacs serve`` with a pynetdicom SCU and STOW-RS over httpx."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from pacs import runtime
from pacs.errors import TooLarge
from pacs.model import Level, Origin
from tests.conftest import settings_for
from tests.factories import make_dataset, to_bytes
from tests.robustness.conftest import STOW_TYPE, stow_body
from tests.serve import PeakRss, Served, serve


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("instance-size")
    env = {"PACS_STORAGE_MAX_INSTANCE_MB": "4", "PACS_DICOM_MAX_PDU": "1048576"}
    with serve(tmp, f"sqlite:///{tmp / 'index.sqlite'}", env=env) as s:
        yield s


def _blobs(srv: Served) -> int:
    return sum(1 for p in (srv.storage / "blobs").rglob("*") if p.is_file())


def _count(srv: Served) -> int:
    r = httpx.get(f"{srv.base_url}/dicom-web/instances", params={"limit": "1000"}, timeout=30)
    return len(r.json()) if r.status_code == 200 else 0


def test_c_store_over_the_limit_is_refused_as_it_arrives(srv: Served) -> None:
    big = make_dataset(pixels=np.zeros((4096, 4096), "uint16"))  # 32 MiB of pixel data
    small = make_dataset(PatientName="Võ^Thị Sáu")
    blobs_before, count_before = _blobs(srv), _count(srv)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS")
    assert assoc.is_established
    try:
        with PeakRss(srv.process.pid) as rss:
            refused = assoc.send_c_store(big)
        stored = assoc.send_c_store(small)  # the same association goes on
    finally:
        assoc.release()
        ae.shutdown()
    assert refused.Status == 0xA700
    assert "max_instance_mb" in refused.ErrorComment
    assert stored.Status == 0x0000
    assert rss.grew_mib < 16, f"server RSS grew {rss.grew_mib:.0f} MiB"
    assert _blobs(srv) == blobs_before + 1  # only the small one: no half-written file
    assert _count(srv) == count_before + 1
    assert "over max_instance_mb (4 MiB)" in srv.log()


def test_stow_over_the_limit_is_refused_before_writing(srv: Served) -> None:
    big = to_bytes(make_dataset(pixels=np.zeros((2048, 2048), "uint16")))  # 8 MiB
    small = to_bytes(make_dataset(PatientName="Đỗ^Văn Tư"))
    blobs_before = _blobs(srv)
    r = httpx.post(
        f"{srv.base_url}/dicom-web/studies",
        content=stow_body(big, small),
        headers={"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert r.status_code == 202, r.text  # the small one stored, the big one refused
    failed = r.json()["00081198"]["Value"]
    assert len(failed) == 1 and failed[0]["00081197"]["Value"] == [0xA700]
    assert _blobs(srv) == blobs_before + 1


def test_import_over_the_limit_is_refused(tmp_path: Path) -> None:
    s = settings_for(f"sqlite:///{tmp_path / 'i.sqlite'}", tmp_path / "storage")
    s = dataclasses.replace(s, storage=dataclasses.replace(s.storage, max_instance_mb=1))
    rt = runtime.build(s)
    try:
        data = to_bytes(make_dataset(pixels=np.zeros((1024, 1024), "uint16")))  # 2 MiB
        with pytest.raises(TooLarge, match="max_instance_mb"):
            rt.archive.store_bytes(data, Origin(protocol="cli"))
        assert rt.archive.count(Level.IMAGE) == 0
    finally:
        rt.close()


def test_a_large_stow_is_spooled_not_held_in_memory(srv: Served) -> None:
    """The body of a STOW-RS request is spooled to disk as it arrives and read part by part: a
    96 MiB request (three 32 MiB instances, over the 4 MiB limit here, so refused one by one once
    the body is in) grows the server's memory by far less than its size."""
    big = to_bytes(make_dataset(pixels=np.zeros((4096, 4096), "uint16")))  # 32 MiB each
    body = stow_body(big, big, big)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 1 << 20):
            yield body[i : i + (1 << 20)]

    # Warm the web process up first (its first STOW imports and allocates what every later one
    # reuses), so that the measurement is of this body alone, whichever test ran before.
    warm = httpx.post(
        f"{srv.base_url}/dicom-web/studies",
        content=stow_body(to_bytes(make_dataset(PatientName="Hồ^Thị Mai"))),
        headers={"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert warm.status_code == 200
    # Anonymous memory: the body's parts are found in the spool file through mmap, whose pages
    # count in VmRSS but are page cache the kernel reclaims, not memory the request holds.
    with PeakRss(srv.process.pid, "RssAnon") as rss:
        r = httpx.post(
            f"{srv.base_url}/dicom-web/studies",
            content=chunks(),
            headers={"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"},
            timeout=120,
        )
    assert r.status_code == 409, r.text  # none stored: each over max_instance_mb
    assert rss.grew_mib < 16, f"anonymous memory grew {rss.grew_mib:.0f} MiB for a {len(body) >> 20} MiB body"
