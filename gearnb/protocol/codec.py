"""Sans-IO Gearman codec: bytes in, packet objects out; packet objects in, bytes out.

No sockets here (the h11 style): the server, client and worker feed whatever bytes they
read into a :class:`Decoder` and write whatever :func:`encode` returns.
"""

from __future__ import annotations

import functools
from typing import Any

from ..buffers import BufferList, join_bytes, new_bytes
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

# The default table of a Decoder: every packet type -> (its argument count, itself).
TYPES: dict[int, tuple[int, Any]] = {ptype: (count, ptype) for ptype, count in ARG_COUNT.items()}
TYPES[ADMIN_LINE] = (0, ADMIN_LINE)

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
    Nothing is buffered beyond ``max_packet_size`` (plus one header).

    Readers that read into the decoder (:meth:`get_buffer`, then :meth:`buffer_updated`) may
    share one ``read_buffer`` among many decoders, as a job server with thousands of
    connections does: the decoder copies out what it keeps before ``buffer_updated`` returns.

    With ``raw=True`` the decoder hands out ``(type, args)`` pairs instead of :class:`Packet`
    objects (``args`` a sequence of bytes; an admin line is ``(ADMIN_LINE, text)``): the form
    for code that reads every packet of a busy connection (the job server, the client, the
    worker), where making a namedtuple per packet costs more than deciding what to do with it.
    A raw decoder may also be given a ``table``: packet type (and ADMIN_LINE) -> (argument
    count, what to hand out in place of the type), such as the handler of each type - the
    job server's dispatch, done with the one lookup the decoder makes per packet anyway.
    """

    __slots__ = ("_buf", "expect", "allow_text", "max_packet_size", "_failed", "_big", "_scratch",
                 "_into_big", "raw", "_table")

    def __init__(
        self,
        expect: bytes = RES,
        *,
        allow_text: bool = False,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        read_buffer: memoryview | None = None,
        raw: bool = False,
        table: dict[int, tuple[int, Any]] | None = None,
    ) -> None:
        if expect not in (REQ, RES):
            raise ValueError("expect must be REQ or RES")
        if table is not None and not raw:
            raise ValueError("a table is for a raw decoder")
        self.raw = raw
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
        """Bytes received but not yet decoded."""
        big = self._big
        return len(self._buf) + (0 if big is None else big.size - big.remaining)

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
                if size > max_size:
                    raise ProtocolError(
                        f"packet of {size} bytes exceeds the maximum of {max_size}",
                        "ARGUMENT_TOO_LARGE",
                    )
                end = pos + HEADER_SIZE + size
                if end > n:
                    if size >= BIG_PACKET:
                        # Keep what came of it (a view, or a copy out of the buffer) and the
                        # pieces still to come; they are joined once, when it is complete.
                        start = pos + HEADER_SIZE
                        first = bytes(src[start:n]) if copy else src
                        self._big = _BigPacket(ptype, count, size, first, 0 if copy else start, n - start)
                        pos = n
                    break
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

    def _packets(self, pairs: list[tuple[int, Any]]) -> list[Packet | AdminLine]:
        """``(type, args)`` pairs as :class:`Packet` and :class:`AdminLine` objects."""
        expect = self.expect
        return [AdminLine(args) if ptype == ADMIN_LINE else _new_tuple(Packet, (expect, ptype, tuple(args)))
                for ptype, args in pairs]

    # -- reading straight into place (asyncio.BufferedProtocol, socket.recv_into) ----------
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where to read the next bytes into; then call :meth:`buffer_updated`.

        While the last argument of a large packet is arriving, this is the rest of that
        argument's final bytes object, so the kernel copies the data straight into place (one
        read may then take megabytes); otherwise a reusable buffer of ``RECV_BUFFER`` bytes.
        """
        if self._failed:
            raise ProtocolError("decoder already failed")
        big = self._big
        if big is not None and big.view is not None:
            self._into_big = True
            return big.view[big.filled:]
        self._into_big = False
        if self._scratch is None:
            self._scratch = memoryview(bytearray(RECV_BUFFER))
        return self._scratch

    def buffer_updated(self, nbytes: int) -> list[Any]:
        """``nbytes`` were read into the buffer :meth:`get_buffer` returned: decode them."""
        if not self._into_big:
            assert self._scratch is not None
            return self.feed(self._scratch[:nbytes])
        self._into_big = False
        big = self._big
        assert big is not None and nbytes <= big.remaining
        big.filled += nbytes
        big.remaining -= nbytes
        if big.remaining:
            return []
        return self._feed_big(b"")  # complete: hand it out

    def _feed_big(self, data: bytes) -> list[Any]:
        """Take the next piece of a large packet; decode what follows it as usual."""
        big = self._big
        assert big is not None
        need = big.remaining
        if len(data) < need:
            big.add(data, 0, len(data))
            return []
        if need:
            big.add(data, 0, need)
        self._big = None
        try:
            args = big.args()
        except ProtocolError:
            self._failed = True
            self._buf.clear()
            raise
        packet = (self._table[big.ptype][1], args) if self.raw else _new_tuple(Packet, (self.expect, big.ptype, args))
        if len(data) == need:
            return [packet]
        return [packet, *self.feed(data[need:])]

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
    """A large packet being received.

    The leading arguments (short: a function name, a handle) are cut at their NULs as they
    arrive; the last one is copied piece by piece into a bytes object of its final size,
    made up front (see :func:`gearnb.buffers.new_bytes`). So every received piece can be freed at once:
    memory is used once for the packet, not twice (pieces, then their join), which on Linux
    halves the page faults and the time of receiving a 64 MiB packet. Where such a bytes
    object cannot be made, the pieces are kept and joined at the end.
    """

    __slots__ = ("ptype", "count", "size", "remaining", "leading", "partial", "last", "view",
                 "filled", "pieces")

    def __init__(self, ptype: int, count: int, size: int, data: bytes, start: int, length: int) -> None:
        self.ptype = ptype
        self.count = count
        self.size = size
        self.remaining = size
        self.leading: list[bytes] = []
        self.partial: list[bytes] = []  # pieces of a leading argument cut across reads
        self.last: bytes | None = None  # the last argument, being filled through ``view``
        self.view: memoryview | None = None
        self.filled = 0
        self.pieces: list[bytes | memoryview] | None = None  # fallback: pieces of the last argument
        self.add(data, start, length)

    def add(self, data: bytes | memoryview, start: int, length: int) -> None:
        if not length:
            return
        end = start + length
        if self.last is None and self.pieces is None:
            if self.count == 0:  # invalid (no arguments, yet a body): refused at the end
                self.remaining -= length
                return
            if type(data) is not bytes:
                data, start, end = bytes(data[start:end]), 0, length
            while len(self.leading) < self.count - 1:
                nul = data.find(b"\0", start, end)
                if nul < 0:
                    self.partial.append(data[start:end])
                    self.remaining -= length
                    return
                self.partial.append(data[start:nul])
                self.leading.append(b"".join(self.partial))
                self.partial = []
                start = nul + 1
            # Everything from here on is the last argument.
            self._start_last(self.remaining - (start - (end - length)))
        self.remaining -= length
        if self.view is not None:
            n = end - start
            self.view[self.filled:self.filled + n] = memoryview(data)[start:end] if start or end != len(data) else data
            self.filled += n
        else:
            assert self.pieces is not None
            if type(data) is not bytes:
                data = bytes(data[start:end])  # a view of a buffer the caller may reuse
            elif start or end != len(data):
                data = memoryview(data)[start:end]
            self.pieces.append(data)

    def _start_last(self, size: int) -> None:
        made = new_bytes(size)
        if made is None:
            self.pieces = []
        else:
            self.last, self.view = made

    def args(self) -> tuple[bytes, ...]:
        """The arguments, once the whole body arrived; raises ProtocolError like split_args."""
        if self.count == 0:
            return split_args(self.ptype, b"\0")  # raises: this type carries no data
        if self.last is None and self.pieces is None:  # fewer NULs than leading arguments
            return split_args(self.ptype, b"\0".join([*self.leading, b"".join(self.partial)]))  # raises
        if self.view is not None:
            assert self.filled == len(self.view)
            self.view.release()
            self.view = None
            last = self.last
        else:
            last = b"".join(self.pieces or ())
        return (*self.leading, last)  # type: ignore[return-value]
