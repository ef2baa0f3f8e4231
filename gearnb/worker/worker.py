"""The Worker: its registered functions and its loop (grab, run, answer; sleep and wake).
See :mod:`gearnb.worker` for the order of calls."""

from __future__ import annotations

import logging
import math
import os
import selectors
import signal
import socket
import threading
import time
import traceback
from typing import Any, Callable

from .. import limits
from ..errors import JobFailed, WorkException, perl_server_lacks
from ..protocol import REQ, ProtocolError, request
from ..buffers import BufferList
from ..protocol.codec import PacketHead, encode_gathered, encode_parts
from ..protocol.packets import Packet
from ..sockets import tune
from ..addresses import ServerSpec, parse_servers


from .connection import GRAB_PLAIN, P, SLEEP_POLL, _ASSIGN_TYPES, _ERROR, _JOB_ASSIGN_ALL, _JOB_ASSIGN_UNIQ, _NO_JOB, _ServerConn, _WORK_COMPLETE, _set_reply_timeout
from .job import Job, _to_bytes  # noqa: E402

log = logging.getLogger("gearnb.worker")


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
            # A job that registered or unregistered a function (_changed): announce it first
            # (_ensure_connected), or the servers learn of it only after SLEEP_POLL.
            if self._stopping or self._changed or (did_work and empty < len(live)):
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
