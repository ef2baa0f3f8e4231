"""The Gearman worker: register functions, then ``work()`` grabs jobs and runs them.

A plain blocking loop over ordinary sockets (one per job server), using the sans-IO codec:
workers run user code that blocks anyway, and a blocking loop with the next GRAB_JOB_UNIQ
written together with each result costs one send and one receive per job.

The order of calls: ``register()`` the functions; ``work()`` connects and announces them
(RESET_ABILITIES, SET_CLIENT_ID, CAN_DO / CAN_DO_TIMEOUT), then per server sends a grab and
reads its answer: a job (run it, send its outcome with the next grab), NO_JOB (next server,
or PRE_SLEEP everywhere and wait for a NOOP) or ERROR. A server that answers GRAB_JOB_UNIQ
with ERROR (the Perl Gearman::Server has no packet type 30) is sent GRAB_JOB from then on,
across reconnects; ERRORs that answer earlier packets (a result for a job taken back) are
logged and skipped. ``stop()`` (also SIGTERM, Ctrl-C) shuts the
read side of every socket, so a worker blocked in recv wakes at once, while a job that is
running can still send its result.
"""

from __future__ import annotations

import logging
import math
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any, Callable

from . import limits
from .errors import JobFailed, WorkException, perl_server_lacks
from .protocol import REQ, RES, Decoder, PacketType, ProtocolError, request
from .buffers import BufferList
from .protocol.codec import PacketHead, encode_gathered, encode_parts
from .protocol.packets import Packet
from .sockets import tune
from .addresses import ServerSpec, parse_servers, split_address

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


class Job:
    """A job being run: ``data``, ``handle``, ``unique``, ``function``; report back with
    :meth:`send_status`, :meth:`send_data`, :meth:`send_warning`."""

    __slots__ = ("handle", "function", "unique", "data", "_conn", "reducer")

    def __init__(self, conn: _ServerConn, handle: bytes, function: bytes, unique: bytes,
                 data: bytes, reducer: bytes = b"") -> None:
        self._conn = conn
        self.handle = handle
        self.function = function.decode(errors="replace")
        self.unique = unique
        self.data = data
        self.reducer = reducer

    @property
    def server(self) -> str:
        """The job server that assigned this job (its address as the worker was given it)."""
        return self._conn.address

    def send_status(self, numerator: int, denominator: int) -> None:
        """WORK_STATUS: how far along the job is (the client sees numerator/denominator)."""
        self._conn.send(request(P.WORK_STATUS, self.handle, str(int(numerator)).encode(),
                                str(int(denominator)).encode()))

    def send_data(self, data: bytes | str) -> None:
        """WORK_DATA: a partial result for the client (dropped where the server lacks it)."""
        self._conn.send_update(P.WORK_DATA, self.handle, _to_bytes(data))

    def send_warning(self, data: bytes | str) -> None:
        """WORK_WARNING: a warning for the client (dropped where the server lacks it)."""
        self._conn.send_update(P.WORK_WARNING, self.handle, _to_bytes(data))

    def __repr__(self) -> str:
        return f"<Job {self.function} {self.handle!r}>"


def _to_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"a worker function must return bytes, str or None, not {type(value).__name__}")


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
        sock = self.sock
        if sock is None:
            raise ConnectionError(f"not connected to {self.address}")
        slot = self.slot
        with self.lock:
            if slot is not None:
                slot.writing(self.index)  # a death from here on may leave half a packet
            try:
                sock.sendall(data)
            except BlockingIOError:  # SO_SNDTIMEO expired (see _set_reply_timeout)
                raise TimeoutError("timed out") from None
            finally:
                if slot is not None:
                    slot.written()

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

    def send_parts(self, parts: list[bytes]) -> None:
        """Send the parts of one packet one after the other (a large one is not joined first)."""
        sock = self.sock
        if sock is None:
            raise ConnectionError(f"not connected to {self.address}")
        slot = self.slot
        with self.lock:
            if slot is not None:
                slot.writing(self.index)
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


class Worker:
    """A Gearman worker.

    >>> worker = Worker("127.0.0.1:4730", client_id="calc-1")   # doctest: +SKIP
    >>> @worker.function("reverse")
    ... def reverse(job):
    ...     return job.data[::-1]
    >>> worker.work()   # blocks until stop() or SIGTERM           # doctest: +SKIP
    """

    def __init__(self, servers: ServerSpec = None, *, client_id: str | None = None,
                 max_packet_size: int | str | None = None, ssl: Any = None,
                 exception_packets: bool = True, namespace: str | bytes = "", slot: Any = None) -> None:
        self.servers = parse_servers(servers)
        # slot: a guard watches this worker (it is a task process, gearnb/pyexec/isolation.py):
        # which job runs, and which connection is being written to, are kept in it.
        self.slot = slot
        # The largest job taken (gearnb.limits); a larger one is answered with a failure
        # that names the limit, not taken for a broken connection.
        max_packet_size = limits.max_packet_size(max_packet_size)
        # Put in front of every function name registered, as libgearman's
        # gearman_worker_set_namespace(); job.function is then the full name the server sent.
        self.namespace = namespace.encode() if isinstance(namespace, str) else bytes(namespace)
        self.client_id = client_id
        # A function that raises answers WORK_EXCEPTION (the traceback). gearmand 1.1 turns
        # that into a WORK_FAIL with a trailing NUL for clients that did not ask for
        # exceptions, which libgearman clients (the gearman CLI, PHP) never match: they hang.
        # exception_packets=False answers WORK_WARNING (the traceback) + WORK_FAIL instead,
        # which every client understands.
        self.exception_packets = exception_packets
        self.functions: dict[bytes, tuple[Callable[[Job], Any], int | None]] = {}
        self._conns = [_ServerConn(a, max_packet_size, ssl, index, slot) for index, a in enumerate(self.servers)]
        for conn in self._conns:
            conn.on_close = self._forget
        # A plain flag, not a threading.Event: stop() runs in signal handlers, and Event.set()
        # takes a lock that a second SIGTERM arriving inside the first handler would wait on
        # forever (the same thread holds it).
        self._stopping = False
        # stop() writes to this pair to wake a sleeping work(); made by work() and closed when
        # it returns, so Workers that come and go do not leak descriptors.
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._changed = False  # abilities changed while working: re-announce them
        # Other sockets to read while asleep, with what to call when one is readable: a task
        # process's links to its callers' value stores, whose notices free shared memory.
        self.extra_readers: Callable[[], list[tuple[Any, Callable[[], None]]]] | None = None
        self.jobs_done = 0
        self._selector: selectors.BaseSelector | None = None

    # -- registering --------------------------------------------------------------------
    def register(self, name: str, fn: Callable[[Job], Any], timeout: float | None = None) -> None:
        """Serve ``name`` with ``fn(job)``. ``timeout`` (seconds): CAN_DO_TIMEOUT, after which
        the server takes the job back and gives it to another worker."""
        self.functions[self.namespace + name.encode()] = (fn, timeout)
        self._changed = True

    def unregister(self, name: str) -> None:
        self.functions.pop(self.namespace + name.encode(), None)
        self._changed = True

    def function(self, name: str, timeout: float | None = None) -> Callable[[Callable[[Job], Any]], Callable[[Job], Any]]:
        """Decorator form of :meth:`register`."""
        def decorate(fn: Callable[[Job], Any]) -> Callable[[Job], Any]:
            self.register(name, fn, timeout)
            return fn
        return decorate

    def _hello(self, perl_server: bool = False) -> bytes:
        """What a (re)connected server is told: our id and every function we can do.

        CAN_DO_TIMEOUT is in milliseconds for gearmand and gearnb, in whole seconds for the
        Perl Gearman::Server (at least 1: it fails a job at once on a timeout of 0)."""
        out = [request(P.RESET_ABILITIES)]
        if self.client_id:
            out.append(request(P.SET_CLIENT_ID, self.client_id.encode()))
        for name, (_, timeout) in self.functions.items():
            if timeout:
                amount = max(math.ceil(timeout), 1) if perl_server else int(timeout * 1000)
                out.append(request(P.CAN_DO_TIMEOUT, name, str(amount).encode()))
            else:
                out.append(request(P.CAN_DO, name))
        return b"".join(out)

    def adopt(self, index: int, sock: socket.socket) -> None:
        """Use ``sock``, already connected, for server ``index`` (a task process's guard hands
        over the connections it kept). It is announced to again when work() starts."""
        conn = self._conns[index]
        tune(sock)
        _set_reply_timeout(sock)
        conn.adopt(sock)
        self._changed = True

    @property
    def on_connect(self) -> Callable[[int, socket.socket], None] | None:
        """Called with (server index, socket) for each connection the worker opens."""
        return self._conns[0].on_connect if self._conns else None

    @on_connect.setter
    def on_connect(self, callback: Callable[[int, socket.socket], None] | None) -> None:
        for conn in self._conns:
            conn.on_connect = callback

    # -- running ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`work` to return after the current job (safe from any thread, and from
        signal handlers). A worker waiting for a server's reply or asleep returns at once."""
        self._stopping = True
        wake = self._wake_w
        if wake is not None:
            try:
                wake.send(b"x")
            except OSError:  # full (it is non-blocking: many signals), or work() has just closed it
                pass
        # After the flag: a socket that work() connects later is seen by its next flag check.
        # Nothing is added to the per-job path, and it works from any thread.
        for conn in self._conns:
            conn.stop_reading()

    def work(self, max_jobs: int | None = None, handle_signals: bool = True) -> None:
        """Grab and run jobs until :meth:`stop`, SIGTERM, Ctrl-C or ``max_jobs`` done.

        SIGTERM and a first Ctrl-C let the current job finish, then return; a second Ctrl-C
        interrupts the job (KeyboardInterrupt), and the server gives it to another worker.
        ``handle_signals=False`` leaves SIGTERM and SIGINT to the caller (a task process).
        """
        if not self.functions:
            raise ValueError("register at least one function before calling work()")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        previous: dict[int, Any] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            def on_interrupt(signum: int, frame: Any) -> None:
                if self._stopping:
                    raise KeyboardInterrupt
                log.warning("stopping after the current job (Ctrl-C again to interrupt it)")
                self.stop()

            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda *_: self.stop())
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_interrupt)
        try:
            self._loop(max_jobs)
        finally:
            # Cleared here, not on entry: a stop() that came before work() started still counts.
            self._stopping = False
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            wake_r, wake_w = self._wake_r, self._wake_w
            self._wake_r = self._wake_w = None
            self._forget(wake_r)
            wake_r.close()
            wake_w.close()
            for conn in self._conns:
                if conn.sock is not None:
                    self._forget(conn.sock)
                    conn.sock.close()
                    conn.sock = None

    def _forget(self, sock: socket.socket) -> None:
        """Unregister ``sock`` from the sleep selector, before it is closed (see on_close)."""
        selector = self._selector
        if selector is not None:
            try:
                selector.unregister(sock)
            except (KeyError, ValueError):
                pass  # not registered (never slept since it was opened)

    def _ensure_connected(self) -> list[_ServerConn]:
        now = time.monotonic()
        if self._changed:
            self._changed = False
            for conn in self._conns:
                if conn.sock is not None:
                    try:
                        conn.send(self._hello(conn.perl_server))
                    except OSError as exc:
                        conn.drop(str(exc))
        live = []
        for conn in self._conns:
            if conn.sock is None and conn.retry_at <= now:
                conn.connect(self._hello(conn.perl_server))
            if conn.sock is not None:
                live.append(conn)
        return live

    def _loop(self, max_jobs: int | None) -> None:
        while not self._stopping:
            live = self._ensure_connected()
            did_work = False
            # Servers that answered NO_JOB this turn: when all did, the worker sleeps at once
            # (PRE_SLEEP, as libgearman) - asking again would only hear NO_JOB again, and a
            # job submitted meanwhile wakes it with a NOOP.
            empty = 0
            for conn in live:
                # With one server, keep taking jobs while it has them.
                pending = conn.grab
                while not self._stopping:
                    try:
                        conn.send(pending)
                        reply = conn.next_reply()
                    except (OSError, ProtocolError, ConnectionError) as exc:
                        conn.drop(str(exc))
                        break
                    if reply.type == _NO_JOB:
                        empty += 1
                        break
                    if reply.type == _ERROR:
                        if not self._grab_refused(conn, reply):
                            break
                        pending = conn.grab
                        continue
                    if reply.type not in _ASSIGN_TYPES:
                        log.warning("unexpected %r from %s", reply, conn.address)
                        break
                    did_work = True
                    result = self._run(conn, reply)
                    self.jobs_done += 1
                    if max_jobs is not None and self.jobs_done >= max_jobs:
                        self._stopping = True
                    if type(result) is list:  # a large result: its parts, not joined
                        try:
                            conn.send_parts(result)
                        except OSError as exc:
                            conn.drop(str(exc))
                            break
                        result = b""
                    if self._stopping or len(live) > 1:
                        # Several servers: one job from each in turn, so none is starved
                        # while another has a long queue.
                        try:
                            if result:
                                conn.send(result)
                        except OSError as exc:
                            conn.drop(str(exc))
                        break
                    # One server: the result and the next grab leave in one write.
                    pending = result + conn.grab
            if self._stopping or (did_work and empty < len(live)):
                continue
            self._sleep(live)

    def _grab_refused(self, conn: _ServerConn, error: Packet) -> bool:
        """The server answered our grab with ERROR. True: ask again (with GRAB_JOB now)."""
        code, text = (arg.decode(errors="replace") for arg in error.args)
        if conn.grab is GRAB_PLAIN:
            log.error("job server %s refused GRAB_JOB: %s %s; asking again after the next wake-up",
                      conn.address, code, text.strip())
            return False
        # A server without GRAB_JOB_UNIQ (the Perl Gearman::Server): jobs come as JOB_ASSIGN,
        # without their unique id, which no function here needs.
        log.info("job server %s does not support GRAB_JOB_UNIQ (%s: %s); asking it with GRAB_JOB",
                 conn.address, code, text.strip())
        conn.grab = GRAB_PLAIN
        if perl_server_lacks(text) is not None:
            conn.perl_server = True
            if any(timeout for _, timeout in self.functions.values()):
                try:  # announce the CAN_DO_TIMEOUTs again, in the seconds it reads
                    conn.send(self._hello(True))
                except OSError as exc:
                    conn.drop(str(exc))
                    return False
        return True

    def _sleep(self, live: list[_ServerConn]) -> None:
        """PRE_SLEEP everywhere, then wait for a NOOP (or a server to retry, or stop())."""
        # One selector for the worker's life, and each socket registered once while it lives:
        # a new selector per sleep cost epoll_create, two epoll_ctl and a close, and even
        # registering per sleep put two epoll_ctl between the NOOP and the GRAB_JOB.
        selector = self._selector
        if selector is None:
            selector = self._selector = selectors.DefaultSelector()
        assert self._wake_r is not None
        wanted: dict[Any, _ServerConn | None] = {self._wake_r: None}
        for conn in live:
            try:
                conn.send(request(P.PRE_SLEEP))
            except OSError as exc:
                conn.drop(str(exc))
                continue
            wanted[conn.sock] = conn
        # Sockets leave the selector before they are closed (_forget), so what is registered
        # is a subset of what is wanted here.
        registered = selector.get_map()
        for fileobj, conn in wanted.items():
            if fileobj not in registered:
                selector.register(fileobj, selectors.EVENT_READ, conn)
        missing = [c.retry_at for c in self._conns if c.sock is None]
        # Never sleep unbounded: a job requeued without a wake-up (a server that missed a
        # NOOP, gearmand's CAN_DO_TIMEOUT) is picked up at the next poll anyway.
        timeout = max(min(missing) - time.monotonic(), 0.01) if missing else SLEEP_POLL
        extras = self.extra_readers() if self.extra_readers is not None else []
        for fileobj, callback in extras:  # registered for this sleep only: they may close
            selector.register(fileobj, selectors.EVENT_READ, callback)
        try:
            ready = selector.select(timeout)
        finally:
            for fileobj, _ in extras:
                selector.unregister(fileobj)
        for key, _ in ready:
            conn = key.data
            if callable(conn):  # an extra reader
                conn()
                continue
            if conn is None:
                try:
                    self._wake_r.recv(4096)
                except OSError:
                    pass
                continue
            try:
                conn.read_packets()
            except (OSError, ProtocolError, ConnectionError) as exc:
                conn.drop(str(exc))
                continue
            # A NOOP: back to grabbing. Drop it so it is not taken for a reply later.
            conn.packets = [p for p in conn.packets if p.type != P.NOOP]

    def _run(self, conn: _ServerConn, packet: Packet) -> bytes | list[bytes]:
        """Run one job; return the packet that reports its outcome (a large one in parts)."""
        if type(packet) is PacketHead:  # over max_packet_size: its data was dropped on arrival
            return self._too_large(conn, packet)
        if packet.type == _JOB_ASSIGN_UNIQ:
            handle, name, unique, data = packet.args
            reducer = b""
        elif packet.type == _JOB_ASSIGN_ALL:
            handle, name, unique, reducer, data = packet.args
        else:
            handle, name, data = packet.args
            unique = reducer = b""
        entry = self.functions.get(name)
        if entry is None:
            log.error("job server %s sent a job for %r, which this worker does not serve", conn.address, name)
            return request(P.WORK_FAIL, handle)
        job = Job(conn, handle, name, unique, data, reducer)
        slot = self.slot
        if slot is not None:
            slot.running(conn.index, handle)
        outcome = self._call(conn, entry[0], job)
        if slot is not None:  # not reached if the job's function let a BaseException out
            slot.idle()
        return outcome

    def _call(self, conn: _ServerConn, fn: Callable[[Job], Any], job: Job) -> bytes | list[bytes]:
        """Run ``fn(job)``; the packet that reports its outcome (a large one in parts)."""
        handle = job.handle
        try:
            result = fn(job)
            if isinstance(result, BufferList):  # a large result in pieces (pyexec), sent unjoined
                return encode_gathered(REQ, _WORK_COMPLETE, handle, last=result)
            parts = encode_parts(REQ, _WORK_COMPLETE, handle, _to_bytes(result))
            return parts[0] if len(parts) == 1 else parts  # large: header, then the data uncopied
        except WorkException as exc:
            return self._exception(conn, handle, exc.data)
        except JobFailed:
            return request(P.WORK_FAIL, handle)
        except Exception as exc:  # noqa: BLE001 - reported to the client
            log.info("job %s %r raised %s", job.function, handle, type(exc).__name__)
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).encode(errors="replace")
            return self._failure(conn, handle, text)

    def _too_large(self, conn: _ServerConn, head: PacketHead) -> bytes:
        """Answer a job over our max_packet_size with a failure that says so (its data never
        arrived here): the caller learns at once, and no other worker of ours would take it."""
        handle = head.args[0] if head.args else b""
        name = head.args[1].decode(errors="replace") if len(head.args) > 1 else "?"
        text = limits.too_large(f"job {handle.decode(errors='replace')} ({name})", head.size,
                                conn.max_packet_size, "this worker's", limits.WORKER_SETTING)
        log.error("%s", text)
        return self._failure(conn, handle, text.encode())

    def _failure(self, conn: _ServerConn, handle: bytes, text: bytes) -> bytes:
        """The packets that fail a job with ``text``, as this server and its clients take them."""
        if self.exception_packets:
            return self._exception(conn, handle, text)
        if conn.perl_server:  # it has no WORK_WARNING
            return request(P.WORK_FAIL, handle)
        return request(P.WORK_WARNING, handle, text) + request(P.WORK_FAIL, handle)

    @staticmethod
    def _exception(conn: _ServerConn, handle: bytes, data: bytes) -> bytes:
        """WORK_EXCEPTION; on the Perl server followed by WORK_FAIL, which ends the job there
        (it only passes a WORK_EXCEPTION on, as Perl's Gearman::Worker sends both)."""
        packet = request(P.WORK_EXCEPTION, handle, data)
        return packet + request(P.WORK_FAIL, handle) if conn.perl_server else packet

    def __repr__(self) -> str:
        names = ", ".join(n.decode() for n in self.functions)
        return f"<gearnb.Worker servers={self.servers} functions=[{names}] pid={os.getpid()}>"
