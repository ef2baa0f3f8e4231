"""Large values through shared memory between processes of one host, beside the job server.

A large out-of-band buffer of a call or a result (a numpy array's data) does not travel in the
Gearman job: it is written once into a *sealed memfd* (an anonymous memory file that nobody can
change once sealed, and that has no name in any file system), and the job carries a small
reference to it, ``[token, size]``, inside the signed payload. The other side maps the memfd
copy-on-write and unpickles the array as a view of that mapping: no copy, and writes to it stay
private to the process that makes them.

The memfds move between processes as file descriptors (SCM_RIGHTS) over one Unix socket per
calling process: its :class:`ValueStore`, bound to a random *abstract* address (Linux: no file,
gone when the process is), named in every call. Order of calls:

* a caller shares an argument (:meth:`ValueStore.share`: write, seal, keep the fd under a fresh
  random token) and sends the call; the worker's task process asks the store for the token
  (:meth:`StoreLinks.fetch`, message ``G``) and gets the fd (``F``) or "gone" (``N``);
* a task process shares a large result by sending its sealed memfd to the caller's store
  (:meth:`StoreLinks.deliver`, ``P``, tagged with the call's nonce) before it answers the job;
  the caller takes it when it decodes the answer (:meth:`ValueStore.take`);
* when a caller no longer needs a value it releases it (:meth:`ValueStore.release`: its fd is
  closed, and every task process that fetched it is told, ``R``, and drops its mapping).

Lifetime rule: a shared value is memory held by the processes that have its fd or a mapping of
it, and nothing else - no file in /dev/shm, nothing for anyone to clean up. When a caller dies
(even kill -9) its fds close, its store's socket goes, and the task processes connected to it
see the end of the stream and drop their mappings (a running task keeps the arrays it holds
until it ends); when a task process dies, its fds and mappings go with it.

Trust: the reference travels in the signed payload, so only a key holder makes one. Both ends
check that the other process runs as the same user (or root) with SO_PEERCRED - any process of
that user can read its key file and its memory anyway - and a fetched or delivered memfd must be
sealed against writing, shrinking and growing and have the size the signed reference names, so
its bytes are the ones its maker wrote before signing. A worker that cannot reach the store (on
another host, in another network namespace, another user) answers "send it inline"
(:class:`~gearnb.pyexec.envelope.NeedInline`) and the caller sends the bytes in the job.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import secrets
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

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


# -- the calling side --------------------------------------------------------------------------
class _Delivered:
    __slots__ = ("fd", "size", "nonce", "at")

    def __init__(self, fd: int, size: int, nonce: bytes) -> None:
        self.fd, self.size, self.nonce, self.at = fd, size, nonce, time.monotonic()


class ValueStore:
    """A process's shared values and the socket task processes reach them through (see the
    module docstring). One per process: :func:`value_store`."""

    def __init__(self) -> None:
        self.address = b"\0gearnb-" + secrets.token_hex(12).encode()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._listener.bind(self.address)
        self._listener.listen(64)
        self._lock = threading.Condition()
        self._values: dict[bytes, tuple[int, int]] = {}  # token -> (fd, size) shared by this process
        self._fetched_by: dict[bytes, set[socket.socket]] = {}  # token -> connections that have it
        self._delivered: dict[bytes, _Delivered] = {}  # token -> a result a task process delivered
        self._expected: set[bytes] = set()  # nonces of calls whose results may be delivered
        self._closed = False
        self.shared_count = 0  # values shared so far
        self.fetch_count = 0  # values handed to task processes so far
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="gearnb-value-store", daemon=True)
        self._thread.start()

    # -- sharing ------------------------------------------------------------------------------
    def share(self, buffers: list[memoryview]) -> list[Any]:
        """Share the concatenation of ``buffers``; returns its reference ``[token, size]``."""
        fd = seal(buffers)
        size = sum(b.nbytes for b in buffers)
        token = secrets.token_bytes(TOKEN_SIZE)
        with self._lock:
            self._values[token] = (fd, size)
            self.shared_count += 1
        return [token, size]

    def release(self, tokens: list[bytes]) -> None:
        """The values ``tokens`` are no longer needed: close them, and tell the task processes
        that fetched them (they drop their mappings once their running task lets go)."""
        notify: list[tuple[socket.socket, bytes]] = []
        with self._lock:
            for token in tokens:
                entry = self._values.pop(token, None)
                if entry is not None:
                    os.close(entry[0])
                for conn in self._fetched_by.pop(token, ()):
                    notify.append((conn, token))
        for conn, token in notify:
            try:
                # Non-blocking: a task process busy for long may not read its notices; if its
                # socket is full, closing the connection tells it to drop everything of ours.
                _send(conn, RELEASED, token)
            except OSError:
                self._drop_connection_later(conn)

    # -- results --------------------------------------------------------------------------------
    def expect(self, nonce: bytes) -> None:
        """Results of the call ``nonce`` may be delivered (a call just signed)."""
        with self._lock:
            self._expected.add(nonce)

    def forget(self, nonce: bytes) -> None:
        """The call ``nonce`` is settled or abandoned: close whatever of it was not taken."""
        with self._lock:
            self._expected.discard(nonce)
            stale = [token for token, d in self._delivered.items() if d.nonce == nonce]
            for token in stale:
                os.close(self._delivered.pop(token).fd)

    def take(self, ref: Any, nonce: bytes, timeout: float = TAKE_TIMEOUT) -> memoryview:
        """The mapping of a result the task process delivered for call ``nonce`` - or, for a
        reference with an offset, of the part of one of this process's own values that the
        task returned as it got it (an argument, or a slice of one: no copy either way)."""
        token, size = _parse_ref(ref)
        if len(ref) == 3:
            return self._own(token, ref[2], size)
        deadline = time.monotonic() + timeout
        with self._lock:
            while token not in self._delivered:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise SharedUnavailable("the worker's shared result did not arrive")
                self._lock.wait(remaining)
            delivered = self._delivered[token]
            if delivered.nonce != nonce:
                raise SharedUnavailable("a shared result delivered for another call")
            del self._delivered[token]
        try:
            return map_sealed(delivered.fd, size)
        finally:
            os.close(delivered.fd)

    def _own(self, token: bytes, offset: Any, size: int) -> memoryview:
        with self._lock:
            entry = self._values.get(token)
            fd = -1 if entry is None else os.dup(entry[0])
        if entry is None or not isinstance(offset, int) or offset < 0 or offset + size > entry[1]:
            if fd >= 0:
                os.close(fd)
            raise SharedUnavailable("a result naming a part of a value this process no longer holds")
        try:
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            mapping = mmap.mmap(fd, offset + size - start, access=mmap.ACCESS_COPY, offset=start)
        finally:
            os.close(fd)
        return memoryview(mapping)[offset - start:offset - start + size]

    # -- the store's thread ---------------------------------------------------------------------
    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._selector = selector
        self._to_drop: list[socket.socket] = []
        while not self._closed:
            for key, _ in selector.select(60.0):
                if key.data == "wake":
                    self._wake_r.recv(4096)
                elif key.data is None:
                    self._accept(selector)
                else:
                    self._read(selector, key.fileobj)  # type: ignore[arg-type]
            with self._lock:
                dropping, self._to_drop = self._to_drop, []
            for conn in dropping:
                self._close_connection(selector, conn)
            self._expire_unclaimed()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        if not _same_user(conn):
            log.warning("a process of another user connected to this process's value store; closed")
            conn.close()
            return
        conn.setblocking(False)  # never held up by one task process (see release)
        selector.register(conn, selectors.EVENT_READ, "conn")

    def _read(self, selector: selectors.BaseSelector, conn: socket.socket) -> None:
        try:
            message = _receive(conn)
        except BlockingIOError:
            return
        except (OSError, SharedUnavailable):
            message = None
        if message is None:
            self._close_connection(selector, conn)
            return
        kind, token, nonce, size, fds = message
        if kind == GET:
            with self._lock:
                entry = self._values.get(token)
                if entry is not None:
                    self._fetched_by.setdefault(token, set()).add(conn)
                    self.fetch_count += 1
                    fd = os.dup(entry[0])  # the value may be released while the answer goes out
                else:
                    fd = -1
            for extra in fds:
                os.close(extra)
            try:
                if fd < 0:
                    _send(conn, GONE, token)
                else:
                    _send(conn, FOUND, token, size=entry[1], fd=fd)  # type: ignore[index]
            except OSError:
                self._close_connection(selector, conn)
            finally:
                if fd >= 0:
                    os.close(fd)
        elif kind == PUT and len(fds) == 1:
            with self._lock:
                if nonce in self._expected and token not in self._delivered:
                    self._delivered[token] = _Delivered(fds[0], size, nonce)
                    self._lock.notify_all()
                    return
            os.close(fds[0])  # a result for a call nobody waits for (any more)
        else:
            for extra in fds:
                os.close(extra)

    def _close_connection(self, selector: selectors.BaseSelector, conn: socket.socket) -> None:
        try:
            selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        with self._lock:
            for holders in self._fetched_by.values():
                holders.discard(conn)
        conn.close()

    def _drop_connection_later(self, conn: socket.socket) -> None:
        with self._lock:
            self._to_drop.append(conn)
        self._wake_w.send(b"x")

    def _expire_unclaimed(self) -> None:
        cutoff = time.monotonic() - UNCLAIMED_TTL
        with self._lock:
            for token in [t for t, d in self._delivered.items() if d.at < cutoff]:
                os.close(self._delivered.pop(token).fd)

    def close(self) -> None:
        """Close every value, every delivered result and the socket (the process ends)."""
        with self._lock:
            self._close_fds()
            self._lock.notify_all()
        self._wake_w.send(b"x")
        self._listener.close()

    def _close_fds(self) -> None:
        """Close every value's and every delivered result's fd; the store takes no more."""
        self._closed = True
        for fd, _ in self._values.values():
            os.close(fd)
        for delivered in self._delivered.values():
            os.close(delivered.fd)
        self._values.clear()
        self._delivered.clear()

    def _forget_inherited(self) -> None:
        """In a forked child: the parent's fds are the parent's business; close our copies."""
        self._close_fds()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()


_store: ValueStore | None = None
_store_failed = False
_store_lock = threading.Lock()


def value_store() -> ValueStore | None:
    """This process's store, started on first use; None where sharing is not available."""
    global _store, _store_failed
    if _store is not None or _store_failed:
        return _store
    with _store_lock:
        if _store is None and not _store_failed:
            if not available():
                _store_failed = True
                return None
            try:
                _store = ValueStore()
            except OSError as exc:
                log.info("large values go through the job server: no value store here (%s)", exc)
                _store_failed = True
    return _store


def _after_fork_in_child() -> None:
    global _store
    if _store is not None:
        _store._forget_inherited()
        _store = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _parse_ref(ref: Any) -> tuple[bytes, int]:
    """``[token, size]``, or ``[token, size, offset]`` for a part of the caller's own value."""
    if (not isinstance(ref, (list, tuple)) or len(ref) not in (2, 3) or not isinstance(ref[0], bytes)
            or len(ref[0]) != TOKEN_SIZE or not isinstance(ref[1], int) or ref[1] < 0):
        raise SharedUnavailable("a malformed shared-value reference")
    return ref[0], ref[1]


class RunShares:
    """The values one run (a map, a submit) shares: each object once (a dataset passed to every
    call, a function's captured array), held while a chunk in flight uses it and released when
    none does - or when the run ends, for what :meth:`pin` keeps (the function's buffers)."""

    def __init__(self, store: ValueStore) -> None:
        self.store = store
        self._by_object: dict[int, tuple[Any, list[Any]]] = {}  # id(exporter) -> (exporter, ref)
        self._uses: dict[bytes, int] = {}  # token -> chunks in flight that carry it
        self._pinned: set[bytes] = set()
        self._lock = threading.Lock()

    def share(self, raw: memoryview, pin: bool = False) -> list[Any]:
        """The reference of ``raw``'s bytes, shared once per exporting object and size."""
        exporter = raw.obj
        key = id(exporter)
        with self._lock:
            known = self._by_object.get(key)
            if known is not None and known[1][1] == raw.nbytes:
                ref = known[1]
            else:
                ref = self.store.share([raw])
                self._by_object[key] = (exporter, ref)  # holding exporter keeps its id unique
            if pin:
                self._pinned.add(ref[0])
        return ref

    def for_chunk(self) -> ChunkShares:
        """What one chunk's encoding shares (its tokens are counted by :meth:`carried`)."""
        return ChunkShares(self)

    def carried(self, tokens: list[bytes]) -> None:
        """A chunk in flight carries ``tokens``."""
        with self._lock:
            for token in tokens:
                self._uses[token] = self._uses.get(token, 0) + 1

    def settled(self, tokens: list[bytes]) -> None:
        """A chunk that carried ``tokens`` settled: release those no other chunk carries."""
        free = []
        with self._lock:
            for token in tokens:
                left = self._uses.get(token, 0) - 1
                if left > 0:
                    self._uses[token] = left
                    continue
                self._uses.pop(token, None)
                if token not in self._pinned:
                    free.append(token)
            if free:
                gone = set(free)
                for key in [k for k, (_, ref) in self._by_object.items() if ref[0] in gone]:
                    del self._by_object[key]
        if free:
            self.store.release(free)

    def close(self) -> None:
        """The run ended: release everything it shared."""
        with self._lock:
            tokens = [ref[0] for _, ref in self._by_object.values()]
            self._by_object.clear()
            self._uses.clear()
            self._pinned.clear()
        if tokens:
            self.store.release(tokens)


class ChunkShares:
    """The sharer of one chunk's encoding (an :class:`~gearnb.pyexec.envelope.Sharer`): shares
    through its run, and notes the tokens the chunk carries."""

    __slots__ = ("run", "tokens")

    def __init__(self, run: RunShares) -> None:
        self.run = run
        self.tokens: list[bytes] = []

    def share(self, raw: memoryview, pin: bool = False) -> list[Any] | None:
        try:
            ref = self.run.share(raw, pin)
        except OSError as exc:  # no memory for a memfd, too many open files: send it inline
            log.info("sending a %d-byte value in the job, not shared: %s", raw.nbytes, exc)
            return None
        self.tokens.append(ref[0])
        return ref


# -- the worker's side -------------------------------------------------------------------------
class StoreLinks:
    """A task process's connections to the value stores of its callers: fetches arguments,
    delivers results, and drops mappings the callers release (:meth:`poll`)."""

    MAX_UNREACHABLE = 1024  # stores remembered as out of reach (callers on other hosts)

    def __init__(self) -> None:
        self._links: dict[bytes, socket.socket] = {}
        self._unreachable: OrderedDict[bytes, None] = OrderedDict()
        self.mapped: dict[bytes, memoryview] = {}  # token -> mapping, while its caller holds it
        self._regions: dict[bytes, tuple[int, bytes]] = {}  # token -> (where it is mapped, store)
        self._mapped_from: dict[bytes, set[bytes]] = {}  # store address -> tokens mapped from it
        self.on_release: Callable[[set[bytes]], None] | None = None

    def _link(self, address: bytes) -> socket.socket:
        sock = self._links.get(address)
        if sock is not None:
            return sock
        if address in self._unreachable:
            raise SharedUnavailable("the caller's value store is out of reach (another host?)")
        if not (isinstance(address, bytes) and address.startswith(b"\0gearnb-") and len(address) < 108):
            raise SharedUnavailable("a malformed value store address")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(address)
            if not _same_user(sock):
                raise PermissionError(errno.EPERM, "the caller's value store runs as another user")
        except OSError as exc:
            sock.close()
            self._unreachable[address] = None
            if len(self._unreachable) > self.MAX_UNREACHABLE:
                self._unreachable.popitem(last=False)
            raise SharedUnavailable(f"the caller's value store is out of reach ({exc})") from None
        sock.settimeout(FETCH_TIMEOUT)
        self._links[address] = sock
        return sock

    def fetch(self, address: bytes, ref: Any) -> memoryview:
        """The mapping of the value ``ref`` shared by the store at ``address``."""
        token, size = _parse_ref(ref)
        view = self.mapped.get(token)
        if view is not None:
            if view.nbytes != size:
                raise SharedUnavailable("a shared value's size differs from its reference")
            return view
        sock = self._link(address)
        try:
            _send(sock, GET, token)
            while True:
                message = _receive(sock)
                if message is None:
                    raise OSError("the caller's value store closed the connection")
                kind, got, _nonce, _size, fds = message
                if kind == RELEASED:
                    self._released(address, {got})
                    continue
                if got != token:
                    for fd in fds:
                        os.close(fd)
                    raise OSError("a value store answered for another value")
                break
        except OSError as exc:
            self._drop(address)
            raise SharedUnavailable(f"lost the caller's value store ({exc})") from None
        if kind != FOUND or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise SharedUnavailable("the caller no longer holds that shared value")
        try:
            view = map_sealed(fds[0], size, writable=False)
        finally:
            os.close(fds[0])
        self.mapped[token] = view
        start = _address(view) if size else None
        if start is not None:
            self._regions[token] = (start, address)
        self._mapped_from.setdefault(address, set()).add(token)
        return view

    def deliver(self, address: bytes, nonce: bytes, buffers: list[memoryview]) -> list[Any] | None:
        """Send the concatenated ``buffers`` to the store at ``address`` as a result of call
        ``nonce``; its reference, or None when the store is out of reach (send it inline)."""
        try:
            sock = self._link(address)
        except SharedUnavailable:
            return None
        own = self._within_argument(address, buffers)
        if own is not None:
            return own
        fd = seal(buffers)
        size = sum(b.nbytes for b in buffers)
        token = secrets.token_bytes(TOKEN_SIZE)
        try:
            _send(sock, PUT, token, nonce, size, fd=fd)
        except OSError:
            self._drop(address)
            return None
        finally:
            os.close(fd)
        return [token, size]

    def _within_argument(self, address: bytes, buffers: list[memoryview]) -> list[Any] | None:
        """A result buffer that is (part of) an argument the caller shared, as the task got it
        (read-only: unchanged): a reference to the caller's own value, nothing copied."""
        if len(buffers) != 1 or not self._regions:
            return None
        start = _address(buffers[0])
        if start is None:
            return None
        size = buffers[0].nbytes
        for token, (base, store) in self._regions.items():
            view = self.mapped.get(token)
            if store == address and view is not None and base <= start and start + size <= base + view.nbytes:
                return [token, size, start - base]
        return None

    def filenos(self) -> list[socket.socket]:
        return list(self._links.values())

    def poll(self, sock: socket.socket | None = None) -> None:
        """Read the release notices waiting on the links (all, or ``sock``'s), without blocking."""
        for address, link in list(self._links.items()):
            if sock is not None and link is not sock:
                continue
            released: set[bytes] = set()
            try:
                link.setblocking(False)
                while True:
                    try:
                        message = _receive(link)
                    except BlockingIOError:
                        break
                    if message is None:
                        raise OSError("closed")
                    kind, token, _nonce, _size, fds = message
                    for fd in fds:
                        os.close(fd)
                    if kind == RELEASED:
                        released.add(token)
            except (OSError, SharedUnavailable):
                self._drop(address)
                continue
            finally:
                if link.fileno() >= 0:
                    link.settimeout(FETCH_TIMEOUT)
            if released:
                self._released(address, released)

    def _released(self, address: bytes, tokens: set[bytes]) -> None:
        for token in tokens:
            self.mapped.pop(token, None)
            self._regions.pop(token, None)
        self._mapped_from.get(address, set()).difference_update(tokens)
        if self.on_release is not None:
            self.on_release(tokens)

    def _drop(self, address: bytes) -> None:
        """The store at ``address`` is gone (its caller ended): drop all we mapped from it."""
        sock = self._links.pop(address, None)
        if sock is not None:
            sock.close()
        self._released(address, self._mapped_from.pop(address, set()))

    def close(self) -> None:
        for address in list(self._links):
            self._drop(address)
