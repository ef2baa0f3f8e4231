"""The job server's jobs, packet by packet: submission forms, priorities, results, epoch jobs,
coalescing on (function, unique), WORK_EXCEPTION and GET_STATUS.

What gearnb does differently from gearmand on purpose, tested with ``gearnb_address``: epoch jobs
wake sleeping workers, priority holds across a worker's functions, and WORK_FAIL converted from an
exception carries no trailing NUL (see server_helpers.py).
"""

from __future__ import annotations

import time

from gearnb.protocol import PacketType as P
from gearnb.protocol import request as request_bytes
from server_helpers import F, submit, worker


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



def test_a_busy_clients_results_arrive_while_its_other_jobs_wait(server_address, connect):
    # The gearnb server holds replies to a client with many jobs outstanding for a few turns
    # of its loop, so they leave in fewer writes (BATCH_MIN_CLIENT_JOBS). Once the loop has
    # nothing else to do, they must go out: here nothing else ever happens.
    c = connect(server_address)
    waiting = 40  # jobs no worker serves: outstanding for the whole test
    c.send_raw(b"".join(request_bytes(P.SUBMIT_JOB, b"nobody", b"", b"%d" % i) for i in range(waiting)))
    for _ in range(waiting):
        c.expect(P.JOB_CREATED)
    h = submit(c, P.SUBMIT_JOB, F, b"", b"in")
    w = worker(connect, server_address, F)
    for i in range(3):
        assert w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[0] == h
        w.send(P.WORK_STATUS, h, b"%d" % i, b"3")
        assert c.expect(P.WORK_STATUS, timeout=2) == (h, b"%d" % i, b"3")
        if i < 2:
            w.send(P.WORK_FAIL, h)
            assert c.expect(P.WORK_FAIL, timeout=2) == (h,)
            h = submit(c, P.SUBMIT_JOB, F, b"", b"in")
    w.send(P.WORK_COMPLETE, h, b"out")
    assert c.expect(P.WORK_COMPLETE, timeout=2) == (h, b"out")

# -- epoch jobs -------------------------------------------------------------------------

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
    when = int(now) + 3  # due in 2 to 3 s: time enough for the GRAB_JOB below on a loaded machine
    h = c.call(P.SUBMIT_JOB_EPOCH, F, b"e", str(when).encode(), b"at-when", reply=P.JOB_CREATED)[0]
    w.call(P.GRAB_JOB, reply=P.NO_JOB)  # not due yet
    w.send(P.PRE_SLEEP)
    w.expect(P.NOOP, timeout=6)
    assert time.time() >= when - 0.05
    assert w.call(P.GRAB_JOB_UNIQ, reply=P.JOB_ASSIGN_UNIQ) == (h, F, b"e", b"at-when")


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


# -- status -----------------------------------------------------------------------------

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
