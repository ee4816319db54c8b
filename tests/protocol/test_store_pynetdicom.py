"""C-STORE from a pynetdicom SCU (calling AE ``PYNETDICOM``), on SQLite and PostgreSQL.

Sends every file in pydicom's bundled test data that pynetdicom can send, as its raw bytes
(``STORE_SEND_CHUNKED_DATASET``), and checks what the archive kept; then sends malformed datasets
and checks each gets a failure status with a reason, leaves nothing behind, and does not break
the association.
"""

from __future__ import annotations

from collections import defaultdict
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import _config
from sqlalchemy import text

from pacs.errors import NotFound
from pacs.model import Level
from tests.factories import make_dataset, write
from tests.protocol.store_util import associate, dataset_part, files_under, open_archive, stored_bytes
from tests.serve import serve


@pytest.fixture(autouse=True)
def _send_raw_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send files as their encoded bytes (what a modality sends), not re-encoded by pydicom."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def _status(ds: Dataset | None) -> tuple[int, str]:
    if ds is None or "Status" not in ds:
        return -1, "no response"
    return int(ds.Status), str(ds.get("ErrorComment", ""))


def test_pydicom_test_files(db_url: str, tmp_path: Path) -> None:
    """Every readable pydicom test file: stored byte-identical and indexed, or refused with a reason."""
    candidates: dict[tuple[str, str], list[Path]] = defaultdict(list)
    unsendable: list[str] = []
    for name in get_testdata_files():
        path = Path(name)
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
            key = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            str(meta.MediaStorageSOPInstanceUID)
        except Exception as exc:  # not Part-10 or no file meta: pynetdicom cannot send it as is
            unsendable.append(f"{path.name}: {type(exc).__name__}")
            continue
        candidates[key].append(path)
    stored: dict[Path, str] = {}
    refused: dict[str, str] = {}
    # fsync off: durability is the crash test's subject; this one is about parsing and bytes.
    with serve(tmp_path, db_url, env={"PACS_STORAGE_FSYNC": "false"}) as srv:
        keys = sorted(candidates)
        for start in range(0, len(keys), 100):  # at most 128 presentation contexts per association
            chunk = keys[start : start + 100]
            with associate(srv.dicom_port, chunk) as assoc:
                accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
                for key in chunk:
                    for path in candidates[key]:
                        if key not in accepted:
                            refused[path.name] = f"context not accepted ({key[0]} / {key[1]})"
                            continue
                        code, comment = _status(assoc.send_c_store(path))
                        if code == 0:
                            stored[path] = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                        else:
                            refused[path.name] = f"0x{code:04X} {comment}"
        print(f"\nstored {len(stored)}, refused {len(refused)}, unsendable {len(unsendable)}")
        for name, why in sorted(refused.items()):
            print(f"  refused {name}: {why}")
        assert len(stored) >= 100, refused
        with open_archive(db_url, srv.storage) as archive:
            assert archive.count(Level.IMAGE) == len(set(stored.values()))
            # pydicom ships some objects in several encodings under one SOP Instance UID: every
            # one is kept (issue 17, keep-versions) and the last received is the one served.
            last = {sop: path for path, sop in stored.items()}
            for path, sop in stored.items():
                versions = archive.versions(sop)
                distinct = {
                    dataset_part(p) for p, s in stored.items() if s == sop
                }  # an identical resend is no version
                assert len(versions) == len(distinct), path.name
                if last[sop] != path:
                    with archive.open_version(sop, versions[-1].sha256)[1] as fh:
                        assert dataset_part(fh.read()) in (
                            dataset_part(p) for p, s in stored.items() if s == sop
                        )
                    continue
                data = stored_bytes(archive, sop)
                assert dataset_part(data) == dataset_part(path), path.name
                meta = pydicom.dcmread(BytesIO(data), stop_before_pixels=True).file_meta
                assert meta.SourceApplicationEntityTitle == "PYNETDICOM"
            assert archive.verify().ok
        # Every refusal was logged with its reason, and the server is still up.
        assert srv.process.poll() is None
        assert srv.log().count("C-STORE refused") >= sum(1 for r in refused.values() if r.startswith("0x"))


def _malformed(tmp_path: Path) -> dict[str, Path]:
    """Files whose file meta names a valid instance but whose dataset is broken."""
    out: dict[str, Path] = {}
    ds = make_dataset(patient_id="BAD1")
    del ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.1"
    out["missing SOPInstanceUID"] = write(ds, tmp_path / "missing.dcm")
    ds = make_dataset(patient_id="BAD2", sop_uid="1.2.3.abc")
    out["invalid SOPInstanceUID"] = write(ds, tmp_path / "letters.dcm")
    ds = make_dataset(patient_id="BAD3", sop_uid="1.2.3.4.5.3")
    ds.StudyInstanceUID = "../../etc/passwd"
    out["invalid StudyInstanceUID"] = write(ds, tmp_path / "dotdot.dcm")
    # The file meta (which becomes the request's Affected SOP Instance UID) names another instance;
    # pydicom would "fix" the meta on save, so patch the bytes (same length).
    raw = write(make_dataset(patient_id="BAD4", sop_uid="1.2.3.4.5.4"), tmp_path / "m.dcm").read_bytes()
    at = raw.index(b"1.2.3.4.5.4\x00")
    mismatch = tmp_path / "mismatch.dcm"
    mismatch.write_bytes(raw[:at] + b"1.2.3.4.5.9\x00" + raw[at + 12 :])
    out["differs from the request"] = mismatch
    ds = make_dataset(patient_id="BAD5", sop_uid="1.2.3.4.5.5", rows=128, columns=128)
    whole = write(ds, tmp_path / "whole.dcm").read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(whole[: len(whole) - 20000])
    out["truncated"] = truncated
    return out


def test_malformed_datasets_refused_cleanly(db_url: str, tmp_path: Path) -> None:
    """Failure status + ErrorComment, no file, no row, and the association goes on."""
    bad = _malformed(tmp_path)
    contexts = [("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)]
    with serve(tmp_path, db_url) as srv:
        with associate(srv.dicom_port, contexts) as assoc:
            for i, (reason, path) in enumerate(bad.items()):
                code, comment = _status(assoc.send_c_store(path))
                assert 0xA000 <= code <= 0xCFFF, (reason, hex(code))
                assert reason in comment, (reason, comment)
                assert len(files_under(srv.storage / "blobs")) == i, reason  # only the good ones
                assert files_under(srv.storage / "tmp") == [], reason
                # The association still works for the next good instance.
                good = write(
                    make_dataset(patient_id=f"GOOD{i}", instance_number=i), tmp_path / f"good{i}.dcm"
                )
                assert _status(assoc.send_c_store(good)) == (0, "")
        with open_archive(db_url, srv.storage) as archive:
            assert archive.count(Level.IMAGE) == len(bad)
            for sop in ("1.2.3.4.5.1", "1.2.3.abc", "1.2.3.4.5.3", "1.2.3.4.5.4", "1.2.3.4.5.9"):
                with pytest.raises(NotFound):
                    archive.instances(sop_instance_uid=sop)
            with archive.read() as conn:
                pids = {r[0] for r in conn.execute(text("select patient_id from patients"))}
            assert pids == {f"GOOD{i}" for i in range(len(bad))}
            assert archive.verify().ok
        log = srv.log()
        for reason in bad:
            assert reason in log
