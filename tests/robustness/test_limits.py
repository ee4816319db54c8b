"""Limits (issue 7) against a real ``pacs serve``: maximum associations, maximum PDU, idle and
slow DICOM peers, request body size (announced and streamed), QIDO result caps, and HTTP
slow-loris clients. Each limit refuses the abuser with the standard answer and the server keeps
serving everyone else. Peers: pynetdicom, raw sockets, httpx.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacs.model import Level
from tests.factories import make_dataset, to_bytes
from tests.protocol.store_util import open_archive
from tests.robustness.conftest import STOW_TYPE, c_store, stow_body
from tests.serve import Served, serve

LIMITS = """
[dicom]
max_associations = 2
max_pdu = 16384
network_timeout = 1.5
acse_timeout = 1.5
dimse_timeout = 5
[http]
max_upload_mb = 1
header_timeout = 1
max_query_limit = 5
default_query_limit = 3
"""


def _patch(text: str) -> str:
    """The LIMITS keys as environment variables (the test config already has these sections)."""
    env = {}
    section = ""
    for line in text.strip().splitlines():
        if line.startswith("["):
            section = line.strip("[]").upper()
        else:
            key, value = (p.strip() for p in line.split("=", 1))
            env[f"PACS_{section}_{key.upper()}"] = value
    return env  # type: ignore[return-value]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server with small limits, on SQLite (the limits do not involve the index)."""
    tmp = tmp_path_factory.mktemp("limits")
    with serve(tmp, f"sqlite:///{tmp / 'index.sqlite'}", env=_patch(LIMITS)) as s:  # type: ignore[arg-type]
        yield s


def _echo(port: int) -> int:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    try:
        assert assoc.is_established
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()
        ae.shutdown()


# ------------------------------------------------------------------ DICOM


def test_max_associations_rejects_the_extra_one_and_keeps_serving(srv: Served) -> None:
    """Established associations fill ``max_associations`` (connections still negotiating do not:
    tests/security/test_dicom_hostile.py); the extra one is rejected transient, and a slot
    freed by a release is taken again."""
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    held = [ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        extra = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS")
        assert extra.is_rejected
        rj = extra.acceptor.primitive
        # PS3.8 9.3.4: rejected-transient (2), service-provider ACSE... presentation (3),
        # local-limit-exceeded (2)
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
        assert held[0].send_c_echo().Status == 0  # the held ones still work
        held.pop().release()
        for _ in range(50):  # the released slot is free once its association thread has ended
            again = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS")
            if again.is_established:
                break
            time.sleep(0.1)
        assert again.is_established
        held.append(again)
    finally:
        for a in held:
            a.release()
        ae.shutdown()
    assert _wait(lambda: _echo(srv.dicom_port) == 0)


def _wait(cond, timeout: float = 10) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return True
        except (AssertionError, RuntimeError, OSError):
            pass
        time.sleep(0.1)
    return False


def test_max_pdu_is_announced_and_respected(srv: Served) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    ae.maximum_pdu_size = 0  # unlimited on our side: the server's limit is what bounds its PDUs
    assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS")
    try:
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == 16384  # A-ASSOCIATE-AC Maximum Length (PS3.8 D.3.3.1)
        big = make_dataset(pixels=__import__("numpy").zeros((256, 256), "int16"))
        assert assoc.send_c_store(big).Status == 0  # split into PDUs of at most 16 kB by the SCU
    finally:
        assoc.release()
        ae.shutdown()


def _assoc_rq() -> bytes:
    """A minimal A-ASSOCIATE-RQ for Verification (PS3.8 9.3.2), for raw-socket peers."""

    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body

    app = item(0x10, b"1.2.840.10008.3.1.1.1")
    pc = item(0x20, b"\x01\x00\x00\x00" + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)))
    body = struct.pack(">HH", 1, 0) + b"PACS".ljust(16) + b"PYNETDICOM".ljust(16) + bytes(32)
    body += app + pc + user
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


@pytest.mark.parametrize(
    "behaviour",
    ["silent", "half-association-request", "giant-pdu-announced", "byte-by-byte"],
)
def test_idle_or_slow_dicom_peer_is_dropped(srv: Served, behaviour: str) -> None:
    """A peer that connects and sends nothing, half an A-ASSOCIATE-RQ, or a P-DATA PDU header
    announcing 4 GB, is dropped after acse/network_timeout (1.5 s here) without memory for the
    announced length; other peers are served meanwhile."""
    sock = socket.create_connection(("127.0.0.1", srv.dicom_port), timeout=30)
    try:
        if behaviour == "half-association-request":
            sock.sendall(_assoc_rq()[:40])
        elif behaviour == "giant-pdu-announced":
            sock.sendall(_assoc_rq())
            assert sock.recv(6)[0] == 0x02  # A-ASSOCIATE-AC
            sock.recv(65536)
            sock.sendall(struct.pack(">BBI", 0x04, 0, 0xFFFFFFF0) + b"\x00" * 10)
        elif behaviour == "byte-by-byte":
            for b in _assoc_rq()[:30]:
                sock.sendall(bytes([b]))
                time.sleep(0.02)
        t0 = time.monotonic()
        assert _echo(srv.dicom_port) == 0  # others are served while this peer hangs
        sock.settimeout(30)
        data = b"x"
        while data:
            data = sock.recv(65536)  # the server closes the connection (A-ABORT or close)
            if data and data[0] in (0x03, 0x07):  # A-ASSOCIATE-RJ / A-ABORT: then the close
                continue
        assert time.monotonic() - t0 < 15
    finally:
        sock.close()
    assert _echo(srv.dicom_port) == 0


# ------------------------------------------------------------------ HTTP


def _raw_http(port: int, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        out = b""
        while b"\r\n\r\n" not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def test_gigabytes_announced_by_content_length_are_refused_at_once(srv: Served) -> None:
    """Content-Length: 50 GB and no body: 413 from the headers alone, in well under a second."""
    t0 = time.monotonic()
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {STOW_TYPE}\r\n"
        f"Content-Length: {50 << 30}\r\n\r\n"
    ).encode()
    answer = _raw_http(srv.http_port, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - t0 < 2
    bad = _raw_http(srv.http_port, head.replace(str(50 << 30).encode(), b"-5"))
    assert bad.split(b" ")[1].startswith(b"4"), bad[:200]
    # The refusal is logged (the line is written just after the response, so allow a moment).
    deadline = time.monotonic() + 5
    while "status=413" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "status=413" in srv.log()


def test_streamed_body_over_the_limit_is_cut_off(srv: Served) -> None:
    """No Content-Length (chunked): spooling stops at the limit (1 MiB here) with 413; the rest of
    the body is discarded by the HTTP layer, never stored."""
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(64):  # up to 64 MiB if the server kept reading
            sent += 1 << 20
            yield bytes(1 << 20)

    try:
        r = httpx.post(
            srv.base_url + "/dicom-web/studies",
            content=body(),
            headers={"Content-Type": STOW_TYPE},
            timeout=30,
        )
        assert r.status_code == 413, r.text
        assert "upload limit" in r.json()["detail"]
    except httpx.HTTPError:
        pass  # the server may close the connection while the client still sends
    assert sent > 1 << 20
    spooled = [p for p in (srv.storage / "tmp").iterdir() if p.is_file()]
    assert not spooled  # nothing kept of the refused body
    small = make_dataset()
    r = httpx.post(
        srv.base_url + "/dicom-web/studies",
        content=stow_body(to_bytes(small)),
        headers={"Content-Type": STOW_TYPE},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def test_qido_limit_is_capped(srv: Served) -> None:
    datasets = [make_dataset(patient_id=f"CAP{i}") for i in range(7)]
    assert c_store(srv.dicom_port, datasets) == [0] * 7
    url = srv.base_url + "/dicom-web/studies"
    assert len(httpx.get(url, params={"PatientID": "CAP*"}).json()) == 3  # default_query_limit
    assert len(httpx.get(url, params={"PatientID": "CAP*", "limit": "100000"}).json()) == 5  # max
    r = httpx.get(url, params={"PatientID": "CAP*", "limit": "0"})
    assert r.status_code == 400
    with open_archive(srv.database_url, srv.storage) as archive:
        assert archive.count(Level.STUDY) >= 7


def test_slow_loris_http_does_not_block_other_clients(srv: Served) -> None:
    """Twenty clients send their request headers one byte every 50 ms; meanwhile ordinary QIDO
    requests keep answering fast. An oversized header block is refused (h11 limit)."""
    stop = threading.Event()
    socks: list[socket.socket] = []

    def loris() -> None:
        s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=30)
        socks.append(s)
        head = b"GET /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
        try:
            for b in head:
                if stop.is_set():
                    return
                s.sendall(bytes([b]))
                time.sleep(0.05)
        except OSError:
            return

    threads = [threading.Thread(target=loris, daemon=True) for _ in range(20)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)  # let the slow clients connect and start trickling
        latencies = []
        with httpx.Client(timeout=10) as client:
            for _ in range(20):
                t0 = time.monotonic()
                assert client.get(srv.base_url + "/dicom-web/studies").status_code == 200
                latencies.append(time.monotonic() - t0)
        assert max(latencies) < 2, latencies
        huge = b"GET /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
        try:
            answer = _raw_http(srv.http_port, huge)
            assert answer == b"" or answer.split(b" ")[1].startswith(b"4"), answer[:100]
        except ConnectionResetError:
            pass  # refused by closing: also fine
    finally:
        stop.set()
        for s in socks:
            s.close()
    assert httpx.get(srv.base_url + "/dicom-web/studies", timeout=10).status_code == 200


@pytest.mark.parametrize("sent", [b"", b"GET /dicom-web/studies HTTP/1.1\r\nHost"])
def test_http_connection_without_complete_headers_is_closed(srv: Served, sent: bytes) -> None:
    """uvicorn alone waits forever for the first request headers; ``[http] header_timeout``
    (1 s here) closes such connections, so slow-loris clients cannot pile up."""
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=30) as s:
        s.sendall(sent)
        t0 = time.monotonic()
        assert s.recv(100) == b""  # closed by the server
        assert time.monotonic() - t0 < 10
    assert httpx.get(srv.base_url + "/dicom-web/studies", timeout=10).status_code == 200
    assert "no complete request headers" in srv.log()
