"""TLS between gearnb and job servers: gearnb's own and Debian's gearmand (built with --ssl).

Certificates are made at test time with the openssl command.
"""

from __future__ import annotations

import ssl
import subprocess
import sys

import pytest

import gearnb
from gearnb.server.listener import exposure_warning
from gearnb.tls import client_context, server_context
from peers import GEARMAND, GearmandProcess, GearnbProcess, WorkerProcesses, need, wait_until, worker_thread

KEY = b"L" * 32


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=gearnb test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(extra + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    return d


def tls(certs) -> ssl.SSLContext:
    return client_context(str(certs / "ca.pem"), str(certs / "client.pem"), str(certs / "client.key"))


def reverse(job):
    return job.data[::-1]


def check_everything(address: str, context: ssl.SSLContext) -> None:
    with worker_thread(address, {"reverse": reverse}, ssl=context):
        def registered() -> bool:
            with gearnb.Admin(address, ssl=context) as admin:
                return any(s.function == "reverse" and s.workers for s in admin.status())

        wait_until(registered)
        client = gearnb.Client(address, ssl=context)
        assert client.do("reverse", b"secret") == b"terces"
        taskset = gearnb.TaskSet(client)
        tasks = [taskset.add(gearnb.Task("reverse", str(i))) for i in range(300)]
        assert taskset.wait(30)
        assert [t.result for t in tasks] == [str(i).encode()[::-1] for i in range(300)]
        client.close()


def test_gearnb_server_tls_with_client_certificates(certs):
    server = GearnbProcess("--ssl-cert", str(certs / "server.pem"), "--ssl-key", str(certs / "server.key"),
                           "--ssl-ca", str(certs / "ca.pem")).start()
    try:
        check_everything(server.address, tls(certs))
        # Without a client certificate the server refuses the handshake.
        bare = client_context(str(certs / "ca.pem"))
        client = gearnb.Client(server.address, ssl=bare, submit_timeout=1)
        with pytest.raises((gearnb.NoJobServers, ConnectionError, ssl.SSLError)):
            client.do("reverse", b"x", timeout=10)
        client.close()
        # Plain text to a TLS port gets nowhere either.
        plain = gearnb.Client(server.address, submit_timeout=1)
        with pytest.raises((gearnb.NoJobServers, ConnectionError, TimeoutError)):
            plain.do("reverse", b"x", timeout=10)
        plain.close()
    finally:
        server.stop()


def test_pyexec_over_tls(certs):
    from gearnb.server import Server

    context = tls(certs)
    with Server("127.0.0.1", 0, ssl=server_context(str(certs / "server.pem"), str(certs / "server.key"),
                                                   str(certs / "ca.pem"))) as server:
        worker = gearnb.Worker(server.address, ssl=context)
        from gearnb.pyexec import PyexecRunner

        worker.register("pyexec", PyexecRunner(KEY))
        import threading

        thread = threading.Thread(target=worker.work, daemon=True)
        thread.start()
        try:
            ex = gearnb.Executor(server.address, key=KEY, ssl=context)
            assert ex.gmap(lambda x: x * 2, range(100), chunksize=3) == [x * 2 for x in range(100)]
            ex.shutdown()
        finally:
            worker.stop()
            thread.join(10)


def test_debian_gearmand_ssl_build(certs):
    """Debian's gearmand 1.1.20+ds takes --ssl but is not built with SSL: it keeps speaking
    plain Gearman and drops a TLS handshake. This pins that finding; if a later Debian build
    speaks TLS, the TLS checks against it run instead."""
    need(GEARMAND, "gearmand")
    gearmand = GearmandProcess("--ssl", "--ssl-ca-file", str(certs / "ca.pem"),
                               "--ssl-certificate", str(certs / "server.pem"),
                               "--ssl-key", str(certs / "server.key")).start()
    try:
        plain = gearnb.Client(gearmand.address, submit_timeout=2)
        try:
            speaks_plain = plain.echo(b"plain?", timeout=5) == b"plain?"
        except (ConnectionError, TimeoutError, gearnb.NoJobServers):
            speaks_plain = False
        plain.close()
        if speaks_plain:
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                with gearnb.Admin(gearmand.address, ssl=tls(certs), timeout=5) as admin:
                    admin.status()
        else:  # pragma: no cover - a gearmand built with SSL
            check_everything(gearmand.address, tls(certs))
    finally:
        gearmand.stop()


def test_binding_beyond_loopback_warns():
    assert exposure_warning("127.0.0.1") is None
    assert exposure_warning("::1") is None
    assert exposure_warning("localhost") is None
    for host in ("0.0.0.0", "", "192.0.2.7", "::"):
        message = exposure_warning(host)
        assert message and "no authentication" in message and "127.0.0.1" in message
