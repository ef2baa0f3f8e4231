"""Recording the Gearman packets a job server exchanges: ``with gearnb.trace(server) as t:``.

The job server sees every packet between itself and each client and worker, so a recorder
there gives every arrow of a sequence diagram. The order of calls:

1. :class:`Trace` (``__enter__``) asks :func:`hub_for` for the server's :class:`TraceHub`,
   which notes the connections already open (their client id, abilities, sleep) as
   ``state`` events, then becomes ``JobServer.tracer``.
2. The server calls the hub from its own thread: :meth:`TraceHub.received` before it
   handles a packet (or admin line), :meth:`TraceHub.sent` with the bytes it queues for a
   peer, :meth:`TraceHub.closed` when a connection ends. The hub turns them into
   :class:`PacketEvent` s and hands each to every listening trace.
3. ``__exit__`` waits (briefly, see ``settle``) for the workers to go back to sleep, then
   leaves the hub; the last one to leave sets ``JobServer.tracer`` back to None, which is all
   the server checks when nobody traces.

A separate-process server streams the same events over its admin port (the ``trace``
command, :func:`stream_command`); :class:`Trace` given an address reads that stream.
Drawing lives in :mod:`.sequence`.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable
from urllib.parse import quote, unquote

from ..protocol import RES, Decoder, PacketType, ProtocolError
from ..protocol.packets import AdminLine, Packet
from ..servers import split_address
from .inprocess import job_server, on_server_thread

if TYPE_CHECKING:
    from ..server.connections import Connection
    from ..server.core import JobServer

log = logging.getLogger("gearnb.visual")
P = PacketType

# A trace keeps at most this many events: a map of 100k jobs makes ~700k packets, and a
# picture of more than a few hundred arrows is unreadable anyway. Later events are counted.
MAX_EVENTS = 200_000
# The first bytes of a job's data or result shown on an arrow, when they are printable text.
DATA_PREVIEW = 24
# Other arguments (handles, function names, uniques) are cut at this many characters.
ARG_PREVIEW = 64
# ``settle``: how long __exit__ waits at most for the workers to go back to sleep, so that a
# trace ends with their NO_JOB / PRE_SLEEP rather than in the middle of them.
DEFAULT_SETTLE = 1.0
# A streaming admin connection whose reader falls behind by this many bytes loses events
# (counted and reported in the stream) rather than growing the server's memory.
STREAM_BACKLOG = 4 * 1024 * 1024

# The arguments of each packet type, by name (../shared/reference/gearman-protocol.md, 1.2).
_SUBMIT = ("function", "unique", "data")
ARG_NAMES: dict[int, tuple[str, ...]] = {
    P.CAN_DO: ("function",), P.CANT_DO: ("function",), P.CAN_DO_TIMEOUT: ("function", "timeout"),
    P.SUBMIT_JOB: _SUBMIT, P.SUBMIT_JOB_BG: _SUBMIT, P.SUBMIT_JOB_HIGH: _SUBMIT,
    P.SUBMIT_JOB_HIGH_BG: _SUBMIT, P.SUBMIT_JOB_LOW: _SUBMIT, P.SUBMIT_JOB_LOW_BG: _SUBMIT,
    P.SUBMIT_JOB_EPOCH: ("function", "unique", "epoch", "data"),
    P.SUBMIT_JOB_SCHED: ("function", "unique", "minute", "hour", "mday", "month", "wday", "data"),
    P.SUBMIT_REDUCE_JOB: ("function", "unique", "reducer", "aggregator", "data"),
    P.SUBMIT_REDUCE_JOB_BACKGROUND: ("function", "unique", "reducer", "aggregator", "data"),
    P.JOB_CREATED: ("handle",),
    P.JOB_ASSIGN: ("handle", "function", "data"),
    P.JOB_ASSIGN_UNIQ: ("handle", "function", "unique", "data"),
    P.JOB_ASSIGN_ALL: ("handle", "function", "unique", "reducer", "data"),
    P.WORK_STATUS: ("handle", "numerator", "denominator"),
    P.WORK_COMPLETE: ("handle", "data"), P.WORK_DATA: ("handle", "data"),
    P.WORK_WARNING: ("handle", "data"), P.WORK_EXCEPTION: ("handle", "data"),
    P.WORK_FAIL: ("handle",),
    P.GET_STATUS: ("handle",),
    P.STATUS_RES: ("handle", "known", "running", "numerator", "denominator"),
    P.GET_STATUS_UNIQUE: ("unique",),
    P.STATUS_RES_UNIQUE: ("unique", "known", "running", "numerator", "denominator", "clients"),
    P.ECHO_REQ: ("data",), P.ECHO_RES: ("data",), P.ERROR: ("code", "text"),
    P.SET_CLIENT_ID: ("id",), P.OPTION_REQ: ("option",), P.OPTION_RES: ("option",),
}
# Packets only a worker sends, and packets only a client sends: how a lane gets its role.
WORKER_PACKETS = frozenset((P.CAN_DO, P.CANT_DO, P.CAN_DO_TIMEOUT, P.RESET_ABILITIES, P.PRE_SLEEP,
                            P.GRAB_JOB, P.GRAB_JOB_UNIQ, P.GRAB_JOB_ALL, P.WORK_STATUS, P.WORK_COMPLETE,
                            P.WORK_FAIL, P.WORK_EXCEPTION, P.WORK_DATA, P.WORK_WARNING))
CLIENT_PACKETS = frozenset((*(t for t in ARG_NAMES if P(t).name.startswith("SUBMIT_")),
                            P.GET_STATUS, P.GET_STATUS_UNIQUE))

IN, OUT, STATE, CLOSED = "in", "out", "state", "closed"  # PacketEvent.kind
TEXT = "text"  # PacketEvent.name of an admin text line


@dataclass(frozen=True)
class PacketEvent:
    """One thing the job server saw, in the order it saw them.

    ``kind``: ``"in"`` (a packet or admin line to the server), ``"out"`` (a packet from it),
    ``"state"`` (a connection already open when the trace began: ``args`` holds its
    abilities and whether it sleeps), ``"closed"`` (the connection ended).
    ``conn`` numbers the connection within the trace; ``fd``, ``peer`` and ``client_id``
    are the connection's at that moment. ``args`` are the key arguments as text, by name;
    a job's data is shown by size (and its start, when it is text). ``size`` is the
    packet's body in bytes; ``time`` is the server's ``time.perf_counter()`` (seconds).
    """

    seq: int
    time: float
    conn: int
    kind: str
    name: str
    args: tuple[tuple[str, str], ...] = ()
    size: int = 0
    fd: int = -1
    peer: str = "-"
    client_id: str = "-"

    def arg(self, name: str, default: str = "") -> str:
        for key, value in self.args:
            if key == name:
                return value
        return default

    @property
    def detail(self) -> str:
        """The key arguments in a few words: ``H:vm:1 1/4``, ``addition [3 B]``."""
        return describe_args(self.name, self.args)

    def to_line(self) -> str:
        """This event as one line of the ``trace`` admin stream (see :meth:`from_line`)."""
        fields = [str(self.seq), f"{self.time:.6f}", str(self.conn), self.kind, self.name, str(self.size),
                  str(self.fd), self.peer, self.client_id]
        fields += [f"{key}={value}" for key, value in self.args]
        return "E " + " ".join(quote(field, safe="=:/.-_") for field in fields)

    @classmethod
    def from_line(cls, line: str) -> PacketEvent:
        words = line.split(" ")
        if len(words) < 10 or words[0] != "E":
            raise ValueError(f"not a trace event line: {line[:80]!r}")
        seq, when, conn, kind, name, size, fd, peer, client_id = (unquote(w) for w in words[1:10])
        args = tuple(tuple(unquote(w).split("=", 1)) for w in words[10:])
        return cls(int(seq), float(when), int(conn), kind, name, args, int(size), int(fd), peer,  # type: ignore[arg-type]
                   client_id)


def _text(value: bytes, limit: int) -> str:
    out = value.decode(errors="replace")
    return out if len(out) <= limit else out[:limit - 1] + "…"


def _data(value: bytes) -> str:
    """How a job's data reads on an arrow: its size, and its start when that is text."""
    size = f"{len(value):,} B"
    head = value[:DATA_PREVIEW]
    try:
        text = head.decode()
    except UnicodeDecodeError:
        return size
    if not text or not text.isprintable():
        return size
    more = "…" if len(value) > DATA_PREVIEW else ""
    return f"{size} {text!r}{more}" if more else f"{size} {text!r}"


def key_arguments(ptype: int, args: Iterable[bytes]) -> tuple[tuple[str, str], ...]:
    """``args`` of a packet of type ``ptype`` as (name, text) pairs (see :class:`PacketEvent`)."""
    names = ARG_NAMES.get(ptype, ())
    out = []
    for name, value in zip(names, args):
        out.append((name, _data(value) if name == "data" else _text(value, ARG_PREVIEW)))
    return tuple(out)


def describe_args(name: str, args: tuple[tuple[str, str], ...]) -> str:
    """The key arguments of a packet in a few words, as an arrow's second line shows them."""
    values = dict(args)
    parts = []
    for key, value in args:
        if key in ("numerator", "denominator", "known", "running", "aggregator") or (key == "unique" and not value):
            continue
        parts.append(f"[{value}]" if key == "data" else (f"unique={value}" if key == "unique" else value))
    if "numerator" in values:  # WORK_STATUS, STATUS_RES: n/d after the handle
        flags = [flag for flag in ("known", "running") if values.get(flag) == "1"]
        parts[1:1] = flags + [f"{values['numerator']}/{values.get('denominator', '?')}"]
    if name == TEXT:
        return values.get("line", "")
    return " ".join(parts)


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
    def received(self, conn: Connection, ptype: int | None, args: Iterable[Any]) -> None:
        """A packet (``ptype``) or an admin line (``ptype`` None, ``args`` its text) arrived;
        called before the server handles it."""
        if conn in self.quiet:
            return
        if ptype is None:
            line = next(iter(args), "")
            self._emit(conn, IN, TEXT, (("line", _text(str(line).encode(), ARG_PREVIEW)),), len(str(line)))
            return
        args = tuple(args)
        self._emit(conn, IN, _name(ptype), key_arguments(ptype, args), _body_size(args))

    def received_item(self, conn: Connection, item: Packet | AdminLine) -> None:
        """:meth:`received` for what the server's Decoder gave (a packet or an admin line)."""
        if type(item) is AdminLine:
            self.received(conn, None, (item.text,))
        else:
            self.received(conn, item.type, item.args)

    def sent(self, conn: Connection, data: bytes) -> None:
        """The server queued ``data`` (whole packets, or parts of a large one) for ``conn``."""
        if conn in self.quiet:
            return
        state = self._state(conn)
        if state.decoder is None:
            state.decoder = Decoder(RES, allow_text=True, max_packet_size=self.server.max_packet_size)
        try:
            items = state.decoder.feed(data)
        except ProtocolError as exc:  # cannot happen with the server's own output; do not break it
            log.warning("trace: cannot decode what the server sent to fd %d: %s", conn.fd, exc)
            state.decoder = None
            return
        for item in items:
            if type(item) is AdminLine:
                continue  # the answer to an admin command: the command itself is the arrow
            self._emit(conn, OUT, _name(item.type), key_arguments(item.type, item.args), _body_size(item.args))

    def closed(self, conn: Connection) -> None:
        """``conn`` ended (the peer left, or the server closed it)."""
        if conn in self.quiet:
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

    def _emit(self, conn: Connection, kind: str, name: str, args: tuple[tuple[str, str], ...] = (),
              size: int = 0) -> None:
        number = self._state(conn).number
        client_id = conn.client_id
        if name == "SET_CLIENT_ID" and args:  # recorded before the server takes it: say it at once
            client_id = args[0][1].encode() or b"-"
        event = PacketEvent(next(self._seq), time.perf_counter(), number, kind, name, args, size,
                            conn.fd, conn.peer, client_id.decode(errors="replace"))
        for sink in self.sinks:
            sink(event)

    def open_connections(self, sink: Callable[[PacketEvent], None]) -> None:
        """Tell ``sink`` (before it gets anything else) about every connection already open,
        as ``state`` events."""
        sinks, self.sinks = self.sinks, (sink,)
        try:
            for conn in list(self.server.connections):
                if conn in self.quiet or conn.closed:
                    continue
                abilities = " ".join(f.name.decode(errors="replace") for f in conn.abilities)
                args = (("abilities", abilities), ("sleeping", "1" if conn.sleeping and not conn.noop_sent else "0"))
                self._emit(conn, STATE, "", args if abilities else ())
        finally:
            self.sinks = sinks

    def add(self, sink: Callable[[PacketEvent], None]) -> None:
        self.sinks = (*self.sinks, sink)

    def remove(self, sink: Callable[[PacketEvent], None]) -> None:
        self.sinks = tuple(s for s in self.sinks if s is not sink)


def _name(ptype: int) -> str:
    try:
        return P(ptype).name
    except ValueError:
        return f"TYPE_{ptype}"


def _body_size(args: tuple[Any, ...]) -> int:
    return sum(len(a) for a in args) + max(len(args) - 1, 0)


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
                on_server_thread(self.server, lambda: detach(core, sink))
                self._attached = False
        elif self._remote is not None:
            self._remote.close()
            self._remote = None


# -- the trace a notebook holds ------------------------------------------------------------
@dataclass(frozen=True)
class Lane:
    """One connection in a trace: ``role`` is ``"client"``, ``"worker"``, ``"client+worker"``,
    ``"admin"`` or ``"connection"`` (nothing telling yet)."""

    conn: int
    role: str
    client_id: str
    fd: int
    peer: str
    abilities: tuple[str, ...]
    number: int  # 1, 2, ... among the lanes of its role, in order of appearance

    @property
    def title(self) -> str:
        """``worker calc-1``, ``client 2``: the role, and the client id where one is set."""
        name = self.client_id if self.client_id not in ("", "-") else str(self.number)
        return f"{self.role} {name}"


class Trace:
    """The packets a job server exchanged while the ``with`` block ran.

    ``server``: a :class:`gearnb.server.Server` or ``JobServer`` running in this process, or
    the ``"host:port"`` of a gearnb job server in another process (which streams the trace
    over its admin port). ``admin=True`` keeps admin text commands (a live picture polls
    them) as lanes of their own. ``settle``: seconds ``__exit__`` waits at most for busy
    workers to go back to sleep (0: stop at once).

    In Jupyter the trace draws itself as a sequence diagram (SVG); elsewhere ``print(t)``
    gives the same diagram as text. ``t.events`` has the raw events, ``t.lanes`` the lanes,
    ``t.sequence(lane)`` one lane's packet names in order.
    """

    def __init__(self, server: Any, *, admin: bool = False, settle: float = DEFAULT_SETTLE) -> None:
        self.source = server
        self.admin = admin
        self.settle = settle
        self.events: list[PacketEvent] = []
        self.dropped = 0  # events beyond MAX_EVENTS (or lost by a slow stream)
        self._changed = threading.Condition()
        self._tap = PacketTap(server, self)

    # -- recording -----------------------------------------------------------------------
    def __call__(self, event: PacketEvent) -> None:  # the hub's sink (on the server's thread)
        if not self.admin and event.name == TEXT:
            return
        with self._changed:
            if len(self.events) < MAX_EVENTS:
                self.events.append(event)
            else:
                self.dropped += 1
            self._changed.notify_all()

    def lost(self, count: int) -> None:
        """``count`` events a slow stream could not deliver (see STREAM_BACKLOG)."""
        with self._changed:
            self.dropped += count

    def start(self) -> Trace:
        self._tap.start()
        return self

    def stop(self) -> None:
        if self.settle > 0:
            self.wait_for(self._workers_asleep, timeout=self.settle)
        self._tap.stop()

    def __enter__(self) -> Trace:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, predicate: Callable[[list[PacketEvent]], object], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(events)`` is true (re-checked as events arrive); False on
        timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    @staticmethod
    def _workers_asleep(events: list[PacketEvent]) -> bool:
        """Every worker that woke up during the trace has gone back to sleep (or left)."""
        awake: dict[int, bool] = {}
        for event in events:
            if event.kind == IN and event.name == "PRE_SLEEP":
                awake[event.conn] = False
            elif event.kind == IN and event.name in ("GRAB_JOB", "GRAB_JOB_UNIQ", "GRAB_JOB_ALL"):
                awake[event.conn] = True
            elif event.kind == CLOSED:
                awake.pop(event.conn, None)
        return not any(awake.values())

    # -- reading -------------------------------------------------------------------------
    @property
    def lanes(self) -> list[Lane]:
        """The connections seen, in order of first appearance."""
        info: dict[int, dict[str, Any]] = {}
        for event in list(self.events):
            lane = info.setdefault(event.conn, {"worker": False, "client": False, "admin": False,
                                                "abilities": [], "event": event})
            lane["event"] = event if event.client_id not in ("", "-") else lane["event"]
            if event.kind == STATE and event.arg("abilities"):
                lane["worker"] = True
                lane["abilities"].extend(event.arg("abilities").split())
            elif event.kind == IN:
                ptype = getattr(P, event.name, None)
                if ptype in WORKER_PACKETS:
                    lane["worker"] = True
                if ptype in CLIENT_PACKETS:
                    lane["client"] = True
                if event.name == TEXT:
                    lane["admin"] = True
                if event.name in ("CAN_DO", "CAN_DO_TIMEOUT") and event.arg("function") not in lane["abilities"]:
                    lane["abilities"].append(event.arg("function"))
        lanes = []
        per_role: dict[str, int] = {}
        for number, lane in info.items():
            role = ("client+worker" if lane["worker"] and lane["client"] else "worker" if lane["worker"]
                    else "client" if lane["client"] else "admin" if lane["admin"] else "connection")
            per_role[role] = per_role.get(role, 0) + 1
            event = lane["event"]
            lanes.append(Lane(number, role, event.client_id, event.fd, event.peer, tuple(lane["abilities"]),
                              per_role[role]))
        return lanes

    def sequence(self, lane: Lane | int, *, kinds: tuple[str, ...] = (IN, OUT)) -> list[str]:
        """The packet names on one lane in order; ``"<NAME"`` for what the server sent it,
        ``"state"`` and ``"closed"`` for those events (when ``kinds`` has them)."""
        number = lane.conn if isinstance(lane, Lane) else lane
        return [("<" if e.kind == OUT else "") + (e.name or e.kind) for e in list(self.events)
                if e.conn == number and e.kind in kinds]

    def lane(self, title: str) -> Lane:
        """The lane with that title (``"worker calc-1"``) or client id (``"calc-1"``)."""
        for lane in self.lanes:
            if title in (lane.title, lane.client_id):
                return lane
        raise KeyError(f"no lane {title!r}; lanes: {', '.join(lane.title for lane in self.lanes)}")

    # -- drawing (see .sequence) ---------------------------------------------------------
    def svg(self, **options: Any) -> str:
        from .sequence import render_svg

        return render_svg(self, **options)

    def text(self, **options: Any) -> str:
        from .sequence import render_text

        return render_text(self, **options)

    def save(self, path: str) -> None:
        """Write the diagram: SVG for ``*.svg``, text otherwise."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.svg() if path.endswith(".svg") else self.text())

    def _repr_svg_(self) -> str:
        return self.svg()

    def _repr_html_(self) -> str:
        from .svg import scrollable

        return scrollable(self.svg())

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def __repr__(self) -> str:
        return self.text()

    def __len__(self) -> int:
        return len(self.events)


def trace(server: Any, *, admin: bool = False, settle: float = DEFAULT_SETTLE) -> Trace:
    """Record the Gearman packets of a piece of code, as seen by ``server``::

        with gearnb.trace(server) as t:
            client.do("addition", msgpack.packb([2, 3]))
        t          # a sequence diagram in Jupyter; print(t) on a terminal

    See :class:`Trace` for the arguments.
    """
    return Trace(server, admin=admin, settle=settle)


# -- a separate-process gearnb server: the trace over its admin port -----------------------
TRACE_COMMAND = "trace"
STREAM_HELLO = "OK tracing"
# How long a remote trace waits for the server to answer the ``trace`` command.
STREAM_CONNECT_TIMEOUT = 10.0


class _StreamSink:
    """A hub sink writing each event as a line to an admin connection (on the server's thread)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lost = 0

    def __call__(self, event: PacketEvent) -> None:
        conn = self.conn
        transport = conn.transport
        backlog = conn.out_bytes + (transport.get_write_buffer_size() if transport is not None else 0)
        if backlog > STREAM_BACKLOG:
            self.lost += 1
            return
        if self.lost:
            conn.send(f"L {self.lost}\n".encode())
            self.lost = 0
        conn.send(event.to_line().encode() + b"\n")


def stream_command(server: JobServer, conn: Connection, words: list[str]) -> bytes:
    """The admin command ``trace``: from now on, every event of the server goes to this
    connection as a line (:meth:`PacketEvent.to_line`), until the connection closes."""
    conn.send((STREAM_HELLO + "\n").encode())  # before the first event line
    attach(server, _StreamSink(conn), quiet=conn)  # on the server's thread: this is a command
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
