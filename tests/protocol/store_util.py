"""Helpers shared by the C-STORE protocol tests: look inside a running archive's storage and index."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom.filereader import _read_file_meta_info, read_preamble
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from pacs.blobstore import FileBlobStore
from pacs.index.database import Database
from pacs.index.engine import make_engine
from pacs.model import Level
from pacs.query import from_qido
from pacs.services.archive import Archive


@contextmanager
def open_archive(database_url: str, storage: Path) -> Iterator[Archive]:
    """A second :class:`Archive` on the storage and index of a running server (for reading)."""
    db = Database(make_engine(database_url))
    archive = Archive(db, FileBlobStore(storage))
    try:
        yield archive
    finally:
        archive.close()
        db.close()


@contextmanager
def associate(port: int, contexts: list[tuple[str, str]]) -> Iterator[Association]:
    """An association as PYNETDICOM proposing one context per (SOP class, transfer syntax)."""
    ae = AE(ae_title="PYNETDICOM")
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in contexts]
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established, "association refused"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def dataset_part(data: bytes | Path) -> bytes:
    """The bytes of a Part-10 file after its file meta: what went over the wire."""
    from io import BytesIO

    raw = data.read_bytes() if isinstance(data, Path) else data
    fp = BytesIO(raw)
    read_preamble(fp, force=False)  # type: ignore[arg-type]
    _read_file_meta_info(fp)  # type: ignore[arg-type]
    return raw[fp.tell() :]


def stored_bytes(archive: Archive, sop_instance_uid: str) -> bytes:
    """The stored Part-10 file of one instance."""
    [instance] = archive.instances(sop_instance_uid=sop_instance_uid)
    with archive.open(instance) as fh:
        return fh.read()


def files_under(path: Path) -> list[Path]:
    """Every regular file below ``path`` (empty if it does not exist)."""
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def patient_names(archive: Archive) -> set[str]:
    """Patient names of every study, as the index answers a QIDO-RS / C-FIND study query."""
    q = from_qido(Level.STUDY, [("includefield", "PatientName")], default_limit=1000, max_limit=1000)
    return {str(row.get("PatientName") or "") for row in archive.search(q)}
