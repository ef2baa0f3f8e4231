"""The persistent queue: background jobs survive kill -9, and the file moves to/from gearmand."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import gearnb
from peers import GearmandProcess, GearnbProcess, free_port, wait_until, worker_thread


def collect(address: str, function: str, expected: int, timeout: float = 30) -> list[bytes]:
    seen: list[bytes] = []
    lock = threading.Lock()

    def record(job):
        with lock:
            seen.append(job.data)
        return b""

    with worker_thread(address, {function: record}):
        wait_until(lambda: len(seen) >= expected, timeout=timeout)
        time.sleep(0.3)  # anything extra (a duplicate) would show up now
    return seen


def rows(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM gearman_queue").fetchone()[0]


def test_background_jobs_survive_kill_9(tmp_path):
    path = tmp_path / "queue.db"
    port = free_port()
    server = GearnbProcess("--queue", f"sqlite:{path}", port=port).start()
    client = gearnb.Client(server.address)
    payloads = [f"job-{i}".encode() for i in range(50)]
    for i, data in enumerate(payloads):
        client.do_background("persist", data, unique=f"u{i}" if i % 2 else None,
                             priority=("high", "normal", "low")[i % 3])
    # One job is running on a worker when the server dies: it must run again too.
    started = threading.Event()

    def hang(job):
        started.set()
        time.sleep(30)
        return b""

    client.do_background("persist-running", b"in-flight")
    worker = gearnb.Worker(server.address)
    worker.register("persist-running", hang)
    threading.Thread(target=lambda: worker.work(max_jobs=1), daemon=True).start()
    started.wait(10)
    assert rows(path) == 51
    server.stop(signal.SIGKILL)
    client.close()

    server = GearnbProcess("--queue", f"sqlite:{path}", port=port).start()
    try:
        with gearnb.Admin(server.address) as admin:
            totals = {s.function: s.total for s in admin.status()}
        assert totals == {"persist": 50, "persist-running": 1}
        assert sorted(collect(server.address, "persist", 50)) == sorted(payloads)
        assert collect(server.address, "persist-running", 1) == [b"in-flight"]
        wait_until(lambda: rows(path) == 0)  # finished jobs leave the file
    finally:
        server.stop()


def test_gearmand_runs_what_gearnb_queued(tmp_path):
    path = tmp_path / "queue.db"
    server = GearnbProcess("--queue", f"sqlite:{path}").start()
    client = gearnb.Client(server.address)
    payloads = [f"moved-{i}".encode() for i in range(20)]
    for data in payloads:
        client.do_background("moving", data)
    client.close()
    server.stop(signal.SIGKILL)
    gearmand = GearmandProcess("-q", "libsqlite3", "--libsqlite3-db", str(path)).start()
    try:
        assert sorted(collect(gearmand.address, "moving", 20)) == sorted(payloads)
    finally:
        gearmand.stop()


def test_gearnb_runs_what_gearmand_queued(tmp_path):
    path = tmp_path / "queue.db"
    gearmand = GearmandProcess("-q", "libsqlite3", "--libsqlite3-db", str(path)).start()
    client = gearnb.Client(gearmand.address)
    payloads = [f"back-{i}".encode() for i in range(20)]
    for data in payloads:
        client.do_background("returning", data)
    client.close()
    gearmand.stop(signal.SIGKILL)
    server = GearnbProcess("--queue", f"sqlite:{path}").start()
    try:
        assert sorted(collect(server.address, "returning", 20)) == sorted(payloads)
    finally:
        server.stop()
