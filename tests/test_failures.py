"""Failures: dead worker processes, dead and restarted job servers, garbage on the wire.

Each test counts what it cares about (results delivered, jobs run, tasks resubmitted), so a
duplicate or a loss shows up as a wrong number rather than as a hang.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest

import gearnb
from gearnb.protocol import PacketType as P
from peers import GearmandProcess, GearnbProcess, RawConnection, gearnb_server, wait_until, wait_workers, worker_thread

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(60)

SERVER_KINDS = {"gearnb": GearnbProcess, "gearmand": GearmandProcess}


@pytest.fixture(params=sorted(SERVER_KINDS))
def server_class(request):
    """The class of a job server that runs as a process of its own (so it can be killed)."""
    return SERVER_KINDS[request.param]


# -- a worker process killed in the middle of a job ----------------------------------------

WORKER_SCRIPT = """
import os, sys, time
from pathlib import Path
import gearnb

address, flags = sys.argv[1], Path(sys.argv[2])
pid = os.getpid()

def slow(job):
    # The first worker to start the job hangs in it (the test kills it there); any later
    # one finishes quickly. Only one job runs at a time, so the check has no race.
    first = not any(flags.glob("*.started"))
    (flags / f"{pid}.started").write_bytes(job.data)
    time.sleep(60 if first else 0.2)
    (flags / f"{pid}.done").write_bytes(job.data)
    return str(pid).encode()

worker = gearnb.Worker(address)
worker.register("slow", slow)
(flags / f"{pid}.ready").touch()
worker.work()
"""


def start_worker_processes(script: Path, address: str, flags: Path, count: int) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return [subprocess.Popen([sys.executable, str(script), address, str(flags)], env=env) for _ in range(count)]


def test_worker_process_killed_mid_job(server_address, tmp_path):
    script = tmp_path / "slow_worker.py"
    script.write_text(WORKER_SCRIPT)
    flags = tmp_path / "flags"
    flags.mkdir()
    procs = start_worker_processes(script, server_address, flags, 2)
    client = gearnb.Client(server_address)
    try:
        wait_workers(server_address, "slow", 2, timeout=15)
        counts: Counter[str] = Counter()
        taskset = client.task_set()
        task = gearnb.Task("slow", b"payload", unique="kill-mid-job")
        task.on_complete(lambda data: counts.update(["complete"]))
        task.on_fail(lambda: counts.update(["fail"]))
        task.on_created(lambda handle: counts.update(["created"]))
        taskset.add(task)

        started = wait_until(lambda: list(flags.glob("*.started")), timeout=10)
        victim = int(started[0].name.split(".")[0])
        [survivor] = [p for p in procs if p.pid != victim]
        wait_until(lambda: task.handle)  # JOB_CREATED may still be on its way to the client
        with RawConnection(server_address, timeout=20) as listener:
            # A second client attached to the same job (same unique) counts, on the wire,
            # what the server sends about it.
            listener.send(P.SUBMIT_JOB, b"slow", b"kill-mid-job", b"payload")
            assert listener.expect(P.JOB_CREATED) == (task.handle,)

            # Kill the worker that took the job while it is inside the job.
            os.kill(victim, signal.SIGKILL)

            assert taskset.wait(20)
            packets = [listener.recv()]
            with pytest.raises(TimeoutError):  # a duplicate would arrive about now
                packets.append(listener.recv(timeout=0.5))
        assert [(p.type, p.args) for p in packets] == [(P.WORK_COMPLETE, (task.handle, str(survivor.pid).encode()))]
        taskset.wait(1)  # runs the callbacks of anything that arrived late
        assert task.successful and task.result == str(survivor.pid).encode()
        # One submit, one result; the server requeued the job itself (no resubmit).
        assert counts == {"created": 1, "complete": 1}
        assert {p.name for p in flags.glob("*.started")} == {f"{victim}.started", f"{survivor.pid}.started"}
        assert [p.name for p in flags.glob("*.done")] == [f"{survivor.pid}.done"]
        with gearnb.Admin(server_address) as admin:
            [row] = [r for r in admin.status() if r.function == "slow"]
        assert (row.total, row.running, row.workers) == (0, 0, 1)
    finally:
        client.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


# -- a job server killed while a TaskSet is in flight --------------------------------------

def test_server_killed_while_taskset_in_flight(server_class):
    first, second = server_class().start(), server_class().start()
    addresses = [first.address, second.address]
    runs: Counter[bytes] = Counter()
    lock = threading.Lock()

    def work(job: gearnb.Job) -> bytes:
        time.sleep(0.005)
        with lock:
            runs[job.data] += 1
        return b"ok:" + job.data

    client = gearnb.Client(addresses)
    try:
        with worker_thread(addresses, {"work": work}), worker_thread(addresses, {"work": work}), \
                worker_thread(addresses, {"work": work}), worker_thread(addresses, {"work": work}):
            for address in addresses:
                wait_workers(address, "work", 4)
            completes: Counter[int] = Counter()
            created: Counter[int] = Counter()
            failures: list[int] = []
            taskset = client.task_set()
            tasks = []
            for i in range(200):
                # Half with a unique (the server is hashed from it), half round-robin.
                task = gearnb.Task("work", str(i), unique=f"job-{i}" if i % 2 else None)
                task.on_complete(lambda data, i=i: completes.update([i]))
                task.on_created(lambda handle, i=i: created.update([i]))
                task.on_fail(lambda i=i: failures.append(i))
                tasks.append(taskset.add(task))
            wait_until(lambda: sum(runs.values()) >= 20, timeout=20)
            first.stop(signal.SIGKILL)
            assert taskset.wait(60), f"{sum(t.finished for t in tasks)} of 200 finished"

            assert failures == [] and all(t.successful and t.error is None for t in tasks)
            assert [t.result for t in tasks] == [b"ok:%d" % i for i in range(200)]
            assert completes == Counter(range(200))  # each exactly once
            assert set(runs) == {str(i).encode() for i in range(200)}  # every job ran
            # The kill happened with work left on that server: some tasks were submitted twice.
            resubmitted = [i for i in range(200) if created[i] > 1]
            assert resubmitted and max(created.values()) == 2
            assert all(tasks[i].server == second.address for i in resubmitted)

            # New work goes to the surviving server at once, a unique whose hash picks the
            # dead server included.
            dead_unique = next(f"after-{n}" for n in range(100) if zlib.crc32(b"after-%d" % n) % 2 == 0)
            started = time.monotonic()
            assert client.do("work", b"after", timeout=10) == b"ok:after"
            assert client.do("work", b"after-u", unique=dead_unique, timeout=10) == b"ok:after-u"
            assert time.monotonic() - started < 3
    finally:
        client.close()
        first.stop()
        second.stop()


# -- garbage and oversized frames sent to the gearnb server --------------------------------

def header(ptype: int, size: int, magic: bytes = b"\0REQ") -> bytes:
    return magic + struct.pack(">II", ptype, size)


GARBAGE = {
    # name: (bytes sent, expected ERROR code, words expected in its text)
    "binary garbage": (b"\0" + bytes(range(255, 0, -1)) * 4, b"INVALID_MAGIC", b"bad magic"),
    "response magic": (header(P.ECHO_REQ, 0, b"\0RES"), b"INVALID_MAGIC", b"bad magic"),
    "unknown type": (header(9999, 0), b"INVALID_COMMAND", b"unknown packet type 9999"),
    # (A packet over --max-packet-size is not garbage: ERROR, and the connection stays;
    # tests/test_server_input.py and tests/test_limits.py.)
    "missing arguments": (header(P.SUBMIT_JOB, 3) + b"abc", b"INVALID_COMMAND", b"SUBMIT_JOB"),
    "endless text line": (b"A" * 9000, b"INVALID_COMMAND", b"admin line too long"),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_gets_error_and_close_while_others_work(name):
    data, code, words = GARBAGE[name]
    with gearnb_server(max_packet_size=1 << 20) as server:
        address = server.address
        stop = threading.Event()
        outcomes: Counter[str] = Counter()

        def busy_client() -> None:
            client = gearnb.Client(address)
            try:
                while not stop.is_set():
                    try:
                        ok = client.do("reverse", b"abc", timeout=5) == b"cba"
                        outcomes["ok" if ok else "wrong"] += 1
                    except Exception as exc:  # noqa: BLE001 - counted, asserted on below
                        outcomes[type(exc).__name__] += 1
            finally:
                client.close()

        with worker_thread(address, {"reverse": lambda job: job.data[::-1]}):
            wait_workers(address, "reverse")
            thread = threading.Thread(target=busy_client, daemon=True)
            thread.start()
            try:
                with RawConnection(address) as bystander:
                    bystander.sync()
                    wait_until(lambda: outcomes["ok"] >= 5)
                    connections = len(server.job_server.connections)
                    for _ in range(3):  # the same again: nothing builds up
                        before = outcomes["ok"]
                        with RawConnection(address) as bad:
                            try:
                                bad.send_raw(data)
                            except ConnectionError:
                                pass  # closed before we finished sending: fine
                            error_code, text = bad.expect(P.ERROR)
                            assert error_code == code
                            assert words in text
                            assert bad.closed(), "the server kept the connection open"
                        # Everybody else carries on.
                        bystander.sync()
                        wait_until(lambda: outcomes["ok"] >= before + 3)
                    wait_until(lambda: len(server.job_server.connections) == connections)
            finally:
                stop.set()
                thread.join(10)
        assert set(outcomes) == {"ok"}, outcomes


# -- a job server restarted on the same port -----------------------------------------------

def test_server_restart_same_port(server_class):
    job_started = threading.Event()
    runs: Counter[bytes] = Counter()

    def work(job: gearnb.Job) -> bytes:
        runs[job.data] += 1
        if job.data == b"slow":
            job_started.set()
            time.sleep(0.5)
        return job.data[::-1]

    server = server_class().start()
    port = server.port
    client = gearnb.Client(server.address)
    try:
        with worker_thread(server.address, {"work": work}):
            wait_workers(server.address, "work")
            assert client.do("work", b"abc", timeout=10) == b"cba"

            # 1. Restart between jobs: client and worker notice and reconnect by themselves.
            server.stop(signal.SIGKILL)
            server = server_class(port=port).start()
            assert client.do("work", b"def", timeout=20) == b"fed"
            wait_workers(server.address, "work")

            # 2. Restart in the middle of a job: the client resubmits it, the worker runs it
            # again, and the client gets one result.
            completes: list[bytes] = []
            task = gearnb.Task("work", b"slow")
            task.on_complete(completes.append)
            taskset = client.task_set()
            taskset.add(task)
            assert job_started.wait(10)
            server.stop(signal.SIGKILL)
            time.sleep(0.3)
            server = server_class(port=port).start()
            assert taskset.wait(20)
            assert task.successful and completes == [b"wols"]
            assert runs[b"slow"] == 2

            # 3. A graceful stop (SIGTERM) and restart too.
            server.stop(signal.SIGTERM)
            server = server_class(port=port).start()
            assert client.do("work", b"ghi", timeout=20) == b"ihg"
            with gearnb.Admin(server.address) as admin:
                [row] = [r for r in admin.status() if r.function == "work"]
            assert row.workers == 1
    finally:
        client.close()
        server.stop()


# -- a unique always goes to the same server ----------------------------------------------

def test_unique_picks_the_same_server():
    with gearnb_server() as a, gearnb_server() as b:
        addresses = [a.address, b.address]
        where = {address: (lambda job, address=address: address) for address in addresses}
        with worker_thread(a.address, {"where": where[a.address]}), \
                worker_thread(b.address, {"where": where[b.address]}):
            wait_workers(a.address, "where")
            wait_workers(b.address, "where")
            # Without a unique, one do() after another alternates between the servers
            # (also before the client has connected to both).
            client = gearnb.Client(addresses)
            assert Counter(client.do("where", b"", timeout=10) for _ in range(10)) == \
                {a.address.encode(): 5, b.address.encode(): 5}
            client.close()

            uniques = [f"key-{i}" for i in range(24)]
            chosen: dict[str, set[bytes]] = {u: set() for u in uniques}
            for _ in range(3):  # fresh clients each round: the choice is not client state
                client = gearnb.Client(addresses)
                for u in uniques:
                    chosen[u].add(client.do("where", b"", unique=u, timeout=10))
                    client.do("where", b"")  # moves the round-robin along in between
                client.close()
            assert all(len(servers) == 1 for servers in chosen.values()), chosen
            # It is a hash of the unique: crc32(unique) modulo the number of servers.
            for u in uniques:
                assert chosen[u] == {addresses[zlib.crc32(u.encode()) % 2].encode()}
            # ...which spreads the uniques over both servers.
            assert {s for servers in chosen.values() for s in servers} == {x.encode() for x in addresses}

            # So two clients submitting the same unique at once share one job.
            gate = threading.Event()
            runs: list[bytes] = []

            def slow(job: gearnb.Job) -> bytes:
                runs.append(job.data)
                gate.wait(10)
                return b"shared"

            with worker_thread(addresses, {"slow": slow}):
                wait_workers(a.address, "slow")
                wait_workers(b.address, "slow")
                clients = [gearnb.Client(addresses), gearnb.Client(addresses)]
                tasks = [c.submit(gearnb.Task("slow", f"from-{n}", unique="together")) for n, c in enumerate(clients)]
                wait_until(lambda: all(t.handle for t in tasks))
                gate.set()
                assert all(t.wait(10) for t in tasks)
                assert [t.result for t in tasks] == [b"shared", b"shared"]
                assert tasks[0].handle == tasks[1].handle and tasks[0].server == tasks[1].server
                assert len(runs) == 1
                for c in clients:
                    c.close()

            # With its server down, a unique fails over to the other one.
            u = next(u for u in uniques if chosen[u] == {a.address.encode()})
            a.stop_in_thread()
            client = gearnb.Client(addresses)
            assert client.do("where", b"", unique=u, timeout=15) == b.address.encode()
            client.close()
