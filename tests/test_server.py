"""The job server's binary protocol, packet by packet, over raw sockets.

Tests taking ``server_address`` run against the gearnb server *and* a real gearmand 1.1.20, so
they pin gearmand's behaviour and prove that we match it. Tests taking ``gearnb_address`` (or
starting a gearnb server with options) cover what gearmand does not do or does differently on
purpose: epoch jobs wake sleeping workers, only as many sleepers wake as there are new jobs,
WORK_FAIL converted from an exception carries no trailing NUL, a 64-byte unique is refused,
bad input gets an ERROR packet before the close, priority holds across a worker's functions,
a requeued job goes first (see ../shared/reference/gearman-protocol.md).
"""

from __future__ import annotations

import struct
import time

import pytest

from gearnb.protocol import PacketType as P
from gearnb.protocol import request as request_bytes
from peers import GearmandProcess, RawConnection, gearnb_server, wait_until

F = b"f"


@pytest.fixture
def connect():
    """``connect(address)`` opens a RawConnection that is closed after the test."""
    conns: list[RawConnection] = []

    def make(address: str, **options) -> RawConnection:
        conn = RawConnection(address, **options)
        conns.append(conn)
        return conn

    yield make
    for conn in conns:
        conn.close()


@pytest.fixture
def kind(request) -> str:
    """Which server ``server_address`` is: ``"gearnb"`` or ``"gearmand"``."""
    callspec = getattr(request.node, "callspec", None)
    return callspec.params.get("server_address", "gearnb") if callspec else "gearnb"


def worker(connect, address: str, *functions: bytes) -> RawConnection:
    w = connect(address)
    for name in functions:
        w.send(P.CAN_DO, name)
    w.sync()
    return w


def submit(conn: RawConnection, ptype: int, function: bytes, unique: bytes, data: bytes) -> bytes:
    return conn.call(ptype, function, unique, data, reply=P.JOB_CREATED)[0]


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


# -- submitting and grabbing ------------------------------------------------------------

def test_submit_forms_job_created_fifo(server_address, connect):
    c = connect(server_address)
    forms = [P.SUBMIT_JOB, P.SUBMIT_JOB_BG, P.SUBMIT_JOB_HIGH, P.SUBMIT_JOB_HIGH_BG,
             P.SUBMIT_JOB_LOW, P.SUBMIT_JOB_LOW_BG]
    # Pipelined in one write: the JOB_CREATED replies come back in submission order.
    c.send_raw(b"".join(request_bytes(form, F, b"", b"%d" % i) for i, form in enumerate(forms)))
    handles = [c.expect(P.JOB_CREATED)[0] for _ in forms]
    assert len(set(handles)) == len(forms)
    assert all(h.startswith(b"H:") for h in handles)
    w = worker(connect, server_address, F)
    assigned = {}
    for _ in forms:
        handle, function, data = w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)
        assert function == F
        assigned[handle] = data
    assert [assigned[h] for h in handles] == [b"%d" % i for i in range(len(forms))]
    w.call(P.GRAB_JOB, reply=P.NO_JOB)


def test_priority_high_normal_low_fifo_within(server_address, connect):
    c = connect(server_address)
    order = [(P.SUBMIT_JOB_LOW, b"low1"), (P.SUBMIT_JOB, b"normal1"), (P.SUBMIT_JOB_HIGH_BG, b"high1"),
             (P.SUBMIT_JOB_LOW_BG, b"low2"), (P.SUBMIT_JOB_BG, b"normal2"), (P.SUBMIT_JOB_HIGH, b"high2"),
             (P.SUBMIT_JOB_HIGH, b"high3")]
    for ptype, data in order:
        submit(c, ptype, F, b"", data)
    w = worker(connect, server_address, F)
    got = [w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[2] for _ in order]
    assert got == [b"high1", b"high2", b"high3", b"normal1", b"normal2", b"low1", b"low2"]
    w.call(P.GRAB_JOB, reply=P.NO_JOB)


def test_grab_job_uniq_and_all(server_address, connect):
    c = connect(server_address)
    w = worker(connect, server_address, F)
    w.call(P.GRAB_JOB_UNIQ, reply=P.NO_JOB)
    w.call(P.GRAB_JOB_ALL, reply=P.NO_JOB)

    h = submit(c, P.SUBMIT_JOB, F, b"u-1", b"a\0b")
    assert w.call(P.GRAB_JOB_UNIQ, reply=P.JOB_ASSIGN_UNIQ) == (h, F, b"u-1", b"a\0b")
    # GRAB_JOB_ALL answers JOB_ASSIGN_ALL only for a job with a reducer ...
    h = c.call(P.SUBMIT_REDUCE_JOB, F, b"u-2", b"red", b"", b"x\0y", reply=P.JOB_CREATED)[0]
    assert w.call(P.GRAB_JOB_ALL, reply=P.JOB_ASSIGN_ALL) == (h, F, b"u-2", b"red", b"x\0y")
    h = c.call(P.SUBMIT_REDUCE_JOB_BACKGROUND, F, b"u-3", b"red2", b"", b"z",
               reply=P.JOB_CREATED)[0]
    assert w.call(P.GRAB_JOB_ALL, reply=P.JOB_ASSIGN_ALL) == (h, F, b"u-3", b"red2", b"z")
    # ... and JOB_ASSIGN_UNIQ otherwise.
    h = submit(c, P.SUBMIT_JOB_BG, F, b"u-4", b"plain")
    assert w.call(P.GRAB_JOB_ALL, reply=P.JOB_ASSIGN_UNIQ) == (h, F, b"u-4", b"plain")
    # A reducer job grabbed with plain GRAB_JOB is a plain JOB_ASSIGN.
    h = c.call(P.SUBMIT_REDUCE_JOB, F, b"u-5", b"red", b"", b"q", reply=P.JOB_CREATED)[0]
    assert w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN) == (h, F, b"q")
    w.call(P.GRAB_JOB_ALL, reply=P.NO_JOB)
    # A worker without that ability gets nothing.
    submit(c, P.SUBMIT_JOB_BG, b"other", b"", b"x")
    w.call(P.GRAB_JOB_UNIQ, reply=P.NO_JOB)


def test_work_results_reach_the_client(server_address, connect):
    c = connect(server_address)
    w = worker(connect, server_address, F)
    h = submit(c, P.SUBMIT_JOB, F, b"", b"in")
    w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)
    w.send(P.WORK_DATA, h, b"d\0ata")
    w.send(P.WORK_WARNING, h, b"warn")
    w.send(P.WORK_STATUS, h, b"1", b"2")
    w.send(P.WORK_COMPLETE, h, b"res\0ult")
    assert c.expect(P.WORK_DATA) == (h, b"d\0ata")
    assert c.expect(P.WORK_WARNING) == (h, b"warn")
    assert c.expect(P.WORK_STATUS) == (h, b"1", b"2")
    assert c.expect(P.WORK_COMPLETE) == (h, b"res\0ult")
    # The job is gone: results for it are refused, and GET_STATUS does not know it.
    w.send(P.WORK_COMPLETE, h, b"again")
    assert w.expect(P.ERROR) == (b"JOB_NOT_FOUND", b"Job given in work result not found")
    assert c.call(P.GET_STATUS, h, reply=P.STATUS_RES) == (h, b"0", b"0", b"0", b"0")
    # WORK_FAIL ends a job too; a background job sends nothing to its submitter.
    h = submit(c, P.SUBMIT_JOB, F, b"", b"in")
    hb = submit(c, P.SUBMIT_JOB_BG, F, b"", b"bg")
    w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)
    w.send(P.WORK_FAIL, h)
    assert c.expect(P.WORK_FAIL) == (h,)
    assert w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[0] == hb
    w.send(P.WORK_DATA, hb, b"x")
    w.send(P.WORK_COMPLETE, hb, b"done")
    w.sync()
    c.nothing(0.2)


def test_epoch_job_due_or_not(server_address, connect):
    c = connect(server_address)
    now = int(time.time())
    later = c.call(P.SUBMIT_JOB_EPOCH, F, b"", str(now + 600).encode(), b"later", reply=P.JOB_CREATED)[0]
    due = c.call(P.SUBMIT_JOB_EPOCH, F, b"", str(now - 10).encode(), b"due", reply=P.JOB_CREATED)[0]
    assert later != due
    w = worker(connect, server_address, F)
    assert w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN) == (due, F, b"due")
    w.call(P.GRAB_JOB, reply=P.NO_JOB)
    # Epoch jobs are background jobs: the submitter hears nothing.
    w.send(P.WORK_COMPLETE, due, b"")
    w.sync()
    c.nothing(0.2)


def test_epoch_job_wakes_a_sleeping_worker(gearnb_address, connect):
    # gearmand <= 1.1.22 queues a due epoch job without waking anyone (#343); we wake.
    c = connect(gearnb_address)
    w = worker(connect, gearnb_address, F)
    now = time.time()
    when = int(now) + (1 if now % 1 < 0.5 else 2)  # due in 0.5 to 1.5 s
    h = c.call(P.SUBMIT_JOB_EPOCH, F, b"e", str(when).encode(), b"at-when", reply=P.JOB_CREATED)[0]
    w.call(P.GRAB_JOB, reply=P.NO_JOB)  # not due yet
    w.send(P.PRE_SLEEP)
    w.expect(P.NOOP, timeout=4)
    assert time.time() >= when - 0.05
    assert w.call(P.GRAB_JOB_UNIQ, reply=P.JOB_ASSIGN_UNIQ) == (h, F, b"e", b"at-when")


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


def test_can_do_wakes_a_sleeper_when_work_is_waiting(gearnb_address, connect):
    c = connect(gearnb_address)
    w = sleeping_worker(connect, gearnb_address, b"g")
    submit(c, P.SUBMIT_JOB_BG, F, b"", b"x")
    w.nothing(0.1)
    w.send(P.CAN_DO, F)
    w.expect(P.NOOP, timeout=1)


# -- coalescing on (function, unique) ---------------------------------------------------

def test_coalescing_every_client_gets_every_packet(server_address, connect):
    c1, c2, c3, c4 = (connect(server_address) for _ in range(4))
    h = submit(c1, P.SUBMIT_JOB, F, b"same", b"one")
    # Any priority, any payload, background or not, any connection: the same handle.
    assert submit(c2, P.SUBMIT_JOB_HIGH, F, b"same", b"two") == h
    assert submit(c3, P.SUBMIT_JOB_LOW_BG, F, b"same", b"three") == h
    w = worker(connect, server_address, F)
    assert w.call(P.GRAB_JOB_UNIQ, reply=P.JOB_ASSIGN_UNIQ) == (h, F, b"same", b"one")
    w.call(P.GRAB_JOB, reply=P.NO_JOB)
    w.send(P.WORK_DATA, h, b"d")
    w.sync()
    # A client that submits while the job runs joins it and gets what comes after.
    assert submit(c4, P.SUBMIT_JOB, F, b"same", b"four") == h
    assert c3.call(P.GET_STATUS_UNIQUE, b"same", reply=P.STATUS_RES_UNIQUE) == (
        b"same", b"1", b"1", b"0", b"0", b"3")
    w.send(P.WORK_WARNING, h, b"w")
    w.send(P.WORK_STATUS, h, b"1", b"2")
    w.send(P.WORK_COMPLETE, h, b"result")
    for c in (c1, c2):
        assert c.expect(P.WORK_DATA) == (h, b"d")
    for c in (c1, c2, c4):
        assert c.expect(P.WORK_WARNING) == (h, b"w")
        assert c.expect(P.WORK_STATUS) == (h, b"1", b"2")
        assert c.expect(P.WORK_COMPLETE) == (h, b"result")
    c3.nothing(0.1)  # the background submitter is not attached
    # Once the job is done the unique is free again.
    assert submit(c1, P.SUBMIT_JOB, F, b"same", b"five") != h


def test_coalescing_keys(server_address, connect):
    c = connect(server_address)
    # An empty unique never coalesces.
    assert submit(c, P.SUBMIT_JOB_BG, F, b"", b"x") != submit(c, P.SUBMIT_JOB_BG, F, b"", b"x")
    # The same unique under another function is another job.
    assert submit(c, P.SUBMIT_JOB_BG, F, b"u", b"x") != submit(c, P.SUBMIT_JOB_BG, b"g", b"u", b"x")
    # "-": the payload is the key.
    h = submit(c, P.SUBMIT_JOB_BG, F, b"-", b"payload")
    assert submit(c, P.SUBMIT_JOB, F, b"-", b"payload") == h
    other = submit(c, P.SUBMIT_JOB_BG, F, b"-", b"another payload")
    assert other != h
    # ... kept apart from a real unique that equals the payload; an empty payload never coalesces.
    assert submit(c, P.SUBMIT_JOB_BG, F, b"payload", b"payload") not in (h, other)
    assert submit(c, P.SUBMIT_JOB_BG, b"g", b"-", b"") != submit(c, P.SUBMIT_JOB_BG, b"g", b"-", b"")
    # The worker still sees the unique "-" as sent (gearmand keeps it as the job's unique).
    w = worker(connect, server_address, b"g", F)
    seen = {}
    for _ in range(9):
        handle, function, unique, data = w.call(P.GRAB_JOB_UNIQ, reply=P.JOB_ASSIGN_UNIQ)
        seen[handle] = (function, unique, data)
    w.call(P.GRAB_JOB_UNIQ, reply=P.NO_JOB)
    assert seen[h] == (F, b"-", b"payload")
    assert seen[other] == (F, b"-", b"another payload")


# -- exceptions -------------------------------------------------------------------------

def test_work_exception(server_address, connect, kind):
    with_option, without = connect(server_address), connect(server_address)
    assert with_option.call(P.OPTION_REQ, b"exceptions", reply=P.OPTION_RES) == (b"exceptions",)
    h = submit(with_option, P.SUBMIT_JOB, F, b"ex", b"x")
    assert submit(without, P.SUBMIT_JOB, F, b"ex", b"x") == h
    w = worker(connect, server_address, F)
    w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)
    w.send(P.WORK_EXCEPTION, h, b"Trace\0back")
    assert with_option.expect(P.WORK_EXCEPTION) == (h, b"Trace\0back")
    # Clients that did not ask for exceptions get WORK_FAIL. gearmand copies the handle with
    # its NUL terminator; we send the handle alone.
    fail = without.expect(P.WORK_FAIL)
    assert fail == ((h + b"\0",) if kind == "gearmand" else (h,))
    # WORK_EXCEPTION ended the job (gearmand >= 1.1.9): a WORK_FAIL after it is refused.
    w.send(P.WORK_FAIL, h)
    assert w.expect(P.ERROR) == (b"JOB_NOT_FOUND", b"Job given in work result not found")
    with_option.nothing(0.1)
    without.nothing(0.1)


# -- status, echo, client id, abilities, options ----------------------------------------

def test_get_status_and_get_status_unique(server_address, connect):
    c1, c2 = connect(server_address), connect(server_address)
    assert c1.call(P.GET_STATUS, b"H:nowhere:1", reply=P.STATUS_RES) == (b"H:nowhere:1", b"0", b"0", b"0", b"0")
    assert c1.call(P.GET_STATUS_UNIQUE, b"nope", reply=P.STATUS_RES_UNIQUE) == (
        b"nope", b"0", b"0", b"0", b"0", b"0")
    h = submit(c1, P.SUBMIT_JOB, F, b"U1", b"x")
    assert c2.call(P.GET_STATUS, h, reply=P.STATUS_RES) == (h, b"1", b"0", b"0", b"0")
    assert c2.call(P.GET_STATUS_UNIQUE, b"U1", reply=P.STATUS_RES_UNIQUE) == (
        b"U1", b"1", b"0", b"0", b"0", b"1")
    assert submit(c2, P.SUBMIT_JOB, F, b"U1", b"x") == h
    w = worker(connect, server_address, F)
    w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)
    assert c2.call(P.GET_STATUS, h, reply=P.STATUS_RES) == (h, b"1", b"1", b"0", b"0")
    w.send(P.WORK_STATUS, h, b"3", b"7")
    for c in (c1, c2):
        assert c.expect(P.WORK_STATUS) == (h, b"3", b"7")
    assert c2.call(P.GET_STATUS, h, reply=P.STATUS_RES) == (h, b"1", b"1", b"3", b"7")
    assert c2.call(P.GET_STATUS_UNIQUE, b"U1", reply=P.STATUS_RES_UNIQUE) == (
        b"U1", b"1", b"1", b"3", b"7", b"2")
    w.send(P.WORK_COMPLETE, h, b"")
    for c in (c1, c2):
        c.expect(P.WORK_COMPLETE)
    assert c2.call(P.GET_STATUS, h, reply=P.STATUS_RES) == (h, b"0", b"0", b"0", b"0")


def test_echo_keeps_nuls(server_address, connect):
    c = connect(server_address)
    for data in (b"", b"\0", b"a\0b\0\0c", bytes(range(256)) * 4096):
        assert c.call(P.ECHO_REQ, data, reply=P.ECHO_RES) == (data,)


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


def test_option_req(server_address, connect):
    c = connect(server_address)
    assert c.call(P.OPTION_REQ, b"bogus", reply=P.ERROR) == (
        b"UNKNOWN_OPTION", b"Server does not recognize given option")
    assert c.call(P.OPTION_REQ, b"exceptions", reply=P.OPTION_RES) == (b"exceptions",)
    c.sync()  # the connection stays usable


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
    c1.close()
    c2.sync()
    time.sleep(0.1)
    w = worker(connect, server_address, F)
    assert w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[0] == h
    w.send(P.WORK_COMPLETE, h, b"r")
    assert c2.expect(P.WORK_COMPLETE) == (h, b"r")


# -- bad input --------------------------------------------------------------------------

def read_until_closed(conn: RawConnection, timeout: float = 2.0) -> list:
    """Every packet the server sends before it closes the connection."""
    packets = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            packets.append(conn.recv(max(deadline - time.monotonic(), 0.01)))
        except (EOFError, ConnectionError):
            return packets
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout} s; got {packets}") from None


@pytest.mark.parametrize("garbage", [
    b"\0XYZ" + struct.pack(">II", 16, 0),
    b"\0\xff\xfe\x00garbage!!!!!!!",
    b"\0REQ" + struct.pack(">II", 999, 0),  # unknown packet type
])
def test_garbage_closes_that_connection_only(server_address, connect, kind, garbage):
    bystander = connect(server_address)
    bystander.sync()
    bad = connect(server_address)
    bad.send_raw(garbage)
    packets = read_until_closed(bad)
    if kind == "gearnb":
        # We say why before closing; gearmand just closes.
        assert [p.type for p in packets] == [P.ERROR]
        assert packets[0].args[0] in (b"INVALID_MAGIC", b"INVALID_COMMAND", b"ARGUMENT_TOO_LARGE")
    else:
        assert packets == []
    bystander.sync()
    assert bystander.call(P.ECHO_REQ, b"still here", reply=P.ECHO_RES) == (b"still here",)


def test_oversized_frame(connect):
    with gearnb_server(max_packet_size=64 * 1024) as server:
        ok = connect(server.address)
        big = b"x" * (64 * 1024)
        assert ok.call(P.ECHO_REQ, big, reply=P.ECHO_RES) == (big,)  # at the limit: fine
        for size in (64 * 1024 + 1, 0xFFFFFFFF):  # just over, and a 4 GiB size field
            bad = connect(server.address)
            bad.send_raw(b"\0REQ" + struct.pack(">II", P.ECHO_REQ, size) + b"x" * 100)
            packets = read_until_closed(bad)
            assert [p.type for p in packets] == [P.ERROR]
            assert packets[0].args[0] == b"ARGUMENT_TOO_LARGE"
        assert ok.call(P.ECHO_REQ, b"alive", reply=P.ECHO_RES) == (b"alive",)


def test_default_max_packet_size_refuses_4_gib(gearnb_address, connect):
    bad = connect(gearnb_address)
    bad.send_raw(b"\0REQ" + struct.pack(">II", P.SUBMIT_JOB, 0xFFFFFFFF))
    packets = read_until_closed(bad)
    assert [(p.type, p.args[0]) for p in packets] == [(P.ERROR, b"ARGUMENT_TOO_LARGE")]


def test_unique_too_large(server_address, connect, kind):
    c = connect(server_address)
    w = worker(connect, server_address, F)
    u63 = bytes(b"0123456789"[i % 10] for i in range(63))
    h = submit(c, P.SUBMIT_JOB_BG, F, u63, b"x")
    assert w.call(P.GRAB_JOB_UNIQ, reply=P.JOB_ASSIGN_UNIQ) == (h, F, u63, b"x")
    assert c.call(P.SUBMIT_JOB, F, u63 + b"ab", b"x", reply=P.ERROR) == (
        b"ARGUMENT_TOO_LARGE", b"Unique value too large")
    assert c.call(P.SUBMIT_JOB_BG, F, b"u" * 200, b"x", reply=P.ERROR)[0] == b"ARGUMENT_TOO_LARGE"
    if kind == "gearnb":
        # gearmand takes 64 bytes but cuts the unique to 63 and puts a NUL before the data.
        assert c.call(P.SUBMIT_JOB, F, u63 + b"a", b"x", reply=P.ERROR)[0] == b"ARGUMENT_TOO_LARGE"
    c.sync()  # the connection stays open
    w.call(P.GRAB_JOB, reply=P.NO_JOB)


@pytest.mark.parametrize("ptype, args", [
    (P.ALL_YOURS, ()),
    (P.SUBMIT_JOB_SCHED, (F, b"", b"1", b"2", b"3", b"4", b"5", b"data")),
    (P.NOOP, ()),
    (P.JOB_CREATED, (b"H:x:1",)),
])
def test_command_not_expected_keeps_the_connection(server_address, connect, ptype, args):
    c = connect(server_address)
    assert c.call(ptype, *args, reply=P.ERROR) == (b"INVALID_COMMAND", b"Command not expected")
    c.sync()


def test_result_for_unknown_job(server_address, connect):
    w = connect(server_address)
    for ptype, args in ((P.WORK_COMPLETE, (b"H:x:1", b"r")), (P.WORK_FAIL, (b"H:x:1",)),
                        (P.WORK_DATA, (b"H:x:1", b"d")), (P.WORK_STATUS, (b"H:x:1", b"1", b"2"))):
        assert w.call(ptype, *args, reply=P.ERROR)[0] == b"JOB_NOT_FOUND"
    w.sync()


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


def test_priority_across_a_workers_functions(gearnb_address, connect):
    # A worker with several functions gets the highest-priority job of any of them (gearmand
    # 2.0's rule; among equals, its functions in CAN_DO order). gearmand 1.1.20 takes the
    # first of its functions (newest CAN_DO first) that has any job: h-low, g-normal, f-high.
    c = connect(gearnb_address)
    submit(c, P.SUBMIT_JOB_BG, b"g", b"", b"g-normal")
    submit(c, P.SUBMIT_JOB_HIGH_BG, F, b"", b"f-high")
    submit(c, P.SUBMIT_JOB_LOW_BG, b"h", b"", b"h-low")
    submit(c, P.SUBMIT_JOB_BG, F, b"", b"f-normal")
    w = worker(connect, gearnb_address, F, b"g", b"h")
    got = [w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[2] for _ in range(4)]
    assert got == [b"f-high", b"f-normal", b"g-normal", b"h-low"]
