"""pacs.hl7.mllp: framing, ordering, ACK after the service returned, and hostile peers; in
process on a fake service, then against a real ``pacs serve`` with the orders service behind it."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pacs import config, runtime
from pacs.config import Hl7Settings
from pacs.hl7.mllp import MllpServer
from pacs.model import Origin
from pacs.services.orders.model import Applied, MessageId
from tests.hl7 import samples as S
from tests.hl7.client import MllpClient, msa
from tests.hl7.test_handler import FakeOrders
from tests.serve import serve


@contextmanager
def listener(orders: Any = None, **kw: Any) -> Iterator[tuple[MllpServer, int]]:
    settings = Hl7Settings(host="127.0.0.1", port=0, **kw)
    server = MllpServer(settings, orders or FakeOrders())
    _, port = server.start()
    try:
        yield server, port
    finally:
        server.stop()


class GatedOrders(FakeOrders):
    """Holds every call until ``gate`` is set (a slow commit)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def apply(self, msg: Any, origin: Origin, message_id: MessageId | None = None) -> Applied:
        self.entered.set()
        assert self.gate.wait(10)
        return super().apply(msg, origin, message_id)


def _nothing_within(c: MllpClient, seconds: float) -> bool:
    c.sock.settimeout(seconds)
    try:
        return c.sock.recv(1, socket.MSG_PEEK) == b""  # closed counts as "nothing" too
    except TimeoutError:
        return True


def test_ack_only_after_the_service_returned_and_in_order() -> None:
    orders = GatedOrders()
    with listener(orders) as (_, port), MllpClient("127.0.0.1", port) as c:
        c.send_raw(
            b"\x0b"
            + S.orm(control_id="A1").encode()
            + b"\x1c\x0d"
            + b"\x0b"
            + S.omi(control_id="A2").encode()
            + b"\x1c\x0d"
        )
        assert orders.entered.wait(10)
        assert _nothing_within(c, 0.3)  # the first message is still being applied: no ACK yet
        orders.gate.set()
        assert msa(c.read_ack()) == ("AA", "A1")
        assert msa(c.read_ack()) == ("AA", "A2")
    assert [m.control_id for *_, m in orders.calls if m] == ["A1", "A2"]


def test_frame_split_over_many_writes_and_line_ends_between_frames() -> None:
    with listener() as (_, port), MllpClient("127.0.0.1", port) as c:
        data = b"\r\n\x0b" + S.adt_a08().encode() + b"\x1c\x0d\n"
        for k in range(0, len(data), 7):
            c.send_raw(data[k : k + 7])
        assert msa(c.read_ack()) == ("AA", "ADT0001")
        assert msa(c.call(S.oru())) == ("AA", "ORU0001")


def test_unparsable_frame_is_answered_ar_and_the_connection_stays() -> None:
    with listener() as (_, port), MllpClient("127.0.0.1", port) as c:
        assert msa(c.call(b"this is not HL7")) == ("AR", "")
        assert msa(c.call(S.orm())) == ("AA", "ORM0001")


def test_oversized_frame_is_refused_before_its_end_arrives() -> None:
    with listener(max_message_kb=4) as (_, port), MllpClient("127.0.0.1", port) as c:
        head = S.orm(control_id="BIG1").encode()
        c.send_raw(b"\x0b" + head + b"OBX|1|TX|||" + b"x" * 8192)  # no end block sent
        ack = c.read_ack()
        assert msa(ack) == ("AR", "BIG1")
        assert b"max_message_kb" in ack
        assert c.closed_by_server()


def test_byte_dribbler_is_cut_off() -> None:
    with listener(message_timeout_seconds=1.0, idle_timeout_seconds=5.0) as (_, port):
        with MllpClient("127.0.0.1", port) as c:
            data = b"\x0b" + S.orm().encode()
            t0 = time.monotonic()
            closed = False
            for b in data:
                try:
                    c.send_raw(bytes([b]))
                except OSError:
                    closed = True
                    break
                if c.closed_by_server(within=0.1):
                    closed = True
                    break
            assert closed and time.monotonic() - t0 < 5
        with MllpClient("127.0.0.1", port) as c:  # others are still served
            assert msa(c.call(S.orm())) == ("AA", "ORM0001")


def test_idle_connection_is_closed() -> None:
    with listener(idle_timeout_seconds=0.3) as (_, port), MllpClient("127.0.0.1", port) as c:
        assert msa(c.call(S.orm())) == ("AA", "ORM0001")
        assert c.closed_by_server(within=5)


def test_garbage_outside_frames_closes_the_connection() -> None:
    with listener() as (_, port), MllpClient("127.0.0.1", port) as c:
        c.send_raw(b"GET / HTTP/1.1\r\n" + b"X" * 4096)
        assert c.closed_by_server()


def test_allowed_hosts_and_max_connections() -> None:
    with listener(allowed_hosts=("10.0.0.0/8",)) as (_, port), MllpClient("127.0.0.1", port) as c:
        assert c.closed_by_server()
    with listener(max_connections=1) as (_, port):
        with MllpClient("127.0.0.1", port) as first:
            assert msa(first.call(S.orm())) == ("AA", "ORM0001")
            with MllpClient("127.0.0.1", port) as second:
                assert second.closed_by_server()
        deadline = time.monotonic() + 10  # the first slot frees once its thread noticed the close
        while True:
            with MllpClient("127.0.0.1", port) as third:
                try:
                    assert msa(third.call(S.orm(control_id="X2"))) == ("AA", "X2")
                    break
                except (ConnectionError, OSError):
                    if time.monotonic() > deadline:
                        raise


# ---------------------------------------------------------------------- a real pacs serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(180)
def test_against_pacs_serve(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'index.sqlite'}"
    port = _free_port()
    extra = f"""
[hl7]
host = "127.0.0.1"
port = {port}
max_message_kb = 64
idle_timeout_seconds = 30
message_timeout_seconds = 2
"""
    with serve(tmp_path, db, extra_config=extra) as served:
        assert served.hl7_port == port  # READY ... hl7=127.0.0.1:PORT
        with MllpClient("127.0.0.1", port) as c:
            assert msa(c.call(S.orm())) == ("AA", "ORM0001")
            assert msa(c.call(S.omi())) == ("AA", "OMI0001")
            assert msa(c.call(S.orm())) == ("AA", "ORM0001")  # a resend
            assert msa(c.call(S.orm("CA", "ORM0404", placer="ORD404"))) == ("AE", "ORM0404")
            assert msa(c.call(S.orm(version="2.9", control_id="V29"))) == ("AR", "V29")
            assert msa(c.call(b"\x00\x01garbage")) == ("AR", "")
        # hostile peers: an oversized frame, a byte dribbler, a silent connection
        silent = MllpClient("127.0.0.1", port)
        with MllpClient("127.0.0.1", port) as big:
            big.send_raw(b"\x0b" + S.orm(control_id="BIG").encode() + b"Z" * (100 * 1024))
            assert msa(big.read_ack()) == ("AR", "BIG")
            assert big.closed_by_server()
        with MllpClient("127.0.0.1", port) as slow:
            slow.send_raw(b"\x0b" + S.orm(control_id="SLOW").encode()[:40])
            assert slow.closed_by_server(within=10)
        # legitimate messages are still served, on a new connection and while the silent one waits
        with MllpClient("127.0.0.1", port) as c:
            assert msa(c.call(S.adt_a08())) == ("AA", "ADT0001")
            assert msa(c.call(S.oru(placer="ORD2001", accession="ACC2001"))) == ("AA", "ORU0001")
            assert msa(c.call(S.orm("CA", "ORM0005"))) == ("AA", "ORM0005")
        silent.close()
        log = served.log()
        assert "message larger than 64 KiB" in log and "message not complete after 2 s" in log
        assert "Nguy" not in log and "BN001" not in log  # no patient data in the log

    # the effect, through the orders service on the archive's database
    settings = config.Settings(
        storage=config.StorageSettings(path=served.storage, fsync=False),
        database=config.DatabaseSettings(url=db),
    )
    rt = runtime.build(settings, run_migrations=False)
    try:
        keys = sorted(o["order_key"] for o in rt.orders.list_orders(limit=10))
        assert keys == ["P:ORD1001", "P:ORD2001"]
        assert [s["status"] for s in rt.orders.get_order("P:ORD1001")["steps"]] == ["CANCELED"]
        omi = rt.orders.get_order("P:ORD2001")
        assert len(omi["steps"]) == 3 and omi["reported_at"] == "20261203103000+0700"
    finally:
        rt.close()


@pytest.mark.timeout(180)
def test_connections_spread_over_listener_processes(tmp_path: Path) -> None:
    """With two listener processes both accept on the HL7 port (SO_REUSEPORT): concurrent HIS
    connections are served by either, every message is acknowledged once and committed once."""
    db = f"sqlite:///{tmp_path / 'index.sqlite'}"
    port = _free_port()
    extra = f'[hl7]\nhost = "127.0.0.1"\nport = {port}\n[log]\nlevel = "INFO"\n'
    per_connection, connections = 15, 8
    answers: dict[int, list[tuple[str, str]]] = {}

    def feed(k: int) -> None:
        with MllpClient("127.0.0.1", port) as c:
            answers[k] = [
                msa(c.call(S.orm(control_id=f"C{k}M{n}", placer=f"P{k}N{n}", accession=f"A{k}N{n}")))
                for n in range(per_connection)
            ]

    with serve(tmp_path, db, extra_config=extra, dicom_workers=2) as served:
        assert served.hl7_port == port
        threads = [threading.Thread(target=feed, args=(k,)) for k in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        log = served.log()
    for k in range(connections):
        assert answers[k] == [("AA", f"C{k}M{n}") for n in range(per_connection)]
    pids = set(re.findall(r"\[(\d+)\] hl7 ORM\^O01 C\d+M\d+ from .*: AA", log))
    assert len(pids) == 2, f"messages were handled by processes {pids}"
    settings = config.Settings(
        storage=config.StorageSettings(path=tmp_path / "storage", fsync=False),
        database=config.DatabaseSettings(url=db),
    )
    rt = runtime.build(settings, run_migrations=False)
    try:
        assert len(rt.orders.list_orders(limit=1000)) == per_connection * connections
    finally:
        rt.close()
