"""Helpers the benchmark scripts share (run them as ``python bench/<script>.py``: this folder is
then on ``sys.path``)."""

from __future__ import annotations

import shlex
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def show(cmd: list[str], env: dict[str, str] | None = None) -> None:
    """Print a command the benchmark runs, with the environment it adds, so figures can be re-made."""
    prefix = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    print(f"  $ {prefix + ' ' if prefix else ''}{shlex.join(cmd)}", flush=True)
