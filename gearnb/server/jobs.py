"""Jobs held by the job server, and the table that finds them by handle."""

from __future__ import annotations

import itertools
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connections import Connection
    from .functions import Function

# Job states
QUEUED = 0     # in its function's priority queue, waiting for a worker
RUNNING = 1    # assigned to a worker
SCHEDULED = 2  # an epoch job whose time has not come
DONE = 3       # ended (completed, failed, cancelled or dropped)


def coalescing_key(unique: bytes, data: bytes) -> bytes | tuple[bytes, bytes]:
    """What a job coalesces on within its function; empty means it does not.

    Unique "-" means "the payload is the key" (gearmand, Perl). Such keys are kept apart from a
    real unique equal to the payload, as in gearmand; an empty payload does not coalesce.
    """
    if unique == b"-":
        return (unique, data) if data else b""
    return unique


class Job:
    """One job. Foreground jobs have ``clients`` (connections waiting for the result)."""

    __slots__ = (
        "handle", "function", "unique", "key", "data", "priority", "background", "clients",
        "worker", "numerator", "denominator", "retries", "when", "reducer", "state",
        "timer", "stored",
    )

    def __init__(
        self,
        handle: bytes,
        function: Function,
        unique: bytes,
        data: bytes,
        priority: int,
        background: bool,
        when: int = 0,
        reducer: bytes = b"",
    ) -> None:
        self.handle = handle
        self.function = function
        self.unique = unique  # as sent: workers and `show unique jobs` see "-" as "-"
        self.key = coalescing_key(unique, data) if unique else b""
        self.data = data
        self.priority = priority
        self.background = background
        self.clients: list[Connection] = []
        self.worker: Connection | None = None
        self.numerator = b"0"
        self.denominator = b"0"
        self.retries = 0
        self.when = when
        self.reducer = reducer
        self.state = QUEUED
        self.timer: Any = None  # asyncio.TimerHandle for CAN_DO_TIMEOUT or an epoch job
        self.stored: bytes | None = None  # the unique it is kept under in the persistent queue

    def __repr__(self) -> str:
        return f"<Job {self.handle!r} {self.function.name!r} state={self.state}>"


class HandleFactory:
    """Makes job handles like gearmand's ``H:<hostname>:<counter>`` (at most 63 bytes)."""

    def __init__(self, prefix: str | None = None) -> None:
        if prefix is None:
            prefix = "H:" + socket.gethostname()[:40]
        self._prefix = prefix.encode() + b":"
        self._counter = itertools.count(1)

    def __call__(self) -> bytes:
        return self._prefix + str(next(self._counter)).encode()
