"""The HTTP edge under hostile clients (issue 14), against a real ``pacs serve`` with sign-in on:
an oversized login body is refused without being buffered (the server's peak RSS is measured in
/proc), every request's headers on a keep-alive connection are timed, a request body that stops
arriving (or arrives for too long) is cut off with 408, connections beyond ``[http]
max_connections`` are answered 503 at once, and every response carries the security headers.
Peers: raw sockets (to control every byte and its timing) and httpx.
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pacs import runtime
from tests.factories import make_dataset
from tests.robustness.conftest import c_store
from tests.security.conftest import PASSWORD, make_runtime
from tests.serve import Served, children_of, serve, write_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 1.0
BODY_DEADLINE = 3.0
MAX_CONNECTIONS = 8
ENV = {
    "PACS_AUTH_ENABLED": "true",
    "PACS_AUTH_LOGIN_ATTEMPTS": "1000",  # every test here signs in from 127.0.0.1
    "PACS_HTTP_WORKERS": "1",  # one web process: its memory and its connection count are measured
    "PACS_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "PACS_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
    "PACS_HTTP_BODY_DEADLINE": str(BODY_DEADLINE),
    "PACS_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
}
LOGIN = "/api/auth/login"
PACS = [sys.executable, "-m", "pacs.cli"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server with sign-in on, short HTTP deadlines and a small connection cap (SQLite)."""
    tmp = tmp_path_factory.mktemp("hostile-http")
    db = f"sqlite:///{tmp / 'index.sqlite'}"
    cfg = write_config(tmp / "config.toml", tmp / "storage", db)
    add = subprocess.run(
        [*PACS, "user", "add", "ana", "--role", "admin", "--password-stdin", "--config", str(cfg)],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert add.returncode == 0, add.stderr
    with serve(tmp, db, env=ENV) as s:
        yield s


def _memory_kib(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM (peak RSS), KiB, summed over ``pid`` and its child processes."""
    rss = hwm = 0
    for p in [pid, *children_of(pid)]:
        try:
            with open(f"/proc/{p}/status", encoding="ascii") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        rss += int(fields.get("VmRSS", "0 kB").split()[0])
        hwm += int(fields.get("VmHWM", "0 kB").split()[0])
    return rss, hwm


def _read_response(s: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length body (or whatever came before the close)."""
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _read_until_closed(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def _token(srv: Served) -> str:
    r = httpx.post(srv.base_url + LOGIN, json={"username": "ana", "password": PASSWORD}, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


# ------------------------------------------------------------------ login body


def test_oversized_login_body_is_refused_without_buffering(srv: Served) -> None:
    """A 200 MB chunked login body is cut off at 16 KiB (413, connection closed) and a 400 MB
    Content-Length is refused from the headers alone; the server's peak RSS (server and child
    processes, VmHWM) grows by less than 30 MB; a real sign-in still works afterwards."""
    pid = srv.process.pid
    rss0, hwm0 = _memory_kib(pid)
    total, sent, answer = 200 << 20, 0, b""
    chunk = b"%x\r\n" % (1 << 20) + b"{" * (1 << 20) + b"\r\n"
    head = f"POST {LOGIN} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) as s:
        s.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
        try:
            while sent < total:
                if select.select([s], [], [], 0)[0]:
                    break  # the server answered (or closed) while the body was still coming
                s.sendall(chunk)
                sent += 1 << 20
            answer = _read_until_closed(s)
        except OSError:
            pass  # closed with the body unread: the client may see a reset instead of the 413
    assert sent < total, "the server read the whole 200 MB login body"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413"), answer[:300]
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) as s:
        s.sendall((head + f"Content-Length: {400 << 20}\r\n\r\n").encode())
        announced = _read_until_closed(s)  # answered and closed without a byte of body sent
    assert announced.startswith(b"HTTP/1.1 413"), announced[:300]
    assert b"16 KiB" in announced and b"connection: close" in announced.lower()
    assert time.monotonic() - t0 < 5
    rss1, hwm1 = _memory_kib(pid)
    print(f"server RSS {rss0 >> 10} -> {rss1 >> 10} MiB, peak {hwm0 >> 10} -> {hwm1 >> 10} MiB")
    print(f"chunked body: {sent >> 20} MiB sent before the server cut it off")
    assert hwm1 - hwm0 < 30 << 10, f"peak RSS grew by {(hwm1 - hwm0) >> 10} MiB"
    assert _token(srv)  # legitimate sign-in still works


# ------------------------------------------------------------------ header timeout


def test_every_request_on_a_keep_alive_connection_has_the_header_timeout(srv: Served) -> None:
    """A connection older than header_timeout still gets its later requests served when their
    headers come in time (the deadline restarts per request); a second request whose headers
    dribble in (a byte every 0.2 s) is closed about header_timeout after its first byte."""
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=30) as s:
        s.sendall(_get("/healthz"))
        assert _read_response(s).startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT * 0.6)
        s.sendall(_get("/healthz"))
        assert _read_response(s).startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT * 0.6)  # the connection is now older than header_timeout
        for b in _get("/healthz")[:12]:  # a slowish but timely request
            s.sendall(bytes([b]))
            time.sleep(0.05)
        s.sendall(_get("/healthz")[12:])
        assert _read_response(s).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        closed_after = None
        for b in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200:
            try:
                s.sendall(bytes([b]))
            except OSError:
                closed_after = time.monotonic() - t0
                break
            if select.select([s], [], [], 0.2)[0]:
                assert s.recv(100) == b""  # closed, no response
                closed_after = time.monotonic() - t0
                break
            if time.monotonic() - t0 > HEADER_TIMEOUT + 10:
                break
    assert closed_after is not None, "a second request dribbling its headers was never cut off"
    assert HEADER_TIMEOUT * 0.5 < closed_after < HEADER_TIMEOUT + 5, closed_after
    assert "no complete request headers" in srv.log()


# ------------------------------------------------------------------ body timeout


def _post_slowly(srv: Served, body: bytes, step: int, pause: float, length: int | None = None) -> bytes:
    """POST a login body ``step`` bytes every ``pause`` seconds; the answer (read until closed)."""
    head = (
        f"POST {LOGIN} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=15) as s:
        s.sendall(head.encode())
        for i in range(0, len(body), step):
            if select.select([s], [], [], pause)[0]:
                break  # answered before the body was complete
            try:
                s.sendall(body[i : i + step])
            except OSError:
                break
        return _read_until_closed(s)


def test_request_body_that_stops_arriving_is_cut_off(srv: Served) -> None:
    """Content-Length 200, 13 bytes sent, then nothing: 408 and close after body_timeout (1 s)."""
    t0 = time.monotonic()
    answer = _post_slowly(srv, b'{"username": ', step=13, pause=0, length=200)
    elapsed = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert BODY_TIMEOUT * 0.5 < elapsed < BODY_TIMEOUT + 5, elapsed
    assert "no request body bytes for" in srv.log()


def test_slow_but_steady_body_is_served_and_an_endless_one_is_not(srv: Served) -> None:
    """A body arriving 4 bytes every 0.4 s (gaps under body_timeout, 2.4 s in all, under
    body_deadline) is served; one that keeps trickling past body_deadline (3 s) gets 408."""
    steady = b'{"username": "ana", "password": "wrong"}'
    answer = _post_slowly(srv, steady, step=7, pause=0.4)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:300]  # read in full, then judged
    t0 = time.monotonic()
    answer = _post_slowly(srv, b" " * 100, step=1, pause=0.3)
    elapsed = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert BODY_DEADLINE * 0.8 < elapsed < BODY_DEADLINE + 5, elapsed
    assert "the request body took longer than" in srv.log()


# ------------------------------------------------------------------ connection cap


def test_connections_beyond_the_cap_get_503_and_the_rest_keep_working(srv: Served) -> None:
    """max_connections (8) keep-alive connections are served; four more get 503 with Retry-After
    at once; the held ones keep working; once they close, a new client is served."""
    held: list[socket.socket] = []
    extra: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=10)
            held.append(s)
            s.sendall(_get("/healthz"))
            assert _read_response(s).startswith(b"HTTP/1.1 200")
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=10)
            extra.append(s)
            s.sendall(_get("/healthz"))
            answer = _read_until_closed(s)
            assert answer.startswith(b"HTTP/1.1 503"), answer[:300]
            assert b"retry-after:" in answer.lower()
        held[0].sendall(_get("/healthz"))
        assert _read_response(held[0]).startswith(b"HTTP/1.1 200")
    finally:
        for s in held + extra:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the server notices the closes within a moment
        r = httpx.get(srv.base_url + "/healthz", timeout=10)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.status_code == 200
    assert "max_connections" in srv.log()


# ------------------------------------------------------------------ security headers


def _assert_security_headers(r: httpx.Response) -> None:
    h = r.headers
    assert h.get("x-content-type-options") == "nosniff", (r.url, dict(h))
    assert "frame-ancestors 'self'" in h.get("content-security-policy", ""), (r.url, dict(h))
    assert h.get("referrer-policy") == "no-referrer", (r.url, dict(h))
    assert "strict-transport-security" not in h  # plain HTTP: no HSTS


def test_security_headers_on_viewer_qido_metadata_and_api(srv: Served) -> None:
    ds = make_dataset(patient_id="PID-HDR")
    assert c_store(srv.dicom_port, [ds]) == [0]
    auth = {"Authorization": f"Bearer {_token(srv)}"}
    with httpx.Client(base_url=srv.base_url, timeout=30) as c:
        viewer = c.get("/")
        assert viewer.status_code == 200 and "text/html" in viewer.headers["content-type"]
        csp = viewer.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "object-src 'none'" in csp
        assert "blob:" in csp and "data:" in csp  # the viewer shows images from blob: URLs, a data: icon
        script = c.get("/viewer.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        qido = c.get("/dicom-web/studies", params={"PatientID": "PID-HDR"}, headers=auth)
        assert qido.status_code == 200 and qido.headers["content-type"].startswith("application/dicom+json")
        meta = c.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/metadata", headers=auth)
        assert meta.status_code == 200 and meta.headers["content-type"].startswith("application/dicom+json")
        me = c.get("/api/auth/me", headers=auth)
        assert me.status_code == 200 and me.headers["content-type"].startswith("application/json")
        refused = c.get("/dicom-web/studies")
        assert refused.status_code == 401
        for r in (viewer, script, qido, meta, me, refused):
            _assert_security_headers(r)
        for r in (qido, meta, me):
            assert r.headers.get("cache-control") == "no-store", (r.url, dict(r.headers))
        assert "no-store" not in viewer.headers.get("cache-control", "")  # the viewer shell may be cached


def test_hsts_only_when_the_request_came_over_tls(tmp_path: Path) -> None:
    rt = make_runtime(f"sqlite:///{tmp_path / 'index.sqlite'}", tmp_path / "storage")
    try:
        app = runtime.web_app(rt)
        with TestClient(app, base_url="https://pacs.example") as c:
            r = c.get("/healthz")
            assert r.headers.get("strict-transport-security", "").startswith("max-age=")
            assert r.headers.get("x-content-type-options") == "nosniff"
        with TestClient(app) as c:
            assert "strict-transport-security" not in c.get("/healthz").headers
    finally:
        rt.close()
