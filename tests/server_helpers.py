"""Helpers shared by the job server's packet tests (tests/test_server_*.py).

Those tests speak the binary protocol packet by packet over raw sockets. Tests taking
``server_address`` run against the gearnb server *and* a real gearmand 1.1.20, so they pin
gearmand's behaviour and prove that we match it; tests taking ``gearnb_address`` (or starting a
gearnb server with options) cover what gearmand does not do or does differently on purpose
(see ../shared/reference/gearman-protocol.md). The ``connect`` and ``kind`` fixtures are in
conftest.py.
"""

from __future__ import annotations

from gearnb.protocol import PacketType as P
from peers import RawConnection

F = b"f"


def worker(connect, address: str, *functions: bytes) -> RawConnection:
    w = connect(address)
    for name in functions:
        w.send(P.CAN_DO, name)
    w.sync()
    return w


def submit(conn: RawConnection, ptype: int, function: bytes, unique: bytes, data: bytes) -> bytes:
    return conn.call(ptype, function, unique, data, reply=P.JOB_CREATED)[0]
