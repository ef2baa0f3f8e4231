"""Recording packets at the job server, and bringing them to whoever listens.

The server calls a :class:`TraceHub` (``JobServer.tracer``, None when nobody listens) from
its own thread: :meth:`TraceHub.received` with the packets and admin lines of one read,
before it handles them (``JobServer.received``), :meth:`TraceHub.sent` with the bytes of one
write to a peer (``Connection.write_out``), :meth:`TraceHub.closed` when a connection ends
(``JobServer.connection_lost``). So a trace shows the packets of a read, then what the
server wrote when that turn of its loop ended. The hub makes :class:`~.events.PacketEvent` s
and gives each to its sinks.

A :class:`PacketTap` connects a sink (a :class:`~.trace.Trace`, a task stream's recorder):
:func:`attach` on the server's thread for a server in this process; for a gearnb server in
another process, the admin command ``trace`` (:func:`stream_command`) streams the events as
lines, which :class:`_RemoteStream` reads back. The first sink to come installs the hub, the
last to go removes it.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..addresses import split_address
from ..protocol import ADMIN_LINE, PT, RES, Decoder, ProtocolError
from ..server.workers import ASLEEP
from .events import CLOSED, IN, OUT, STATE, TEXT, PacketEvent, packet_name, raw_arguments
from .inprocess import ServerStopped, job_server, on_server_thread

if TYPE_CHECKING:
    from ..server.connections import Connection
    from ..server.core import JobServer

log = logging.getLogger("gearnb.visual")

# A streaming admin connection whose reader falls behind by this many bytes loses events
# (counted and reported in the stream) rather than growing the server's memory.
STREAM_BACKLOG = 4 * 1024 * 1024


class _ConnState:
    """What the hub keeps per connection: its number and a decoder for what it is sent."""

    __slots__ = ("number", "decoder")

    def __init__(self, number: int) -> None:
        self.number = number
        self.decoder: Decoder | None = None


class TraceHub:
    """``JobServer.tracer`` while at least one trace listens; called on the server's thread.

    The hooks in the server (see the module docstring) are the only callers of
    :meth:`received`, :meth:`sent` and :meth:`closed`.
    """

    def __init__(self, server: JobServer) -> None:
        self.server = server
        self.sinks: tuple[Callable[[PacketEvent], None], ...] = ()  # replaced, never mutated
        self.conns: dict[Connection, _ConnState] = {}
        self.quiet: set[Connection] = set()  # admin connections the trace streams to: not traced
        self._seq = itertools.count()
        self._numbers = itertools.count(1)

    # -- the server's hooks --------------------------------------------------------------
    def received(self, conn: Connection, items: Iterable[tuple[int, Any]]) -> None:
        """The packets and admin lines of one read (``(type, args)``, an admin line
        ``(ADMIN_LINE, text)``), before the server handles them."""
        if conn in self.quiet:
            return
        client_id = None
        for ptype, args in items:
            if ptype == ADMIN_LINE:
                line = str(args).encode(errors="replace")
                self._emit(conn, IN, TEXT, (line,), len(line), client_id=client_id)
                continue
            args = tuple(args)
            if ptype == PT.SET_CLIENT_ID:  # recorded before the server takes it: say it at once
                client_id = args[0] or b"-"
            self._emit(conn, IN, packet_name(ptype), raw_arguments(ptype, args), _body_size(args),
                       client_id=client_id)

    def sent(self, conn: Connection, parts: Iterable[bytes]) -> None:
        """The server writes ``parts`` (whole packets, or parts of a large one) to ``conn``."""
        if conn in self.quiet:
            return
        state = self._state(conn)
        decoder = state.decoder
        if decoder is None:
            decoder = state.decoder = Decoder(RES, allow_text=True, max_packet_size=self.server.max_packet_size,
                                              raw=True)
        for data in parts:
            try:
                items = decoder.feed(data)
            except ProtocolError as exc:  # cannot happen with the server's own output; do not break it
                log.warning("trace: cannot decode what the server sent to fd %d: %s", conn.fd, exc)
                state.decoder = None
                return
            for ptype, args in items:
                if ptype == ADMIN_LINE:
                    continue  # the answer to an admin command: the command itself is the arrow
                args = tuple(args)
                self._emit(conn, OUT, packet_name(ptype), raw_arguments(ptype, args), _body_size(args))

    def closed(self, conn: Connection) -> None:
        """``conn`` ended (the peer left, or the server closed it)."""
        if conn in self.quiet:  # a reader of the admin stream left: its _StreamSink goes too
            self.quiet.discard(conn)
            self.sinks = tuple(s for s in self.sinks if getattr(s, "conn", None) is not conn)
            if not self.sinks:
                self.server.tracer = None
            return
        if conn in self.conns:
            self._emit(conn, CLOSED, "")
            del self.conns[conn]

    # -- events --------------------------------------------------------------------------
    def _state(self, conn: Connection) -> _ConnState:
        state = self.conns.get(conn)
        if state is None:
            state = self.conns[conn] = _ConnState(next(self._numbers))
        return state

    def _emit(self, conn: Connection, kind: str, name: str, raw: tuple[bytes, ...] = (),
              size: int = 0, sinks: tuple[Callable[[PacketEvent], None], ...] | None = None,
              client_id: bytes | None = None) -> None:
        """Give every sink (or ``sinks``) the event; ``client_id``: the connection's, if it
        changes within the read being recorded."""
        number = self._state(conn).number
        if client_id is None:
            client_id = conn.client_id
        event = PacketEvent(next(self._seq), time.perf_counter(), number, kind, name, raw, size,
                            conn.fd, conn.peer, client_id.decode(errors="replace"))
        for sink in self.sinks if sinks is None else sinks:
            try:
                sink(event)
            except Exception:  # noqa: BLE001 - we run inside the server's packet handling: never break it
                log.exception("trace: a listener failed on %s; it gets no more events", name or kind)
                self.remove(sink)
                if not self.sinks:
                    self.server.tracer = None

    def open_connections(self, sink: Callable[[PacketEvent], None]) -> None:
        """Tell ``sink`` (before it gets anything else) about every connection already open,
        as ``state`` events."""
        for conn in list(self.server.connections):
            if conn in self.quiet or conn.closed:
                continue
            worker = conn.worker
            abilities = b" ".join(f.name for f in worker.functions) if worker is not None else b""
            raw = (abilities, b"1" if worker is not None and worker.state == ASLEEP else b"0")
            self._emit(conn, STATE, "", raw if abilities else (), sinks=(sink,))

    def add(self, sink: Callable[[PacketEvent], None]) -> None:
        self.sinks = (*self.sinks, sink)

    def remove(self, sink: Callable[[PacketEvent], None]) -> None:
        self.sinks = tuple(s for s in self.sinks if s is not sink)


def _body_size(args: tuple[Any, ...]) -> int:
    """A packet's body size: its arguments and the NULs between them."""
    return sum(map(len, args)) + len(args) - 1 if args else 0


def attach(server: JobServer, sink: Callable[[PacketEvent], None], *, quiet: Connection | None = None) -> None:
    """Start giving ``sink`` every event of ``server``, after the connections already open
    (the hub is made on first use). Call on the server's thread (see :mod:`.inprocess`)."""
    hub = server.tracer
    if hub is None:
        hub = TraceHub(server)
    if quiet is not None:
        hub.quiet.add(quiet)
    hub.open_connections(sink)
    hub.add(sink)
    server.tracer = hub  # from here on the server calls the hub


def detach(server: JobServer, sink: Callable[[PacketEvent], None]) -> None:
    """Stop giving ``sink`` events; the last sink to go uninstalls the hub. Call on the
    server's thread."""
    hub = server.tracer
    if hub is None:
        return
    hub.remove(sink)
    if not hub.sinks:
        server.tracer = None


class PacketTap:
    """Gives ``sink`` every event of ``server`` between :meth:`start` and :meth:`stop`.

    ``server``: a gearnb Server or JobServer in this process (the sink is called on the
    server's thread), or the "host:port" of a gearnb server in another process (the sink is
    called on a reader thread; a sink with a ``lost(count)`` method hears of events a slow
    reader missed).
    """

    def __init__(self, server: Any, sink: Callable[[PacketEvent], None]) -> None:
        self.server = server
        self.sink = sink
        self.core = job_server(server)
        self._remote: _RemoteStream | None = None
        self._attached = False
        if self.core is None and not isinstance(server, str):
            raise TypeError("tracing needs a gearnb.server.Server or JobServer running in this process, or the "
                            f"'host:port' of a gearnb job server; got {type(server).__name__}")

    def start(self) -> None:
        if self.core is not None:
            if not self._attached:
                core, sink = self.core, self.sink
                on_server_thread(self.server, lambda: attach(core, sink))
                self._attached = True
        elif self._remote is None:
            self._remote = _RemoteStream(self.server, self.sink)

    def stop(self) -> None:
        if self.core is not None:
            if self._attached:
                core, sink = self.core, self.sink
                try:
                    on_server_thread(self.server, lambda: detach(core, sink))
                except ServerStopped:
                    detach(core, sink)  # no thread runs the server any more: safe from here
                self._attached = False
        elif self._remote is not None:
            self._remote.close()
            self._remote = None


# -- a separate-process gearnb server: the events over its admin port ---------------------
TRACE_COMMAND = "trace"
STREAM_HELLO = "OK tracing"
# How long a remote trace waits for the server to answer the ``trace`` command.
STREAM_CONNECT_TIMEOUT = 10.0


class _StreamSink:
    """A hub sink writing each event as a line to an admin connection (on the server's thread).

    The lines go straight to the connection's transport, at most once per turn of the
    server's loop, not through the server's outbox: the sink is called while the outbox
    writes other connections, and stream lines are not replies to hold back.
    """

    def __init__(self, conn: Connection, call_soon: Callable[..., object] | None) -> None:
        self.conn = conn
        self.call_soon = call_soon  # the server loop's; None: write at once
        self.lines: list[bytes] = [(STREAM_HELLO + "\n").encode()]  # before the first event line
        self.pending = len(self.lines[0])
        self.lost = 0
        self._scheduled = False
        self._schedule()

    def __call__(self, event: PacketEvent) -> None:
        transport = self.conn.transport
        backlog = self.pending + (transport.get_write_buffer_size() if transport is not None else 0)
        if backlog > STREAM_BACKLOG:
            self.lost += 1
            return
        if self.lost:
            self._add(f"L {self.lost}\n".encode())
            self.lost = 0
        self._add(event.to_line().encode() + b"\n")
        self._schedule()

    def _add(self, line: bytes) -> None:
        self.lines.append(line)
        self.pending += len(line)

    def _schedule(self) -> None:
        if self._scheduled:
            return
        if self.call_soon is None:
            self.write()
        else:
            self._scheduled = True
            self.call_soon(self.write)

    def write(self) -> None:
        self._scheduled = False
        conn = self.conn
        lines, self.lines, self.pending = self.lines, [], 0
        if conn.closed or conn.transport is None:
            return
        conn.write_out()  # replies queued before the stream began go first
        conn.transport.write(b"".join(lines))


def stream_command(server: JobServer, conn: Connection, words: list[str]) -> bytes:
    """The admin command ``trace``: from now on, every event of the server goes to this
    connection as a line (:meth:`PacketEvent.to_line`), until the connection closes."""
    timers = server.timers
    sink = _StreamSink(conn, timers.call_soon if timers is not None else None)
    attach(server, sink, quiet=conn)  # on the server's thread: this is a command
    return b""


class _RemoteStream:
    """Reads a server's ``trace`` stream on a thread and feeds the events to a sink."""

    def __init__(self, address: str, sink: Callable[[PacketEvent], None]) -> None:
        host, port = split_address(address)
        self.sink = sink
        self.sock = socket.create_connection((host, port), timeout=STREAM_CONNECT_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(f"{TRACE_COMMAND}\r\n".encode())
        self.file = self.sock.makefile("rb")
        hello = self.file.readline().decode(errors="replace").strip()
        if hello != STREAM_HELLO:
            self.sock.close()
            raise RuntimeError(f"{address} cannot stream a trace (it answered {hello!r}): the trace command "
                               "needs a gearnb job server; gearmand has none. Trace a server in this process instead")
        self.sock.settimeout(None)
        self.thread = threading.Thread(target=self._read, name=f"gearnb-trace-{address}", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self.file:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if line.startswith("L "):
                    lost = getattr(self.sink, "lost", None)
                    if lost is not None:
                        lost(int(line[2:]))
                    continue
                try:
                    self.sink(PacketEvent.from_line(line))
                except ValueError as exc:
                    log.warning("trace stream: %s", exc)
        except (OSError, ValueError):
            pass  # closed by close(), or the server went away

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)
