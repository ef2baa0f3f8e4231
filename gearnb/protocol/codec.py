"""Sans-IO Gearman codec: bytes in, packet objects out; packet objects in, bytes out.

No sockets here (the h11 style): the server, client and worker feed whatever bytes they
read into a :class:`Decoder` and write whatever :func:`encode` returns.
"""

from __future__ import annotations

import struct

from .packets import (
    ARG_COUNT,
    DEFAULT_MAX_PACKET_SIZE,
    HEADER_SIZE,
    REQ,
    RES,
    AdminLine,
    Packet,
    PacketType,
)

_HEADER = struct.Struct(">4sII")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
_new_tuple = tuple.__new__  # Packet(...) without the Python-level namedtuple __new__

# A text (admin) command is one short line; gearmand reads them into a small buffer too.
MAX_ADMIN_LINE = 8192
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


def _check_args(ptype: int, args: tuple[bytes, ...]) -> None:
    """Raise the ProtocolError that explains why ``args`` do not fit ``ptype``."""
    expected = ARG_COUNT.get(ptype)
    if expected is None:
        raise ProtocolError(f"unknown packet type {ptype}")
    if len(args) != expected:
        raise ProtocolError(
            f"{PacketType(ptype).name} takes {expected} arguments, got {len(args)}"
        )
    raise ProtocolError(f"{PacketType(ptype).name}: only the last argument may contain NUL")


def encode(magic: bytes, ptype: int, *args: bytes) -> bytes:
    """Encode one packet. ``args`` must match the packet type's argument count."""
    # Hot path (every packet sent): checks inline, errors explained by _check_args.
    expected = ARG_COUNT.get(ptype)
    if expected is None or len(args) != expected:
        _check_args(ptype, args)
    if expected > 1:
        for arg in args[:-1]:
            if b"\0" in arg:
                _check_args(ptype, args)
    if expected and len(args[-1]) >= BIG_PACKET:
        return _encode_big(magic, ptype, args)
    body = b"\0".join(args)
    return _pack_header(magic, ptype, len(body)) + body


def _encode_big(magic: bytes, ptype: int, args: tuple[bytes, ...]) -> bytes:
    """A packet with a large last argument, built with one copy of it."""
    size = len(args) - 1
    for arg in args:
        size += len(arg)
    return b"\0".join((_pack_header(magic, ptype, size) + args[0], *args[1:]))


def encode_packet(packet: Packet) -> bytes:
    return encode(packet.magic, packet.type, *packet.args)


def request(ptype: int, *args: bytes) -> bytes:
    """Encode a packet sent to the job server (``\\0REQ``)."""
    expected = ARG_COUNT.get(ptype)  # the same as encode(REQ, ...), one call less
    if expected is None or len(args) != expected:
        _check_args(ptype, args)
    if expected > 1:
        for arg in args[:-1]:
            if b"\0" in arg:
                _check_args(ptype, args)
    if expected and len(args[-1]) >= BIG_PACKET:
        return _encode_big(REQ, ptype, args)
    body = b"\0".join(args)
    return _pack_header(REQ, ptype, len(body)) + body


def response(ptype: int, *args: bytes) -> bytes:
    """Encode a packet sent by the job server (``\\0RES``)."""
    expected = ARG_COUNT.get(ptype)  # the same as encode(RES, ...), one call less
    if expected is None or len(args) != expected:
        _check_args(ptype, args)
    if expected > 1:
        for arg in args[:-1]:
            if b"\0" in arg:
                _check_args(ptype, args)
    if expected and len(args[-1]) >= BIG_PACKET:
        return _encode_big(RES, ptype, args)
    body = b"\0".join(args)
    return _pack_header(RES, ptype, len(body)) + body


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
    """

    __slots__ = ("_buf", "expect", "allow_text", "max_packet_size", "_failed", "_big")

    def __init__(
        self,
        expect: bytes = RES,
        *,
        allow_text: bool = False,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    ) -> None:
        if expect not in (REQ, RES):
            raise ValueError("expect must be REQ or RES")
        self._buf = bytearray()
        self.expect = expect
        self.allow_text = allow_text
        self.max_packet_size = max_packet_size
        self._failed = False
        self._big: _BigPacket | None = None  # a large packet being received

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        big = self._big
        return len(self._buf) + (0 if big is None else big.size - big.remaining)

    def feed(self, data: bytes) -> list[Packet | AdminLine]:
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
        out: list[Packet | AdminLine] = []
        append = out.append
        expect = self.expect
        max_size = self.max_packet_size
        arg_count = ARG_COUNT
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
                    append(AdminLine(line.decode("utf-8", "replace")))
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
                count = arg_count.get(ptype)
                if count is None:
                    raise ProtocolError(f"unknown packet type {ptype}", "INVALID_COMMAND")
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
                    args: tuple[bytes, ...] = (body,)
                elif count == 0:
                    if body:
                        split_args(ptype, body)  # raises
                    args = ()
                else:
                    args = tuple(body.split(b"\0", count - 1))
                    if len(args) != count:
                        split_args(ptype, body)  # raises
                append(_new_tuple(Packet, (expect, ptype, args)))
        except ProtocolError:
            self._failed = True
            buf.clear()
            raise
        if copy:
            if pos:
                del buf[:pos]
        elif pos < n:
            buf += src[pos:] if pos else src
        return out

    def _feed_big(self, data: bytes) -> list[Packet | AdminLine]:
        """Take the next piece of a large packet; decode what follows it as usual."""
        big = self._big
        assert big is not None
        if type(data) is not bytes:
            data = bytes(data)
        need = big.remaining
        if len(data) < need:
            big.add(data, 0, len(data))
            return []
        big.add(data, 0, need)
        self._big = None
        try:
            args = big.args()
        except ProtocolError:
            self._failed = True
            self._buf.clear()
            raise
        packet = _new_tuple(Packet, (self.expect, big.ptype, args))
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
    """A large packet being received: the pieces of its body as (bytes, start, end)."""

    __slots__ = ("ptype", "count", "size", "remaining", "pieces")

    def __init__(self, ptype: int, count: int, size: int, data: bytes, start: int, length: int) -> None:
        self.ptype = ptype
        self.count = count
        self.size = size
        self.remaining = size
        self.pieces: list[tuple[bytes, int, int]] = []
        self.add(data, start, length)

    def add(self, data: bytes, start: int, length: int) -> None:
        if length:
            self.pieces.append((data, start, start + length))
            self.remaining -= length

    def args(self) -> tuple[bytes, ...]:
        """The arguments: the leading ones (short, up to a NUL each) and the rest, joined once."""
        pieces = self.pieces
        leading: list[bytes] = []
        k = 0
        off = pieces[0][1] if pieces else 0
        partial: list[bytes] = []
        while len(leading) < self.count - 1 and k < len(pieces):
            data, _, end = pieces[k]
            nul = data.find(b"\0", off, end)
            if nul < 0:
                partial.append(data[off:end])
                k += 1
                off = pieces[k][1] if k < len(pieces) else 0
                continue
            partial.append(data[off:nul])
            leading.append(b"".join(partial))
            partial = []
            off = nul + 1
        if len(leading) < self.count - 1 or self.count == 0:
            body = b"".join(memoryview(d)[s:e] for d, s, e in pieces)
            return split_args(self.ptype, body)  # raises: the same error as for a small packet
        rest = [memoryview(d)[s:e] for d, s, e in pieces[k + 1:]]
        if k < len(pieces):
            data, _, end = pieces[k]
            rest.insert(0, memoryview(data)[off:end])
        return (*leading, b"".join(rest))
