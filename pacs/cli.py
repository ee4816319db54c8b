"""Command line: ``pacs serve | import | reindex | verify``. Every command takes ``--config PATH``."""

from __future__ import annotations

import argparse
import getpass
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pacs.config import ConfigError, Settings, load
from pacs.errors import PacsError
from pacs.model import Origin, StoreOutcome

log = logging.getLogger("pacs")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict[str, Any]] = {}
    for section, key, attr in (
        ("dicom", "port", "dicom_port"),
        ("http", "port", "http_port"),
        ("storage", "path", "storage"),
        ("database", "url", "database_url"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return load(args.config, overrides=overrides)


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=getattr(logging, settings.log.level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


# ---------------------------------------------------------------------- serve


def _dicom_worker(settings: Settings, port: int) -> None:
    """A further DIMSE listener process sharing the port (SO_REUSEPORT)."""
    import dataclasses

    from pacs import runtime
    from pacs.scp.server import DicomServer

    settings = dataclasses.replace(settings, dicom=dataclasses.replace(settings.dicom, port=port))
    _logging(settings)
    rt = runtime.build(settings, run_migrations=False)
    server = DicomServer(settings, rt.archive, extensions=runtime.dimse_extensions(rt), reuse_port=True)
    server.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the DICOM listener(s) and the web application until interrupted."""
    import uvicorn

    from pacs import runtime
    from pacs.scp.server import DicomServer

    settings = _settings(args)
    _logging(settings)
    rt = runtime.build(settings, clean_tmp=True)
    workers = settings.dicom.workers or os.cpu_count() or 1
    dicom = DicomServer(settings, rt.archive, extensions=runtime.dimse_extensions(rt), reuse_port=workers > 1)
    dhost, dport = dicom.start()
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=_dicom_worker, args=(settings, dport), daemon=True) for _ in range(workers - 1)
    ]
    for child in children:
        child.start()
    app = runtime.web_app(rt)
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only for sockets
    # that say they are TCP; without it every response stalls ~40 ms on a delayed ACK.
    family = socket.AF_INET6 if ":" in settings.http.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.http.host, settings.http.port))
    hhost, hport = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    if hhost not in ("127.0.0.1", "::1", "localhost"):
        log.warning("HTTP is bound to %s: put it behind TLS and authentication before exposing it", hhost)
    else:
        log.warning(
            "HTTP on loopback only (%s:%d); authentication is not enabled in this build", hhost, hport
        )
    print(f"READY dicom={dhost}:{dport} http={hhost}:{hport} workers={workers}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        dicom.stop()
        for child in children:
            child.terminate()
        for child in children:
            child.join(5)
        rt.close()
    return 0


# ---------------------------------------------------------------------- import


def _walk(paths: Sequence[str]) -> Iterator[Path]:
    for p in map(Path, paths):
        if p.is_dir():
            for root, _dirs, files in os.walk(p):
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield p


def cmd_import(args: argparse.Namespace) -> int:
    """Store files and folders through the same path as C-STORE; print a summary."""
    from pacs import runtime

    settings = _settings(args)
    _logging(settings)
    logging.getLogger("pacs.archive").setLevel(logging.WARNING)
    rt = runtime.build(settings)
    files = list(_walk(args.paths))
    counts: Counter[str] = Counter()
    rejected: list[tuple[Path, str]] = []
    origin = Origin(user=getpass.getuser(), protocol="cli")
    lock = threading.Lock()
    tty = sys.stderr.isatty()
    for i, path in enumerate(files, 1):
        try:
            result = rt.archive.store_file(path, origin)
            counts[result.outcome.value] += 1
        except PacsError as exc:
            counts["rejected"] += 1
            rejected.append((path, str(exc)))
        except OSError as exc:
            counts["rejected"] += 1
            rejected.append((path, f"cannot read: {exc.strerror}"))
        if tty or i == len(files) or i % 100 == 0:
            with lock:
                bar = "#" * int(30 * i / max(1, len(files)))
                print(f"\r[{bar:<30}] {i}/{len(files)}", end="" if i < len(files) else "\n", file=sys.stderr)
    rt.close()
    print(
        f"stored {counts[StoreOutcome.STORED.value] + counts[StoreOutcome.REPLACED.value]}, "
        f"duplicate {counts[StoreOutcome.DUPLICATE.value]}, rejected {counts['rejected']}"
    )
    for path, reason in rejected:
        print(f"  rejected {path}: {reason}")
    return 0 if not rejected or not args.strict else 1


# ---------------------------------------------------------------------- reindex / verify


def cmd_reindex(args: argparse.Namespace) -> int:
    """Rebuild the index from the stored files alone."""
    from pacs import runtime

    settings = _settings(args)
    _logging(settings)
    rt = runtime.build(settings)
    report = rt.archive.reindex(progress=lambda n: print(f"\rindexed {n}", end="", file=sys.stderr))
    print(f"\nindexed {report.indexed}, failed {len(report.failed)}")
    for key, reason in report.failed:
        print(f"  failed {key}: {reason}")
    rt.close()
    return 0 if not report.failed else 1


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every indexed file exists with its hash, and every stored file is indexed."""
    from pacs import runtime

    settings = _settings(args)
    _logging(settings)
    rt = runtime.build(settings)
    report = rt.archive.verify()
    rt.close()
    print(
        f"checked {report.checked}: missing {len(report.missing)}, corrupt {len(report.corrupt)}, "
        f"unindexed {len(report.unindexed)}"
    )
    for sop in report.missing:
        print(f"  missing file for instance {sop}")
    for sop in report.corrupt:
        print(f"  hash mismatch for instance {sop}")
    for key in report.unindexed:
        print(f"  stored file not in the index: {key}")
    print("OK" if report.ok else "MISMATCH")
    return 0 if report.ok else 1


# ---------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the commands)."""
    parser = argparse.ArgumentParser(prog="pacs", description="A small, self-hosted PACS")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="PATH", help="TOML settings file (default: ./config.toml if present)"
    )
    common.add_argument("--storage", metavar="DIR", help="archive root (overrides [storage] path)")
    common.add_argument("--database-url", metavar="URL", help="SQLAlchemy URL (overrides [database] url)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", parents=[common], help="run the DICOM listener and the web application")
    p.add_argument("--dicom-port", type=int, help="DICOM port (0 picks a free one)")
    p.add_argument("--http-port", type=int, help="HTTP port (0 picks a free one)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("import", parents=[common], help="store DICOM files and folders")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any file was rejected")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("reindex", parents=[common], help="rebuild the index from the stored files")
    p.set_defaults(func=cmd_reindex)
    p = sub.add_parser("verify", parents=[common], help="check files against the index")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pacs`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"pacs: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
