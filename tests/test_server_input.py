"""What the job server takes and refuses on a connection, packet by packet: ECHO and OPTION_REQ,
garbage, size limits, commands it does not expect, results for unknown jobs.

What gearnb does differently from gearmand on purpose: bad input gets an ERROR packet before the
close, and a 64-byte unique is refused (see server_helpers.py).
"""

from __future__ import annotations

import struct
import time

import pytest

from gearnb.protocol import PacketType as P
from peers import RawConnection, gearnb_server
from server_helpers import F, submit, worker


# -- echo and options -------------------------------------------------------------------

def test_echo_keeps_nuls(server_address, connect):
    c = connect(server_address)
    for data in (b"", b"\0", b"a\0b\0\0c", bytes(range(256)) * 4096):
        assert c.call(P.ECHO_REQ, data, reply=P.ECHO_RES) == (data,)


def test_a_large_packets_header_alone_then_a_body_that_looks_like_packets(server_address, connect):
    # The header of a large packet arrives in a read of its own, then the body, which here
    # starts with a whole ECHO_REQ: that must stay data, not run as a request.
    from gearnb.protocol import request

    inner = request(P.ECHO_REQ, b"SMUGGLED")
    body = inner + b"x" * (100_000 - len(inner))
    c = connect(server_address)
    c.send_raw(b"\0REQ" + struct.pack(">II", int(P.ECHO_REQ), len(body)))
    time.sleep(0.2)  # lets the server read the header alone
    c.send_raw(body)
    assert c.expect(P.ECHO_RES, timeout=5) == (body,)
    assert c.call(P.ECHO_REQ, b"after", reply=P.ECHO_RES) == (b"after",)


def test_option_req(server_address, connect):
    c = connect(server_address)
    assert c.call(P.OPTION_REQ, b"bogus", reply=P.ERROR) == (
        b"UNKNOWN_OPTION", b"Server does not recognize given option")
    assert c.call(P.OPTION_REQ, b"exceptions", reply=P.OPTION_RES) == (b"exceptions",)
    c.sync()  # the connection stays usable


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
    """A packet over --max-packet-size is answered ERROR ARGUMENT_TOO_LARGE naming the limit and
    the setting, as soon as its head is in; its body is read and dropped and the connection
    carries on (tests/test_limits.py has the rest of the bound)."""
    with gearnb_server(max_packet_size=64 * 1024) as server:
        ok = connect(server.address)
        big = b"x" * (64 * 1024)
        assert ok.call(P.ECHO_REQ, big, reply=P.ECHO_RES) == (big,)  # at the limit: fine
        bad = connect(server.address)
        code, text = bad.call(P.ECHO_REQ, big + b"x", reply=P.ERROR)  # just over
        assert code == b"ARGUMENT_TOO_LARGE"
        assert b"65,537 bytes" in text and b"65,536 bytes" in text and b"--max-packet-size" in text
        assert bad.call(P.ECHO_REQ, b"after", reply=P.ECHO_RES) == (b"after",)
        # A 4 GiB size field: answered before any of its body came.
        bad.send_raw(b"\0REQ" + struct.pack(">II", P.ECHO_REQ, 0xFFFFFFFF) + b"x" * 100)
        assert bad.expect(P.ERROR)[0] == b"ARGUMENT_TOO_LARGE"
        assert ok.call(P.ECHO_REQ, b"alive", reply=P.ECHO_RES) == (b"alive",)


def test_default_max_packet_size_is_the_protocols(gearnb_address, connect):
    """By default a packet may be as large as the protocol allows (4 GiB - 1): the head of one
    is taken without an error, and nothing of that size is reserved (tests/test_limits.py)."""
    bad = connect(gearnb_address)
    bad.send_raw(b"\0REQ" + struct.pack(">II", P.SUBMIT_JOB, 0xFFFFFFFF) + b"f\0u\0" + b"x" * 1000)
    bad.nothing(0.3)
    assert connect(gearnb_address).call(P.ECHO_REQ, b"alive", reply=P.ECHO_RES) == (b"alive",)


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
