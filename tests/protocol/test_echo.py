"""C-ECHO and association access control against a running archive, with DCMTK's echoscu."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import require_tool
from tests.serve import children_of, kill_and_expect_gone, serve


def _echo(port: int, calling: str, called: str = "PACS") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("echoscu"), "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_echo_and_access_control(tmp_path: Path) -> None:
    require_tool("echoscu")
    with serve(tmp_path, f"sqlite:///{tmp_path / 'i.sqlite'}") as srv:
        assert _echo(srv.dicom_port, "ECHOSCU").returncode == 0
        bad_calling = _echo(srv.dicom_port, "INTRUDER")
        assert bad_calling.returncode != 0
        assert "Calling AE Title Not Recognized" in bad_calling.stdout + bad_calling.stderr
        bad_called = _echo(srv.dicom_port, "ECHOSCU", called="NOTUS")
        assert "Called AE Title Not Recognized" in bad_called.stdout + bad_called.stderr
        # The server keeps serving after rejections, and says why it rejected.
        assert _echo(srv.dicom_port, "ECHOSCU").returncode == 0
        log = srv.log()
        assert "calling AE not recognised" in log and "'INTRUDER'" in log
        assert "called AE not recognised" in log


def test_empty_allowed_list_lets_nobody_in(tmp_path: Path) -> None:
    require_tool("echoscu")
    with serve(tmp_path, f"sqlite:///{tmp_path / 'i.sqlite'}", env={"PACS_DICOM_ALLOWED_AES": "[]"}) as srv:
        refused = _echo(srv.dicom_port, "ECHOSCU")
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
        assert srv.process.poll() is None


def test_listener_workers_share_the_port_and_die_with_serve(tmp_path: Path) -> None:
    """Two listener processes answer on one port, each given half of the open associations (the
    first process dispatches to the least busy); SIGKILL of serve leaves no orphan on the port."""
    require_tool("echoscu")
    with serve(tmp_path, f"sqlite:///{tmp_path / 'i.sqlite'}", env={"PACS_DICOM_WORKERS": "2"}) as srv:
        assert srv.log().count("DICOM listener PACS on") == 2, "READY before every listener was up"
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(Verification)
        held = [ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS") for _ in range(4)]
        try:
            assert all(a.is_established for a in held)
            assert all(a.send_c_echo().Status == 0 for a in held)
            pids = re.findall(r"\[(\d+)\] association accepted", srv.log())
            assert sorted(collections.Counter(pids).values()) == [2, 2], pids
        finally:
            for a in held:
                a.release()
            ae.shutdown()
        for _ in range(6):  # DCMTK too, one association after the other
            assert _echo(srv.dicom_port, "ECHOSCU").returncode == 0
        children = children_of(srv.process.pid)
        assert children, "expected a second listener process"
        kill_and_expect_gone(srv.process, children)


def _wakeups(pid: int) -> int:
    """Context switches of every thread of ``pid`` so far (each sleep or wait that ends is one)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:  # a thread that ended meanwhile
            continue
    return total


def test_idle_association_does_not_poll(tmp_path: Path) -> None:
    """pacs/scp/reactor.py: an open, idle association waits on its socket instead of waking up
    every millisecond (pynetdicom's own loops, two per association, ~2,000 wake-ups a second);
    and it still answers at once when a request comes."""
    with serve(tmp_path, f"sqlite:///{tmp_path / 'i.sqlite'}", env={"PACS_DICOM_WORKERS": "1"}) as srv:
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title="PACS")
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0
            before, t0 = _wakeups(srv.process.pid), time.monotonic()
            time.sleep(2.0)
            rate = (_wakeups(srv.process.pid) - before) / (time.monotonic() - t0)
            t1 = time.monotonic()
            assert assoc.send_c_echo().Status == 0
            echo_ms = (time.monotonic() - t1) * 1000
        finally:
            assoc.release()
            ae.shutdown()
    # Two threads waking every 20 ms is ~100/s; the server's other threads add a few.
    assert rate < 400, f"{rate:.0f} wake-ups per second while idle"
    assert echo_ms < 500, f"C-ECHO after idling took {echo_ms:.0f} ms"
