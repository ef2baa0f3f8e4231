"""One TCP connection to the job server: reading, decoding, batched writing, closing.

A connection may act as client, worker and admin at once (gearmand allows that). What it
*does* with packets lives in :mod:`gearnb.server.core`; this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, Sequence

from ..sockets import tune
from ..protocol import REQ, RES, Decoder, ProtocolError, response
from ..protocol.codec import BIG_PACKET, encode_parts
from ..protocol.packets import HEADER_SIZE, AdminLine, PacketType

if TYPE_CHECKING:
    from .core import JobServer
    from .functions import Function
    from .jobs import Job

log = logging.getLogger("gearnb.server")
_unpack_header = struct.Struct(">4sII").unpack_from

# Stop reading from a peer whose replies pile up unread beyond this many bytes: a client
# that submits without ever reading cannot grow our memory without bound.
HIGH_WATER = 4 * 1024 * 1024


class Connection(asyncio.BufferedProtocol):
    __slots__ = (
        "server", "transport", "decoder", "fd", "peer", "client_id", "exceptions",
        "abilities", "timeouts", "sleeping", "noop_sent", "woken_for", "client_jobs",
        "worker_jobs", "_out", "out_bytes", "held_turns", "closed", "decoder_empty",
        "max_packet_size",
    )

    def __init__(self, server: JobServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.decoder = Decoder(REQ, allow_text=True, max_packet_size=server.max_packet_size)
        self.decoder_empty = True  # the decoder holds no bytes: whole packets skip it
        self.max_packet_size = server.max_packet_size
        self.fd = -1
        self.peer = "-"
        self.client_id = b"-"
        self.exceptions = server.exceptions_default  # OPTION_REQ "exceptions"
        self.abilities: dict[Function, None] = {}  # ordered set, in CAN_DO order
        self.timeouts: dict[bytes, int] = {}  # function name -> CAN_DO_TIMEOUT milliseconds
        self.sleeping = False
        self.noop_sent = False
        self.woken_for: Function | None = None
        self.client_jobs: dict[Job, None] = {}  # foreground jobs this client waits on
        self.worker_jobs: dict[Job, None] = {}  # jobs this worker is running
        self._out: list[bytes] = []
        self.out_bytes = 0  # bytes in _out
        self.held_turns = 0  # turns of the loop _out has been held back (JobServer._scheduled_flush)
        self.closed = False

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

    # asyncio.BufferedProtocol: the last argument of a large packet (a job's data, a result)
    # is read straight into its final bytes object, through the Decoder. Between packets the
    # loop reads into the server's one read buffer (this loop runs one read at a time), and
    # the bytes go to data_received: two Python calls less per read than via the Decoder.
    def get_buffer(self, sizehint: int) -> memoryview:
        if self.decoder_empty:
            return self.server.read_buffer
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self.decoder_empty:  # unchanged since get_buffer: the loop calls one after the other
            self.data_received(self.server.read_buffer[:nbytes].tobytes())
            return
        if not self.decoder.reading_large:
            self.data_received(self.decoder.read_bytes(nbytes))
            return
        try:
            items = self.decoder.buffer_updated(nbytes)
        except ProtocolError as exc:
            self.protocol_error(exc)
            self.server.flush()
            return
        self.decoder_empty = self.decoder.idle
        self._handle_items(items)

    def data_received(self, data: bytes) -> None:
        if self.decoder_empty and type(data) is bytes:
            # The common case - whole binary packets and nothing held over - is parsed here
            # without building Packet objects; anything else goes to the Decoder.
            data = self._handle_whole_packets(data)
            if not data:
                self.server.flush_soon()
                return
        server = self.server
        decoder = self.decoder
        try:
            items = decoder.feed(data)
        except ProtocolError as exc:
            # Handle what came before the bad bytes? The decoder drops the whole chunk; a
            # peer that sends garbage loses its connection, as with gearmand.
            self.protocol_error(exc)
            server.flush()
            return
        self.decoder_empty = decoder.idle
        self._handle_items(items)

    def _handle_items(self, items: list) -> None:
        server = self.server
        handlers = server.handlers
        for item in items:
            if self.closed:
                break
            if server.tracer is not None:  # gearnb.visual.trace records it
                server.tracer.received_item(self, item)
            if type(item) is AdminLine:
                server.admin.handle_line(self, item.text)
                continue
            handler = handlers.get(item.type)
            if handler is None:
                # A well-formed packet we do not take (ALL_YOURS, SUBMIT_JOB_SCHED, a response
                # type): gearmand answers ERROR and keeps the connection open.
                self.error(b"INVALID_COMMAND", b"Command not expected")
                continue
            try:
                handler(self, item.args)
            except ProtocolError as exc:
                self.protocol_error(exc)
                break
        server.flush_soon()

    def _handle_whole_packets(self, data: bytes) -> bytes:
        """Run the handlers of the complete, well-formed binary packets at the start of
        ``data``; return what is left (a text line, a partial or a bad packet) for the
        Decoder, which also words any error."""
        dispatch = self.server.dispatch
        max_size = self.max_packet_size
        pos = 0
        n = len(data)
        while n - pos >= HEADER_SIZE and data[pos] == 0 and not self.closed:
            magic, ptype, size = _unpack_header(data, pos)
            entry = dispatch.get(ptype)
            end = pos + HEADER_SIZE + size
            if magic != REQ or entry is None or size > max_size or end > n:
                break
            count, handler = entry
            if count == 1:
                args: Sequence[bytes] = (data[pos + HEADER_SIZE:end],)
            elif count == 0:
                if size:
                    break
                args = ()
            else:
                args = data[pos + HEADER_SIZE:end].split(b"\0", count - 1)
                if len(args) != count:
                    break
            pos = end
            if self.server.tracer is not None:  # gearnb.visual.trace records it
                self.server.tracer.received(self, ptype, args)
            try:
                handler(self, args)
            except ProtocolError as exc:
                self.protocol_error(exc)
                return b""
            if self.closed:
                return b""
        return data[pos:] if pos else data

    def eof_received(self) -> bool | None:
        try:
            self.decoder.close()
        except ProtocolError as exc:
            log.info("connection %s (fd %d): %s", self.peer, self.fd, exc)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server.tracer is not None:  # gearnb.visual.trace records it
            self.server.tracer.closed(self)
        self.closed = True
        self._out.clear()
        self.server.connection_lost(self)
        self.server.flush()

    def pause_writing(self) -> None:
        # Our replies to this peer are piling up: stop reading its requests until it drains.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- output -------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue bytes for this peer; :meth:`JobServer.flush` writes them in one call."""
        if self.closed:
            return
        if self.server.tracer is not None:  # gearnb.visual.trace records it
            self.server.tracer.sent(self, data)
        out = self._out
        if not out:
            self.server.dirty.append(self)
        out.append(data)
        self.out_bytes += len(data)

    def send_packet(self, ptype: int, *args: bytes) -> None:
        if args and len(args[-1]) >= BIG_PACKET:
            # Header and leading arguments, then the data itself: not copied into one packet.
            for part in encode_parts(RES, ptype, *args):
                self.send(part)
            return
        self.send(response(ptype, *args))

    def flush(self) -> None:
        out = self._out
        if out and self.transport is not None and not self.closed:
            if len(out) == 1:
                self.transport.write(out[0])
            elif self.out_bytes >= BIG_PACKET and any(len(part) >= BIG_PACKET for part in out):
                self.transport.writelines(out)  # large parts are not joined (copied) first
            else:
                self.transport.write(b"".join(out))
        out.clear()
        self.out_bytes = 0
        self.held_turns = 0

    def error(self, code: bytes, text: bytes, close: bool = False) -> None:
        self.send_packet(PacketType.ERROR, code, text)
        if close:
            self.close()

    def protocol_error(self, exc: ProtocolError) -> None:
        log.info("closing connection %s (fd %d): %s", self.peer, self.fd, exc)
        self.error(exc.code.encode(), str(exc).encode(), close=True)

    def close(self) -> None:
        """Write what is queued, then close."""
        if self.transport is not None and not self.closed:
            self.flush()
            self.closed = True
            self.transport.close()
