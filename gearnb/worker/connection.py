"""One job server as a worker sees it: its socket, the packets read from it, the grab it is
sent (GRAB_JOB_UNIQ, or GRAB_JOB where the server lacks it), reconnecting with back-off, and
the writes a job's updates and outcome make (under a lock, marked in the task slot)."""

from __future__ import annotations

import logging
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable

from ..errors import perl_server_lacks
from ..protocol import RES, Decoder, PacketType, request
from ..protocol.packets import Packet
from ..sockets import tune
from ..addresses import split_address


log = logging.getLogger("gearnb.worker")
P = PacketType

BACKOFF_FIRST = 0.1  # reconnect back-off, doubling up to BACKOFF_MAX (seconds)
BACKOFF_MAX = 5.0
# A server that does not answer a GRAB_JOB within this time is taken for dead.
REPLY_TIMEOUT = 60.0
SLEEP_POLL = 30.0  # seconds a sleeping worker waits for NOOP before asking for work anyway
RECV_SIZE = 256 * 1024

# Plain ints for the per-job path: reading a PacketType member (P.X) costs ~0.2 us, as the enum
# metaclass routes class attribute access through Python code.
_NOOP, _ERROR, _NO_JOB = int(P.NOOP), int(P.ERROR), int(P.NO_JOB)
GRAB_UNIQ = request(P.GRAB_JOB_UNIQ)
GRAB_PLAIN = request(P.GRAB_JOB)
# ERROR codes that answer a WORK_* packet for a job this worker no longer holds (the server
# took it back: CAN_DO_TIMEOUT), not the grab sent after it: gearmand's and gearnb's
# JOB_NOT_FOUND, the Perl Gearman::Server's not_worker; gearnb's ARGUMENT_TOO_LARGE for a
# result over the server's max packet size (the server failed that job for its clients).
_JOB_ERRORS = frozenset((b"JOB_NOT_FOUND", b"not_worker", b"ARGUMENT_TOO_LARGE"))
_JOB_ASSIGN_UNIQ, _JOB_ASSIGN_ALL = int(P.JOB_ASSIGN_UNIQ), int(P.JOB_ASSIGN_ALL)
_ASSIGN_TYPES = frozenset((P.JOB_ASSIGN_UNIQ, P.JOB_ASSIGN, P.JOB_ASSIGN_ALL))
_WORK_COMPLETE = int(P.WORK_COMPLETE)





def _set_reply_timeout(sock: socket.socket) -> None:
    """Make every recv and send on ``sock`` fail after REPLY_TIMEOUT seconds.

    On Linux the kernel keeps the time limit (SO_RCVTIMEO / SO_SNDTIMEO on a blocking
    socket), so a recv or send is one system call; ``settimeout`` would add a poll() before
    each of them, two more system calls per job. Elsewhere, and for TLS, ``settimeout``.
    """
    if sys.platform.startswith("linux") and type(sock) is socket.socket:
        sock.settimeout(None)
        seconds = int(REPLY_TIMEOUT)
        timeval = struct.pack("ll", seconds, int((REPLY_TIMEOUT - seconds) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    else:
        sock.settimeout(REPLY_TIMEOUT)


class _ServerConn:
    """One job server as seen by the worker: a socket, a decoder and reconnect state."""

    def __init__(self, address: str, max_packet_size: int, ssl_context: Any = None, index: int = 0,
                 slot: Any = None) -> None:
        self.address = address
        self.index = index  # its place in the worker's list of servers
        self.slot = slot  # a guard's JobSlot (gearnb/pyexec/isolation.py): sends are marked in it
        self.max_packet_size = max_packet_size
        self.ssl_context = ssl_context
        self.sock: socket.socket | None = None
        self.decoder = Decoder(RES, max_packet_size=max_packet_size)
        self.packets: list[Packet] = []
        # recv_into this one buffer: a fresh recv(RECV_SIZE) allocates 256 KiB for every
        # reply, which glibc may serve with mmap + mremap + munmap and two page faults
        # (measured: 28 us of system time per job).
        self._recv_buffer = memoryview(bytearray(RECV_SIZE))
        self.failures = 0
        self.retry_at = 0.0
        self.sleeping = False
        # What this server is asked for work with, and whether it is the Perl Gearman::Server
        # (CAN_DO_TIMEOUT in seconds; no WORK_DATA or WORK_WARNING; a WORK_EXCEPTION does not
        # end a job there). Learnt from its answer to the first GRAB_JOB_UNIQ; kept across
        # reconnects.
        self.grab = GRAB_UNIQ
        self.perl_server = False
        self._dropped_updates = False  # WORK_DATA / WORK_WARNING dropped: said once
        # Set by stop_reading(): the EOF that follows is ours, not the server's.
        self.reading_stopped = False
        self.lock = threading.Lock()  # job.send_* may be called from the job's own threads
        # Called with each socket this connection opens (a task process hands it to its guard).
        self.on_connect: Callable[[int, socket.socket], None] | None = None
        # Called with the socket before it is closed: the Worker's selector forgets it first.
        # (epoll keeps a closed socket while a forked child holds a copy of it; the DEL sent
        # later for its fd number would hit the next socket given that number.)
        self.on_close: Callable[[socket.socket], None] | None = None

    def connect(self, hello: bytes) -> bool:
        host, port = split_address(self.address)
        try:
            sock = socket.create_connection((host, port), timeout=5)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=host)
            tune(sock)  # TCP_NODELAY and keepalive (gearnb/sockets.py)
            _set_reply_timeout(sock)
            sock.sendall(hello)
        except OSError as exc:
            self.failures += 1
            delay = min(BACKOFF_FIRST * 2 ** (self.failures - 1), BACKOFF_MAX)
            self.retry_at = time.monotonic() + delay
            if self.failures <= 2 or self.failures % 10 == 0:  # (a drop counts as the first)
                log.warning("cannot reach job server %s (%s); retrying every few seconds", self.address, exc)
            return False
        if self.failures:
            log.info("reconnected to job server %s", self.address)
        self.adopt(sock)
        if self.on_connect is not None:
            self.on_connect(self.index, sock)
        return True

    def adopt(self, sock: socket.socket) -> None:
        """Use ``sock``, connected (by this process or, for a task process, by its guard)."""
        self.sock = sock
        self.decoder = Decoder(RES, max_packet_size=self.max_packet_size)
        self.packets = []
        self.failures = 0
        self.sleeping = False
        self.reading_stopped = False

    def drop(self, why: str) -> None:
        if self.sock is not None:
            if self.reading_stopped:
                log.debug("closing the connection to job server %s (stopping)", self.address)
            else:
                log.warning("lost job server %s: %s", self.address, why)
            if self.on_close is not None:
                self.on_close(self.sock)
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.failures += 1
        self.retry_at = time.monotonic() + BACKOFF_FIRST

    def stop_reading(self) -> None:
        """Shut the read side of the socket: a recv blocked in another thread (or in this one,
        interrupted by a signal whose handler calls this) returns EOF at once. Sending still
        works, so a job that is running can report its outcome. Safe from any thread."""
        sock = self.sock
        if sock is None:
            return
        self.reading_stopped = True
        try:
            # socket.socket's own shutdown, also for TLS: SSLSocket.shutdown would drop the
            # TLS state, and a result sent afterwards would leave unencrypted.
            socket.socket.shutdown(sock, socket.SHUT_RD)
        except OSError:
            pass  # closed or not connected: nothing waits on it

    def send(self, data: bytes) -> None:
        """Send one packet (or several, joined); see :meth:`send_parts`."""
        self.send_parts((data,))

    def send_update(self, ptype: int, handle: bytes, data: bytes) -> None:
        """WORK_DATA or WORK_WARNING, unless the server lacks them (it would answer ERROR)."""
        if self.perl_server:
            if not self._dropped_updates:
                self._dropped_updates = True
                log.warning("job server %s (the Perl Gearman::Server) has no WORK_DATA or WORK_WARNING: "
                            "partial results and warnings of jobs (pyexec: print() output) are dropped there",
                            self.address)
            return
        self.send(request(ptype, handle, data))

    def send_parts(self, parts: list[bytes] | tuple[bytes, ...]) -> None:
        """Send the parts of one packet one after the other (a large one is not joined first),
        under the connection's lock (a job's updates come from its own threads too) and marked
        in the guard's slot while they go out."""
        sock = self.sock
        if sock is None:
            raise ConnectionError(f"not connected to {self.address}")
        slot = self.slot
        with self.lock:
            if slot is not None:
                slot.writing(self.index)  # a death from here on may leave half a packet
            try:
                for part in parts:
                    sock.sendall(part)
            except BlockingIOError:  # SO_SNDTIMEO expired (see _set_reply_timeout)
                raise TimeoutError("timed out") from None
            finally:
                if slot is not None:
                    slot.written()

    def read_packets(self) -> None:
        """One recv; decoded packets are appended to ``self.packets``. Raises on EOF / bad data."""
        assert self.sock is not None
        try:
            # The decoder's buffer: a large job's data is read straight into its bytes object.
            size = self.sock.recv_into(self.decoder.get_buffer())
        except BlockingIOError:  # SO_RCVTIMEO expired (see _set_reply_timeout)
            raise TimeoutError("timed out") from None
        if not size:
            raise ConnectionError("closed by the job server")
        self.packets.extend(self.decoder.buffer_updated(size))  # type: ignore[arg-type]
        pending = getattr(self.sock, "pending", None)
        while pending is not None and pending():
            # TLS: decrypted bytes wait inside the SSL object, where select() cannot see them.
            size = self.sock.recv_into(self._recv_buffer)
            self.packets.extend(self.decoder.feed(self._recv_buffer[:size]))  # type: ignore[arg-type]

    def next_reply(self) -> Packet:
        """The answer to the grab sent last: JOB_ASSIGN*, NO_JOB or an ERROR.

        Skipped on the way: NOOPs (a wake-up that crossed the grab; Perl and Ruby do the same)
        and ERRORs that answer a packet sent before the grab (see _answers_earlier_packet).
        Any other ERROR is the grab's own answer, returned at once.
        """
        while True:
            while self.packets:
                packet = self.packets.pop(0)
                if packet.type == _NOOP:
                    continue
                if packet.type == _ERROR and _answers_earlier_packet(packet):
                    log.warning("job server %s: ERROR %s %s", self.address, packet.args[0].decode(errors="replace"),
                                packet.args[1].decode(errors="replace").strip())
                    continue
                return packet
            self.read_packets()


def _answers_earlier_packet(error: Packet) -> bool:
    """Whether an ERROR answers a packet sent before the grab rather than the grab: a WORK_*
    packet for a job the server took back (JOB_NOT_FOUND, not_worker), or a packet type the
    Perl server names as one it lacks ("CMD_work_data"; for GRAB_JOB_UNIQ, a type number it
    does not know, it names none)."""
    code, text = error.args
    return code in _JOB_ERRORS or bool(perl_server_lacks(text.decode(errors="replace")))


