"""The job server's workers, packet by packet: PRE_SLEEP and NOOP, abilities, CAN_DO_TIMEOUT,
and jobs requeued or dropped when a worker or client goes away.

What gearnb does differently from gearmand on purpose, tested with ``gearnb_address``: only as many
sleepers wake as there are new jobs (and a wakeup is passed on), a requeued job goes first, and a
departed client's job leaves ``status`` at once (see server_helpers.py).
"""

from __future__ import annotations

import time

import pytest

from gearnb.protocol import PacketType as P
from gearnb.protocol import request as request_bytes
from peers import GearmandProcess, RawConnection, gearnb_server, wait_until
from server_helpers import F, submit, worker


def sleeping_worker(connect, address: str, *functions: bytes) -> RawConnection:
    """A worker that has sent PRE_SLEEP (and the server has seen it: ECHO does not wake)."""
    w = connect(address)
    for name in functions:
        w.send(P.CAN_DO, name)
    w.send(P.PRE_SLEEP)
    w.sync()
    return w


def grab_when_ready(w: RawConnection, grab: int = P.GRAB_JOB, timeout: float = 3):
    """GRAB until a job comes (the server may not have seen a disconnect yet); the packet."""
    def grabbed():
        w.send(grab)
        packet = w.recv()
        if packet.type == P.NO_JOB:
            time.sleep(0.02)
            return None
        return packet
    return wait_until(grabbed, timeout=timeout)


def noops(workers: list[RawConnection], timeout: float = 0.3) -> list[int]:
    """How many NOOPs each worker received within ``timeout``; fails on any other packet."""
    deadline = time.monotonic() + timeout
    counts = []
    for w in workers:
        n = 0
        while True:
            try:
                packet = w.recv(max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                break
            assert packet.type == P.NOOP, packet
            n += 1
        counts.append(n)
    return counts


# -- PRE_SLEEP and NOOP -----------------------------------------------------------------

def test_pre_sleep_with_work_waiting_gets_noop_at_once(server_address, connect):
    c = connect(server_address)
    h = submit(c, P.SUBMIT_JOB_BG, F, b"", b"x")
    w = connect(server_address)
    w.send(P.CAN_DO, F)
    w.send(P.PRE_SLEEP)
    w.expect(P.NOOP, timeout=1)
    assert w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[0] == h


def test_one_noop_per_sleep(server_address, connect):
    c = connect(server_address)
    w = sleeping_worker(connect, server_address, F)
    w.nothing(0.1)  # nothing to do: no NOOP
    for i in range(3):
        submit(c, P.SUBMIT_JOB_BG, F, b"", b"%d" % i)
    assert noops([w]) == [1]
    for _ in range(3):
        w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)
    w.call(P.GRAB_JOB, reply=P.NO_JOB)
    # A new sleep earns a new NOOP.
    w.send(P.PRE_SLEEP)
    w.sync()
    submit(c, P.SUBMIT_JOB_BG, F, b"", b"again")
    assert noops([w]) == [1]


def test_sleeping_worker_of_other_function_not_woken(server_address, connect):
    c = connect(server_address)
    other = sleeping_worker(connect, server_address, b"g")
    w = sleeping_worker(connect, server_address, F)
    submit(c, P.SUBMIT_JOB_BG, F, b"", b"x")
    assert noops([other, w]) == [0, 1]


def test_one_new_job_wakes_one_of_three_sleepers(gearnb_address, connect):
    # gearmand wakes every sleeping worker of the function for each job (thundering herd).
    c = connect(gearnb_address)
    sleepers = [sleeping_worker(connect, gearnb_address, F) for _ in range(3)]
    h = submit(c, P.SUBMIT_JOB_BG, F, b"", b"x")
    counts = noops(sleepers)
    assert sorted(counts) == [0, 0, 1]
    woken = sleepers[counts.index(1)]
    assert woken.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[0] == h
    # The two still asleep: the next job wakes exactly one of them.
    rest = [s for s in sleepers if s is not woken]
    submit(c, P.SUBMIT_JOB_BG, F, b"", b"y")
    assert sorted(noops(rest + [woken])) == [0, 0, 1]
    assert noops([woken], 0.05) == [0]


def test_two_new_jobs_wake_two_sleepers(gearnb_address, connect):
    c = connect(gearnb_address)
    sleepers = [sleeping_worker(connect, gearnb_address, F) for _ in range(3)]
    c.send_raw(request_bytes(P.SUBMIT_JOB_BG, F, b"", b"1") + request_bytes(P.SUBMIT_JOB_BG, F, b"", b"2"))
    c.expect(P.JOB_CREATED)
    c.expect(P.JOB_CREATED)
    counts = noops(sleepers)
    assert sorted(counts) == [0, 1, 1]
    for s, n in zip(sleepers, counts):
        if n:
            s.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)


def test_woken_worker_that_takes_another_job_passes_the_wakeup_on(gearnb_address, connect):
    # w1 (f, g) is woken for f but grabs a high-priority g job instead: w2 must be woken for f.
    c = connect(gearnb_address)
    w1 = sleeping_worker(connect, gearnb_address, F, b"g")
    w2 = sleeping_worker(connect, gearnb_address, F)
    submit(c, P.SUBMIT_JOB_BG, F, b"", b"f-job")
    assert noops([w1, w2]) == [1, 0]  # the longest asleep is woken first
    submit(c, P.SUBMIT_JOB_HIGH_BG, b"g", b"", b"g-job")
    assert w1.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[2] == b"g-job"
    assert noops([w2]) == [1]
    assert w2.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[2] == b"f-job"


def test_woken_worker_that_disconnects_passes_the_wakeup_on(gearnb_address, connect):
    # We wake one sleeper per job; if it dies before grabbing, another must be woken.
    c = connect(gearnb_address)
    sleepers = [sleeping_worker(connect, gearnb_address, F) for _ in range(2)]
    h = submit(c, P.SUBMIT_JOB_BG, F, b"", b"x")
    counts = noops(sleepers)
    assert sorted(counts) == [0, 1]
    woken, other = (sleepers[0], sleepers[1]) if counts[0] else (sleepers[1], sleepers[0])
    woken.close()
    other.expect(P.NOOP, timeout=2)
    assert other.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[0] == h


def test_can_do_wakes_a_sleeper_when_work_is_waiting(gearnb_address, connect):
    c = connect(gearnb_address)
    w = sleeping_worker(connect, gearnb_address, b"g")
    submit(c, P.SUBMIT_JOB_BG, F, b"", b"x")
    w.nothing(0.1)
    w.send(P.CAN_DO, F)
    w.expect(P.NOOP, timeout=1)


# -- client id and abilities ------------------------------------------------------------

def test_set_client_id_and_abilities_in_workers(server_address, connect):
    w = connect(server_address)
    w.send(P.SET_CLIENT_ID, b"my-worker-7")
    for name in (b"b", b"c", b"a"):
        w.send(P.CAN_DO, name)
    w.sync()
    admin = connect(server_address)

    def my_line() -> str:
        lines = admin.command("workers", multiline=True).decode().splitlines()
        mine = [line for line in lines if " my-worker-7 " in line]
        assert len(mine) == 1, lines
        return mine[0].split(" ", 1)[1]  # without the fd

    # gearmand lists a worker's functions newest first.
    assert my_line() == "127.0.0.1 my-worker-7 : a c b"
    w.send(P.CANT_DO, b"c")
    w.sync()
    assert my_line() == "127.0.0.1 my-worker-7 : a b"
    w.send(P.CAN_DO_TIMEOUT, b"t", b"5000")
    w.sync()
    assert my_line() == "127.0.0.1 my-worker-7 : t a b"
    w.send(P.RESET_ABILITIES)
    w.sync()
    assert my_line() == "127.0.0.1 my-worker-7 :"
    # A worker without abilities grabs nothing, even with work queued.
    c = connect(server_address)
    submit(c, P.SUBMIT_JOB_BG, b"a", b"", b"x")
    w.call(P.GRAB_JOB, reply=P.NO_JOB)
    status = admin.command("status", multiline=True).decode().splitlines()
    assert "a\t1\t0\t0" in status


# -- CAN_DO_TIMEOUT ---------------------------------------------------------------------

def test_can_do_timeout_requeues_silently(server_address, connect):
    c = connect(server_address)
    slow = connect(server_address)
    # Milliseconds, as gearmand >= 1.1.19 reads them; it raises anything below 1000 to 1000.
    slow.send(P.CAN_DO_TIMEOUT, F, b"300")
    h = submit(c, P.SUBMIT_JOB, F, b"", b"work")
    start = time.monotonic()
    assert slow.call(P.GRAB_JOB, reply=P.JOB_ASSIGN) == (h, F, b"work")
    other = worker(connect, server_address, F)
    other.call(P.GRAB_JOB, reply=P.NO_JOB)
    packet = grab_when_ready(other, timeout=4)
    assert time.monotonic() - start >= 0.9
    assert packet.type == P.JOB_ASSIGN and packet.args == (h, F, b"work")
    c.nothing(0.05)  # the client heard nothing of the timeout
    # The timed-out worker's late result is refused; the new worker's result counts.
    slow.send(P.WORK_COMPLETE, h, b"late")
    assert slow.expect(P.ERROR)[0] == b"JOB_NOT_FOUND"
    other.send(P.WORK_COMPLETE, h, b"on time")
    assert c.expect(P.WORK_COMPLETE) == (h, b"on time")


# -- disconnects ------------------------------------------------------------------------

def test_worker_disconnect_requeues_the_job(server_address, connect):
    c = connect(server_address)
    w1 = worker(connect, server_address, F)
    h = submit(c, P.SUBMIT_JOB, F, b"", b"payload")
    w1.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)
    w1.send(P.WORK_STATUS, h, b"1", b"2")
    assert c.expect(P.WORK_STATUS) == (h, b"1", b"2")
    w1.close()
    w2 = connect(server_address)
    w2.send(P.CAN_DO, F)
    packet = grab_when_ready(w2, P.GRAB_JOB_UNIQ)
    assert packet.type == P.JOB_ASSIGN_UNIQ and packet.args == (h, F, b"", b"payload")
    # Requeued with its status reset; the client saw nothing of it.
    assert c.call(P.GET_STATUS, h, reply=P.STATUS_RES) == (h, b"1", b"1", b"0", b"0")
    w2.send(P.WORK_COMPLETE, h, b"ok")
    assert c.expect(P.WORK_COMPLETE) == (h, b"ok")


def test_requeued_job_goes_first(gearnb_address, connect):
    # It has waited longest, so it runs next within its priority; gearmand 1.1.20 puts it at the
    # back of the queue instead.
    c = connect(gearnb_address)
    first = submit(c, P.SUBMIT_JOB_BG, F, b"", b"A")
    submit(c, P.SUBMIT_JOB_BG, F, b"", b"B")
    w = worker(connect, gearnb_address, F)
    assert w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[0] == first
    w.close()
    admin = connect(gearnb_address)
    wait_until(lambda: b"\t1\t0\t1\n" in admin.command("show jobs", multiline=True), timeout=3)
    w = worker(connect, gearnb_address, F)
    assert w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[0] == first


@pytest.fixture(params=["gearnb", "gearmand"])
def retries_address(request):
    """A server that gives up on a job after 2 attempts (``--job-retries 2``)."""
    if request.param == "gearnb":
        with gearnb_server(job_retries=2) as server:
            yield server.address
    else:
        gearmand = GearmandProcess("--job-retries", "2").start()
        try:
            yield gearmand.address
        finally:
            gearmand.stop()


def test_job_retries_then_work_fail(retries_address, connect):
    c = connect(retries_address)
    h = submit(c, P.SUBMIT_JOB, F, b"", b"crashes workers")
    for attempt in range(2):
        w = worker(connect, retries_address, F)
        packet = grab_when_ready(w)
        assert packet.type == P.JOB_ASSIGN and packet.args[0] == h
        w.close()
        if attempt == 0:
            c.nothing(0.2)
    assert c.expect(P.WORK_FAIL, timeout=2) == (h,)
    w = worker(connect, retries_address, F)
    w.call(P.GRAB_JOB, reply=P.NO_JOB)  # the failed job is gone


def test_foreground_job_of_departed_client_is_never_run(server_address, connect):
    c = connect(server_address)
    keep = connect(server_address)
    submit(c, P.SUBMIT_JOB, F, b"", b"orphan")
    hb = submit(c, P.SUBMIT_JOB_BG, F, b"", b"background survives")
    hk = submit(keep, P.SUBMIT_JOB, F, b"", b"kept")
    c.close()
    admin = connect(server_address)
    wait_until(lambda: admin.command("workers", multiline=True).count(b"\n") == 3, timeout=3)
    w = worker(connect, server_address, F)
    got = [w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[0] for _ in range(2)]
    assert got == [hb, hk]
    w.call(P.GRAB_JOB, reply=P.NO_JOB)


def test_departed_client_job_leaves_status_at_once(gearnb_address, connect):
    # gearmand keeps counting an ignored job in `status` until a worker dequeues it.
    c = connect(gearnb_address)
    submit(c, P.SUBMIT_JOB, F, b"", b"orphan")
    admin = connect(gearnb_address)
    assert admin.command("status", multiline=True) == b"f\t1\t0\t0\n.\n"
    c.close()
    wait_until(lambda: admin.command("status", multiline=True) == b"f\t0\t0\t0\n.\n", timeout=3)
    assert admin.command("show jobs", multiline=True) == b".\n"


def test_coalesced_job_survives_while_one_client_remains(server_address, connect):
    c1, c2 = connect(server_address), connect(server_address)
    h = submit(c1, P.SUBMIT_JOB, F, b"shared", b"x")
    assert submit(c2, P.SUBMIT_JOB, F, b"shared", b"x") == h
    admin = connect(server_address)
    c1.close()
    # The server has seen c1 go (c2 and this admin connection are left, plus the "." line)
    # before a worker asks: a fixed pause only hoped so.
    wait_until(lambda: admin.command("workers", multiline=True).count(b"\n") == 3, timeout=3)
    c2.sync()
    w = worker(connect, server_address, F)
    assert w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[0] == h
    w.send(P.WORK_COMPLETE, h, b"r")
    assert c2.expect(P.WORK_COMPLETE) == (h, b"r")
