"""DICOM TLS beyond the listener (issue 14): an AE title bound to its client certificate, and
C-MOVE to a destination over TLS. Real peers: DCMTK echoscu / storescu and pynetdicom (movescu
has no TLS) as SCUs, a DCMTK storescp in TLS mode as the C-MOVE destination; certificates made
with openssl."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from pacs import tls
from tests.conftest import require_tool
from tests.factories import make_dataset, write
from tests.security.test_tls import make_pki
from tests.serve import serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_certificate_binding_and_c_move_over_tls(tmp_path: Path) -> None:
    echoscu, storescu = require_tool("echoscu"), require_tool("storescu")
    storescp = require_tool("storescp")
    pki = make_pki(tmp_path)
    received = tmp_path / "received"
    received.mkdir()
    dest_port = _free_port()
    # The destination: DCMTK storescp speaking TLS only, with the server certificate of our CA.
    scp = subprocess.Popen(
        [storescp, "+tls", str(pki["server.key"]), str(pki["server.pem"]), "-ic",
         "-aet", "STORESCP", "-od", str(received), str(dest_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_port(dest_port)
        allowed = [
            {"ae_title": "STORESCU", "certificate": "MODALITY1"},  # the client certificate's CN
            {"ae_title": "ECHOSCU", "certificate": "WORKSTATION9", "services": []},
            {"ae_title": "MOVESCU", "services": ["find", "move"]},
        ]
        env = {
            "PACS_DICOM_TLS_CERT": str(pki["server.pem"]),
            "PACS_DICOM_TLS_KEY": str(pki["server.key"]),
            "PACS_DICOM_TLS_CA": str(pki["ca.pem"]),
            "PACS_DICOM_TLS_REQUIRE_CLIENT_CERT": "true",
            "PACS_DICOM_ALLOWED_AES": json.dumps(allowed),
            "PACS_DICOM_DESTINATIONS": json.dumps(
                [{"ae_title": "STORESCP", "host": "127.0.0.1", "port": dest_port, "tls": True}]
            ),
        }
        with serve(tmp_path, f"sqlite:///{tmp_path / 'index.sqlite'}", env=env) as srv:
            port = str(srv.dicom_port)
            tls_args = ["+tls", str(pki["client.key"]), str(pki["client.pem"]), "+cf", str(pki["ca.pem"])]
            ds = make_dataset(patient_id="PID-TLS-MOVE", PatientName="Lê^Thị Tuyết")
            f = write(ds, tmp_path / "ct.dcm")
            stored = subprocess.run(
                [storescu, *tls_args, "-aet", "STORESCU", "-aec", "PACS", "127.0.0.1", port, str(f)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert stored.returncode == 0, stored.stdout + stored.stderr  # CN MODALITY1 = STORESCU's
            echo = subprocess.run(
                [echoscu, *tls_args, "-aet", "ECHOSCU", "-aec", "PACS", "127.0.0.1", port],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert echo.returncode != 0  # ECHOSCU is bound to WORKSTATION9, not MODALITY1
            assert "bound to certificate WORKSTATION9; the peer presented 'MODALITY1'" in srv.log()
            # movescu has no TLS: pynetdicom asks for the move over TLS with the same certificate
            ae = AE(ae_title="MOVESCU")
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            ctx = tls.client_context(pki["ca.pem"], pki["client.pem"], pki["client.key"])
            assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS", tls_args=(ctx, "localhost"))
            assert assoc.is_established
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ds.StudyInstanceUID
            try:
                statuses = [
                    int(st.Status)
                    for st, _ in assoc.send_c_move(
                        query, "STORESCP", StudyRootQueryRetrieveInformationModelMove
                    )
                ]
            finally:
                assoc.release()
                ae.shutdown()
            assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
            files = list(received.iterdir())
            assert len(files) == 1, scp.stderr  # arrived over TLS: storescp speaks nothing else
    finally:
        scp.terminate()
        scp.wait(10)


def test_a_tls_destination_needs_a_ca(tmp_path: Path) -> None:
    import pytest

    from pacs import config

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[dicom]\ndestinations = [{ ae_title = "WS", host = "10.0.0.9", port = 104, tls = true }]\n',
        encoding="utf-8",
    )
    with pytest.raises(config.ConfigError, match="tls_ca"):
        config.load(cfg)
