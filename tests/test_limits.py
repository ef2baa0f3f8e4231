"""A bounded job server, and no payload ceiling that users hit (issues 15 and 10).

Real processes throughout: ``gearnb server`` with small limits (an open-files limit, an
address-space limit, a memory bound), gearmand, ``gearnb worker`` processes, raw sockets that
behave badly on purpose. Memory is read from /proc. Which of these fail on the main branch
before this work: the slow reader (the server's RSS grew by 320 MiB), the half-open flood
(``version`` never answered), the declared sizes (VmSize grew by GiBs; MemoryError under an
address-space limit), every oversize case (a closed connection and a reconnect loop instead
of an error) and the 1 GiB and 200 MB payloads (over the 128 MiB cap).
"""

from __future__ import annotations

import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import gearnb
from gearnb.protocol import REQ, PacketType as P, request
from peers import (
    GEARMAND, GearmandProcess, RawConnection, WorkerProcesses, descendants, free_port, need, wait_port, wait_until,
)

import numpy as np  # noqa: E402 - the test extra installs it (a skip under CI is not allowed)

KEY = b"L" * 32
MiB = 1 << 20


class LimitedServer:
    """``gearnb server`` in a process of its own, under resource limits, its log kept."""

    def __init__(self, *options: str, nofile: int | None = None, address_space: int | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = tempfile.mktemp(prefix="gearnb-server-", suffix=".log")
        limits = []
        if nofile is not None:
            limits.append((resource.RLIMIT_NOFILE, (nofile, nofile)))
        if address_space is not None:
            limits.append((resource.RLIMIT_AS, (address_space, address_space)))

        def apply() -> None:  # in the child, before exec
            for which, value in limits:
                resource.setrlimit(which, value)

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "gearnb", "-v", "server", "--port", str(self.port),
                                          *options], stdout=log, stderr=subprocess.STDOUT, preexec_fn=apply)
        wait_port(self.port)

    def status(self, field: str) -> int:
        """A /proc/<pid>/status field in bytes (VmRSS, VmSize, VmHWM)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def servers():
    started: list[LimitedServer] = []

    def start(*options: str, **limits: int) -> LimitedServer:
        server = LimitedServer(*options, **limits)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) within ``timeout``; what came is dropped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(1 << 20):
                return True
        except socket.timeout:
            return False
        except ConnectionError:
            return True
    return False


# -- a bounded server (issue 15, rows 5 and 6) ------------------------------------------------

def test_a_client_that_never_reads_holds_its_worker_not_the_servers_memory(servers):
    """One job whose client never reads; its worker sends 40 x 8 MiB of WORK_DATA. The server
    stops reading from the worker once the client's replies pass 4 MiB, so its RSS stays within
    4 MiB + two packets (main: +320 MiB in 1.4 s). After --stall-timeout the client is dropped,
    saying why, and the worker carries on."""
    server = servers("--stall-timeout", "3")
    client = RawConnection(server.address)
    worker = RawConnection(server.address)
    worker.send(P.CAN_DO, b"f")
    worker.sync()
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # the kernel holds little for it
    handle = client.call(P.SUBMIT_JOB, b"f", b"", b"x", reply=P.JOB_CREATED)[0]
    assert worker.call(P.GRAB_JOB_UNIQ, reply=P.JOB_ASSIGN_UNIQ)[0] == handle
    baseline = server.status("VmRSS")
    chunk = request(P.WORK_DATA, handle, b"d" * (8 * MiB))
    sent = []

    def feed() -> None:
        try:
            for _ in range(40):
                worker.sock.sendall(chunk)
                sent.append(1)
            worker.send(P.WORK_COMPLETE, handle, b"done")
        except OSError:
            pass

    worker.sock.settimeout(60)
    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    # The worker is held: what it managed to send stops growing, far below 40 packets.
    wait_until(lambda: len(sent) > 0)
    held_at = wait_until(lambda: _steady(sent), timeout=15)
    assert held_at < 20, f"the worker sent {held_at} of 40 packets to a client that never reads"
    growth = server.status("VmRSS") - baseline
    print(f"worker held after {held_at} of 40 packets; server RSS +{growth / MiB:.1f} MiB")
    assert growth < 4 * MiB + 2 * 8 * MiB + 16 * MiB, f"server RSS grew by {growth / MiB:.0f} MiB"
    # The client reads nothing for --stall-timeout: dropped, with the reason in the log; the
    # worker is read again and finishes (its remaining data goes nowhere).
    thread.join(30)
    assert not thread.is_alive() and len(sent) == 40
    assert "read none of its replies for 3 s while workers waited" in server.log()
    peak = server.status("VmHWM") - baseline
    print(f"server peak RSS +{peak / MiB:.1f} MiB over the whole 320 MiB")
    assert peak < 4 * MiB + 2 * 8 * MiB + 16 * MiB
    assert worker.call(P.GRAB_JOB_UNIQ, reply=P.NO_JOB) == ()  # the job ended, the worker is served
    client.close()
    worker.close()


def _steady(sent: list, wait: float = 1.0) -> int:
    """The count of ``sent`` once it has not moved for ``wait`` seconds (0 while it moves)."""
    before = len(sent)
    time.sleep(wait)
    return before if len(sent) == before else 0


def test_a_flood_of_half_open_connections_does_not_starve_a_legitimate_one(servers):
    """60 connections that each send 3 bytes, against a server with 64 file descriptors: on main
    accept() fails (EMFILE) and ``version`` is never answered. Now the oldest connection that
    has not sent a whole packet makes room, and silent ones are closed after
    --first-packet-timeout."""
    server = servers("--first-packet-timeout", "3", nofile=64)
    flood = []
    for _ in range(60):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"\0RE")
        flood.append(sock)
    with gearnb.Admin(server.address, timeout=5) as admin:
        assert admin.version()  # answered, not starved
        assert admin.status() == []
    # Every flooding connection was closed: evicted to make room, or silent for 3 s.
    assert all(closed_by_peer(sock, 10) for sock in flood)
    log = server.log()
    assert "a new connection took its place" in log and "sent no complete packet within 3 s" in log
    assert server.proc.poll() is None
    for sock in flood:
        sock.close()


def test_declared_sizes_reserve_nothing(servers):
    """30 connections each declare a 128 MiB SUBMIT_JOB and send 64 KiB of it, under a 1 GiB
    address-space limit and a 512 MiB memory bound: main reserved 30 x 128 MiB (VmSize 131 ->
    3,972 MiB; here, MemoryError). Now memory follows what arrived, and a client whose large
    packet would pass the bound waits, then goes through once the silent ones are closed."""
    server = servers("--max-memory", "512M", "--first-packet-timeout", "3", address_space=1 << 30)
    before = server.status("VmSize")
    head = REQ + struct.pack(">II", P.SUBMIT_JOB, 128 * MiB) + b"f\0u\0"
    flood = []
    for _ in range(30):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(head + b"x" * (64 * 1024))
        flood.append(sock)
    with RawConnection(server.address, timeout=20) as legit:
        legit.sync()  # small packets are never held up
        growth = server.status("VmSize") - before
        print(f"VmSize +{growth / MiB:.1f} MiB for 30 connections declaring 128 MiB")
        assert growth < 128 * MiB, f"VmSize grew by {growth / MiB:.0f} MiB for 30 x 64 KiB received"
        big = b"e" * (4 * MiB)  # admitted once the silent connections' 30 x 128 MiB are released
        assert legit.call(P.ECHO_REQ, big, reply=P.ECHO_RES) == (big,)
    assert all(closed_by_peer(sock, 10) for sock in flood)
    log = server.log()
    assert "MemoryError" not in log and "Traceback" not in log
    assert "past its memory bound" in log
    for sock in flood:
        sock.close()


def test_a_stalled_packet_times_out(servers):
    """A connection that has spoken, then stops inside a packet, is closed after --stall-timeout."""
    server = servers("--stall-timeout", "2")
    with RawConnection(server.address) as conn:
        conn.sync()
        conn.send_raw(REQ + struct.pack(">II", P.ECHO_REQ, 1000) + b"half")
        assert conn.expect(P.ERROR, timeout=10) == (
            b"TIMEOUT", b"connection closed by the job server: no byte of the packet it was sending came for 2 s")
        assert conn.closed()


def test_the_connection_cap_refuses_with_an_error(servers):
    """Past --max-connections, with no unauthenticated connection to replace, a new one is
    refused with an ERROR that says so."""
    server = servers("--max-connections", "3")
    kept = [RawConnection(server.address) for _ in range(3)]
    for conn in kept:
        conn.sync()
    with RawConnection(server.address) as extra:
        code, text = extra.expect(P.ERROR)
        assert code == b"SERVER_ERROR" and b"3 connections, its maximum" in text and b"--max-connections" in text
        assert extra.closed()
    kept.pop().close()
    wait_until(lambda: _answers_version(server.address))  # once the server saw it go
    for conn in kept:
        conn.close()


def _answers_version(address: str) -> bool:
    try:
        with gearnb.Admin(address, timeout=2) as admin:
            return bool(admin.version())
    except (OSError, gearnb.ServerError):
        return False


# -- no payload ceiling that users hit (issue 10) --------------------------------------------

@pytest.fixture(scope="module")
def local():
    """The embedded default cluster's settings: no max_packet_size anywhere."""
    with gearnb.local(workers=1) as ex:
        yield ex


@pytest.fixture
def no_sharing(monkeypatch):
    """This process as a caller that cannot share memory with the workers (as one on another
    host): its executors find no value store, so every byte of a call and of its result goes
    in the Gearman job (gearnb/pyexec/sharing decides on the caller's side: value_store() is
    None, as where memfds are not available)."""
    from gearnb.pyexec.sharing import store

    monkeypatch.setattr(store, "_store", None)
    monkeypatch.setattr(store, "_store_failed", True)
    assert store.value_store() is None


def _in_the_job(future, nbytes: int) -> bool:
    """Whether the call and its result each travelled in the job (not shared memory)."""
    sub = future.run.chunk.sub
    return len(sub.data) > nbytes and len(sub.result) > nbytes


def test_a_1_gib_array_round_trip_on_the_default_local_cluster(local):
    """The local default: the array goes through shared memory (sharing.py), the job is small."""
    arr = np.arange(1 << 27, dtype=np.float64)  # 1 GiB
    future = local.submit(lambda a: a + 1, arr)
    back = future.result(timeout=300)
    assert back.shape == arr.shape and back[0] == 1.0 and back[-1] == float(arr[-1] + 1)
    assert not _in_the_job(future, arr.nbytes)


def test_a_1_gib_array_round_trip_through_the_gearnb_server(local, no_sharing):
    """The path a remote worker takes: 1 GiB there and back in Gearman packets through the
    bundled job server, with no max_packet_size set anywhere."""
    with gearnb.Executor(local.servers, key=local.cluster.key) as ex:
        arr = np.arange(1 << 27, dtype=np.float64)
        future = ex.submit(lambda a: a, arr)
        back = future.result(timeout=300)
        assert back.shape == arr.shape and np.array_equal(back, arr)
        assert _in_the_job(future, arr.nbytes)


@pytest.mark.parametrize("path", ["shared", "in the job"])
def test_a_lambda_capturing_a_200_mb_array(local, path, request):
    if path == "in the job":
        request.getfixturevalue("no_sharing")
    big = np.full(25_000_000, 2.0)  # 200 MB, inside the function's closure
    with gearnb.Executor(local.servers, key=local.cluster.key) as ex:
        assert ex.gmap(lambda i: float(big[i * 1000] * i), range(8)) == [2.0 * i for i in range(8)]


def test_a_1_gib_array_round_trip_through_gearmand(no_sharing):
    need(GEARMAND, "gearmand")
    gearmand = GearmandProcess().start()
    workers = WorkerProcesses(gearmand.address, processes=1, key=KEY).start()
    try:
        with gearnb.Executor(gearmand.address, key=KEY) as ex:
            arr = np.arange(1 << 27, dtype=np.float64)
            future = ex.submit(lambda a: a, arr)
            back = future.result(timeout=300)
            assert back.shape == arr.shape and np.array_equal(back, arr)
            assert _in_the_job(future, arr.nbytes)
    finally:
        workers.stop()
        gearmand.stop()


def test_a_job_over_the_servers_limit_fails_at_once(servers):
    """Server smaller than the client: ERROR ARGUMENT_TOO_LARGE answers the submit, the client
    raises PacketTooLarge naming the server's limit and its setting; no reconnect, and the same
    connection serves the next call."""
    server = servers("--max-packet-size", "1M")
    with WorkerProcesses(server.address, processes=1, key=KEY), gearnb.Executor(server.address, key=KEY) as ex:
        future = ex.submit(len, b"x" * (2 * MiB))
        with pytest.raises(gearnb.PacketTooLarge) as info:
            future.result(timeout=20)
        text = str(info.value)
        assert "exceeds the job server's max packet size of 1,048,576 bytes" in text
        assert "gearnb server --max-packet-size" in text
        assert ex.submit(len, b"x" * 1000).result(timeout=20) == 1000
        # A result over the server's limit fails its job the same way; the worker carries on.
        with pytest.raises(gearnb.RefusedPayload, match="exceeds the job server's max packet size"):
            ex.submit(bytes, 2 * MiB).result(timeout=20)
        assert ex.submit(len, b"y" * 10).result(timeout=20) == 10
    log = server.log()
    assert log.count("exceeds the job server's max packet size") == 2


@pytest.mark.parametrize("kind", ["gearnb", "gearmand"])
def test_a_job_over_a_workers_limit_fails_at_once(servers, kind):
    """Worker smaller than the server: the worker answers the job with a failure naming its
    limit (main: the worker reconnected forever and the future stayed pending)."""
    if kind == "gearnb":
        address = servers().address
        gearmand = None
    else:
        need(GEARMAND, "gearmand")
        gearmand = GearmandProcess().start()
        address = gearmand.address
    workers = WorkerProcesses(address, processes=1, key=KEY, extra=("--max-packet-size", "1M")).start()
    try:
        with gearnb.Executor(address, key=KEY) as ex:
            with pytest.raises(gearnb.RefusedPayload) as info:
                ex.submit(len, b"x" * (2 * MiB)).result(timeout=20)
            text = str(info.value)
            assert "exceeds this worker's max packet size of 1,048,576 bytes" in text
            assert "gearnb worker --max-packet-size" in text
            assert ex.submit(len, b"x" * 1000).result(timeout=20) == 1000
            pids = workers.child_pids()
        assert workers.child_pids() == pids  # nothing restarted or reconnected in a loop
    finally:
        workers.stop()
        if gearmand is not None:
            gearmand.stop()


def test_the_clients_own_limit_is_checked_before_sending(gearnb_address):
    ex = gearnb.Executor(gearnb_address, key=KEY, max_packet_size="1M")
    try:
        with pytest.raises(gearnb.PacketTooLarge, match="exceeds this client's max packet size of 1,048,576"):
            ex.submit(len, b"x" * (2 * MiB)).result(timeout=5)
    finally:
        ex.shutdown(wait=False)


def _cmdlines_below(pid: int) -> list[list[str]]:
    """The command lines of ``pid``'s live descendants (from /proc)."""
    found = []
    for child in descendants(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                found.append(f.read().decode().split("\0"))
        except OSError:
            pass
    return found


def test_gearnb_local_hands_its_limit_to_the_server_and_the_workers():
    """One setting for the whole local cluster: the executor checks it before sending, the job
    server answers a larger packet with ARGUMENT_TOO_LARGE, the workers' task processes got it."""
    with gearnb.local(workers=1, max_packet_size="1M") as ex:
        assert ex.client.max_packet_size == MiB
        with pytest.raises(gearnb.PacketTooLarge, match="exceeds this client's max packet size of 1,048,576"):
            ex.submit(len, b"x" * (2 * MiB)).result(timeout=10)
        with RawConnection(ex.servers[0]) as raw:
            raw.send(P.ECHO_REQ, b"e" * (2 * MiB))
            code, text = raw.expect(P.ERROR)
            assert code == b"ARGUMENT_TOO_LARGE" and b"the job server's max packet size of 1,048,576" in text
            assert raw.call(P.ECHO_REQ, b"still here", reply=P.ECHO_RES) == (b"still here",)
        assert ex.submit(len, b"x" * 1000).result(timeout=30) == 1000
        tasks = [argv for pid in ex.worker_pids() for argv in _cmdlines_below(pid) if "gearnb.pyexec.isolation" in argv]
        assert tasks and all(argv[argv.index("--max-packet-size") + 1] == "1M" for argv in tasks), tasks


def test_the_limit_is_one_setting(monkeypatch):
    from gearnb import limits
    from gearnb.server.core import JobServer

    assert limits.max_packet_size() == limits.PROTOCOL_MAX_PACKET == 0xFFFFFFFF
    monkeypatch.setenv(limits.MAX_PACKET_ENV, "256M")
    assert gearnb.Client("127.0.0.1:1")._core.max_packet_size == 256 * MiB
    assert gearnb.Worker("127.0.0.1:1")._conns[0].max_packet_size == 256 * MiB
    assert JobServer().max_packet_size == 256 * MiB
    assert gearnb.Client("127.0.0.1:1", max_packet_size="2G")._core.max_packet_size == 2 << 30
    ex = gearnb.connect("127.0.0.1:1", key=KEY, max_packet_size="3M")
    try:
        assert ex.client.max_packet_size == 3 * MiB
    finally:
        gearnb.shutdown()
    with pytest.raises(ValueError, match="between 1024 bytes and the protocol's limit"):
        limits.max_packet_size("5G")
    with pytest.raises(ValueError, match="not a size"):
        limits.parse_size("lots")
