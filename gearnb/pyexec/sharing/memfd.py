"""Shared-memory primitives of :mod:`gearnb.pyexec.sharing`: sealed memfds, their mapping, the
messages on a value store's socket and the reference a payload carries."""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import socket
import struct
from typing import Any

log = logging.getLogger("gearnb.pyexec")

# Buffers of at least this many bytes are shared instead of sent in the job. Below it, copying
# through the job server costs less than a memfd, its seals and a fetch round trip (~60 us).
SHARE_MIN = 1024 * 1024
TOKEN_SIZE = 16
# Every message on a store's socket: kind (1), token (16), nonce of the call (16), size (8).
MESSAGE = struct.Struct(">c16s16sQ")
GET, FOUND, GONE, PUT, RELEASED = b"G", b"F", b"N", b"P", b"R"
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE \
    if hasattr(fcntl, "F_SEAL_WRITE") else 0
REQUIRED_SEALS = SEALS & ~getattr(fcntl, "F_SEAL_SEAL", 0)
# A delivered result is taken within this time of its answer arriving: the task process sends
# the fd before it sends the answer, so it waits only for the store's thread to read it.
TAKE_TIMEOUT = 30.0
FETCH_TIMEOUT = 30.0  # seconds a task process waits for a store's answer
# Results delivered for a call no one waits for any more are closed at once; those waiting
# for a decode that never comes (an abandoned map) at the latest after this many seconds.
UNCLAIMED_TTL = 600.0
WRITE_CHUNK = 1 << 30  # os.write moves at most ~2 GiB a call on Linux


class SharedUnavailable(Exception):
    """A shared value cannot be had here: the store is out of reach or the value is gone."""


def available() -> bool:
    """Whether this platform has what sharing needs (memfd with seals, abstract Unix sockets)."""
    return hasattr(os, "memfd_create") and bool(SEALS) and hasattr(socket, "SCM_RIGHTS") \
        and hasattr(socket, "SO_PEERCRED")


def _same_user(sock: socket.socket) -> bool:
    """Whether the process at the other end of ``sock`` runs as this user (or as root)."""
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return uid in (os.getuid(), 0)


def seal(buffers: list[memoryview]) -> int:
    """A new sealed memfd holding the concatenated ``buffers`` (one copy, by ``write``)."""
    fd = os.memfd_create("gearnb-value", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        for buffer in buffers:
            view = buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer
            pos = 0
            while pos < len(view):
                pos += os.write(fd, view[pos:pos + WRITE_CHUNK])
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def map_sealed(fd: int, size: int, writable: bool = True) -> memoryview:
    """A mapping of a sealed memfd of ``size`` bytes (``fd`` stays open): copy-on-write, or
    read-only (a worker's arguments, read-only as when they come in the job). Raises
    :class:`SharedUnavailable` for anything else: not sealed, another size."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        actual = os.fstat(fd).st_size
    except OSError as exc:
        raise SharedUnavailable(f"not a shared value ({exc})") from None
    if seals & REQUIRED_SEALS != REQUIRED_SEALS:
        raise SharedUnavailable("refused a shared value that is not sealed against changes")
    if actual != size:
        raise SharedUnavailable(f"refused a shared value of {actual} bytes where its signed reference says {size}")
    if size == 0:
        return memoryview(b"")
    # ACCESS_COPY: MAP_PRIVATE, writable: an array unpickled from it can be written to, and the
    # writes stay in this process (the memfd is sealed: nobody changes what others see).
    return memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_COPY if writable else mmap.ACCESS_READ))


def _address(buffer: memoryview) -> int | None:
    """Where ``buffer``'s memory starts (numpy reads it for read-only buffers too); None
    without numpy."""
    try:
        import numpy
    except ImportError:
        return None
    return int(numpy.frombuffer(buffer, dtype=numpy.uint8).ctypes.data)


def _send(sock: socket.socket, kind: bytes, token: bytes, nonce: bytes = bytes(16), size: int = 0,
          fd: int | None = None) -> None:
    message = MESSAGE.pack(kind, token, nonce, size)
    if fd is None:
        sock.sendall(message)
    else:
        sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])


def _receive(sock: socket.socket) -> tuple[bytes, bytes, bytes, int, list[int]] | None:
    """One message and the fds it carries; None at the end of the stream."""
    data, ancillary, _flags, _ = sock.recvmsg(MESSAGE.size, socket.CMSG_SPACE(struct.calcsize("i") * 4))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % struct.calcsize("i")
            fds.extend(struct.unpack(f"{usable // struct.calcsize('i')}i", payload[:usable]))
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    if len(data) != MESSAGE.size:
        for fd in fds:
            os.close(fd)
        raise SharedUnavailable("a malformed message on a value store's socket")
    kind, token, nonce, size = MESSAGE.unpack(data)
    return kind, token, nonce, size, fds

def _parse_ref(ref: Any) -> tuple[bytes, int]:
    """``[token, size]``, or ``[token, size, offset]`` for a part of the caller's own value."""
    if (not isinstance(ref, (list, tuple)) or len(ref) not in (2, 3) or not isinstance(ref[0], bytes)
            or len(ref[0]) != TOKEN_SIZE or not isinstance(ref[1], int) or ref[1] < 0):
        raise SharedUnavailable("a malformed shared-value reference")
    return ref[0], ref[1]
