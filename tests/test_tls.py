"""TLS between gearnb and job servers: gearnb's own and Debian's gearmand (built with --ssl).

Certificates are made at test time with the openssl command.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading

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


def nested_sum(x: int) -> int:
    return sum(gearnb.map(abs, [x, -x], progress=False))


class TlsSniffer:
    """A TCP relay in front of a job server that notes the first byte of every connection
    before passing bytes both ways: 0x16 opens a TLS handshake; plain Gearman starts with NUL
    (binary) or a letter (admin text)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.first_bytes: list[int] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            first = conn.recv(1, socket.MSG_PEEK)
            if not first:
                conn.close()
                return
            with self.lock:
                self.first_bytes.append(first[0])
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
        except OSError:
            conn.close()
            return
        for sock in (conn, upstream):
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()
        self._pump(conn, upstream)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_a_tls_only_cluster_map_cancel_worker_count_and_status(certs, tmp_path):
    """Every connection gearnb makes - the workers' (guard, task process, control function), the
    Executor's jobs, its worker count, its cancel and its stop of a running task, a nested map
    in a task, ``gearnb status`` - speaks TLS with a client certificate: a relay in front of the
    server sees a TLS handshake open each one, and the server refuses plain text (main: cancel
    and worker_count connected in plain text, and connect() and the commands had no TLS)."""
    server = GearnbProcess("--ssl-cert", str(certs / "server.pem"), "--ssl-key", str(certs / "server.key"),
                           "--ssl-ca", str(certs / "ca.pem")).start()
    relay = TlsSniffer(server.port)
    options = ("--ssl-ca", str(certs / "ca.pem"), "--ssl-cert", str(certs / "client.pem"),
               "--ssl-key", str(certs / "client.key"))
    workers = WorkerProcesses(relay.address, processes=2, key=KEY, extra=options).start(wait=False)
    context = tls(certs)

    def pyexec_status() -> tuple[int, int, int]:
        with gearnb.Admin(relay.address, ssl=context) as admin:
            for status in admin.status():
                if status.function == "pyexec":
                    return status.total, status.running, status.workers
        return 0, 0, 0

    try:
        wait_until(lambda: pyexec_status()[2] == 2, timeout=30)
        ex = gearnb.connect(relay.address, key=KEY, ssl=context)
        assert gearnb.map(lambda x: x * 2, range(50), progress=False) == [x * 2 for x in range(50)]
        assert ex.worker_count() == 2
        # A nested map connects from the task process as its worker does: over TLS.
        assert gearnb.map(nested_sum, [1, 2], progress=False) == [2, 4]

        gate = tmp_path / "go"

        def wait_for(path: str) -> str:
            import os
            import time
            for _ in range(1200):
                if os.path.exists(path):
                    return "went"
                time.sleep(0.05)
            return "gave up"

        blockers = [gearnb.submit(wait_for, str(gate)) for _ in range(2)]
        wait_until(lambda: pyexec_status()[1] == 2, timeout=30)  # both workers busy
        queued = [gearnb.submit(abs, -i) for i in range(4)]
        wait_until(lambda: pyexec_status()[0] == 6, timeout=30)
        assert ex.cancel(queued) == 4
        assert all(future.cancelled() for future in queued)
        # A running task is stopped where it runs: through the workers' control function, a
        # TLS connection of its own (gearnb/pyexec/control.py).
        assert blockers[0].cancel(force=True) and blockers[0].cancelled()
        wait_until(lambda: pyexec_status()[1] == 1, timeout=30)
        gate.touch()
        assert blockers[1].result(timeout=30) == "went"
        wait_until(lambda: pyexec_status() == (0, 0, 2), timeout=30)

        status = subprocess.run([sys.executable, "-m", "gearnb", "status", "--servers", relay.address, *options],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        rows = [line.split() for line in status.stdout.splitlines()]
        assert [relay.address, "pyexec", "0", "0", "2"] in rows
        # Plain text to the server itself gets nowhere.
        with pytest.raises((ConnectionError, OSError)):
            with gearnb.Admin(server.address, timeout=5) as admin:
                admin.status()
    finally:
        gearnb.shutdown()
        workers.stop()
        server.stop()
        relay.close()
    # The workers (2), the executor's client, its worker count and cancel, each status poll and
    # `gearnb status`: every one opened with a TLS handshake record.
    print(f"{len(relay.first_bytes)} connections, first bytes {sorted(set(relay.first_bytes))}")
    assert len(relay.first_bytes) >= 8
    assert set(relay.first_bytes) == {0x16}, [hex(b) for b in relay.first_bytes]
