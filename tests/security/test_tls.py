"""Transport security on a real ``pacs serve``: a CA, server and client certificates made here
with the openssl CLI; DICOM TLS (BCP 195, client certificates required) with DCMTK echoscu /
storescu and a pynetdicom SCU; HTTPS with httpx verifying the CA; sign-in over HTTPS; a client
without a certificate is refused; the association is audited with the certificate's name."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import warnings
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from pacs import tls
from tests.conftest import require_tool
from tests.factories import make_dataset, write
from tests.security.conftest import PASSWORD
from tests.serve import serve, write_config

PACS = [sys.executable, "-m", "pacs.cli"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> dict[str, Path]:
    """A self-signed CA, a server certificate for localhost/127.0.0.1, a client certificate."""
    require_tool("openssl")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=PACS Test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    for name, cn, ext in (
        ("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "MODALITY1", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(ext)
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={cn}", cwd=d,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d,
        )  # fmt: skip
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_dicom_tls_and_https(tmp_path: Path) -> None:
    echoscu, storescu = require_tool("echoscu"), require_tool("storescu")
    pki = make_pki(tmp_path)
    db = f"sqlite:///{tmp_path / 'index.sqlite'}"
    cfg = write_config(tmp_path / "config.toml", tmp_path / "storage", db)
    add = subprocess.run(
        [*PACS, "user", "add", "ana", "--role", "radiologist", "--password-stdin", "--config", str(cfg)],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert add.returncode == 0, add.stderr
    env = {
        "PACS_DICOM_TLS_CERT": str(pki["server.pem"]),
        "PACS_DICOM_TLS_KEY": str(pki["server.key"]),
        "PACS_DICOM_TLS_CA": str(pki["ca.pem"]),
        "PACS_DICOM_TLS_REQUIRE_CLIENT_CERT": "true",
        "PACS_HTTP_TLS_CERT": str(pki["server.pem"]),
        "PACS_HTTP_TLS_KEY": str(pki["server.key"]),
        "PACS_AUTH_ENABLED": "true",
        "PACS_DICOM_WORKERS": "2",  # the second listener process does its own TLS handshakes
    }
    with serve(tmp_path, db, env=env) as srv:
        port = str(srv.dicom_port)
        tls_args = ["+tls", str(pki["client.key"]), str(pki["client.pem"]), "+cf", str(pki["ca.pem"])]
        # DCMTK over TLS, verifying our certificate and presenting its own
        r = subprocess.run(
            [echoscu, *tls_args, "-aet", "ECHOSCU", "-aec", "PACS", "127.0.0.1", port],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        ds = make_dataset(patient_id="PID-TLS")
        f = write(ds, tmp_path / "ct.dcm")

        def store_over_tls() -> None:
            r = subprocess.run(
                [storescu, *tls_args, "-aet", "STORESCU", "-aec", "PACS", "127.0.0.1", port, str(f)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 0, r.stdout + r.stderr

        store_over_tls()
        # no client certificate: refused when client certificates are required
        r = subprocess.run(
            [
                echoscu,
                "+tla",
                "+cf",
                str(pki["ca.pem"]),
                "-aet",
                "ECHOSCU",
                "-aec",
                "PACS",
                "127.0.0.1",
                port,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0
        # plain TCP to the TLS port: no association
        r = subprocess.run(
            [echoscu, "-aet", "ECHOSCU", "-aec", "PACS", "-to", "10", "127.0.0.1", port],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0

        # pynetdicom SCU with an SSLContext (PS3.15 B.9)
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage)
        ctx = tls.client_context(pki["ca.pem"], pki["client.pem"], pki["client.key"])
        assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS", tls_args=(ctx, "localhost"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(make_dataset(patient_id="PID-TLS2")).Status == 0
        cipher = assoc.dul.socket.socket.cipher()  # type: ignore[union-attr]
        # While it is open, the next association is handed to the other listener process, which
        # wraps the passed socket in TLS itself.
        store_over_tls()
        assoc.release()
        accepted = re.findall(r"\[(\d+)\] association accepted", srv.log())
        assert len(set(accepted)) == 2, accepted
        assert cipher[1] in ("TLSv1.2", "TLSv1.3")
        no_cert = tls.client_context(pki["ca.pem"])
        assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS", tls_args=(no_cert, "localhost"))
        assert not assoc.is_established
        # TLS 1.1 is refused (BCP 195)
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(pki["ca.pem"]))
        old.load_cert_chain(str(pki["client.pem"]), str(pki["client.key"]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
            assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS", tls_args=(old, "localhost"))
            assert not assoc.is_established
        except (ValueError, ssl.SSLError):
            pass  # this OpenSSL cannot even offer TLS 1.1: refused all the same

        # HTTPS, verifying the CA; sign-in over it
        base = f"https://localhost:{srv.http_port}"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(pki["ca.pem"])), timeout=30) as c:
            assert c.get(f"{base}/healthz").status_code == 200
            assert c.get(f"{base}/dicom-web/studies").status_code == 401
            tok = c.post(f"{base}/api/auth/login", json={"username": "ana", "password": PASSWORD})
            assert tok.status_code == 200, tok.text
            h = {"Authorization": f"Bearer {tok.json()['access_token']}"}
            found = c.get(f"{base}/dicom-web/studies?PatientID=PID-TLS", headers=h)
            assert found.status_code == 200
            assert found.json()[0]["0020000D"]["Value"] == [ds.StudyInstanceUID]
        with pytest.raises(httpx.ConnectError), httpx.Client(timeout=30) as c:  # system CAs: untrusted
            c.get(f"{base}/healthz")
        with pytest.raises(httpx.HTTPError), httpx.Client(timeout=30) as c:  # plain HTTP to HTTPS
            c.get(f"http://127.0.0.1:{srv.http_port}/healthz")
        log = srv.log()
    assert "DICOM listener PACS on" in log and "(TLS)" in log
    assert "cert=MODALITY1" in log  # the association was tied to the client certificate
    out = subprocess.run(
        [*PACS, "audit", "--kind", "association.open", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    assert len(lines) == 4  # echoscu, storescu twice, pynetdicom (the refused ones never opened)
    assert all("\tMODALITY1\t" in ln and '"tls": true' in ln for ln in lines)
