"""Hostile input, fuzzed with hypothesis: the job server and the worker stay up and bounded.

The server sees random and mutated frames, truncated frames, size fields up to 4 GiB and
random admin text. It must answer ERROR (or an admin error line) and close that connection
only, never buffer past --max-packet-size, and keep serving a witness client throughout.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gearnb
from gearnb.protocol import ARG_COUNT, REQ, RES, Decoder, PacketType, ProtocolError, request
from gearnb.protocol.packets import HEADER_SIZE
from gearnb.server import Server
from peers import wait_until

MAX_PACKET = 64 * 1024

arg = st.binary(max_size=30).map(lambda b: b.replace(b"\0", b"_"))


@st.composite
def valid_frames(draw):
    ptype = draw(st.sampled_from(sorted(ARG_COUNT)))
    n = ARG_COUNT[ptype]
    args = [draw(arg) for _ in range(max(n - 1, 0))] + ([draw(st.binary(max_size=100))] if n else [])
    return request(ptype, *args)


@st.composite
def mutated_frames(draw):
    data = bytearray(draw(valid_frames()))
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def huge_size_headers(draw):
    ptype = draw(st.sampled_from(sorted(ARG_COUNT)))
    size = draw(st.sampled_from([MAX_PACKET + 1, 2**31, 2**32 - 1]) | st.integers(MAX_PACKET + 1, 2**32 - 1))
    return REQ + struct.pack(">II", ptype, size) + draw(st.binary(max_size=64))


admin_text = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=80).map(
    lambda t: (t.replace("\n", " ") + "\n").encode("utf-8", "replace"))

hostile = st.one_of(
    st.binary(min_size=1, max_size=300),
    mutated_frames(),
    valid_frames().map(lambda f: f[: max(1, len(f) // 2)]),  # truncated
    huge_size_headers(),
    admin_text,
    st.lists(st.one_of(valid_frames(), admin_text), min_size=1, max_size=5).map(b"".join),
)


def read_all(sock: socket.socket, timeout: float = 0.1) -> tuple[bytes, bool]:
    """What the server answered, and whether it closed the connection."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except (socket.timeout, TimeoutError):
        return data, False
    except ConnectionResetError:
        return data, True


def check_reply(data: bytes) -> None:
    """Whatever came back is well-formed: binary RES packets and/or admin text lines."""
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            size = struct.unpack(">I", data[pos + 8:pos + 12])[0]
            (packet,) = Decoder(RES).feed(data[pos:pos + HEADER_SIZE + size])
            assert packet.type in ARG_COUNT
            pos += HEADER_SIZE + size
        else:
            end = data.index(b"\n", pos)
            pos = end + 1


class Witness:
    """A client that keeps doing ECHO round trips on its own connection."""

    def __init__(self, address: str) -> None:
        self.client = gearnb.Client(address)
        self.ok = 0

    def check(self) -> None:
        assert self.client.echo(b"still here", timeout=5) == b"still here"
        self.ok += 1


def test_server_survives_hostile_input():
    server = Server("127.0.0.1", 0, max_packet_size=MAX_PACKET).start_in_thread()
    witness = Witness(server.address)
    closed_with_error = 0
    try:
        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        @given(hostile)
        def attack(data: bytes) -> None:
            nonlocal closed_with_error
            sock = socket.create_connection(("127.0.0.1", server.port))
            try:
                sock.sendall(data)
                reply, closed = read_all(sock)
                check_reply(reply)
                if closed and b"\0RES" in reply:
                    closed_with_error += 1
                # Never more buffered than one packet, on any connection.
                for conn in list(server.job_server.connections):
                    assert conn.decoder.buffered <= MAX_PACKET + HEADER_SIZE
            finally:
                sock.close()
            witness.check()

        attack()
        assert witness.ok >= 200 and closed_with_error > 0
    finally:
        witness.client.close()
        server.stop_in_thread()


def test_server_buffers_at_most_one_packet():
    with Server("127.0.0.1", 0, max_packet_size=MAX_PACKET) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        # A packet of exactly the maximum, sent in pieces, is buffered and then accepted...
        body = b"x" * (MAX_PACKET)
        frame = request(PacketType.ECHO_REQ, body)
        sock.sendall(frame[:-1])
        wait_until(lambda: any(c.decoder.buffered >= len(body) - 1 for c in server.job_server.connections))
        sock.sendall(frame[-1:])
        reply, closed = read_all(sock, 2)
        assert not closed and reply.endswith(body)
        # ...one byte more is refused from its header alone (an ERROR; the body is dropped as it
        # comes, the connection stays).
        sock.sendall(REQ + struct.pack(">II", PacketType.ECHO_REQ, MAX_PACKET + 1))
        reply, closed = read_all(sock, 2)
        assert not closed and b"ARGUMENT_TOO_LARGE" in reply
        sock.sendall(b"y" * (MAX_PACKET + 1))
        wait_until(lambda: all(c.decoder.idle for c in server.job_server.connections))
        assert all(c.decoder.buffered == 0 for c in server.job_server.connections)
        sock.close()


class HostileServer:
    """Accepts connections and answers each with the next hostile payload, then closes."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.payload = b""
        self.connections = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                payload = self.payload
                self.connections += 1
            try:
                conn.settimeout(1)
                conn.recv(65536)  # the worker's hello
                conn.sendall(payload)
                time.sleep(0.02)
            except OSError:
                pass
            finally:
                conn.close()


def test_worker_survives_a_hostile_server():
    hostile_server = HostileServer()
    ran = []
    worker = gearnb.Worker(f"127.0.0.1:{hostile_server.port}", max_packet_size=MAX_PACKET)
    worker.register("f", lambda job: ran.append(job.data) or b"")
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.one_of(st.binary(min_size=1, max_size=200), huge_size_headers().map(lambda b: RES + b[4:]),
                         valid_frames().map(lambda f: RES + f[4:])))
        def attack(payload: bytes) -> None:
            with hostile_server.lock:
                hostile_server.payload = payload
                before = hostile_server.connections
            # The worker drops the bad connection and comes back for more.
            wait_until(lambda: hostile_server.connections > before, timeout=15, interval=0.01)
            assert thread.is_alive()

        attack()
        assert thread.is_alive()
    finally:
        worker.stop()
        thread.join(10)
        hostile_server.listener.close()
    assert not thread.is_alive()
