"""gearnb against the Perl job server (Gearman::Server, Debian gearman-server 1.130), the one
the classic gearman-ruby documentation recommends; and stopping workers that wait for a reply.

The Perl server has no GRAB_JOB_UNIQ (it answers packet type 30 with ERROR server_error
"Can't locate object method "CMD_""), no low priority, no high or low background jobs, no
SUBMIT_JOB_EPOCH and no admin ``cancel job``. gearnb workers fall back to GRAB_JOB there;
the client's errors name what the server lacks. Also here: the stale-sleeper wake-up test,
through gearmand, the Perl server and the gearnb server.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from typing import Iterator

import pytest

import gearnb
from gearnb.protocol import PacketType as P
from gearnb.worker import GRAB_UNIQ
from peers import (GearmandProcess, GearnbProcess, PerlGearmandProcess, RawConnection, WorkerProcesses,
                   gearnb_server, wait_until, wait_workers, worker_thread)
from test_examples import example, finish  # noqa: F401 - the fixture runs examples/ scripts

pytestmark = pytest.mark.timeout(90)

# Bounds for a worker to notice stop() / SIGTERM. Without the wake-up it waited up to the
# worker's REPLY_TIMEOUT (60 s) in recv, and `gearnb worker` up to its 30 s kill deadline.
STOP_WITHIN = 2.0
LAUNCHER_EXIT_WITHIN = 5.0

# A Perl-language worker (Gearman::Worker, Debian libgearman-client-perl): perl_reverse, and
# perl_slow (sleeps 2 s) registered with CAN_DO_TIMEOUT 30, which Perl means as seconds.
PERL_WORKER = r"""
use strict;
use Gearman::Worker;
$| = 1;
my $worker = Gearman::Worker->new(job_servers => [$ARGV[0]]);
$worker->register_function(perl_reverse => sub { return scalar reverse $_[0]->arg; });
$worker->register_function(perl_slow => 30, sub { sleep 2; return "slept"; });
print "ready\n";
$worker->work while 1;
"""


@pytest.fixture
def perl_worker():
    """``perl_worker(address)`` starts the Perl worker there; killed after the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(address: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["perl", "-e", PERL_WORKER, address],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        assert proc.stdout.readline() == "ready\n"
        wait_workers(address, "perl_slow")
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture
def perl_server() -> Iterator[PerlGearmandProcess]:
    server = PerlGearmandProcess().start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
        server.stop()


@pytest.fixture
def client(perl_server) -> Iterator[gearnb.Client]:
    with gearnb.Client(perl_server.address) as c:
        yield c


def reverse(job: gearnb.Job) -> bytes:
    return job.data[::-1]


def test_echo_and_do_through_a_gearnb_worker(perl_server, client):
    assert client.echo(b"hello") == b"hello"
    with worker_thread(perl_server.address, {"reverse": reverse}) as worker:
        assert client.do("reverse", b"abc", timeout=20) == b"cba"
        results = [client.do("reverse", str(i).encode() + b"x", timeout=20) for i in range(20)]
        assert results == [b"x" + str(i).encode()[::-1] for i in range(20)]
        assert worker.jobs_done == 21
        # The fallback is remembered for that server (and kept across reconnects).
        assert [c.grab[4:8] for c in worker._conns] == [int(P.GRAB_JOB).to_bytes(4, "big")]


def test_status_priority_and_exceptions(perl_server, client):
    def slow(job: gearnb.Job) -> bytes:
        job.send_status(1, 2)
        release.wait(20)
        return b"done"

    def fails(job: gearnb.Job) -> bytes:
        raise ValueError("no good: " + job.data.decode())

    release = threading.Event()
    handle = client.do_background("slow", b"", unique="u1")
    status = client.status(handle)
    assert (status.known, status.running) == (True, False)
    with worker_thread(perl_server.address, {"slow": slow, "fails": fails}):
        wait_until(lambda: client.status(handle).numerator == 1, timeout=20)
        assert tuple(client.status(handle)) == (True, True, 1, 2)
        release.set()
        wait_until(lambda: not client.status(handle).known, timeout=20)
        assert client.do("slow", b"", priority="high", timeout=20) == b"done"
        with pytest.raises(gearnb.JobException) as raised:
            client.do("fails", b"x", timeout=20)
        assert "ValueError: no good: x" in raised.value.text
        # WORK_EXCEPTION alone does not end a job on the Perl server: the worker's WORK_FAIL did.
        with gearnb.Admin(perl_server.address) as admin:
            assert {s.function: (s.total, s.running) for s in admin.status()}["fails"] == (0, 0)


def test_work_data_and_warnings_are_dropped_there(perl_server, client):
    """The Perl server has no WORK_DATA or WORK_WARNING (it would answer ERROR, which must not
    be taken for the answer to the next grab): the job's result still arrives, and the worker
    carries on."""
    def chatty(job: gearnb.Job) -> bytes:
        for i in range(3):
            job.send_data(f"part {i}")
            job.send_warning("careful")
        return b"whole"

    with worker_thread(perl_server.address, {"chatty": chatty}) as worker:
        parts: list[bytes] = []
        task = gearnb.Task("chatty", b"").on_data(parts.append)
        taskset = gearnb.TaskSet(client)
        taskset.add(task)
        assert taskset.wait(20) and task.result == b"whole" and parts == []
        assert [client.do("chatty", b"", timeout=20) for _ in range(3)] == [b"whole"] * 3
        assert worker.jobs_done == 4


def test_a_perl_worker_serves_a_gearnb_client(perl_server, client, perl_worker):
    perl_worker(perl_server.address)
    assert [client.do("perl_reverse", f"gearnb {i}", timeout=20) for i in range(5)] == [
        f"{i} bnraeg".encode() for i in range(5)]
    assert client.do("perl_slow", b"", timeout=20) == b"slept"


def test_can_do_timeout_in_seconds_on_the_perl_server(perl_server, client):
    """A gearnb worker that has recognised the Perl server announces its CAN_DO_TIMEOUT in
    seconds there: a 1 s timeout fails a 3 s job (the Perl server answers WORK_FAIL; sent in
    milliseconds it would wait 1000 s). The worker's late WORK_COMPLETE draws ERROR
    not_worker, which is not taken for the answer to its next grab."""
    def slow(job: gearnb.Job) -> bytes:
        time.sleep(3)
        return b"late"

    worker = gearnb.Worker(perl_server.address)
    worker.register("slow", slow, timeout=1)
    worker.register("reverse", reverse)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        with pytest.raises(gearnb.JobFailed):
            client.do("slow", b"", timeout=20)
        assert worker._conns[0].perl_server
        assert client.do("reverse", b"abc", timeout=20) == b"cba"
    finally:
        worker.stop()
        thread.join(10)
    assert worker.jobs_done == 2


@pytest.mark.parametrize("seconds", [True, False], ids=["--can-do-timeout-seconds", "milliseconds"])
def test_gearnb_server_reads_perl_workers_timeouts(seconds, perl_worker):
    """A Perl worker's CAN_DO_TIMEOUT 30 (seconds) through `gearnb server`: with
    --can-do-timeout-seconds a 2 s job completes; read as gearmand does (30 ms, raised to
    1 s) the server takes the job back after 1 s, again and again, and it never completes."""
    server = GearnbProcess(*(["--can-do-timeout-seconds"] if seconds else [])).start()
    try:
        perl_worker(server.address)
        with gearnb.Client(server.address) as c:
            if seconds:
                assert c.do("perl_slow", b"", timeout=30) == b"slept"
            else:
                with pytest.raises(TimeoutError):
                    c.do("perl_slow", b"", timeout=5)
    finally:
        server.stop()


@pytest.mark.parametrize("options, request_name, lacks", [
    ({"priority": "low"}, "SUBMIT_JOB_LOW", "low priority"),
])
def test_missing_feature_errors_on_do(client, options, request_name, lacks):
    with pytest.raises(gearnb.ServerError) as raised:
        client.do("reverse", b"x", timeout=20, **options)
    message = str(raised.value)
    assert f"does not support {request_name} (the Perl Gearman::Server lacks {lacks})" in message
    assert raised.value.code == "server_error" and raised.value.request == request_name


@pytest.mark.parametrize("options, request_name, lacks", [
    ({"priority": "high"}, "SUBMIT_JOB_HIGH_BG", "high priority background jobs"),
    ({"priority": "low"}, "SUBMIT_JOB_LOW_BG", "low priority background jobs"),
    ({"when": time.time() + 3600}, "SUBMIT_JOB_EPOCH", "jobs run at a set time, when="),
])
def test_missing_feature_errors_on_background(client, options, request_name, lacks):
    with pytest.raises(gearnb.ServerError) as raised:
        client.do_background("reverse", b"x", **options)
    assert f"does not support {request_name} (the Perl Gearman::Server lacks {lacks})" in str(raised.value)
    # What the server can do still works on the same connection.
    handle = client.do_background("reverse", b"x")
    assert client.status(handle).known


def test_missing_feature_error_on_a_query(client):
    """GET_STATUS_UNIQUE is a packet type the Perl server does not know (it names none)."""
    with pytest.raises(gearnb.ServerError) as raised:
        client.status_unique("u1")
    assert "does not know this request's packet type" in str(raised.value)
    assert "GET_STATUS_UNIQUE" in str(raised.value)
    assert client.echo(b"still here") == b"still here"


def test_admin_on_the_perl_server(perl_server, client):
    handle = client.do_background("reverse", b"x")
    with gearnb.Admin(perl_server.address) as admin:
        assert admin.version() == "v1.130.1"
        assert [(s.function, s.total, s.running, s.workers) for s in admin.status()] == [("reverse", 1, 0, 0)]
        with pytest.raises(gearnb.ServerError) as raised:
            admin.cancel(handle)
        assert "does not know the admin command 'cancel job' (the Perl Gearman::Server's admin protocol" in str(
            raised.value)
        assert raised.value.code == "unknown_command"
        # The job stays queued.
        assert [(s.function, s.total) for s in admin.status()] == [("reverse", 1)]


def test_map_with_gearnb_worker_processes(perl_server):
    key = os.urandom(32)
    with WorkerProcesses(perl_server.address, processes=2, key=key):
        executor = gearnb.connect(perl_server.address, key=key)
        try:
            assert gearnb.map(lambda x: x * x, range(50), timeout=60) == [x * x for x in range(50)]
            assert gearnb.submit(pow, 2, 10).result(timeout=60) == 1024
            assert executor.worker_count() == 2
        finally:
            gearnb.shutdown()


def test_a_map_that_times_out_says_what_stays_queued(perl_server, caplog):
    """The Perl server has no admin 'cancel job': a map that gives up says its jobs stay
    queued there, naming the missing command, instead of leaving them without a word."""
    key = os.urandom(32)
    executor = gearnb.Executor(perl_server.address, key=key)  # no workers: every job stays queued
    try:
        with caplog.at_level(logging.WARNING, logger="gearnb.executor"):
            with pytest.raises(TimeoutError):
                executor.gmap(abs, range(6), chunksize=1, timeout=2)
        [warning] = [r.getMessage() for r in caplog.records if "stay queued" in r.getMessage()]
        assert "could not cancel 6 queued jobs" in warning and "'cancel job'" in warning, warning
        with gearnb.Admin(perl_server.address) as admin:
            assert [(s.function, s.total) for s in admin.status()] == [("pyexec", 6)]
    finally:
        executor.shutdown(wait=False)


def test_calculus_example(perl_server, example):  # noqa: F811 - the imported fixture
    """The calculus example end to end, as a user of the classic docs would run it."""
    address = perl_server.address
    worker = example("calculus_worker.py", "--servers", address, "--max-jobs", "5")
    client = example("calculus_client.py", "--servers", address, "--timeout", "30", "2+3", "8*7", "9/3", "7-10", "1/0")
    out = finish(client, returncode=1)  # 1/0 failed
    assert out[out.index("[client] results:"):] == [
        "[client] results:", "  2+3 = 5", "  8*7 = 56", "  9/3 = 3.0", "  7-10 = -3", "  1/0 = failed"]
    assert finish(worker)[-1] == "[worker] stopped after 5 jobs"


# -- stopping ------------------------------------------------------------------------------
def _queued_bytes(port: int) -> list[int]:
    """Bytes waiting unread in each established connection to ``port`` on 127.0.0.1
    (from /proc/net/tcp; while the server is stopped, connections wait in its accept queue)."""
    waiting = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if local == f"0100007F:{port:04X}" and state == "01":
                waiting.append(int(queues.split(":")[1], 16))
    return waiting


def test_stop_wakes_a_worker_waiting_for_a_reply(perl_server):
    """The server hangs (SIGSTOP) while the worker waits for the answer to its grab."""
    worker = gearnb.Worker(perl_server.address)
    worker.register("reverse", reverse)
    sent = len(worker._hello()) + len(GRAB_UNIQ)  # everything it sends before it waits
    perl_server.proc.send_signal(signal.SIGSTOP)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    wait_until(lambda: _queued_bytes(perl_server.port) == [sent], timeout=20)
    started = time.monotonic()
    worker.stop()
    thread.join(STOP_WITHIN * 5)
    took = time.monotonic() - started
    assert not thread.is_alive() and took < STOP_WITHIN, f"work() returned {took:.1f} s after stop()"


def test_stop_wakes_a_sleeping_worker(perl_server, client):
    worker = gearnb.Worker(perl_server.address)
    worker.register("reverse", reverse)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        assert client.do("reverse", b"ab", timeout=20) == b"ba"
        wait_until(lambda: worker._selector is not None, timeout=20)  # it has gone to sleep
    finally:
        started = time.monotonic()
        worker.stop()
        thread.join(STOP_WITHIN * 5)
    took = time.monotonic() - started
    assert not thread.is_alive() and took < STOP_WITHIN, f"work() returned {took:.1f} s after stop()"


@pytest.mark.parametrize("hung", [False, True], ids=["idle", "server-hung"])
def test_gearnb_worker_exits_on_sigterm(perl_server, hung):
    """`gearnb worker --processes 2` exits on SIGTERM at once, its children asleep or waiting
    in recv for a server that hangs."""
    key = os.urandom(32)
    launcher = WorkerProcesses(perl_server.address, processes=2, key=key)
    if hung:
        probe = gearnb.Worker()
        probe.register("pyexec", reverse)
        sent = len(probe._hello()) + len(GRAB_UNIQ)
        perl_server.proc.send_signal(signal.SIGSTOP)
        launcher.start(wait=False)
        # Each worker waits for the answer to its grab; its control connection (it stops running
        # tasks on request) has said hello too.
        wait_until(lambda: sorted(_queued_bytes(perl_server.port)).count(sent) == 2
                   and len(_queued_bytes(perl_server.port)) == 4, timeout=60)
    else:
        launcher.start()
    assert launcher.proc is not None and len(launcher.child_pids()) == 2
    started = time.monotonic()
    launcher.proc.terminate()
    launcher.proc.wait(30)
    took = time.monotonic() - started
    assert launcher.proc.returncode == 0 and took < LAUNCHER_EXIT_WITHIN, f"exited {took:.1f} s after SIGTERM"


# -- wake-ups that a stale sleeper cannot absorb ------------------------------------------
# gearmand and the Perl server wake the live sleeper within a millisecond; this leaves room
# for a server that first waits a grace period for the sleeper it woke.
WAKE_WITHIN = 5.0


@pytest.fixture(params=["gearmand", "perl", "gearnb"])
def any_server(request) -> Iterator[str]:
    if request.param == "gearnb":
        with gearnb_server() as server:
            yield server.address
        return
    daemon = GearmandProcess() if request.param == "gearmand" else PerlGearmandProcess()
    daemon.start()
    try:
        yield daemon.address
    finally:
        daemon.stop()


def test_a_stale_sleeper_does_not_absorb_the_wake_up(any_server):
    """Connection A sleeps on f and never reads again (a stopped process, a leaked fd);
    B sleeps on f after it. A job for f must wake B."""
    with RawConnection(any_server) as stale, RawConnection(any_server) as live, \
            RawConnection(any_server) as submitter:
        for conn in (stale, live):  # A first: the oldest sleeper
            conn.send(P.CAN_DO, b"f")
            conn.send(P.PRE_SLEEP)
            conn.sync()
        submitter.call(P.SUBMIT_JOB_BG, b"f", b"", b"job", reply=P.JOB_CREATED)
        try:
            live.expect(P.NOOP, timeout=WAKE_WITHIN)
        except TimeoutError:
            # Looked at only now, when it no longer matters: what went to the stale sleeper.
            to_stale = []
            while True:
                try:
                    to_stale.append(P(stale.recv(0.2).type).name)
                except TimeoutError:
                    break
            pytest.fail(f"the live sleeper got no NOOP within {WAKE_WITHIN} s; "
                        f"the stale one was sent {to_stale or 'nothing'}")
        live.send(P.GRAB_JOB)
        assert live.expect(P.JOB_ASSIGN)[1:] == (b"f", b"job")
