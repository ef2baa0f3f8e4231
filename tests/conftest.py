from __future__ import annotations

import pytest

from peers import GearmandProcess, RawConnection, gearnb_server


@pytest.fixture
def gearnb_address():
    with gearnb_server() as server:
        yield server.address


@pytest.fixture
def gearmand_address():
    gearmand = GearmandProcess().start()
    try:
        yield gearmand.address
    finally:
        gearmand.stop()


@pytest.fixture(params=["gearnb", "gearmand"])
def server_address(request):
    """The same test against the gearnb server and against a real gearmand."""
    if request.param == "gearnb":
        with gearnb_server() as server:
            yield server.address
    else:
        gearmand = GearmandProcess().start()
        try:
            yield gearmand.address
        finally:
            gearmand.stop()


@pytest.fixture
def kind(request) -> str:
    """Which server ``server_address`` is: ``"gearnb"`` or ``"gearmand"``."""
    callspec = getattr(request.node, "callspec", None)
    return callspec.params.get("server_address", "gearnb") if callspec else "gearnb"


@pytest.fixture
def kernel():
    """A real Jupyter kernel (tests/kernels.py), shut down after the test."""
    from kernels import Kernel

    k = Kernel()
    try:
        yield k
    finally:
        k.close()


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
