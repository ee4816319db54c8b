"""Hostile DICOM peers before (and just after) the AE check, against a real ``pacs serve``
(issue 14): oversized PDUs, PDUs dribbled byte by byte, and floods of connections that never
negotiate. Each is refused (A-ABORT or close) with bounded server memory, and DCMTK's
``echoscu`` is served throughout. Memory is the server's resident set (/proc), not a timing.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import require_tool
from tests.robustness.test_limits import _assoc_rq, _patch
from tests.serve import PeakRss, Served, serve, threads_of

LIMITS = """
[dicom]
max_associations = 4
max_unidentified = 12
max_unidentified_per_host = 4
max_pdu = 16384
network_timeout = 1.5
acse_timeout = 2
dimse_timeout = 5
"""

MiB = 1 << 20


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server with small DICOM limits, on SQLite (nothing here involves the index)."""
    tmp = tmp_path_factory.mktemp("dicom-hostile")
    with serve(tmp, f"sqlite:///{tmp / 'index.sqlite'}", env=_patch(LIMITS)) as s:  # type: ignore[arg-type]
        yield s


def _echo_from(port: int, source: str) -> int:
    """C-ECHO from ``source`` with pynetdicom (echoscu cannot choose its address); 0 on success."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", bind_address=(source, 0))
    try:
        return int(assoc.send_c_echo().Status) if assoc.is_established else -1
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _echoscu(port: int) -> subprocess.CompletedProcess[str]:
    """DCMTK's echoscu from 127.0.0.1 (the hostile peers below use other loopback addresses)."""
    exe = require_tool("echoscu")
    return subprocess.run(
        [exe, "-aet", "ECHOSCU", "-aec", "PACS", "-to", "10", "-ta", "10", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _connect(port: int, source: str = "127.0.0.2") -> socket.socket:
    """A raw connection from another loopback address (Linux routes all of 127/8 locally)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closes ``sock`` within ``seconds``; what it sent before closing."""
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset
            return True, got
        if not data:
            return True, got
        got += data
    return False, got


def _abort_reason(data: bytes) -> tuple[int, int] | None:
    """(source, reason) of an A-ABORT PDU at the start of ``data`` (PS3.8 9.3.8)."""
    if len(data) >= 10 and data[0] == 0x07:
        return data[8], data[9]
    return None


def test_oversized_association_request_is_aborted_before_it_is_read(srv: Served) -> None:
    """An unidentified peer announces a 1 GiB A-ASSOCIATE-RQ and streams it: the server aborts at
    the header (it used to buffer whatever arrived: 300 MiB sent, RSS +525 MB)."""
    sock = _connect(srv.dicom_port)
    sent = 0
    with PeakRss(srv.process.pid) as rss:
        try:
            sock.sendall(struct.pack(">BBI", 0x01, 0, 1 << 30))
            chunk = b"\0" * MiB
            sock.settimeout(5)
            while sent < 256 * MiB:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # reset by the server: what we want
        closed, data = _closed_within(sock, 5)
        sock.close()
    assert closed
    assert _abort_reason(data) in (None, (0x02, 0x06))  # A-ABORT if it reached us before the reset
    assert sent < 64 * MiB, f"the server kept reading: {sent / MiB:.0f} MiB accepted"
    assert rss.grew_mib < 32, f"server RSS grew {rss.grew_mib:.0f} MiB"
    assert "over the 262144 accepted" in srv.log()
    assert _echoscu(srv.dicom_port).returncode == 0


def test_p_data_over_the_announced_maximum_is_aborted(srv: Served) -> None:
    """After a good negotiation, a P-DATA-TF longer than the Maximum Length we announced
    (16384 here) gets A-ABORT (service provider, invalid PDU parameter value) at once."""
    sock = _connect(srv.dicom_port)
    try:
        sock.sendall(_assoc_rq())
        assert sock.recv(1)[0] == 0x02  # A-ASSOCIATE-AC
        sock.settimeout(1)
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            pass
        sock.sendall(struct.pack(">BBI", 0x04, 0, 16385) + b"\0" * 4096)
        closed, data = _closed_within(sock, 5)
    finally:
        sock.close()
    assert closed
    assert _abort_reason(data) == (0x02, 0x06)
    assert _echoscu(srv.dicom_port).returncode == 0


def _dribble(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    for b in data:
        if stop.wait(every):
            return
        try:
            sock.sendall(bytes([b]))
        except OSError:
            return


@pytest.mark.parametrize("phase", ["negotiation", "established"])
def test_pdu_dribbled_byte_by_byte_meets_a_deadline(srv: Served, phase: str) -> None:
    """One byte every 0.5 s never trips the 1.5 s read timeout; the whole PDU's deadline does:
    ``acse_timeout`` (2 s) from the connection for an A-ASSOCIATE-RQ, ``network_timeout``
    (1.5 s) from its first byte for a P-DATA PDU. It used to live as long as the bytes came."""
    sock = _connect(srv.dicom_port)
    stop = threading.Event()
    try:
        if phase == "established":
            sock.sendall(_assoc_rq())
            assert sock.recv(1)[0] == 0x02
            payload = struct.pack(">BBI", 0x04, 0, 1000) + b"\0" * 1000
        else:
            payload = _assoc_rq()
        t0 = time.monotonic()
        threading.Thread(target=_dribble, args=(sock, payload, 0.5, stop), daemon=True).start()
        closed, _ = _closed_within(sock, 10)
        took = time.monotonic() - t0
    finally:
        stop.set()
        sock.close()
    assert closed, "the dribbling peer was still connected after 10 s"
    assert took < 6, f"closed after {took:.1f} s"
    assert "not received whole in time" in srv.log()
    assert _echoscu(srv.dicom_port).returncode == 0


@pytest.mark.parametrize("hosts", ["one host", "many hosts"])
def test_flood_of_silent_and_slow_sockets_does_not_lock_out_modalities(srv: Served, hosts: str) -> None:
    """60 connections that never finish negotiating (silent, or an A-ASSOCIATE-RQ dribbled), from
    one address or from 30: at most 4 per host and 12 in all are kept (the longest negotiating
    dropped first), association slots (4) are only taken by established associations, and
    DCMTK's echoscu succeeds while the flood is on, from another address and from the flooding
    one. 40 such sockets used to get echoscu rejected."""
    stop = threading.Event()
    socks: list[socket.socket] = []
    threads_before = threads_of(srv.process.pid)
    with PeakRss(srv.process.pid) as rss:
        try:
            for k in range(60):
                source = "127.0.0.2" if hosts == "one host" else f"127.0.1.{k % 30 + 1}"
                try:
                    sock = _connect(srv.dicom_port, source)
                except OSError:
                    continue
                socks.append(sock)
                if k % 2:
                    threading.Thread(
                        target=_dribble, args=(sock, _assoc_rq(), 0.2, stop), daemon=True
                    ).start()
            time.sleep(0.3)
            results = [_echoscu(srv.dicom_port) for _ in range(3)]
            behind = _echo_from(srv.dicom_port, "127.0.0.2" if hosts == "one host" else "127.0.1.1")
            held = threads_of(srv.process.pid) - threads_before
        finally:
            stop.set()
            for sock in socks:
                sock.close()
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert behind == 0  # a modality at the flooding address (behind the same NAT) gets in too
    assert held < 40, f"{held} more server threads during the flood"
    assert rss.grew_mib < 64, f"server RSS grew {rss.grew_mib:.0f} MiB"
    log = srv.log()
    if hosts == "one host":
        assert "4 connections from 127.0.0.2 still negotiating: dropping the oldest" in log
    else:
        assert "12 connections still negotiating: dropping the oldest" in log
