"""gearnb Client and Worker through the gearnb server and through a real gearmand."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import gearnb
from peers import GearmandProcess, wait_until, wait_workers, worker_thread


def reverse(job):
    return job.data[::-1]


def chatty(job):
    job.send_status(1, 2)
    job.send_data(b"part")
    job.send_warning(b"careful")
    job.send_status(2, 2)
    return b"done:" + job.data


def boom(job):
    raise ValueError("bad input " + job.data.decode())


def fail(job):
    raise gearnb.JobFailed()


def test_do_and_exceptions(server_address):
    with worker_thread(server_address, {"reverse": reverse, "boom": boom, "fail": fail}):
        client = gearnb.Client(server_address)
        assert client.do("reverse", b"abc") == b"cba"
        assert client.do("reverse", "h\0llo") == b"oll\0h"  # NULs survive
        with pytest.raises(gearnb.JobException) as info:
            client.do("boom", b"42")
        assert "ValueError: bad input 42" in info.value.text
        with pytest.raises(gearnb.JobFailed):
            client.do("fail", b"")
        client.close()


def test_do_times_out_and_the_client_carries_on(server_address):
    with worker_thread(server_address, {"reverse": reverse}), gearnb.Client(server_address) as client:
        with pytest.raises(TimeoutError, match="did not finish within 0.3 s"):
            client.do("nobody-serves-this", b"x", timeout=0.3)
        for spent in (0, -1, -0.5):  # a caller's remaining time, already used up
            with pytest.raises(TimeoutError):
                client.do("nobody-serves-this", b"x", timeout=spent)
        handle = client.do_background("nobody-serves-this", b"y", timeout=10)
        assert client.status(handle).known
        assert client.do("reverse", b"abc", timeout=10) == b"cba"


def test_a_worker_can_work_again_and_stop_wakes_it_each_time(server_address):
    # The worker keeps its sockets registered with one selector across sleeps; work() makes a
    # new wake-up socket each time, which must replace the one left by the last work().
    worker = gearnb.Worker(server_address)
    worker.register("reverse", reverse)
    with gearnb.Client(server_address) as client:
        for round in range(3):
            thread = threading.Thread(target=worker.work, daemon=True)
            thread.start()
            assert client.do("reverse", b"ab%d" % round, timeout=10) == b"%dba" % round
            time.sleep(0.2)  # back asleep (PRE_SLEEP): only its wake-up socket can end it now
            worker.stop()
            thread.join(5)
            assert not thread.is_alive(), f"stop() did not wake the sleeping worker (round {round})"


def test_a_function_registered_inside_a_job_is_announced_before_the_worker_sleeps(server_address):
    # After a job the worker sleeps as soon as the server answers NO_JOB; a function a job
    # registered must reach the server first (else only after SLEEP_POLL, 30 s).
    worker = gearnb.Worker(server_address)

    def add_b(job):
        worker.register("b", lambda job: b"b done")
        return b"a done"

    worker.register("a", add_b)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        wait_workers(server_address, "a", 1)
        with gearnb.Client(server_address) as client:
            assert client.do("a", b"", timeout=10) == b"a done"
            assert client.do("b", b"", timeout=10) == b"b done"
    finally:
        worker.stop()
        thread.join(5)


def test_a_worker_whose_job_forked_still_sleeps_and_wakes_after_a_reconnect():
    # A job forks (as a fork-started multiprocessing pool does): the child holds a copy of the
    # worker's socket, so closing it does not take it out of the worker's epoll set. After the
    # server restarts, the worker must have forgotten the old socket before closing it, or
    # its new socket (same fd number) sleeps beside a dead one that always reads as ready.
    from peers import GearnbProcess

    children = []

    def forky(job):
        pid = os.fork()
        if pid == 0:
            time.sleep(20)
            os._exit(0)
        children.append(pid)
        return b"forked"

    def slow(job):
        time.sleep(1.5)
        return b"ok"

    server = GearnbProcess().start()
    worker = gearnb.Worker(server.address)
    for name, fn in (("forky", forky), ("slow", slow), ("reverse", reverse)):
        worker.register(name, fn)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        with gearnb.Client(server.address) as client:
            assert client.do("forky", timeout=10) == b"forked"
            time.sleep(0.3)  # asleep: its socket is registered
            client.do_background("slow")
        time.sleep(0.3)  # inside the slow job
        server.stop()
        server = GearnbProcess(port=server.port).start()
        wait_workers(server.address, "reverse", timeout=15)  # its result failed; it reconnected
        time.sleep(0.3)  # asleep on the new socket
        # What the kernel's epoll set holds: exactly what the worker's selector knows (the
        # wake-up socket and the new connection), no dead socket kept alive by the child.
        epoll_fd = worker._selector.fileno()
        with open(f"/proc/self/fdinfo/{epoll_fd}") as info:
            watched = [line for line in info if line.startswith("tfd:")]
        assert len(watched) == len(worker._selector.get_map()) == 2, watched
        with gearnb.Client(server.address) as client:
            started = time.monotonic()
            assert client.do("reverse", b"abc", timeout=20) == b"cba"
            assert time.monotonic() - started < 5, "the worker was stuck reading a dead socket"
        time.sleep(0.3)
        worker.stop()
        thread.join(10)
        assert not thread.is_alive(), "stop() did not wake the sleeping worker"
    finally:
        worker.stop()
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        server.stop()


def test_worker_woken_for_one_job_still_drains_a_burst(server_address):
    """A worker woken (NOOP) for a single job; 50 more are queued while it runs. It must take
    them at once after that job, not after its 30 s sleep poll, through gearmand and gearnb."""
    started = threading.Event()
    release = threading.Event()
    seen = []

    def job(j):
        seen.append(j.data)
        if j.data == b"first":
            started.set()
            release.wait(10)
        return j.data

    with worker_thread(server_address, {"burst": job}):
        client = gearnb.Client(server_address)
        assert client.do("burst", b"warm-up") == b"warm-up"  # the worker sleeps between jobs
        time.sleep(0.2)
        first = gearnb.TaskSet(client)
        first.add(gearnb.Task("burst", b"first"))
        assert started.wait(10)
        rest = gearnb.TaskSet(client)
        tasks = [rest.add(gearnb.Task("burst", b"%d" % i)) for i in range(50)]
        def queued() -> int:
            with gearnb.Admin(server_address) as admin:
                return sum(s.total for s in admin.status() if s.function == "burst")

        wait_until(lambda: queued() == 51)  # the first job runs, 50 are queued meanwhile
        release.set()
        # Well within the worker's SLEEP_POLL (30 s), which is all that would wake it otherwise.
        assert first.wait(10) and rest.wait(10)
        assert [t.result for t in tasks] == [b"%d" % i for i in range(50)]
        client.close()


def test_callbacks_status_data_warning(server_address):
    with worker_thread(server_address, {"chatty": chatty}):
        client = gearnb.Client(server_address)
        events = []
        task = gearnb.Task("chatty", b"x")
        task.on_created(lambda h: events.append(("created", h[:2])))
        task.on_status(lambda n, d: events.append(("status", n, d)))
        task.on_data(lambda d: events.append(("data", d)))
        task.on_warning(lambda d: events.append(("warning", d)))

        @task.on_complete
        def done(data):
            events.append(("complete", data))

        taskset = gearnb.TaskSet(client)
        taskset.add(task)
        assert taskset.wait(10)
        assert events == [("created", b"H:"), ("status", 1, 2), ("data", b"part"), ("warning", b"careful"),
                          ("status", 2, 2), ("complete", b"done:x")]
        assert task.result == b"done:x" and task.status == (2, 2)
        client.close()


def test_many_in_flight_on_one_connection(server_address):
    with worker_thread(server_address, {"reverse": reverse}), worker_thread(server_address, {"reverse": reverse}):
        client = gearnb.Client(server_address)
        taskset = gearnb.TaskSet(client)
        tasks = [taskset.add(gearnb.Task("reverse", str(i).encode())) for i in range(2000)]
        assert taskset.wait(60)
        assert [t.result for t in tasks] == [str(i).encode()[::-1] for i in range(2000)]
        assert len({t.handle for t in tasks}) == 2000
        client.close()


def test_background_and_status(server_address):
    gate = threading.Event()

    def slow(job):
        job.send_status(3, 10)
        gate.wait(10)
        return b"ok"

    client = gearnb.Client(server_address)
    handle = client.do_background("slow", b"", unique="bg-1")
    assert handle.startswith(b"H:")
    status = client.status(handle)
    assert status.known and not status.running
    with worker_thread(server_address, {"slow": slow}):
        wait_until(lambda: client.status(handle).running)
        wait_until(lambda: client.status(handle).numerator == 3)
        assert client.status(handle) == gearnb.JobStatus(True, True, 3, 10)
        by_unique, clients = client.status_unique("bg-1")
        assert by_unique.known and by_unique.running and clients == 0
        gate.set()
        wait_until(lambda: not client.status(handle).known)
    assert client.status(b"H:nope:1") == gearnb.JobStatus(False, False, 0, 0)
    client.close()


def test_status_asks_the_server_a_handle_came_from():
    """Two gearmands on one host hand out the same handles (H:host:1 on both): a handle from
    do_background remembers its server, so status() does not answer for the other's job."""
    a, b = GearmandProcess().start(), GearmandProcess().start()
    gate = threading.Event()

    def slow(job):
        job.send_status(3, 10)
        gate.wait(10)
        return b"ok"

    try:
        on_a, on_b = gearnb.Client(a.address), gearnb.Client(b.address)
        handle_a = on_a.do_background("queued-only", b"")
        handle_b = on_b.do_background("slow", b"")
        assert bytes(handle_a) == bytes(handle_b)  # the same handle on both servers
        assert isinstance(handle_b, gearnb.JobHandle) and handle_b.server == b.address
        both = gearnb.Client([a.address, b.address])
        with worker_thread(b.address, {"slow": slow}):
            # Running comes with JOB_ASSIGN, the 3/10 with the worker's WORK_STATUS just after it.
            wait_until(lambda: both.status(handle_b).numerator == 3)
            assert both.status(handle_b) == gearnb.JobStatus(True, True, 3, 10)  # b's job
            assert both.status(bytes(handle_b)) == gearnb.JobStatus(True, False, 0, 0)  # plain bytes: a answers
            assert both.status(bytes(handle_b), server=b.address).running
            gate.set()
            wait_until(lambda: not both.status(handle_b).known)
        assert both.status(handle_a).known  # still queued on a
        import pickle

        assert pickle.loads(pickle.dumps(handle_b)).server == b.address
        for client in (on_a, on_b, both):
            client.close()
    finally:
        gate.set()
        a.stop()
        b.stop()


def test_priorities(server_address):
    order = []

    def record(job):
        order.append(job.data)
        return b""

    client = gearnb.Client(server_address)
    # Queue while no worker is there, then let one worker take them in priority order.
    handles = [client.do_background("prio", name.encode(), priority=name, unique=f"p-{name}-{i}")
               for i in range(2) for name in ("low", "normal", "high")]
    assert len(set(handles)) == 6
    with worker_thread(server_address, {"prio": record}):
        wait_until(lambda: len(order) == 6)
    assert order == [b"high", b"high", b"normal", b"normal", b"low", b"low"]
    client.close()


def test_coalescing_on_unique(server_address):
    gate = threading.Event()
    runs = []

    def slow(job):
        runs.append(job.data)
        gate.wait(10)
        return b"shared"

    client_a, client_b = gearnb.Client(server_address), gearnb.Client(server_address)
    with worker_thread(server_address, {"slow": slow}):
        wait_workers(server_address, "slow")
        a = client_a.submit(gearnb.Task("slow", b"one", unique="same"))
        wait_until(lambda: runs)
        b = client_b.submit(gearnb.Task("slow", b"two", unique="same"))
        wait_until(lambda: b.handle is not None)
        gate.set()
        assert a.wait(10) and b.wait(10)
    assert a.handle == b.handle and a.result == b.result == b"shared"
    assert runs == [b"one"]
    client_a.close(), client_b.close()


def test_retries_call_on_retry(server_address):
    attempts = []

    def flaky(job):
        attempts.append(1)
        if len(attempts) < 3:
            raise gearnb.JobFailed()
        return b"third time"

    with worker_thread(server_address, {"flaky": flaky}):
        client = gearnb.Client(server_address)
        retried = []
        task = gearnb.Task("flaky", b"", retries=5).on_retry(retried.append)
        client.submit(task)
        assert task.wait(10)
        assert task.result == b"third time" and retried == [1, 2]
        failing = client.submit(gearnb.Task("flaky2", b"", retries=1))
        with worker_thread(server_address, {"flaky2": fail}):
            assert failing.wait(10)
        assert not failing.successful and failing.retries_done == 1
        client.close()


def test_echo(server_address):
    client = gearnb.Client(server_address)
    assert client.echo(b"hi\0there") == b"hi\0there"
    client.close()


def test_worker_stop_finishes_current_job(server_address):
    started = threading.Event()

    def slow(job):
        started.set()
        time.sleep(0.5)
        return b"finished"

    client = gearnb.Client(server_address)
    with worker_thread(server_address, {"slow": slow}) as worker:
        task = client.submit(gearnb.Task("slow", b""))
        started.wait(10)
        worker.stop()
        assert task.wait(10) and task.result == b"finished"
    client.close()


def test_epoch_job_runs_when_due(server_address):
    ran = []
    with worker_thread(server_address, {"later": lambda job: ran.append(time.time()) or b""}):
        wait_workers(server_address, "later")
        client = gearnb.Client(server_address)
        when = int(time.time()) + 2
        client.do_background("later", b"", when=when, unique="epoch-1")
        time.sleep(0.5)
        assert not ran
        try:
            wait_until(lambda: ran, timeout=6)
        except AssertionError:
            # gearmand <= 1.1.22 does not wake sleeping workers for due epoch jobs (#343).
            client.do_background("later", b"", unique="nudge")
            wait_until(lambda: ran, timeout=6)
        assert ran[0] >= when - 1
        client.close()


def test_async_client(server_address):
    import asyncio

    async def main():
        async with gearnb.AsyncClient(server_address) as client:
            results = await asyncio.gather(*(client.do("reverse", str(i)) for i in range(50)))
            assert results == [str(i).encode()[::-1] for i in range(50)]
            with pytest.raises(gearnb.JobException):
                await client.do("boom", b"1")

    with worker_thread(server_address, {"reverse": reverse, "boom": boom}):
        asyncio.run(main())


def test_blocking_api_inside_running_loop(gearnb_address):
    """As in a Jupyter cell: the blocking API called while an event loop runs on this thread."""
    import asyncio

    async def cell():
        client = gearnb.Client(gearnb_address)
        result = client.do("reverse", b"jupyter")
        client.close()
        return result

    with worker_thread(gearnb_address, {"reverse": reverse}):
        assert asyncio.run(cell()) == b"retypuj"


def test_no_server_gives_clear_error():
    client = gearnb.Client("127.0.0.1:1", submit_timeout=0.5)
    with pytest.raises(gearnb.NoJobServers) as info:
        client.do("x", b"")
    assert "gearnb server" in str(info.value)
    client.close()


def test_task_that_cannot_be_submitted_runs_on_fail():
    client = gearnb.Client("127.0.0.1:1", submit_timeout=0.3)
    events = []
    task = gearnb.Task("x", b"").on_fail(lambda: events.append("fail")).on_complete(events.append)
    taskset = gearnb.TaskSet(client)
    taskset.add(task)
    assert taskset.wait(10)
    assert events == ["fail"]
    assert isinstance(task.error, gearnb.NoJobServers) and not task.successful
    client.close()



NESTED_SIGTERM_WORKER = textwrap.dedent("""
    import os, signal, sys, time, gearnb

    seen = set()

    def tracer(frame, event, arg):
        # Another SIGTERM at each Python line run from here on, the first time it runs: a
        # signal arrives inside the handler of the previous one, at every line of it.
        if event == "line" and len(seen) < 1000:
            where = (frame.f_code, frame.f_lineno)
            if where not in seen:
                seen.add(where)
                os.kill(os.getpid(), signal.SIGTERM)
        return tracer

    def job(j):
        sys.settrace(tracer)  # traces the frames started from here: work()'s SIGTERM handler
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler runs here, and the handlers of the signals sent in it
        sys.settrace(None)
        return b"done"

    worker = gearnb.Worker(sys.argv[1])
    worker.register("nested-sigterm", job)
    print("ready", flush=True)
    worker.work()
    print("stopped", flush=True)
""")


def test_worker_stops_on_sigterms_arriving_inside_its_sigterm_handler(gearnb_address):
    """SIGTERM upon SIGTERM (a process group signalled by several parties at once, as when
    Jupyter shuts a kernel down): the worker finishes its job and stops. Its handler used to
    take a lock (threading.Event.set), and a second signal arriving inside the first handler
    waited forever for that lock, held by the same thread."""
    proc = subprocess.Popen([sys.executable, "-c", NESTED_SIGTERM_WORKER, gearnb_address],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        client = gearnb.Client(gearnb_address)
        assert client.do("nested-sigterm", b"", timeout=30) == b"done"
        client.close()
        assert proc.wait(15) in (0, -signal.SIGTERM)  # a deadlocked worker fails here
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_namespace_keeps_two_teams_apart(server_address):
    """libgearman's namespaces: the same function name under two namespaces on one server
    reaches the worker of its own namespace only; the server sees the full names."""
    with worker_thread(server_address, {"reverse": reverse}, namespace="team-a:"), \
            worker_thread(server_address, {"reverse": lambda job: ("b:" + job.function).encode()}, namespace="team-b:"):
        wait_workers(server_address, "team-a:reverse")
        wait_workers(server_address, "team-b:reverse")
        a = gearnb.Client(server_address, namespace="team-a:")
        b = gearnb.Client(server_address, namespace=b"team-b:")
        assert a.do("reverse", b"abc", timeout=10) == b"cba"
        assert b.do("reverse", b"abc", timeout=10) == b"b:team-b:reverse"
        big = b"x" * (2 * 1024 * 1024)  # the large-payload submit path as well
        assert a.do("reverse", big, timeout=30) == big[::-1]
        with gearnb.Admin(server_address) as admin:
            names = {s.function for s in admin.status()}
        assert {"team-a:reverse", "team-b:reverse"} <= names and "reverse" not in names
        a.close()
        b.close()
