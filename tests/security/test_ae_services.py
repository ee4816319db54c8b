"""Per-AE permissions (issue 14): each ``allowed_aes`` entry is granted DIMSE services, checked at
association negotiation; only the AE that created a procedure step may change it. Against a
real ``pacs serve`` with DCMTK (findscu, getscu, storescu, echoscu) and pynetdicom as SCUs; the
test AEs and their services are ``tests.serve.ALLOWED``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role
from pynetdicom.sop_class import CTImageStorage, ModalityPerformedProcedureStep, Verification

from pacs import config
from tests.appraisal.test_records import _complete, _mpps
from tests.conftest import require_tool
from tests.factories import make_dataset, write
from tests.protocol.test_qr_find import store_with_storescu
from tests.serve import Served, serve


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("ae-services")
    with serve(tmp, f"sqlite:///{tmp / 'index.sqlite'}") as s:
        yield s


@pytest.fixture(scope="module")
def stored(srv: Served, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One CT instance stored by the modality AE (STORESCU: the default services) with DCMTK."""
    tmp = tmp_path_factory.mktemp("ae-services-data")
    study = generate_uid()
    path = write(make_dataset(study_uid=study, PatientName="Trần^Văn Bảy"), tmp / "ct.dcm")
    store_with_storescu(srv.dicom_port, [path])
    return path, study


def _dcmtk(tool: str, aet: str, srv: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_tool(tool),
            "-aet",
            aet,
            "-aec",
            "PACS",
            "-to",
            "10",
            *args,
            "127.0.0.1",
            str(srv.dicom_port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _find(aet: str, srv: Served, study: str) -> subprocess.CompletedProcess[str]:
    return _dcmtk(
        "findscu", aet, srv, "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"
    )


def test_a_link_checker_may_echo_and_nothing_else(srv: Served, stored: tuple[Path, str]) -> None:
    """ECHOSCU is granted no service: C-ECHO works; C-FIND, C-GET and C-STORE find their
    presentation contexts rejected (ECHOSCU used to run C-FIND and C-GET)."""
    path, study = stored
    assert _dcmtk("echoscu", "ECHOSCU", srv).returncode == 0
    find = _find("ECHOSCU", srv, study)
    assert find.returncode != 0 and "Found Presentation Context" not in find.stdout + find.stderr
    get = _dcmtk(
        "getscu", "ECHOSCU", srv, "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"
    )
    assert get.returncode != 0
    store = _dcmtk("storescu", "ECHOSCU", srv, str(path))
    assert store.returncode != 0
    assert "services not granted to ECHOSCU@127.0.0.1: commitment, find, get, move, mpps" in srv.log()


def test_each_ae_uses_what_it_was_granted(srv: Served, stored: tuple[Path, str], tmp_path: Path) -> None:
    """FINDSCU may query but not retrieve; GETSCU may retrieve with C-GET; STORESCU (a modality,
    the default services) may store but not query."""
    _, study = stored
    ok = _find("FINDSCU", srv, study)
    assert ok.returncode == 0 and study in ok.stderr + ok.stdout
    assert _find("STORESCU", srv, study).returncode != 0
    assert (
        _dcmtk(
            "getscu",
            "FINDSCU",
            srv,
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
        ).returncode
        != 0
    )
    out = tmp_path / "got"
    out.mkdir()
    got = _dcmtk(
        "getscu",
        "GETSCU",
        srv,
        "-S",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study}",
    )
    assert got.returncode == 0, got.stderr
    assert len(list(out.iterdir())) == 1


def test_c_store_over_contexts_kept_for_c_get_is_refused(srv: Served) -> None:
    """GETSCU keeps storage contexts (C-GET returns instances over them) but was not granted
    store: a C-STORE from it gets 0x0124 (Refused: Not authorized) and nothing is stored."""
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        "127.0.0.1",
        srv.dicom_port,
        ae_title="PACS",
        ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=True)],
    )
    assert assoc.is_established
    ds = make_dataset(study_uid=generate_uid())
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
        ae.shutdown()
    assert status.Status == 0x0124
    assert "not granted" in status.ErrorComment
    r = httpx.get(
        f"{srv.base_url}/dicom-web/studies", params={"StudyInstanceUID": ds.StudyInstanceUID}, timeout=10
    )
    assert r.status_code in (200, 204) and not (r.content and r.json())
    assert "C-STORE is not granted to this AE" in srv.log()


def _mpps_assoc(aet: str, srv: Served) -> tuple[AE, object]:
    ae = AE(ae_title=aet)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS")
    assert assoc.is_established
    return ae, assoc


def test_only_the_ae_that_created_a_procedure_step_may_change_it(srv: Served) -> None:
    study, uid = generate_uid(), generate_uid()
    ae, assoc = _mpps_assoc("PYNETDICOM", srv)
    try:
        st, _ = assoc.send_n_create(_mpps(study), ModalityPerformedProcedureStep, uid)  # type: ignore[attr-defined]
        assert st.Status == 0x0000
    finally:
        assoc.release()  # type: ignore[attr-defined]
        ae.shutdown()
    other, assoc = _mpps_assoc("TESTSCU", srv)
    try:
        st, _ = assoc.send_n_set(_complete(generate_uid()), ModalityPerformedProcedureStep, uid)  # type: ignore[attr-defined]
        assert st.Status == 0x0124
        assert st.ErrorComment.startswith("created by AE PYNETDICOM")
    finally:
        assoc.release()  # type: ignore[attr-defined]
        other.shutdown()
    ae, assoc = _mpps_assoc("PYNETDICOM", srv)
    try:
        st, _ = assoc.send_n_set(_complete(generate_uid()), ModalityPerformedProcedureStep, uid)  # type: ignore[attr-defined]
        assert st.Status == 0x0000
    finally:
        assoc.release()  # type: ignore[attr-defined]
        ae.shutdown()


def test_services_in_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[dicom]\nallowed_aes = [{ ae_title = "CT1" }, { ae_title = "WS1", services = ["find", "MOVE"] },'
        ' { ae_title = "ADMIN", services = ["all"] }]\n',
        encoding="utf-8",
    )
    s = config.load(cfg)
    by_title = {a.ae_title: a.services for a in s.dicom.allowed_aes}
    assert by_title == {"CT1": config.MODALITY_SERVICES, "WS1": ("find", "move"), "ADMIN": config.SERVICES}
    cfg.write_text('[dicom]\nallowed_aes = [{ ae_title = "WS1", services = ["query"] }]\n', encoding="utf-8")
    with pytest.raises(config.ConfigError, match="unknown service"):
        config.load(cfg)
