"""Crash safety of C-STORE: SIGKILL the archive while an instance is on the wire, restart, check.

The promise (ARCHITECTURE.md, "Store what was received"): success is reported only after the
file is durable and indexed, so after a crash every instance the sender was told succeeded is
there, nothing half-written is indexed or left behind, and ``pacs verify`` agrees.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, _config

from pacs.model import Level
from tests.factories import make_dataset, write
from tests.protocol.store_util import files_under, open_archive
from tests.serve import children_of, serve


def _files(tmp: Path) -> tuple[list[Path], Path]:
    """Five 0.5 MB instances, then one of 16 MB (long enough on the wire to be killed mid-way)."""
    study = pydicom.uid.generate_uid()
    small = [
        write(
            make_dataset(study_uid=study, instance_number=i, pixels=np.full((512, 512), i, np.int16)),
            tmp / f"small{i}.dcm",
        )
        for i in range(5)
    ]
    big = write(
        make_dataset(study_uid=study, instance_number=99, pixels=np.ones((4096, 2048), np.int16)),
        tmp / "big.dcm",
    )
    return small, big


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # finished and removed meanwhile
        return 0


def _receiving(pid: int, storage: Path) -> list[int]:
    """Sizes of the blobs ``pacs serve`` (and its listeners) are receiving right now.

    On Linux a blob being received is an unnamed file (O_TMPFILE) in its shard directory, only
    visible among the process's open files ("<dir>/#<inode> (deleted)"); elsewhere it is a
    named ``tmp/*.part`` file.
    """
    sizes = [_size(p) for p in files_under(storage / "tmp") if p.suffix == ".part"]
    blobs = str(storage / "blobs")
    for proc in (pid, *children_of(pid)):
        try:
            fds = os.listdir(f"/proc/{proc}/fd")
        except OSError:
            continue
        for fd in fds:
            link = f"/proc/{proc}/fd/{fd}"
            try:
                target = os.readlink(link)
                if target.startswith(blobs) and target.endswith(" (deleted)"):
                    sizes.append(os.stat(link).st_size)
            except OSError:  # closed meanwhile
                continue
    return sizes


def test_sigkill_mid_transfer_loses_nothing_acknowledged(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    small, big = _files(tmp_path)
    acknowledged: list[str] = []
    failures: list[str] = []
    storage = tmp_path / "storage"

    def sender(port: int) -> None:
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
        try:
            for path in [*small, big]:
                rsp = assoc.send_c_store(path)
                if rsp is not None and rsp.get("Status") == 0:
                    acknowledged.append(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                else:
                    failures.append(path.name)
                    break
        finally:
            assoc.abort()
            ae.shutdown()

    with serve(tmp_path, db_url, storage=storage) as srv:
        thread = threading.Thread(target=sender, args=(srv.dicom_port,), daemon=True)
        thread.start()
        incoming = storage / "tmp" / "incoming" / str(srv.process.pid)
        deadline = time.monotonic() + 60
        # Kill as soon as the big instance is partly received (more than 1 MB of it on disk).
        while time.monotonic() < deadline:
            partial = [n for n in _receiving(srv.process.pid, storage) if n > 1 << 20]
            if len(acknowledged) == len(small) and partial:
                break
            time.sleep(0.005)
        else:
            pytest.fail(f"never saw the big instance arriving; acked {len(acknowledged)}")
        srv.process.send_signal(signal.SIGKILL)
        srv.process.wait(10)
        thread.join(30)
    assert len(acknowledged) == len(small) and failures == ["big.dcm"], (acknowledged, failures)
    assert partial and max(partial) < 16 << 20, f"the kill should have interrupted a receive: {partial}"

    with serve(tmp_path, db_url, storage=storage) as srv:
        assert not incoming.exists(), "leftovers of the killed process are removed at start"
        with open_archive(db_url, storage) as archive:
            for sop in acknowledged:
                assert archive.instances(sop_instance_uid=sop)
            # The big one was never acknowledged; if the kill came after its index commit it may
            # be there, complete. Anything indexed is whole (verify checks every hash).
            assert archive.count(Level.IMAGE) in (len(small), len(small) + 1)
            report = archive.verify()
            assert report.ok, report
        assert not list((storage / "tmp").glob("*.part"))
    done = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "verify", "--config", str(tmp_path / "config.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout
