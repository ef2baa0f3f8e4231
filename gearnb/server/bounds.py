"""What the job server may hold, and who waits or leaves when it is full.

The bounds, with the numbers the README states:

* **Memory.** ``JobServer.held`` counts the data of every large job the server keeps and the
  declared size of every large packet (``BIG_PACKET`` and up, 64 KiB) being received. Small
  jobs are not counted: their packets are never held up (counting them would cost every job
  two additions and gate nothing of theirs; measured with bench/server_cpu.py), and their
  number is gearmand's ``maxqueue``'s to bound. A large packet is read
  only while ``held`` stays within ``max_memory`` (default: half the machine's RAM); past it,
  the server stops reading from that connection until jobs end (the peer's sends block, as
  TCP does), first come first served. Two exceptions keep the server live: the reports of a
  job a worker is running (WORK_DATA, WORK_COMPLETE, ...) are always read, since they are what
  ends jobs; and a packet larger than the whole budget is read when nothing else is held.
  A packet's memory grows as its bytes arrive (gearnb.protocol.codec): a peer that declares
  a size and sends nothing makes the server hold nothing.
* **Packets.** A packet over ``max_packet_size`` is read and dropped, and answered with
  ERROR ARGUMENT_TOO_LARGE naming the limit and the setting that raises it; the connection
  stays. A worker's oversize report fails its job for the clients, with the same words.
* **Slow clients.** A client whose unread replies pass ``HIGH_WATER`` (asyncio's
  ``pause_writing``) is not read from, and neither are the workers that feed it: each can add
  at most the packet it was sending. If it then reads nothing for ``stall_timeout`` seconds,
  it is dropped, with an ERROR and a line in the log saying why.
* **Connections.** At most ``max_connections`` (default: the open-files limit less
  ``FD_RESERVE``). A connection is *unauthenticated* until it has sent one complete packet or
  admin line (with TLS, it has also finished its handshake, with a client certificate where
  the server asks for one). When the cap is reached, a new connection replaces the oldest
  unauthenticated one, or is refused with an ERROR if there is none. An unauthenticated
  connection is closed ``first_packet_timeout`` seconds after it connected; any connection
  inside a packet that sends no byte of it for ``stall_timeout`` seconds is closed (time the
  server itself stopped reading it does not count).

Order of calls: the core calls :meth:`Bounds.connection_made` / :meth:`connection_lost` for
every connection, :meth:`first_items` for a connection's first reads, the ``LARGE`` and
``OVERSIZE`` handlers (:meth:`large_packet`, :meth:`oversize`) when the decoder announces a
large packet, :meth:`job_ended` when a large job ended (its memory is free), and :meth:`hold`
when it passed a worker's report to a slow client; connections call :meth:`large_done` when
a large packet has arrived and :meth:`drained` when their replies drained; the event loop
calls :meth:`sweep` every ``SWEEP_INTERVAL`` seconds.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Sequence

from ..limits import SERVER_SETTING, said, too_large
from ..protocol import PT, PacketType
from ..protocol.codec import PacketHead

if TYPE_CHECKING:
    from .connections import Connection
    from .core import JobServer

log = logging.getLogger("gearnb.server")

SWEEP_INTERVAL = 1.0  # seconds between looks for stalled and silent connections
FIRST_PACKET_TIMEOUT = 10.0  # seconds an unauthenticated connection may stay so
STALL_TIMEOUT = 30.0  # seconds a half-sent packet, or a slow client holding workers, may not move
# File descriptors kept for what is not a connection: the listening sockets, the event loop's
# own, stdio, the persistent queue's three files, a log file, one accepted only to be refused.
FD_RESERVE = 32
ABORT_GRACE = 2.0  # seconds a dropped connection has to read the ERROR that says why
MAX_CONNECTIONS_CEILING = 1 << 20  # when the open-files limit is unlimited
MEMORY = "memory"  # the reason a connection waits while the budget is full (Connection.pause)

# A worker's reports on a job: always read when the job is the connection's own (they end jobs).
REPORTS = frozenset((PT.WORK_DATA, PT.WORK_WARNING, PT.WORK_STATUS, PT.WORK_COMPLETE, PT.WORK_FAIL,
                     PT.WORK_EXCEPTION))


def default_max_memory() -> int:
    """Half the machine's RAM (MemTotal): the server, its clients and workers share the rest."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 4 << 30


def default_max_connections() -> int:
    """The open-files limit, less what the server needs for other files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_CEILING
    return max(soft - FD_RESERVE, 1)


class Bounds:
    """The bounds of one :class:`~gearnb.server.core.JobServer` (see the module docstring)."""

    def __init__(self, server: JobServer, *, max_memory: int | None = None, max_connections: int | None = None,
                 first_packet_timeout: float = FIRST_PACKET_TIMEOUT, stall_timeout: float = STALL_TIMEOUT) -> None:
        self.server = server
        self.max_memory = default_max_memory() if max_memory is None else max_memory
        self.max_connections = default_max_connections() if max_connections is None else max_connections
        self.first_packet_timeout = first_packet_timeout
        self.stall_timeout = stall_timeout
        self.waiting: deque[tuple[Connection, int]] = deque()  # large packets waiting for memory
        self.newcomers: dict[Connection, float] = {}  # unauthenticated -> deadline, oldest first
        self.closed = Counter()  # connections closed by a bound, by why (for status and tests)
        if server.timers is not None:
            server.timers.call_later(SWEEP_INTERVAL, self.sweep)

    # -- connections -----------------------------------------------------------------------
    def connection_made(self, conn: Connection) -> None:
        if len(self.server.connections) > self.max_connections:
            oldest = next(iter(self.newcomers), None)
            if oldest is None:
                self._drop(conn, "refused", f"the job server has {self.max_connections} connections, its "
                           f"maximum (gearnb server --max-connections, or the open-files limit)", b"SERVER_ERROR")
                return
            self._drop(oldest, "evicted", f"a new connection took its place: the job server has "
                       f"{self.max_connections} connections, its maximum, and this one had sent no complete "
                       f"packet", b"SERVER_ERROR")
        self.newcomers[conn] = time.monotonic() + self.first_packet_timeout

    def first_items(self, conn: Connection, items: Sequence[tuple[object, object]]) -> None:
        """The first reads of a connection (``(handler, args)``, see JobServer.dispatch): it is
        authenticated once a whole packet or admin line came, not just a large packet's head."""
        heads = self.server.head_handlers
        for handler, _ in items:
            if handler not in heads:
                conn.newcomer = False
                self.newcomers.pop(conn, None)
                return

    def connection_lost(self, conn: Connection) -> None:
        self.newcomers.pop(conn, None)
        self.drained(conn)
        if conn.receiving:
            self.large_done(conn)

    # -- memory ----------------------------------------------------------------------------
    def _runs(self, conn: Connection, head: PacketHead) -> bool:
        """Whether ``head`` is a report on a job this connection's worker is running."""
        if head.type not in REPORTS or not head.args or conn.worker is None:
            return False
        job = self.server.jobs.get(head.args[0])
        return job is not None and job.worker is conn.worker

    def large_packet(self, conn: Connection, head: PacketHead) -> None:
        """The head of a large packet arrived: read the rest now, or once memory is free."""
        if conn.receiving:  # the one before it ended in the same read
            self.large_done(conn)
        held = self.server.held
        if held + head.size <= self.max_memory or held == 0 or self._runs(conn, head):
            self._admit(conn, head.size)
            return
        log.info("connection %s (fd %d) waits: its %s of %s would take the job server past its memory bound "
                 "of %s (%s held; --max-memory)", conn.peer, conn.fd, _name(head.type), said(head.size),
                 said(self.max_memory), said(held))
        conn.pause(MEMORY)
        self.waiting.append((conn, head.size))

    def _admit(self, conn: Connection, size: int) -> None:
        conn.receiving = size
        self.server.held += size
        if not conn.newcomer:
            # A peer that has spoken gets the declared size at once: one copy of the data. An
            # unauthenticated one's bytes are kept as they come (a quarter first).
            conn.decoder.reserve()

    def large_done(self, conn: Connection) -> None:
        """``conn``'s large packet has arrived (or the connection is gone)."""
        self.server.held -= conn.receiving
        conn.receiving = 0
        if self.waiting:
            self.admit_waiting()

    def job_ended(self, size: int) -> None:
        """A large job's data (``size`` bytes) is no longer held: let waiting packets in."""
        self.server.held -= size
        if self.waiting:
            self.admit_waiting()

    def admit_waiting(self) -> None:
        """Memory was freed: let the waiting large packets in, in order, while they fit."""
        waiting = self.waiting
        server = self.server
        while waiting:
            conn, size = waiting[0]
            if not conn.closed and server.held + size > self.max_memory and server.held != 0:
                return
            waiting.popleft()
            if not conn.closed:
                self._admit(conn, size)
                conn.unpause(MEMORY)

    def oversize(self, conn: Connection, head: PacketHead) -> None:
        """A packet over max_packet_size (dropped by the decoder): say so, and keep the connection.
        A worker's report on its own job fails that job for its clients, with the same words."""
        server = self.server
        text = too_large(f"the {_name(head.type)} packet", head.size, server.max_packet_size, "the job server's",
                         SERVER_SETTING)
        log.warning("connection %s (fd %d): %s", conn.peer, conn.fd, text)
        if self._runs(conn, head):
            job = server.jobs[head.args[0]]
            failure = text.encode()
            for client in job.clients:
                if client.exceptions:
                    client.conn.send_packet(PT.WORK_EXCEPTION, job.handle, failure)
                else:
                    client.conn.send_packet(PT.WORK_FAIL, job.handle)
            server._end_job(job)
        conn.error(b"ARGUMENT_TOO_LARGE", text.encode())

    # -- slow clients ----------------------------------------------------------------------
    def hold(self, source: Connection | None, client: Connection) -> None:
        """``client`` is slow and ``source`` (a worker) just fed it: read no more from ``source``
        until ``client`` has drained."""
        if source is None or not client.slow or source is client or client in source.pauses or source.closed:
            return
        source.pause(client)
        client.holding.append(source)

    def drained(self, client: Connection) -> None:
        """``client``'s replies drained (or it left): read from the workers it held again."""
        holding = client.holding
        if holding:
            client.holding = []
            for source in holding:
                source.unpause(client)

    # -- timers ----------------------------------------------------------------------------
    def sweep(self) -> None:
        """Close what stalled: unauthenticated connections past their deadline, half-sent
        packets, slow clients that hold workers and read nothing."""
        server = self.server
        now = time.monotonic()
        try:
            for conn, deadline in list(self.newcomers.items()):
                if deadline > now:
                    break
                self._drop(conn, "silent", f"it sent no complete packet within {self.first_packet_timeout:g} s "
                           f"of connecting", b"TIMEOUT")
            stall = self.stall_timeout
            for conn in list(server.connections):
                if conn.closed:
                    continue
                if conn.pauses or conn.decoder.idle:  # waiting for us, or between packets
                    conn.watch = None
                elif _stalled(conn, conn.decoder.position, now, stall, "watch"):
                    self._drop(conn, "stalled", f"no byte of the packet it was sending came for {stall:g} s",
                               b"TIMEOUT")
                    continue
                if conn.holding and conn.transport is not None:
                    if _stalled(conn, conn.transport.get_write_buffer_size(), now, stall, "drain"):
                        self._drop(conn, "slow", f"it read none of its replies for {stall:g} s while workers "
                                   f"waited to send it more", b"TIMEOUT")
                else:
                    conn.drain = None
        finally:
            server.outbox.flush()
            if server.timers is not None:
                server.timers.call_later(SWEEP_INTERVAL, self.sweep)

    def _drop(self, conn: Connection, kind: str, why: str, code: bytes) -> None:
        self.closed[kind] += 1
        log.warning("closing connection %s (fd %d): %s", conn.peer, conn.fd, why)
        self.newcomers.pop(conn, None)
        self.drained(conn)  # the workers it held carry on at once
        conn.error(code, f"connection closed by the job server: {why}".encode(), close=True)
        transport = conn.transport
        if transport is not None and transport.get_write_buffer_size() and self.server.timers is not None:
            # A peer that reads nothing would keep the socket open until its replies drained.
            self.server.timers.call_later(ABORT_GRACE, transport.abort)


def _stalled(conn: Connection, position: object, now: float, timeout: float, slot: str) -> bool:
    """Whether ``position`` has not changed for ``timeout`` seconds (kept in ``conn.<slot>``)."""
    seen = getattr(conn, slot)
    if seen is None or seen[0] != position:
        setattr(conn, slot, (position, now))
        return False
    return now - seen[1] >= timeout


def _name(ptype: int) -> str:
    try:
        return PacketType(ptype).name
    except ValueError:
        return f"type {ptype}"
