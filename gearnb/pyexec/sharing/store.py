"""The calling side of :mod:`gearnb.pyexec.sharing`: a process's value store and the values one
run shares."""

from __future__ import annotations

import mmap
import os
import secrets
import selectors
import socket
import threading
import time
from typing import Any

from .memfd import (
    FOUND, GET, GONE, PUT, RELEASED, SharedUnavailable, TAKE_TIMEOUT, TOKEN_SIZE, UNCLAIMED_TTL, _parse_ref,
    _receive, _same_user, _send, available, log, map_sealed, seal,
)

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


