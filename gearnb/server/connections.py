"""One TCP connection to the job server: reading, decoding, queued output, closing.

This module only moves bytes. Order of calls: the event loop reads into
:meth:`Connection.get_buffer` (the decoder's buffer, shared by every connection of the
server, or a large packet's own bytes), :meth:`buffer_updated` decodes what arrived and
hands the packets and admin lines to :meth:`JobServer.received`, whose handlers answer with
:meth:`send` / :meth:`send_packet`; the server's :class:`~gearnb.server.outbox.Outbox`
calls :meth:`write_out` when it is time to write. What a connection *is* to the server -
a client, a worker or both (gearmand allows that) - lives in the records it points to
(``client``, ``worker``), which the server core makes. Why the server is not reading from
it (:meth:`pause`: its own replies pile up, a slow client it feeds, the memory bound) and
what it holds of the server's memory (``receiving``) are decided in :mod:`.bounds`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..protocol import REQ, RES, Decoder, ProtocolError, pack_parts
from ..protocol.codec import BIG_PACKET, check_args
from ..protocol.packets import PT
from ..sockets import tune

if TYPE_CHECKING:
    from .clients import ClientRecord
    from .core import JobServer
    from .workers import WorkerRecord

log = logging.getLogger("gearnb.server")

# Stop reading from a peer whose replies pile up unread beyond this many bytes, and from the
# workers that feed it (bounds.py): a client that never reads cannot grow our memory.
HIGH_WATER = 4 * 1024 * 1024
SELF = "own replies"  # the reason to stop reading a peer whose replies pile up (see pause())


class Connection(asyncio.BufferedProtocol):
    __slots__ = (
        "server", "outbox", "transport", "decoder", "fd", "peer", "client_id", "client", "worker",
        "out", "out_bytes", "closed", "newcomer", "pauses", "holding", "receiving", "watch", "drain",
    )

    def __init__(self, server: JobServer) -> None:
        self.server = server
        self.outbox = server.outbox
        self.transport: asyncio.Transport | None = None
        self.decoder = Decoder(REQ, allow_text=True, max_packet_size=server.max_packet_size,
                               read_buffer=server.read_buffer, raw=True, lazy=True, table=server.dispatch)
        self.fd = -1
        self.peer = "-"
        self.client_id = b"-"
        self.client: ClientRecord | None = None  # made by the core when it first acts as a client
        self.worker: WorkerRecord | None = None  # ... and as a worker
        self.out: list[bytes] = []  # bytes queued for the peer, written by write_out()
        self.out_bytes = 0
        self.closed = False
        self.newcomer = True  # unauthenticated: no complete packet yet (bounds.py)
        self.pauses: set[object] = set()  # why we do not read from it now (empty: we do)
        self.holding: list[Connection] = []  # workers not read from until this slow client drains
        self.receiving = 0  # the declared size of the large packet arriving, counted in server.held
        self.watch: tuple[object, float] | None = None  # the sweep's stall timers (bounds.py)
        self.drain: tuple[object, float] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
            tune(sock)  # TCP_NODELAY, and keepalive so a vanished worker's job is requeued
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = peer[0] if isinstance(peer, tuple) else str(peer)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.server.connection_made(self)

    # asyncio.BufferedProtocol: reads go into the decoder's buffer; the last argument of a
    # large packet (a job's data, a result) is read straight into its final bytes object.
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        try:
            items = self.decoder.buffer_updated(nbytes)
        except ProtocolError as exc:
            self._refuse(exc)
            return
        except MemoryError:
            self._out_of_memory()
            return
        if items:
            self.server.received(self, items)
            if self.receiving and not self.decoder.receiving_large:
                self.server.bounds.large_done(self)

    def data_received(self, data: bytes) -> None:
        """For transports that hand over bytes instead of reading into :meth:`get_buffer`:
        the same path, through the decoder's buffer (a copy these transports made anyway)."""
        view = memoryview(data)
        while view and not self.closed and not (self.transport is not None and self.transport.is_closing()):
            buffer = self.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            self.buffer_updated(size)
            view = view[size:]

    def _out_of_memory(self) -> None:
        # The process could not make room for a packet (an address-space limit): this peer's
        # packet is lost, the server and everyone else carry on.
        self.protocol_error(ProtocolError("the job server ran out of memory receiving this packet; try again "
                                          "later, or give the server more memory", "SERVER_ERROR"))
        self.outbox.flush()

    def _refuse(self, exc: ProtocolError) -> None:
        # A peer that sends garbage loses its connection (after an ERROR saying why), as with
        # gearmand; packets before the bad bytes in the same read are dropped with it.
        self.protocol_error(exc)
        self.outbox.flush()

    def eof_received(self) -> bool | None:
        try:
            self.decoder.close()
        except ProtocolError as exc:
            log.info("connection %s (fd %d): %s", self.peer, self.fd, exc)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.out.clear()
        self.out_bytes = 0
        self.outbox.forget(self)
        self.server.connection_lost(self)
        self.outbox.flush()

    def pause_writing(self) -> None:
        # Our replies to this peer are piling up: stop reading its requests until it drains
        # (and, bounds.py, the workers that feed it).
        self.pause(SELF)

    def resume_writing(self) -> None:
        self.unpause(SELF)
        self.server.bounds.drained(self)

    @property
    def slow(self) -> bool:
        """Its replies pile up unread (past HIGH_WATER): workers feeding it are held."""
        return SELF in self.pauses

    def pause(self, reason: object) -> None:
        """Stop reading from this peer for ``reason`` (until :meth:`unpause` of every reason)."""
        if not self.pauses and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.pauses.add(reason)

    def unpause(self, reason: object) -> None:
        pauses = self.pauses
        if reason in pauses:
            pauses.discard(reason)
            if not pauses and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # -- output -------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue bytes for this peer; the outbox writes them (see :mod:`.outbox`)."""
        if self.closed:
            return
        out = self.out
        if not out:
            self.outbox.dirty.append(self)
        out.append(data)
        self.out_bytes += len(data)

    def send_packet(self, ptype: int, *args: bytes) -> None:
        """Queue one packet, its arguments checked (a large last one is not copied)."""
        check_args(ptype, args)
        for part in pack_parts(RES, ptype, args):
            self.send(part)

    def write_out(self) -> None:
        """Write what is queued, in one write call."""
        out = self.out
        if out and self.transport is not None and not self.closed:
            if self.server.tracer is not None:  # gearnb.visual.trace records what leaves
                self.server.tracer.sent(self, out)
            if len(out) == 1:
                self.transport.write(out[0])
            elif self.out_bytes >= BIG_PACKET and any(len(part) >= BIG_PACKET for part in out):
                self.transport.writelines(out)  # large parts are not joined (copied) first
            else:
                self.transport.write(b"".join(out))
        out.clear()
        self.out_bytes = 0

    def error(self, code: bytes, text: bytes, close: bool = False) -> None:
        self.send_packet(PT.ERROR, code, text)
        if close:
            self.close()

    def protocol_error(self, exc: ProtocolError) -> None:
        log.info("closing connection %s (fd %d): %s", self.peer, self.fd, exc)
        self.error(exc.code.encode(), str(exc).encode(), close=True)

    def close(self) -> None:
        """Write what is queued, then close."""
        if self.transport is not None and not self.closed:
            self.write_out()
            self.closed = True
            self.transport.close()

    def __repr__(self) -> str:
        return f"<Connection fd={self.fd} {self.peer}>"
