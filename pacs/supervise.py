"""Process supervision for ``pacs serve``: DIMSE listener processes, web server processes.

The first process builds the runtime (migrating the schema, cleaning unfinished writes), accepts
every association and hands each to the listener process with the fewest in progress
(:class:`pacs.scp.listener.Dispatch`); ``[http] workers`` web processes share the HTTP port with
SO_REUSEPORT. Every child exits with its parent, even when the parent was killed outright.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from pacs.config import Settings

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("pacs")


def configure_logging(settings: Settings) -> None:
    """Log lines to stderr at ``[log] level`` (pynetdicom's own at WARNING)."""
    logging.basicConfig(
        level=getattr(logging, settings.log.level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _dicom_worker(
    settings: Settings,
    port: int,
    parent: int,
    ready: Any = None,
    loads: Any = None,
    slot: int = 0,
    inbox: Any = None,
    hl7_port: int = 0,
) -> None:
    """A further DIMSE listener process: serves the associations serve hands it (``inbox``)."""
    import dataclasses

    from pacs import runtime
    from pacs.scp.listener import DicomServer, Dispatch

    settings = dataclasses.replace(settings, dicom=dataclasses.replace(settings.dicom, port=port))
    configure_logging(settings)
    rt = runtime.build(settings, run_migrations=False)
    server = DicomServer(
        settings,
        rt.archive,
        extensions=runtime.dimse_extensions(rt),
        audit=rt.audit,
        dispatch=Dispatch(loads, slot) if loads is not None else None,
        inbox=inbox,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    hl7 = _hl7_listener(settings, rt, port=hl7_port) if hl7_port else None
    if ready is not None:
        ready.set()  # serve says READY only once every listener accepts
    # Exit with the parent, even when it was killed without a chance to stop us (SIGKILL, OOM).
    while not stop.wait(1.0):
        if os.getppid() != parent:  # reparented: serve died (maybe even before we got here)
            log.warning("pacs serve (pid %d) is gone: this listener stops too", parent)
            break
    server.stop()
    if hl7:
        hl7[0].stop()
    rt.close()


def serve(settings: Settings) -> int:
    """Run the DICOM listener process(es) and the web server process(es) until interrupted.

    Prints ``READY dicom=HOST:PORT http=HOST:PORT ...`` once every listener accepts.
    """
    from pacs import runtime
    from pacs.scp.listener import DicomServer, Dispatch

    configure_logging(settings)
    rt = runtime.build(settings, clean_tmp=True)
    first_admin(settings, rt)
    workers = settings.dicom.workers or os.cpu_count() or 1
    ctx = multiprocessing.get_context("spawn")
    # This process accepts every association and hands each to the listener process with the
    # fewest in progress (pacs.scp.listener.Dispatch): one socket pair per further process.
    loads = ctx.Array("i", workers)
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(workers - 1)]
    dispatch = Dispatch(loads, 0, [ours for ours, _ in pairs]) if workers > 1 else None
    dicom = DicomServer(
        settings, rt.archive, extensions=runtime.dimse_extensions(rt), audit=rt.audit, dispatch=dispatch
    )
    dhost, dport = dicom.start()
    # Storage commitment reports due on new associations (pending ones left by a previous run first).
    commitments = runtime.commitment_worker(rt)
    commitments.start()
    # The HL7 port is shared (SO_REUSEPORT) with every listener process: an HIS feed per connection.
    hl7 = _hl7_listener(settings, rt, reuse_port=workers > 1)
    ready_hl7 = f" hl7={hl7[1]}" if hl7 else ""
    hl7_port = int(hl7[1].rsplit(":", 1)[1]) if hl7 else 0
    listening = [ctx.Event() for _ in range(workers - 1)]
    children = [
        ctx.Process(
            target=_dicom_worker,
            args=(settings, dport, os.getpid(), ev, loads, k + 1, theirs, hl7_port),
            daemon=True,
        )
        for k, (ev, (_, theirs)) in enumerate(zip(listening, pairs, strict=True))
    ]
    for child in children:
        child.start()
    for _, theirs in pairs:
        theirs.close()  # the child has its own copy: its end closes when the child exits
    http_workers = settings.http.workers or os.cpu_count() or 1
    sock = _http_socket(settings, settings.http.port, reuse_port=http_workers > 1)
    hhost, hport = sock.getsockname()[:2]
    web_listening = [ctx.Event() for _ in range(http_workers - 1)]
    web = [
        ctx.Process(target=_http_worker, args=(settings, hport, os.getpid(), ev), daemon=True)
        for ev in web_listening
    ]
    for child in web:
        child.start()
    server = _web_server(settings, runtime.web_app(rt))
    _security_log(settings, hhost, hport, bool(server.config.ssl))
    # Associations that arrive before a listener process is up all go to the others (SO_REUSEPORT
    # only spreads over the sockets bound at connect time): wait for every one of them.
    _await_listeners(children + web, listening + web_listening)
    print(
        f"READY dicom={dhost}:{dport} http={hhost}:{hport} workers={workers} http_workers={http_workers}"
        + ready_hl7,
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        dicom.stop()
        commitments.stop()
        if hl7:
            hl7[0].stop()
        for child in children + web:
            child.terminate()
        for child in children + web:
            child.join(5)
        rt.close()
    return 0


def _hl7_listener(
    settings: Settings, rt: Any, *, port: int | None = None, reuse_port: bool = True
) -> tuple[Any, str] | None:
    """The HL7 v2 MLLP listener (pacs.hl7.mllp) on the orders service, when ``[hl7] port`` is set
    (on ``port`` instead when given: a listener process joins serve's port); returns it with its
    ``HOST:PORT``."""
    if not settings.hl7.port:
        return None
    from pacs.hl7.mllp import MllpServer

    server = MllpServer(settings.hl7, rt.orders)
    try:
        host, port = server.start(port, reuse_port=reuse_port)
    except OSError as exc:
        raise SystemExit(f"[hl7] cannot listen on {settings.hl7.host}:{settings.hl7.port}: {exc}") from exc
    return server, f"{host}:{port}"


def _await_listeners(children: list[Any], listening: list[Any], timeout: float = 120.0) -> None:
    """Block until every listener process (DIMSE or HTTP) accepts connections (or fail if one died)."""
    deadline = time.monotonic() + timeout
    for child, ev in zip(children, listening, strict=True):
        while not ev.wait(0.1):
            if not child.is_alive():
                raise SystemExit(f"a listener process exited at start (code {child.exitcode}); see the log")
            if time.monotonic() > deadline:
                raise SystemExit(f"a listener process did not start within {timeout:.0f} s")


def _http_socket(settings: Settings, port: int, *, reuse_port: bool) -> socket.socket:
    """The listening socket of the web app; with ``reuse_port`` several processes bind the same port."""
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only for sockets
    # that say they are TCP; without it every response stalls ~40 ms on a delayed ACK.
    family = socket.AF_INET6 if ":" in settings.http.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.http.host, port))
    # Listen now, before READY is printed: uvicorn listens only once its loop runs, and a client
    # that connected in between (a test, a health check) was refused.
    sock.listen(2048)
    return sock


def _web_server(settings: Settings, app: Any) -> uvicorn.Server:
    """A uvicorn server for ``app`` with our connection guards and TLS settings."""
    import uvicorn

    # h11 named, not "auto": the guards (pacs.web.timeouts) follow h11's view of each request.
    proxies = list(settings.http.trusted_proxies)
    config = uvicorn.Config(
        app,
        http="h11",
        log_level="warning",
        access_log=False,  # pacs.web.app.RequestLog logs each request, without patient data
        lifespan="on",
        # X-Forwarded-For / -Proto only from the proxies named in [http] trusted_proxies (uvicorn
        # believes 127.0.0.1 by default: any local process could then write the audit's address).
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or [],
    )
    config.load()
    from pacs.web.timeouts import guarded  # slow-loris headers and bodies, connection floods

    h = settings.http
    config.http_protocol_class = guarded(
        config.http_protocol_class,
        header_timeout=h.header_timeout,
        body_timeout=h.body_timeout,
        body_deadline=h.body_deadline,
        max_connections=h.max_connections,
    )
    if str(settings.http.tls_cert) not in ("", "."):
        from pacs import tls

        config.ssl = tls.server_context(settings.http.tls_cert, settings.http.tls_key)
    return uvicorn.Server(config)


def _http_worker(settings: Settings, port: int, parent: int, ready: Any = None) -> None:
    """A further web server process sharing the HTTP port (SO_REUSEPORT): rendering is CPU-bound
    and one process runs Python on one core at a time."""
    from pacs import runtime

    configure_logging(settings)
    rt = runtime.build(settings, run_migrations=False)
    sock = _http_socket(settings, port, reuse_port=True)
    server = _web_server(settings, runtime.web_app(rt))

    def watch_parent() -> None:
        # Exit with serve, even when it was killed without a chance to stop us (SIGKILL, OOM).
        while ready is not None and not server.started and not server.should_exit:
            time.sleep(0.02)
        if ready is not None:
            ready.set()
        while not server.should_exit:
            if os.getppid() != parent:
                log.warning("pacs serve (pid %d) is gone: this web worker stops too", parent)
                server.should_exit = True
            time.sleep(1.0)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        rt.close()


def first_admin(settings: Settings, rt: Any) -> str | None:
    """With sign-in on and no user at all (a first start), create ``admin`` with a random
    password, say it once on the console and leave it in ``<storage>/initial-admin-password``
    (mode 0600) for whoever runs the archive; returns the password, or None when users exist."""
    if not settings.auth_enabled or rt.auth.list_users():
        return None
    import secrets

    from pacs.services.auth import AuthError

    password = secrets.token_urlsafe(12)
    try:
        rt.auth.add_user("admin", "admin", password)
    except AuthError:  # another node made it first
        return None
    path = settings.storage.path / "initial-admin-password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(password + "\n")
    # On a terminal (the quick start) the password is shown once; anywhere else stderr is a log
    # file or the journal, and the password stays in the 0600 file only.
    shown = f"password {password}" if sys.stderr.isatty() else "password"
    print(
        f"\nFirst start: web user 'admin' created, {shown} in {path}\n"
        "(change it with `pacs user password admin`; add users with `pacs user add`)\n",
        file=sys.stderr,
        flush=True,
    )
    log.warning("first start: created the web user 'admin'; its password is in %s", path)
    return password


def _security_log(settings: Settings, host: str, port: int, https: bool) -> None:
    """Say loudly how the web side is protected."""
    scheme = "https" if https else "http"
    if settings.auth_enabled:
        log.info("web sign-in required on %s://%s:%d (users: pacs user add)", scheme, host, port)
    else:
        banner = "!" * 78
        log.warning(banner)
        log.warning(
            "AUTHENTICATION IS OFF: anyone who can reach %s://%s:%d reads every study", scheme, host, port
        )
        log.warning("set [auth] enabled = true (and add users with `pacs user add`) before real use")
        log.warning(banner)
    from pacs.config import is_loopback

    if not https and not is_loopback(host):
        log.warning("HTTP on %s without TLS: set [http] tls_cert/tls_key or put a TLS proxy in front", host)
