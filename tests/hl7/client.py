"""A small MLLP client for tests and the benchmark."""

from __future__ import annotations

import socket
import time

START, END = b"\x0b", b"\x1c\x0d"


class MllpClient:
    """One connection; :meth:`call` sends a message and waits for its ACK."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, payload: bytes) -> None:
        self.sock.sendall(START + payload + END)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_ack(self) -> bytes:
        """The next framed answer (without framing); raises ConnectionError when closed first."""
        while END not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buf += chunk
        frame, self.buf = self.buf.split(END, 1)
        assert frame.startswith(START), frame[:20]
        return frame[1:]

    def call(self, payload: bytes | str) -> bytes:
        self.send(payload.encode() if isinstance(payload, str) else payload)
        return self.read_ack()

    def closed_by_server(self, within: float = 10.0) -> bool:
        """True when the server closes the connection within ``within`` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True
            self.buf += chunk
        return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def msa(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK."""
    for seg in ack.split(b"\r"):
        if seg.startswith(b"MSA|"):
            f = seg.decode("utf-8", "replace").split("|")
            return f[1], (f[2] if len(f) > 2 else "")
    raise AssertionError(f"no MSA in {ack[:200]!r}")
