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

# A text (admin) command is one short line; gearmand reads them into a small buffer too.
MAX_ADMIN_LINE = 8192


class ProtocolError(Exception):
    """The byte stream is not valid Gearman: wrong magic, unknown type, oversize or truncated.

    ``code`` is the gearmand ERROR code string to answer with (``INVALID_MAGIC``, ...).
    """

    def __init__(self, message: str, code: str = "INVALID_COMMAND") -> None:
        super().__init__(message)
        self.code = code


def encode(magic: bytes, ptype: int, *args: bytes) -> bytes:
    """Encode one packet. ``args`` must match the packet type's argument count."""
    expected = ARG_COUNT.get(ptype)
    if expected is None:
        raise ProtocolError(f"unknown packet type {ptype}")
    if len(args) != expected:
        raise ProtocolError(
            f"{PacketType(ptype).name} takes {expected} arguments, got {len(args)}"
        )
    for arg in args[:-1]:
        if b"\0" in arg:
            raise ProtocolError(f"{PacketType(ptype).name}: only the last argument may contain NUL")
    body = b"\0".join(args)
    return _HEADER.pack(magic, ptype, len(body)) + body


def encode_packet(packet: Packet) -> bytes:
    return encode(packet.magic, packet.type, *packet.args)


def request(ptype: int, *args: bytes) -> bytes:
    """Encode a packet sent to the job server (``\\0REQ``)."""
    return encode(REQ, ptype, *args)


def response(ptype: int, *args: bytes) -> bytes:
    """Encode a packet sent by the job server (``\\0RES``)."""
    return encode(RES, ptype, *args)


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

    __slots__ = ("_buf", "expect", "allow_text", "max_packet_size", "_failed")

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

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet | AdminLine]:
        if self._failed:
            raise ProtocolError("decoder already failed")
        buf = self._buf
        buf += data
        out: list[Packet | AdminLine] = []
        pos = 0
        n = len(buf)
        try:
            while pos < n:
                if buf[pos] != 0:
                    if not self.allow_text:
                        raise ProtocolError("expected a binary packet", "INVALID_MAGIC")
                    end = buf.find(b"\n", pos, pos + MAX_ADMIN_LINE + 1)
                    if end < 0:
                        if n - pos > MAX_ADMIN_LINE:
                            raise ProtocolError("admin line too long", "INVALID_COMMAND")
                        break
                    line = bytes(buf[pos:end])
                    pos = end + 1
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    out.append(AdminLine(line.decode("utf-8", "replace")))
                    continue
                if n - pos < HEADER_SIZE:
                    # Check what we have of the magic early: garbage is refused before
                    # a full header arrives.
                    if bytes(buf[pos:min(n, pos + 4)]) != self.expect[: min(4, n - pos)]:
                        raise ProtocolError("bad magic", "INVALID_MAGIC")
                    break
                magic, ptype, size = _HEADER.unpack_from(buf, pos)
                if magic != self.expect:
                    raise ProtocolError(f"bad magic {magic!r}", "INVALID_MAGIC")
                if ptype not in ARG_COUNT:
                    raise ProtocolError(f"unknown packet type {ptype}", "INVALID_COMMAND")
                if size > self.max_packet_size:
                    raise ProtocolError(
                        f"packet of {size} bytes exceeds the maximum of {self.max_packet_size}",
                        "ARGUMENT_TOO_LARGE",
                    )
                end = pos + HEADER_SIZE + size
                if end > n:
                    break
                body = bytes(buf[pos + HEADER_SIZE:end])
                pos = end
                out.append(Packet(magic, ptype, split_args(ptype, body)))
        except ProtocolError:
            self._failed = True
            buf.clear()
            raise
        if pos:
            del buf[:pos]
        return out

    def close(self) -> None:
        """Call at end of stream: raises :class:`ProtocolError` if a packet was cut off."""
        if self._buf and not self._failed:
            left = len(self._buf)
            self._buf.clear()
            raise ProtocolError(f"stream closed inside a packet ({left} bytes left over)")
