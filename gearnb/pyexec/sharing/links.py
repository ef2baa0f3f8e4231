"""The worker's side of :mod:`gearnb.pyexec.sharing`: a task process's links to its callers'
value stores."""

from __future__ import annotations

import errno
import os
import secrets
import socket
from collections import OrderedDict
from typing import Any, Callable

from .memfd import (
    FETCH_TIMEOUT, FOUND, GET, PUT, RELEASED, SharedUnavailable, TOKEN_SIZE, _address, _parse_ref, _receive,
    _same_user, _send, map_sealed, seal,
)

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
