"""gearnb against the Perl job server (Gearman::Server, Debian gearman-server 1.130), the one
the classic gearman-ruby documentation recommends.

The Perl server has no low priority, no high or low background jobs, no SUBMIT_JOB_EPOCH
and no admin ``cancel job``: the client's errors name what the server lacks.
"""

from __future__ import annotations

import signal
import time
from typing import Iterator

import pytest

import gearnb
from peers import PerlGearmandProcess

pytestmark = pytest.mark.timeout(90)



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
