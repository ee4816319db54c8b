"""SQLite write transactions queue on WriteLock (threads and processes), and it is always released."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import threading
from pathlib import Path

from sqlalchemy import Engine, text

from pacs.index.engine import make_engine


def _increment(url: str, times: int) -> None:
    engine = make_engine(url)
    for _ in range(times):
        with engine.connect().execution_options(pacs_write=True) as conn, conn.begin():
            n = conn.execute(text("SELECT n FROM counter")).scalar_one()
            conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
    engine.dispose()


def _setup(tmp_path: Path) -> tuple[str, Engine, Path]:
    db = tmp_path / "index.sqlite"
    url = f"sqlite:///{db}"
    engine = make_engine(url)
    with engine.connect().execution_options(pacs_write=True) as conn, conn.begin():
        conn.execute(text("CREATE TABLE counter (n INTEGER)"))
        conn.execute(text("INSERT INTO counter VALUES (0)"))
    return url, engine, Path(f"{db}-pacs.lock")


def test_writers_in_threads_and_processes_lose_no_update(tmp_path: Path) -> None:
    url, engine, lock_file = _setup(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_increment, args=(url, 100)) for _ in range(2)]
    for p in procs:
        p.start()
    threads = [threading.Thread(target=_increment, args=(url, 100)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 400
    assert lock_file.exists()
    # Nothing holds it now: another open file description gets it at once.
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_a_writer_waits_for_the_holder_and_goes_on_when_released(tmp_path: Path) -> None:
    url, engine, lock_file = _setup(tmp_path)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process's writer, as far as the engine can tell
    writer = threading.Thread(target=_increment, args=(url, 1))
    writer.start()
    writer.join(0.3)
    assert writer.is_alive(), "the write must wait for the lock"
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    writer.join(10)
    assert not writer.is_alive()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 1


def test_nested_write_on_one_thread_does_not_deadlock(tmp_path: Path) -> None:
    _url, engine, _lock = _setup(tmp_path)
    with engine.connect().execution_options(pacs_write=True) as outer, outer.begin():
        outer.execute(text("UPDATE counter SET n = n + 1"))
    with engine.connect().execution_options(pacs_write=True) as a:
        with a.begin():
            a.execute(text("UPDATE counter SET n = n + 1"))
        with a.begin():  # a second write transaction on the same connection, lock still held
            a.execute(text("UPDATE counter SET n = n + 1"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 3


def test_busy_tells_whether_another_writer_holds_the_lock(tmp_path: Path) -> None:
    """What Archive.store_incoming asks before it decides to fsync inline (pacs.index.engine)."""
    from pacs.index.engine import write_lock_busy

    _url, engine, lock_file = _setup(tmp_path)
    assert not write_lock_busy(engine)
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with engine.connect().execution_options(pacs_write=True) as conn, conn.begin():
            held.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    assert held.wait(10)
    assert write_lock_busy(engine)  # another thread
    release.set()
    t.join(10)
    assert not write_lock_busy(engine)
    with engine.connect().execution_options(pacs_write=True) as conn, conn.begin():
        assert not write_lock_busy(engine)  # this very thread holds it
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another process would (a separate open file)
        assert write_lock_busy(engine)
    finally:
        os.close(fd)
    assert not write_lock_busy(engine)
