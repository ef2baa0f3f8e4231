"""Sans-IO Gearman codec: bytes in, packet objects out; packet objects in, bytes out.

No sockets here (the h11 style): the server, client and worker feed whatever bytes they
read into a :class:`Decoder` and write whatever :func:`encode` returns.

A large packet (:class:`_BigPacket`) is announced by its head - type, leading arguments,
declared size (:class:`PacketHead`) - before its last argument arrives: a packet over the
decoder's ``max_packet_size`` is read and dropped, its head handed out as ``OVERSIZE`` (the
connection lives on and can say why); with ``lazy=True`` (the job server) every large
packet's head is handed out as ``LARGE``, and its bytes are kept as they arrive until a share
of it has come or the owner calls :meth:`Decoder.reserve`: a peer that only declares a size
makes nothing be reserved.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from ..buffers import BufferList, join_bytes, nbytes, new_bytes
from .packets import (
    ADMIN_LINE,
    ARG_COUNT,
    DEFAULT_MAX_PACKET_SIZE,
    HEADER,
    HEADER_SIZE,
    REQ,
    RES,
    AdminLine,
    Packet,
    PacketType,
)

_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_new_tuple = tuple.__new__  # Packet(...) without the Python-level namedtuple __new__

# A text (admin) command is one short line; gearmand reads them into a small buffer too.
MAX_ADMIN_LINE = 8192
RECV_BUFFER = 256 * 1024  # Decoder.get_buffer() outside large packets
# Packets with a body of this size or more are encoded with one copy of their data (not two),
# and decoded by keeping the received pieces and joining them once at the end (not by
# appending every read to a buffer and slicing the packet out of it).
BIG_PACKET = 64 * 1024
# The leading arguments of a packet (function names up to 512 bytes as in gearmand, uniques and
# handles up to 64, a reducer, an epoch time) fit in this; a large packet whose leading
# arguments run past it is not Gearman.
MAX_LEADING = 4096
# A lazy decoder reserves a large packet's final object once this share of its last argument
# has arrived (1/4: an address space at most 4 times what a peer really sent), or when told.
LAZY_RESERVE_SHARE = 4
# Until then the bytes go into chunks that grow from RECV_BUFFER to this, read into directly.
LAZY_CHUNK_MAX = 16 * 1024 * 1024
# What a raw Decoder hands out for the head of a large packet: (LARGE, PacketHead) from a lazy
# decoder; (OVERSIZE, PacketHead) for a packet over max_packet_size, whose body is dropped.
LARGE = -2
OVERSIZE = -3

# The default table of a Decoder: every packet type (and ADMIN_LINE, LARGE, OVERSIZE) -> (its
# argument count, itself).
TYPES: dict[int, tuple[int, Any]] = {ptype: (count, ptype) for ptype, count in ARG_COUNT.items()}
TYPES[ADMIN_LINE] = (0, ADMIN_LINE)
TYPES[LARGE] = (0, LARGE)
TYPES[OVERSIZE] = (0, OVERSIZE)


class PacketHead(NamedTuple):
    """The head of a large packet, known before its last argument arrives: its type, its leading
    arguments (a job handle, a function name and unique) and its declared body size.
    ``oversize``: over the decoder's max_packet_size, so its body is read and dropped."""

    type: int
    args: tuple[bytes, ...]
    size: int
    oversize: bool = False


class ProtocolError(Exception):
    """The byte stream is not valid Gearman: wrong magic, unknown type, oversize or truncated.

    ``code`` is the gearmand ERROR code string to answer with (``INVALID_MAGIC``, ...).
    """

    def __init__(self, message: str, code: str = "INVALID_COMMAND") -> None:
        super().__init__(message)
        self.code = code


def check_args(ptype: int, args: tuple[bytes, ...]) -> None:
    """Raise the ProtocolError that says why ``args`` do not fit ``ptype`` (its argument
    count; no NUL but in the last argument); return if they fit."""
    expected = ARG_COUNT.get(ptype)
    if expected is None:
        raise ProtocolError(f"unknown packet type {ptype}")
    if len(args) != expected:
        raise ProtocolError(f"{PacketType(ptype).name} takes {expected} arguments, got {len(args)}")
    for arg in args[:-1]:
        if b"\0" in arg:
            raise ProtocolError(f"{PacketType(ptype).name}: only the last argument may contain NUL")


def pack(magic: bytes, ptype: int, args: tuple[bytes, ...] | list[bytes]) -> bytes:
    """The bytes of one packet whose ``args`` are known to fit ``ptype`` (see
    :func:`check_args`): for a sender that made the arguments itself, such as the job
    server's replies. :func:`encode` is this with the checks."""
    if args and len(args[-1]) >= BIG_PACKET:
        return _encode_big(magic, ptype, args)
    body = b"\0".join(args)
    return _pack_header(magic, ptype, len(body)) + body


def encode(magic: bytes, ptype: int, *args: bytes) -> bytes:
    """Encode one packet; ProtocolError if ``args`` do not fit ``ptype``."""
    expected = ARG_COUNT.get(ptype)
    if expected is None or len(args) != expected:
        check_args(ptype, args)
    if expected > 1:
        for arg in args[:-1]:
            if b"\0" in arg:
                check_args(ptype, args)
    return pack(magic, ptype, args)


# Packets sent to the job server (magic ``\0REQ``) and by it (``\0RES``).
request = functools.partial(encode, REQ)
response = functools.partial(encode, RES)


def _encode_big(magic: bytes, ptype: int, args: tuple[bytes, ...] | list[bytes]) -> bytes:
    """A packet with a large last argument, built with one copy of it."""
    size = len(args) - 1
    for arg in args:
        size += len(arg)
    parts = [_pack_header(magic, ptype, size) + args[0]]
    for arg in args[1:]:
        parts.append(b"\0")
        parts.append(arg)
    return join_bytes(parts)


def pack_parts(magic: bytes, ptype: int, args: tuple[bytes, ...] | list[bytes]) -> list[bytes]:
    """:func:`pack` as pieces to write one after the other (``transport.writelines``,
    ``socket.sendmsg``): for a large last argument, the header and leading arguments, then
    the last argument itself, not copied; otherwise the whole packet in one piece."""
    if not args or len(args[-1]) < BIG_PACKET:
        return [pack(magic, ptype, args)]
    last = args[-1]
    head = pack(magic, ptype, (*args[:-1], b""))
    size = len(head) - HEADER_SIZE + len(last)
    return [_pack_header(magic, ptype, size) + head[HEADER_SIZE:], last]


def encode_parts(magic: bytes, ptype: int, *args: bytes) -> list[bytes]:
    """:func:`encode` as pieces (see :func:`pack_parts`)."""
    check_args(ptype, args)
    return pack_parts(magic, ptype, args)


def encode_gathered(magic: bytes, ptype: int, *args: bytes, last: BufferList) -> list[bytes | memoryview]:
    """:func:`encode_parts` for a last argument given as a :class:`BufferList`: the header and
    leading arguments in one piece, then the buffers of ``last``, not copied."""
    check_args(ptype, (*args, b""))
    head = pack(magic, ptype, (*args, b""))
    size = len(head) - HEADER_SIZE + last.nbytes
    return [_pack_header(magic, ptype, size) + head[HEADER_SIZE:], *last]


def encode_packet(packet: Packet) -> bytes:
    return encode(packet.magic, packet.type, *packet.args)


def split_args(ptype: int, body: bytes) -> tuple[bytes, ...]:
    """Split a packet body into its arguments; the last argument keeps any NULs."""
    count = ARG_COUNT[ptype]
    if count == 0:
        if body:
            raise ProtocolError(f"{PacketType(ptype).name} carries no data, got {len(body)} bytes")
        return ()
    if count == 1:
        return (body,)
    parts = body.split(b"\0", count - 1)
    if len(parts) != count:
        raise ProtocolError(
            f"{PacketType(ptype).name} needs {count} arguments, got {len(parts)}"
        )
    return tuple(parts)


class Decoder:
    """Incremental decoder for one direction of one connection.

    ``expect`` is the magic the peer must send: ``REQ`` on the server side, ``RES`` on the
    client and worker side. ``allow_text`` lets lines of the admin protocol through (the server
    side: gearmand tells them apart by a first byte other than NUL).

    :meth:`feed` returns the complete packets and admin lines decoded so far; it raises
    :class:`ProtocolError` on bad input, after which the decoder must not be used again.
    A packet over ``max_packet_size`` is not an error: its body is read and dropped, and its
    :class:`PacketHead` handed out (``oversize=True``) once its leading arguments are known.
    ``lazy``: also hand out the head of every large packet, and keep its bytes as they arrive
    (no final object of the declared size) until a quarter of it has come or :meth:`reserve`.

    Readers that read into the decoder (:meth:`get_buffer`, then :meth:`buffer_updated`) may
    share one ``read_buffer`` among many decoders, as a job server with thousands of
    connections does: the decoder copies out what it keeps before ``buffer_updated`` returns.

    With ``raw=True`` the decoder hands out ``(type, args)`` pairs instead of :class:`Packet`
    objects (``args`` a sequence of bytes; an admin line is ``(ADMIN_LINE, text)``): the form
    for code that reads every packet of a busy connection (the job server, the client, the
    worker), where making a namedtuple per packet costs more than deciding what to do with it.
    A raw decoder may also be given a ``table``: packet type (and ADMIN_LINE, LARGE, OVERSIZE)
    -> (argument count, what to hand out in place of the type), such as the handler of each
    type - the job server's dispatch, done with the one lookup the decoder makes per packet
    anyway.
    """

    __slots__ = ("_buf", "expect", "allow_text", "max_packet_size", "_failed", "_big", "_scratch",
                 "_into_big", "raw", "lazy", "_table")

    def __init__(
        self,
        expect: bytes = RES,
        *,
        allow_text: bool = False,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        read_buffer: memoryview | None = None,
        raw: bool = False,
        lazy: bool = False,
        table: dict[int, tuple[int, Any]] | None = None,
    ) -> None:
        if expect not in (REQ, RES):
            raise ValueError("expect must be REQ or RES")
        if table is not None and not raw:
            raise ValueError("a table is for a raw decoder")
        self.raw = raw
        self.lazy = lazy
        self._table = TYPES if table is None else table
        self._buf = bytearray()
        self.expect = expect
        self.allow_text = allow_text
        self.max_packet_size = max_packet_size
        self._failed = False
        self._big: _BigPacket | None = None  # a large packet being received
        self._scratch = read_buffer  # get_buffer()'s buffer for everything else (made on first use)
        self._into_big = False  # the last get_buffer() was a view into the large packet

    @property
    def idle(self) -> bool:
        """Nothing held over from earlier input: the next bytes start a new packet. (Not the
        same as ``buffered == 0``: a large packet whose header came alone holds no bytes yet.)"""
        return not self._buf and self._big is None

    @property
    def buffered(self) -> int:
        """Bytes received and kept, not yet decoded (a dropped oversize body is not kept)."""
        big = self._big
        return len(self._buf) + (0 if big is None else big.kept)

    @property
    def position(self) -> tuple[int, int]:
        """Changes whenever bytes arrive inside a packet: for a reader's stall timer, which must
        not cost the decoder anything per read."""
        big = self._big
        return len(self._buf), (-1 if big is None else big.remaining)

    @property
    def receiving_large(self) -> bool:
        """A large packet is arriving (its head was seen, its end not yet)."""
        return self._big is not None

    def reserve(self) -> None:
        """Make the large packet that is arriving read straight into its final object from now
        on (a lazy decoder's owner, once it trusts the peer with the declared size)."""
        big = self._big
        if big is not None:
            big.want_reserve = True
            big.reserve()

    def feed(self, data: bytes) -> list[Any]:
        """Decode ``data`` after what came before it: the complete packets (and admin lines)."""
        if self._failed:
            raise ProtocolError("decoder already failed")
        if self._big is not None:
            return self._feed_big(data)
        buf = self._buf
        # Decode straight from ``data`` when nothing is left over from earlier reads (the
        # usual case): bytes slices are the packet bodies, with no copy into the buffer.
        if buf:
            buf += data
            src: bytes | bytearray = buf
        elif type(data) is bytes:
            src = data
        else:
            src = bytes(data)
        out: list[tuple[int, Any]] = []
        append = out.append
        expect = self.expect
        max_size = self.max_packet_size
        table = self._table
        copy = src is buf  # bodies sliced from the bytearray must become bytes
        pos = 0
        n = len(src)
        try:
            while pos < n:
                if src[pos] != 0:
                    if not self.allow_text:
                        raise ProtocolError("expected a binary packet", "INVALID_MAGIC")
                    end = src.find(b"\n", pos, pos + MAX_ADMIN_LINE + 1)
                    if end < 0:
                        if n - pos > MAX_ADMIN_LINE:
                            raise ProtocolError("admin line too long", "INVALID_COMMAND")
                        break
                    line = bytes(src[pos:end])
                    pos = end + 1
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    append((table[ADMIN_LINE][1], line.decode("utf-8", "replace")))
                    continue
                if n - pos < HEADER_SIZE:
                    # Check what we have of the magic early: garbage is refused before
                    # a full header arrives.
                    if bytes(src[pos:min(n, pos + 4)]) != expect[: min(4, n - pos)]:
                        raise ProtocolError("bad magic", "INVALID_MAGIC")
                    break
                magic, ptype, size = _unpack_header(src, pos)
                if magic != expect:
                    raise ProtocolError(f"bad magic {magic!r}", "INVALID_MAGIC")
                entry = table.get(ptype)
                if entry is None:
                    raise ProtocolError(f"unknown packet type {ptype}", "INVALID_COMMAND")
                count, target = entry
                end = pos + HEADER_SIZE + size
                if end > n or size > max_size:
                    if size < BIG_PACKET and size <= max_size:
                        break  # a small packet, not all here yet: kept in the buffer
                    # A large packet, or one over the limit: its head is handed out once its
                    # leading arguments are known; its last argument is kept (or dropped) as it
                    # arrives, never copied out of a joined buffer.
                    start = pos + HEADER_SIZE
                    stop = min(end, n)
                    big = _BigPacket(ptype, count, size, size > max_size, self.lazy)
                    big.add(bytes(src[start:stop]) if copy else src, 0 if copy else start, stop - start)
                    if big.notice is not None:
                        append(self._notice(big))
                    pos = stop
                    if big.remaining:
                        self._big = big
                        break
                    continue  # an oversize packet that came whole: dropped, its head handed out
                body = bytes(src[pos + HEADER_SIZE:end]) if copy else src[pos + HEADER_SIZE:end]
                pos = end
                if count == 1:
                    args: Any = (body,)
                elif count == 0:
                    if body:
                        split_args(ptype, body)  # raises
                    args = ()
                else:
                    args = body.split(b"\0", count - 1)
                    if len(args) != count:
                        split_args(ptype, body)  # raises
                append((target, args))
        except ProtocolError:
            self._failed = True
            buf.clear()
            raise
        if copy:
            if pos:
                del buf[:pos]
        elif pos < n:
            buf += src[pos:] if pos else src
        return out if self.raw else self._packets(out)

    def _notice(self, big: _BigPacket) -> tuple[Any, PacketHead]:
        """The head of a large packet, handed out as the table says (LARGE or OVERSIZE)."""
        kind, head = big.take_notice()
        return self._table[kind][1], head

    def _packets(self, pairs: list[tuple[int, Any]]) -> list[Packet | AdminLine]:
        """``(type, args)`` pairs as :class:`Packet` and :class:`AdminLine` objects."""
        expect = self.expect
        return [AdminLine(args) if ptype == ADMIN_LINE else args if ptype < ADMIN_LINE
                else _new_tuple(Packet, (expect, ptype, tuple(args))) for ptype, args in pairs]

    # -- reading straight into place (asyncio.BufferedProtocol, socket.recv_into) ----------
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where to read the next bytes into; then call :meth:`buffer_updated`.

        While the last argument of a large packet is arriving, this is the rest of that
        argument's final bytes object (or, lazily, of the chunk that holds its next bytes), so
        the kernel copies the data straight into place (one read may then take megabytes);
        otherwise a reusable buffer of ``RECV_BUFFER`` bytes (for a dropped body, no further
        than its end).
        """
        if self._failed:
            raise ProtocolError("decoder already failed")
        scratch = self._scratch
        if scratch is None:
            scratch = self._scratch = memoryview(bytearray(RECV_BUFFER))
        big = self._big
        if big is not None and big.last_size >= 0:
            self._into_big = True
            target = big.target()
            if target is not None:
                return target
            return scratch[:big.remaining] if big.remaining < len(scratch) else scratch
        self._into_big = False
        return scratch

    def buffer_updated(self, nbytes: int) -> list[Any]:
        """``nbytes`` were read into the buffer :meth:`get_buffer` returned: decode them."""
        if not self._into_big:
            assert self._scratch is not None
            return self.feed(self._scratch[:nbytes])
        self._into_big = False
        big = self._big
        assert big is not None and nbytes <= big.remaining
        big.arrived(nbytes)
        if big.remaining:
            return []
        return self._feed_big(b"")  # complete: hand it out

    def _feed_big(self, data: bytes) -> list[Any]:
        """Take the next piece of a large packet; decode what follows it as usual."""
        big = self._big
        assert big is not None
        need = big.remaining
        out: list[Any] = []
        try:
            big.add(data, 0, min(len(data), need))
        except ProtocolError:
            self._failed = True
            raise
        if big.notice is not None:
            out.append(self._notice(big))
        if len(data) < need:
            return out if self.raw else self._packets(out)
        self._big = None
        if not big.skip:
            try:
                args = big.args()
            except ProtocolError:
                self._failed = True
                self._buf.clear()
                raise
            out.append((self._table[big.ptype][1], args))
        out = out if self.raw else self._packets(out)
        if len(data) == need:
            return out
        return [*out, *self.feed(data[need:])]

    def close(self) -> None:
        """Call at end of stream: raises :class:`ProtocolError` if a packet was cut off."""
        if self._big is not None and not self._failed:
            left = len(self._buf) + self._big.size - self._big.remaining
            self._big = None
            self._buf.clear()
            raise ProtocolError(f"stream closed inside a packet ({left} bytes left over)")
        if self._buf and not self._failed:
            left = len(self._buf)
            self._buf.clear()
            raise ProtocolError(f"stream closed inside a packet ({left} bytes left over)")


class _BigPacket:
    """A large packet being received (or an oversize one being dropped).

    The leading arguments (short: a function name, a handle) are cut at their NULs as they
    arrive; then the head is ready (``notice``). The last argument is copied piece by piece
    into a bytes object of its final size (see :func:`gearnb.buffers.new_bytes`), so every received piece can
    be freed at once: memory is used once for the packet, not twice (pieces, then their join),
    which on Linux halves the page faults and the time of receiving a 64 MiB packet. That
    object is made when the last argument starts, or for a ``lazy`` decoder once a
    ``LAZY_RESERVE_SHARE`` of it has arrived or :meth:`reserve` is called; until then the bytes
    go into chunks as they come. Where no such object can be made, the pieces are joined at
    the end. ``skip``: the packet is over the limit, its last argument is dropped.
    """

    __slots__ = ("ptype", "count", "size", "remaining", "leading", "partial", "leading_bytes", "skip", "drop", "lazy",
                 "want_reserve", "last_size", "notice", "last", "view", "filled", "pieces", "kept", "chunk",
                 "chunk_used", "next_chunk")

    def __init__(self, ptype: int, count: int, size: int, skip: bool, lazy: bool) -> None:
        self.ptype = ptype
        self.count = count
        self.size = size
        self.remaining = size  # body bytes not received yet
        self.leading: list[bytes] = []
        self.partial: list[bytes] = []  # pieces of a leading argument cut across reads
        self.leading_bytes = 0
        self.skip = skip
        self.drop = skip or count == 0  # nothing of its body is kept (a body on PRE_SLEEP is refused)
        self.lazy = lazy
        self.want_reserve = not lazy  # make the final object as soon as the last argument starts
        self.last_size = -1  # the last argument's size, once the leading ones are known
        self.notice: tuple[int, PacketHead] | None = None  # the head, to hand out once
        self.last: bytes | None = None  # the last argument's final object, once reserved ...
        self.view: memoryview | None = None  # ... and a writable view of it
        self.filled = 0  # bytes of the last argument received
        self.pieces: list[bytes | memoryview | bytearray] = []  # the last argument's bytes before that
        self.kept = 0  # bytes held (leading arguments, pieces, filled): what the peer really sent
        self.chunk: memoryview | None = None  # the lazy chunk being read into, ``chunk_used`` bytes in
        self.chunk_used = 0
        self.next_chunk = RECV_BUFFER
        if count <= 1:
            self._leading_done(size)

    def take_notice(self) -> tuple[int, Any]:
        notice, self.notice = self.notice, None
        assert notice is not None
        return notice

    def _leading_done(self, last_size: int) -> None:
        self.last_size = last_size
        if self.count == 0 and not self.skip:
            return  # a body on a type that carries none: refused at the end (args())
        head = PacketHead(self.ptype, tuple(self.leading), self.size, self.skip)
        if self.skip:
            self.notice = (OVERSIZE, head)
        elif self.lazy:
            self.notice = (LARGE, head)
        if self.want_reserve:
            self.reserve()

    def add(self, data: bytes | memoryview, start: int, length: int) -> None:
        """``data[start:start + length]``, the next bytes of the body (within the packet)."""
        if not length:
            return
        end = start + length
        self.remaining -= length
        if self.last_size < 0:
            if type(data) is not bytes:
                data, start, end = bytes(data[start:end]), 0, length
            while len(self.leading) < self.count - 1:
                nul = data.find(b"\0", start, end)
                piece_end = end if nul < 0 else nul
                self.leading_bytes += piece_end - start
                if self.leading_bytes > MAX_LEADING:
                    raise ProtocolError(f"{_name(self.ptype)}: leading arguments longer than {MAX_LEADING} bytes")
                if nul < 0:
                    self.partial.append(data[start:end])
                    self.kept += end - start
                    if not self.remaining:
                        self._incomplete()
                    return
                self.partial.append(data[start:nul])
                self.leading.append(b"".join(self.partial))
                self.kept += nul - start
                self.partial = []
                start = nul + 1
            # Everything from here on is the last argument.
            self._leading_done(self.remaining + (end - start))
        n = end - start
        if self.drop or not n:
            return
        self.kept += n
        view = self.view
        if view is not None:
            view[self.filled:self.filled + n] = memoryview(data)[start:end] if start or end != len(data) else data
        else:
            if self.chunk is not None:  # bytes read into a chunk before: it ends where they end
                self._end_chunk()
            if type(data) is not bytes:
                data = bytes(data[start:end])  # a view of a buffer the caller may reuse
            elif start or end != len(data):
                data = memoryview(data)[start:end]
            self.pieces.append(data)
        self.filled += n
        if view is None and self.lazy and self.filled * LAZY_RESERVE_SHARE >= self.last_size:
            self.reserve()

    def _incomplete(self) -> None:
        """The body ended inside the leading arguments: split_args says why."""
        split_args(self.ptype, b"\0".join([*self.leading, b"".join(self.partial)]))  # raises
        raise ProtocolError(f"{_name(self.ptype)}: malformed")  # pragma: no cover

    # -- reading straight into place ---------------------------------------------------------
    def target(self) -> memoryview | None:
        """Where the next bytes of the last argument go: the rest of its final object, or of
        the lazy chunk (a new one when the last is full); None when they are dropped."""
        if self.drop:
            return None
        if self.view is not None:
            return self.view[self.filled:]
        chunk = self.chunk
        if chunk is None:
            size = min(self.next_chunk, self.remaining)
            self.next_chunk = min(self.next_chunk * 2, LAZY_CHUNK_MAX)
            made = new_bytes(size)  # not zero-filled first, unlike bytearray(size)
            if made is None:
                owner: bytes | bytearray = bytearray(size)
                chunk = memoryview(owner)
            else:
                owner, chunk = made
            self.pieces.append(owner)
            self.chunk = chunk
            self.chunk_used = 0
        return chunk[self.chunk_used:]

    def arrived(self, nbytes: int) -> None:
        """``nbytes`` were read into :meth:`target` (or dropped)."""
        self.remaining -= nbytes
        if self.drop:
            return
        self.kept += nbytes
        self.filled += nbytes
        if self.view is None:
            self.chunk_used += nbytes
            if self.chunk_used == len(self.chunk):  # type: ignore[arg-type]
                self._end_chunk()
            if self.lazy and self.filled * LAZY_RESERVE_SHARE >= self.last_size:
                self.reserve()

    def _end_chunk(self) -> None:
        """No more bytes go into the current chunk: its piece is what was read into it."""
        chunk, self.chunk = self.chunk, None
        assert chunk is not None
        if self.chunk_used < len(chunk):
            self.pieces[-1] = bytes(chunk[:self.chunk_used])
        chunk.release()

    def reserve(self) -> None:
        """Make the last argument's final object and move what came of it there."""
        if self.view is not None or self.last_size < 0 or self.drop:
            return
        try:
            made = new_bytes(self.last_size)
        except MemoryError:
            made = None  # the pieces are joined at the end instead (which may fail in turn)
        if made is None:
            self.want_reserve = False
            self.lazy = False  # do not try again for every read
            return
        if self.chunk is not None:
            self._end_chunk()
        self.last, view = made
        pos = 0
        for piece in self.pieces:
            n = nbytes(piece)
            view[pos:pos + n] = piece
            pos += n
        self.pieces = []
        self.view = view

    def args(self) -> tuple[bytes, ...]:
        """The arguments, once the whole body arrived; raises ProtocolError like split_args."""
        if self.count == 0:
            return split_args(self.ptype, b"\0")  # raises: this type carries no data
        if self.view is not None:
            assert self.filled == len(self.view)
            self.view.release()
            self.view = None
            last = self.last
        else:
            last = b"".join(self.pieces)
        return (*self.leading, last)  # type: ignore[return-value]


def _name(ptype: int) -> str:
    try:
        return PacketType(ptype).name
    except ValueError:
        return f"packet type {ptype}"
