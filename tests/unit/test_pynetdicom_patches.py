"""pynetdicom's internals that ``pacs.scp`` patches or uses are still there, and apply() is idempotent."""

from __future__ import annotations

import functools
import importlib
import os
import tempfile

import pynetdicom
import pytest
from pynetdicom import AE, _config, dimse_messages
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider

from pacs.scp import pynetdicom_patches
from pacs.scp.receive import ReceiveFile


def test_pinned_pynetdicom_series() -> None:
    assert pynetdicom.__version__.startswith(pynetdicom_patches.PYNETDICOM_SERIES + ".")


@pytest.mark.parametrize(("module", "path"), pynetdicom_patches.PINNED, ids=lambda x: str(x))
def test_pinned_name_exists(module: str, path: str) -> None:
    try:
        functools.reduce(getattr, path.split("."), importlib.import_module(module))
    except AttributeError:
        pytest.fail(f"{module}.{path} is gone from pynetdicom {pynetdicom.__version__}")


def _instances() -> dict[str, object]:
    ae = AE()
    assoc = Association(ae, "acceptor")
    return {
        "pynetdicom.association.Association": assoc,
        "pynetdicom.dul.DULServiceProvider": DULServiceProvider(assoc),
        "pynetdicom.dimse.DIMSEServiceProvider": DIMSEServiceProvider(assoc),
        "pynetdicom.ae.ApplicationEntity": ae,
    }


def test_pinned_instance_attributes_exist() -> None:
    instances = _instances()
    missing = [
        f"{cls}.{name}"
        for cls, names in pynetdicom_patches.PINNED_INSTANCE.items()
        for name in names
        if not hasattr(instances[cls], name)
    ]
    assert not missing


def test_every_patch_is_pinned() -> None:
    pinned = set(pynetdicom_patches.PINNED)
    for module, name, _ in pynetdicom_patches.PATCHES:
        assert (module.__name__, name) in pinned


def test_apply_is_idempotent() -> None:
    pynetdicom_patches.apply()
    first = [getattr(m, n) for m, n, _ in pynetdicom_patches.PATCHES]
    pynetdicom_patches.apply()
    assert pynetdicom_patches.applied()
    assert all(getattr(m, n) is v for (m, n, _), v in zip(pynetdicom_patches.PATCHES, first, strict=True))
    assert dimse_messages.NamedTemporaryFile is ReceiveFile
    assert _config.STORE_RECV_CHUNKED_DATASET is True


def test_apply_leaves_the_process_temporary_directory_alone() -> None:
    before = tempfile.tempdir
    pynetdicom_patches.apply()
    assert tempfile.tempdir == before


def test_receive_file_without_a_listener_is_a_plain_temporary_file() -> None:
    """pynetdicom used for something else in the same process gets what it would have made."""
    spool = ReceiveFile(delete=False, mode="wb", suffix=".dcm")  # as pynetdicom's chunked receive calls it
    try:
        assert spool.incoming is None
        assert spool.name.startswith(tempfile.gettempdir())
    finally:
        spool.close()
        os.unlink(spool.name)
