"""The admin text protocol of the job server, compared line by line with a real gearmand 1.1.20.

The comparison tests build the same state on both servers (same packets in the same order, so
the same job handles) and compare replies after masking what must differ: file descriptors, the
host part of handles, the version string and the pid.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from gearnb.protocol import PacketType as P
from peers import RawConnection, wait_until
from server_helpers import submit  # the connect fixture is in conftest.py

LISTS = ["status", "workers", "prioritystatus", "show jobs", "show unique jobs", "STATUS", "Show Jobs"]


def build_state(address: str, connect) -> RawConnection:
    """Workers, clients, queued/running/retried/epoch jobs; returns an admin connection."""
    admin = connect(address)
    w1 = connect(address)
    w1.send(P.SET_CLIENT_ID, b"w-one")
    w1.send(P.CAN_DO, b"f")
    w1.send(P.CAN_DO, b"g")
    w1.sync()
    runner = connect(address)
    runner.send(P.CAN_DO, b"f")
    runner.send(P.SET_CLIENT_ID, b"runner")
    runner.sync()
    c = connect(address)
    submit(c, P.SUBMIT_JOB_HIGH, b"f", b"u-high", b"1")       # H:1, will run
    submit(c, P.SUBMIT_JOB, b"f", b"", b"2")                  # H:2
    submit(c, P.SUBMIT_JOB_LOW_BG, b"f", b"u-low", b"3")      # H:3
    submit(c, P.SUBMIT_JOB_BG, b"g", b"u-g", b"4")            # H:4, a worker dies on it
    submit(c, P.SUBMIT_JOB_HIGH_BG, b"lonely", b"", b"5")     # H:5, nobody can do it
    c.call(P.SUBMIT_JOB_EPOCH, b"ep", b"u-ep", str(int(time.time()) + 600).encode(), b"6",
           reply=P.JOB_CREATED)                               # H:6, not due
    runner.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)  # H:1 runs
    dying = connect(address)
    dying.send(P.CAN_DO, b"g")
    dying.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)
    dying.close()
    wait_until(lambda: b"\t1\t0\t" in admin.command("show jobs", multiline=True), timeout=3)
    return admin


def masked(reply: bytes) -> list[str]:
    """Sorted lines with fds and handle hosts masked (servers list in different orders)."""
    lines = []
    for line in reply.decode().splitlines():
        line = re.sub(r"^\d+ ", "FD ", line)
        line = re.sub(r"H:[^:\t]*:", "H:host:", line)
        lines.append(line)
    return sorted(lines)


def test_same_state_same_lists(gearnb_address, gearmand_address, connect):
    ours = build_state(gearnb_address, connect)
    theirs = build_state(gearmand_address, connect)
    for command in LISTS:
        mine = ours.command(command, multiline=True)
        reference = theirs.command(command, multiline=True)
        assert masked(mine) == masked(reference), command
    # Spot checks of what the lists say, so that a change in both would not go unnoticed.
    status = masked(ours.command("status", multiline=True))
    assert status == sorted([".", "ep\t1\t0\t0", "f\t3\t1\t2", "g\t1\t0\t1", "lonely\t1\t0\t0"])
    workers = masked(ours.command("workers", multiline=True))
    assert "FD 127.0.0.1 w-one : g f" in workers
    assert "FD 127.0.0.1 runner : f" in workers
    assert workers.count("FD 127.0.0.1 - :") == 2  # the client and this admin connection
    priorities = masked(ours.command("prioritystatus", multiline=True))
    assert priorities == sorted([".", "ep\t0\t1\t0\t0", "f\t0\t1\t1\t2", "g\t0\t1\t0\t1", "lonely\t1\t0\t0\t0"])
    jobs = masked(ours.command("show jobs", multiline=True))
    assert jobs == sorted([".", "H:host:1\t0\t0\t0", "H:host:2\t0\t0\t0", "H:host:3\t0\t0\t1",
                           "H:host:4\t1\t0\t1", "H:host:5\t0\t0\t1", "H:host:6\t0\t0\t1"])
    uniques = masked(ours.command("show unique jobs", multiline=True))
    assert uniques == sorted([".", "u-high", "", "u-low", "u-g", "", "u-ep"])


def test_one_line_replies(server_address, connect):
    admin = connect(server_address)
    assert re.fullmatch(rb"OK \S+\n", admin.command("version"))
    assert re.fullmatch(rb"OK [A-Z]+\n", admin.command("verbose"))
    assert re.fullmatch(rb"OK \d+\n", admin.command("getpid"))
    # Extra words after these commands are ignored.
    assert re.fullmatch(rb"OK \S+\n", admin.command("version extra words"))
    assert admin.command("status ignored", multiline=True) == b".\n"
    # Text and binary share a connection.
    assert admin.call(P.ECHO_REQ, b"bin\0ary", reply=P.ECHO_RES) == (b"bin\0ary",)
    assert admin.command("workers", multiline=True).endswith(b".\n")


def test_gearnb_getpid_is_ours(gearnb_address, connect):
    assert connect(gearnb_address).command("getpid") == b"OK %d\n" % os.getpid()


@pytest.mark.parametrize("line, reply", [
    ("nosuch", b"ERR UNKNOWN_COMMAND Unknown+server+commandnosuch\r\n"),
    ("nosuch with args", b"ERR UNKNOWN_COMMAND Unknown+server+commandnosuch\r\n"),
    ("shutdown", b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"),  # gone in 1.1.15
    ("", b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"),
    ("maxqueue", b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+maxqueue\r\n"),
    ("create", b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+create\r\n"),
    ("create function", b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+create\r\n"),
    ("drop thing x", b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+drop\r\n"),
    ("show", b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n"),
    ("show foo", b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"),
    ("show jobs extra", b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"),
    ("show unique", b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"),
    ("cancel", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
    ("cancel job", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
    ("cancel job H:nohost:1", b"ERR UNKNOWN_JOB\r\n"),
    ("CANCEL JOB H:nohost:1", b"ERR UNKNOWN_JOB\r\n"),
    ("drop function nosuch", b"ERR function not found\r\n"),
])
def test_error_replies(server_address, connect, line, reply):
    admin = connect(server_address)
    assert admin.command(line, multiline=False) == reply
    assert admin.command("status", multiline=True) == b".\n"  # the connection goes on


def test_maxqueue(server_address, connect):
    admin = connect(server_address)
    c = connect(server_address)
    w = connect(server_address)
    w.send(P.CAN_DO, b"f")
    w.sync()
    # A function the server does not know is left alone (and not created).
    assert admin.command("maxqueue nosuch 1") == b"OK\r\n"
    assert b"nosuch" not in admin.command("status", multiline=True)
    # One number: every priority; the limit counts all the function's jobs, running too.
    assert admin.command("maxqueue f 2") == b"OK\r\n"
    h = submit(c, P.SUBMIT_JOB_BG, b"f", b"first", b"1")
    submit(c, P.SUBMIT_JOB_LOW_BG, b"f", b"", b"2")
    full = (b"QUEUE_ERROR", b"Job queue is full")
    for ptype in (P.SUBMIT_JOB, P.SUBMIT_JOB_HIGH, P.SUBMIT_JOB_LOW_BG):
        assert c.call(ptype, b"f", b"", b"3", reply=P.ERROR) == full
    assert submit(c, P.SUBMIT_JOB, b"f", b"first", b"coalesced") == h  # no new job: fine
    assert w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[0] == h
    assert c.call(P.SUBMIT_JOB_BG, b"f", b"", b"3", reply=P.ERROR) == full  # running counts
    w.send(P.WORK_COMPLETE, h, b"")
    assert c.expect(P.WORK_COMPLETE) == (h, b"")
    submit(c, P.SUBMIT_JOB_BG, b"f", b"", b"4")
    # Several numbers: HIGH NORMAL LOW, a missing one unlimited, 0 or negative unlimited.
    assert admin.command("maxqueue f -1 2") == b"OK\r\n"
    assert c.call(P.SUBMIT_JOB_BG, b"f", b"", b"5", reply=P.ERROR) == full
    submit(c, P.SUBMIT_JOB_HIGH_BG, b"f", b"", b"6")
    submit(c, P.SUBMIT_JOB_LOW_BG, b"f", b"", b"7")
    assert admin.command("maxqueue f 0 0 3") == b"OK\r\n"
    assert c.call(P.SUBMIT_JOB_LOW_BG, b"f", b"", b"8", reply=P.ERROR) == full
    submit(c, P.SUBMIT_JOB_BG, b"f", b"", b"9")
    # No number: unlimited again.
    assert admin.command("maxqueue f") == b"OK\r\n"
    submit(c, P.SUBMIT_JOB_LOW_BG, b"f", b"", b"10")
    assert admin.command("status", multiline=True) == b"f\t6\t0\t1\n.\n"


def test_cancel_job(server_address, connect):
    admin = connect(server_address)
    c = connect(server_address)
    fg = submit(c, P.SUBMIT_JOB, b"f", b"", b"fg")
    bg = submit(c, P.SUBMIT_JOB_BG, b"f", b"", b"bg")
    keep = submit(c, P.SUBMIT_JOB_BG, b"f", b"", b"keep")
    assert admin.command(f"cancel job {fg.decode()}") == b"OK\r\n"
    assert c.expect(P.WORK_FAIL) == (fg,)
    assert admin.command(f"cancel job {bg.decode()}") == b"OK\r\n"
    c.nothing(0.1)
    w = connect(server_address)
    w.send(P.CAN_DO, b"f")
    assert w.call(P.GRAB_JOB, reply=P.JOB_ASSIGN)[0] == keep  # cancelled jobs never run
    w.call(P.GRAB_JOB, reply=P.NO_JOB)


def test_create_and_drop_function(server_address, connect):
    admin = connect(server_address)
    assert admin.command("create function made") == b"OK\r\n"
    assert admin.command("create function made") == b"OK\r\n"
    assert admin.command("status", multiline=True) == b"made\t0\t0\t0\n.\n"
    w = connect(server_address)
    w.send(P.CAN_DO, b"made")
    w.sync()
    assert admin.command("drop function made") == b"ERR there are still connected workers or executing clients\r\n"
    w.send(P.CANT_DO, b"made")
    w.sync()
    assert admin.command("drop function MADE") == b"OK\r\n"  # case-insensitive, as gearmand
    assert admin.command("status", multiline=True) == b".\n"
    assert admin.command("drop function made") == b"ERR function not found\r\n"


def test_drop_function_fails_its_queued_jobs(gearnb_address, connect):
    # gearmand leaves the queued jobs of a dropped function behind, unreachable; we fail them.
    admin = connect(gearnb_address)
    c = connect(gearnb_address)
    h = submit(c, P.SUBMIT_JOB, b"gone", b"", b"x")
    assert admin.command("drop function gone") == b"OK\r\n"
    assert c.expect(P.WORK_FAIL) == (h,)
    assert admin.command("show jobs", multiline=True) == b".\n"


def gearadmin(address: str, *options: str) -> bytes:
    host, port = address.rsplit(":", 1)
    done = subprocess.run(["gearadmin", "--host", host, "--port", port, *options],
                          capture_output=True, timeout=10, check=True)
    return done.stdout + done.stderr


def test_gearadmin_sees_the_same(gearnb_address, gearmand_address, connect):
    build_state(gearnb_address, connect)
    build_state(gearmand_address, connect)
    for options in (["--status"], ["--workers"], ["--show-jobs"], ["--priority-status"],
                    ["--show-unique-jobs"], ["--status", "--workers"]):
        assert masked(gearadmin(gearnb_address, *options)) == masked(gearadmin(gearmand_address, *options)), options
    for address in (gearnb_address, gearmand_address):
        assert re.fullmatch(rb"\S+\n", gearadmin(address, "--server-version"))
        assert re.fullmatch(rb"\d+\n", gearadmin(address, "--getpid"))
        assert re.fullmatch(rb"[A-Z]+\n", gearadmin(address, "--server-verbose"))
        assert gearadmin(address, "--cancel-job", "H:nohost:1") == b"Error: UNKNOWN_JOB\r\n"
        assert gearadmin(address, "--create-function", "fresh") == b"OK\n"
        assert gearadmin(address, "--drop-function", "nosuch") == b"Error: function not found\r\n"
    assert gearadmin(gearnb_address, "--getpid") == b"%d\n" % os.getpid()
    assert gearadmin(gearmand_address, "--server-version") == b"1.1.20+ds\n"
