"""Command line: ``pacs serve | import | reindex | verify | storage | user | peer | audit | appraisal``
(``--config PATH`` on each).

Each command parses its arguments and calls a service; ``pacs serve``'s processes are run by
:mod:`pacs.supervise`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
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
    from pacs.supervise import configure_logging

    configure_logging(settings)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the DICOM listener(s) and the web application until interrupted (pacs.supervise)."""
    from pacs.supervise import serve

    return serve(_settings(args))


# ---------------------------------------------------------------------- users / audit


def cmd_user(args: argparse.Namespace) -> int:
    """``pacs user add NAME --role R`` / ``list`` / ``disable NAME`` / ``enable NAME`` / ``password NAME``."""
    from pacs import runtime
    from pacs.services.auth import AuthError

    settings = _settings(args)
    _logging(settings)
    rt = runtime.build(settings)
    try:
        if args.action == "list":
            for u in rt.auth.list_users():
                state = "disabled" if u.disabled else "enabled"
                print(f"{u.name}\t{u.role}\t{state}\t{u.created_at:%Y-%m-%d %H:%M}")
            return 0
        if not args.name:
            print(f"pacs user {args.action}: a user name is required", file=sys.stderr)
            return 2
        if args.action in ("add", "password"):
            if args.action == "add" and not args.role:
                print("pacs user add: --role is required", file=sys.stderr)
                return 2
            password = _read_password(args.password_stdin)
            if args.action == "add":
                rt.auth.add_user(args.name, args.role, password)
            else:
                rt.auth.set_password(args.name, password)
        else:
            rt.auth.set_disabled(args.name, args.action == "disable")
        print(f"user {args.name}: {args.action} done")
        return 0
    except AuthError as exc:
        print(f"pacs user {args.action}: {exc}", file=sys.stderr)
        return 1
    finally:
        rt.close()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise ConfigError("the passwords differ")
    return first


def cmd_audit(args: argparse.Namespace) -> int:
    """``pacs audit``: query the audit trail; ``--format json|xml`` gives PS3.15 A.5 audit messages."""
    from pacs import runtime
    from pacs.services.audit import event_filter

    settings = _settings(args)
    _logging(settings)
    rt = runtime.build(settings)
    try:
        if args.verify:
            report = rt.audit.verify_chain()
            if report.ok:
                print(f"audit chain intact: {report.checked} events checked, {report.unsealed} unsealed")
                return 0
            print(
                f"audit chain BROKEN at event {report.broken_id} (seq {report.broken_seq}): {report.reason}",
                file=sys.stderr,
            )
            return 1
        params = {
            "since": args.since or "",
            "until": args.until or "",
            "user": args.user or "",
            "kind": args.kind or "",
            "study": args.study or "",
            "address": args.address or "",
        }
        try:
            flt = event_filter(params)
        except ValueError as exc:
            print(f"pacs audit: {exc}", file=sys.stderr)
            return 2
        rows = rt.audit.query(flt, args.limit)
        if args.format == "json":
            out = rt.audit.to_json(rows)
        elif args.format == "xml":
            out = rt.audit.to_xml(rows).decode("utf-8")
        else:
            out = "\n".join(_audit_line(r) for r in rows)
        if args.output:
            Path(args.output).write_text(out + "\n", encoding="utf-8")
            print(f"{len(rows)} event(s) written to {args.output}")
        elif out:
            print(out)
        return 0
    finally:
        rt.close()


def _audit_line(r: dict[str, Any]) -> str:
    import json

    d = dict(r.get("details") or {})
    what = " ".join(
        f"{k}={v}"
        for k, v in (
            ("study", r.get("study_instance_uid")),
            ("patient", r.get("patient_id")),
            ("sop", r.get("sop_instance_uid")),
        )
        if v
    )
    extra = json.dumps({k: v for k, v in d.items() if k != "protocol"}, ensure_ascii=False, default=str)
    who = r.get("user_name") or r.get("calling_ae") or "-"
    at = r["at"].isoformat(timespec="seconds")
    where = r.get("peer_address") or "-"
    return f"{at}\t{r['kind']}\t{who}\t{where}\toutcome={r['outcome']}\t{what}\t{extra}"


# ---------------------------------------------------------------------- peers


def cmd_peer(args: argparse.Namespace) -> int:
    """``pacs peer list``: the ``[[peers]]``; ``pacs peer check``: reachability and capabilities
    of each (exit 1 when one is unreachable). Credentials are never printed."""
    settings = _settings(args)
    _logging(settings)
    if args.action == "list":
        for p in settings.peers:
            where = f"{p.ae_title}@{p.host}:{p.port}" if p.kind == "dimse" else p.url
            rules = ", ".join(
                f"{m.system}->{m.attribute}" + (f"@{m.issuer}" if m.issuer else "") for m in p.match
            )
            print(f"{p.name}\t{p.facility_code or '-'}\t{p.kind}\t{where}\tauth={p.auth}\t{rules or '-'}")
        if not settings.peers:
            print("no [[peers]] configured")
        return 0
    from pacs import runtime

    rt = runtime.build(settings)
    try:
        checks = rt.federation.check_peers()
    finally:
        rt.close()
    for c in checks:
        state = "reachable" if c.reachable else "UNREACHABLE"
        what = ",".join(c.capabilities) if c.reachable else c.detail
        print(f"{c.peer}\t{c.kind}\t{state}\t{c.ms:.0f} ms\t{what}")
    return 0 if all(c.reachable for c in checks) else 1


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
        + (f", new versions {versions}" if (versions := counts[StoreOutcome.VERSIONED.value]) else "")
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
    versions = f", superseded versions {report.versions}" if report.versions else ""
    print(f"\nindexed {report.indexed}, failed {len(report.failed)}{versions}")
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
    report = rt.archive.verify(deep=args.deep)
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


# ---------------------------------------------------------------------- storage


def cmd_storage(args: argparse.Namespace) -> int:
    """``pacs storage status`` / ``migrate --to s3|file``: the S3 upload queue, moving every blob."""
    from pacs import runtime
    from pacs.blobstore import FileBlobStore
    from pacs.index import uploads

    settings = _settings(args)
    _logging(settings)
    if not settings.storage.s3_bucket:
        print("pacs storage: [storage] s3_bucket is not set", file=sys.stderr)
        return 2
    rt = runtime.build(settings, background=False)
    try:
        assert not isinstance(rt.blobs, FileBlobStore)
        if args.action == "status":
            with rt.db.read() as conn:
                counts = uploads.counts(conn)
                oldest, error = uploads.oldest_queued(conn)
            print(
                f"backend {settings.storage.backend}, bucket {settings.storage.s3_bucket}: "
                f"{counts.get(uploads.QUEUED, 0)} queued, {counts.get(uploads.REMOTE, 0)} in S3"
            )
            if oldest is not None:
                print(f"oldest queued since {oldest.isoformat(timespec='seconds')}")
            if error:
                print(f"last error: {error}")
            return 0
        return _migrate(rt, args.to)
    finally:
        rt.close()


def _migrate(rt: Any, to: str) -> int:
    from pacs import runtime
    from pacs.services import storage_migration

    if to is None:
        print("pacs storage migrate: --to s3 or --to file", file=sys.stderr)
        return 2
    tty = sys.stderr.isatty()
    last = [-1]

    def progress(done: int, total: int) -> None:
        if tty or done == total or done - last[0] >= 100:
            last[0] = done
            bar = "#" * int(30 * done / max(1, total))
            print(f"\r[{bar:<30}] {done}/{total}", end="" if done < total else "\n", file=sys.stderr)

    if to == "s3":
        if rt.settings.storage.backend != "s3":
            print('note: [storage] backend is not "s3": new instances will stay on disk', file=sys.stderr)
        report = storage_migration.to_s3(rt.db, rt.blobs, runtime.upload_worker(rt), progress)
    else:
        if rt.settings.storage.backend == "s3":
            print('note: [storage] backend is "s3": new instances will still be uploaded', file=sys.stderr)
        report = storage_migration.to_file(rt.db, rt.blobs, progress)
    print(f"\nmoved {report.moved} ({report.bytes} bytes), failed {len(report.failed)}", file=sys.stderr)
    for why in report.failed:
        print(f"  failed {why}")
    if report.stopped:
        print(f"stopped: {report.stopped}; run again to continue")
    print("DONE" if report.complete else "INCOMPLETE (run again to continue)")
    return 0 if report.complete else 1


# ---------------------------------------------------------------------- appraisal


def _write_out(data: bytes, output: str | None) -> None:
    if output:
        Path(output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)


def cmd_appraisal(args: argparse.Namespace) -> int:
    """Appraisal: reconcile an HIS claim, list unregistered devices, export, totals, evidence."""
    from pacs import runtime
    from pacs.services.appraisal.reconcile_out import result_csv, result_xlsx

    settings = _settings(args)
    _logging(settings)
    rt = runtime.build(settings)
    origin = Origin(user=getpass.getuser(), protocol="cli")
    a = rt.appraisal
    params = {
        k: v
        for k, v in (
            ("from", args.date_from),
            ("to", args.date_to),
            ("month", args.month),
            ("department", args.department),
            ("machine_code", args.machine_code),
            ("service_code", args.service_code),
        )
        if v
    }
    if args.month and args.action in ("export", "totals", "devices"):
        from pacs.services.appraisal.reconcile import period_of
        from pacs.services.appraisal.xml3 import ClaimUpload

        params["from"], params["to"] = period_of({"month": params.pop("month")}, ClaimUpload("csv"))
    try:
        if args.action == "reconcile":
            if not args.xml3:
                print(
                    "pacs: appraisal reconcile needs --xml3 FILE (an XML3, GIAMDINHHS or CSV file)",
                    file=sys.stderr,
                )
                return 2
            data = Path(args.xml3).read_bytes()
            doc = a.claims.reconcile(data, "", params, origin)
            fmt = args.format or "json"
            body = {"csv": result_csv, "xlsx": result_xlsx}.get(
                fmt, lambda d: json.dumps(d, ensure_ascii=False, indent=1).encode()
            )(doc)
            _write_out(body, args.output)
            print(
                f"run {doc['run']}: " + ", ".join(f"{k} {v}" for k, v in doc["counts"].items()),
                file=sys.stderr,
            )
        elif args.action == "devices":
            report = a.unregistered_devices(params, origin)
            for d in report["unregistered"]:
                print(
                    f"unregistered: modality={d['modality'] or '-'} manufacturer={d['manufacturer'] or '-'} "
                    f"model={d['manufacturer_model_name'] or '-'} serial={d['device_serial_number'] or '-'} "
                    f"station={d['station_name'] or '-'} series={d['series']} images={d['images']} "
                    f"{d['first_study_date']}..{d['last_study_date']}"
                )
            for d in report["outside_register_periods"]:
                days = ",".join(d["days_without_register_row"])
                print(f"no register row in force: serial={d['device_serial_number'] or '-'} days={days}")
            print(f"{report['count']} unregistered device(s)", file=sys.stderr)
        elif args.action == "export":
            fmt = args.format or "csv"
            stream = {"csv": a.stream_csv, "xlsx": a.stream_xlsx, "xml": a.stream_xml}[fmt]
            _write_out(b"".join(stream(params, origin)), args.output)
        elif args.action == "totals":
            if (args.format or "csv") == "json":
                _write_out(
                    json.dumps(a.device_totals(params, origin), ensure_ascii=False, indent=1).encode(),
                    args.output,
                )
            else:
                _write_out(a.totals_csv(params, origin), args.output)
        elif args.action == "evidence":
            from pacs.web.appraisal_claims import evidence_html

            if not args.id:
                print(
                    "pacs: appraisal evidence needs an accession number, study UID or record id",
                    file=sys.stderr,
                )
                return 2
            doc = a.evidence.pack(args.id, origin)
            out = (
                json.dumps(doc, ensure_ascii=False, indent=1).encode()
                if args.format == "json"
                else evidence_html(doc).encode()
            )
            _write_out(out, args.output)
    except PacsError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    finally:
        rt.close()
    return 0


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
    p.add_argument("--deep", action="store_true", help="also re-hash objects in S3 (else: exists and size)")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("storage", parents=[common], help="S3 object storage: status, migrate")
    p.add_argument("action", choices=["status", "migrate"])
    p.add_argument("--to", choices=["s3", "file"], help="migrate: where every blob should be")
    p.set_defaults(func=cmd_storage)
    p = sub.add_parser(
        "user", parents=[common], help="manage web users (add, list, disable, enable, password)"
    )
    p.add_argument("action", choices=["add", "list", "disable", "enable", "password"])
    p.add_argument("name", nargs="?")
    p.add_argument("--role", choices=["admin", "radiologist", "appraiser", "modality-upload"])
    p.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    p.set_defaults(func=cmd_user)
    p = sub.add_parser("peer", parents=[common], help="list or check the peer facilities of [[peers]]")
    p.add_argument("action", choices=["list", "check"])
    p.set_defaults(func=cmd_peer)
    p = sub.add_parser("audit", parents=[common], help="query or export the audit trail")
    p.add_argument("--since", help="ISO date/time, or a span back like 24h or 7d")
    p.add_argument("--until", help="ISO date/time (exclusive)")
    p.add_argument("--user", help="user name or calling AE title")
    p.add_argument("--kind", help="event kinds, comma-separated; a prefix ends with '.' (e.g. http.,auth.)")
    p.add_argument("--study", help="Study Instance UID")
    p.add_argument("--address", help="client address")
    p.add_argument("--limit", type=int, default=10000)
    p.add_argument(
        "--format", choices=["lines", "json", "xml"], default="lines", help="json/xml: PS3.15 A.5 messages"
    )
    p.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument(
        "--verify", action="store_true", help="check the hash chain of the whole trail (exit 1 if broken)"
    )
    p.set_defaults(func=cmd_audit)
    _appraisal_parser(sub, common)
    return parser


def _appraisal_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "appraisal",
        parents=[common],
        help="health-insurance appraisal: reconcile an XML3, unregistered devices, export, totals, evidence",
    )
    p.add_argument("action", choices=["reconcile", "devices", "export", "totals", "evidence"])
    p.add_argument("id", nargs="?", help="evidence: accession number, Study Instance UID or record id")
    p.add_argument("--xml3", metavar="FILE", help="reconcile: the HIS's XML3 (or GIAMDINHHS, or a CSV list)")
    p.add_argument("--month", help="YYYY-MM")
    p.add_argument("--from", dest="date_from", help="YYYY-MM-DD")
    p.add_argument("--to", dest="date_to", help="YYYY-MM-DD")
    p.add_argument("--department", help="export / totals: MA_KHOA")
    p.add_argument("--machine-code", help="export / totals: MA_MAY")
    p.add_argument("--service-code", help="export / totals: MA_DICH_VU")
    p.add_argument("--format", choices=["json", "csv", "xlsx", "xml", "html"])
    p.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=cmd_appraisal)


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
