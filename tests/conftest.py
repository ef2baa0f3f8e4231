from __future__ import annotations

import pytest

from peers import GearmandProcess, gearnb_server


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
