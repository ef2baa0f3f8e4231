"""Jobs held by the job server: their life (one ``state`` field), their links to the clients
waiting for them and to the worker running them, and the handles that name them.

A job is QUEUED in its function's priority queue, or SCHEDULED (an epoch job not yet due);
a worker's grab makes it RUNNING; a result, a failure, a cancel or its clients leaving make
it DONE. Requeueing (its worker died, CAN_DO_TIMEOUT) takes it from RUNNING back to QUEUED.
Links are made and broken here only, both sides at once: ``job.clients`` with each
client's ``jobs``, ``job.worker`` with that worker's ``jobs``.
"""

from __future__ import annotations

import itertools
import socket
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from .clients import ClientRecord
    from .functions import Function
    from .workers import WorkerRecord

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
    """One job. Foreground jobs have ``clients`` (the clients waiting for the result)."""

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
        key: bytes | tuple[bytes, bytes],
        data: bytes,
        priority: int,
        background: bool,
        when: int = 0,
        reducer: bytes = b"",
        client: ClientRecord | None = None,
    ) -> None:
        self.handle = handle
        self.function = function
        self.unique = unique  # as sent: workers and `show unique jobs` see "-" as "-"
        self.key = key  # coalescing_key(unique, data), or b"": not coalesced
        self.data = data
        self.priority = priority
        self.background = background
        # The clients waiting for it; the first one, if any, is linked at once (both sides).
        self.clients: list[ClientRecord] = []
        if client is not None:
            self.clients.append(client)
            client.jobs[self] = None
        self.worker: WorkerRecord | None = None
        self.numerator = b"0"
        self.denominator = b"0"
        self.retries = 0
        self.when = when
        self.reducer = reducer
        self.state = QUEUED
        self.timer: Any = None  # the timer handle of CAN_DO_TIMEOUT or of an epoch job
        self.stored: bytes | None = None  # the unique it is kept under in the persistent queue

    # -- links ----------------------------------------------------------------------------
    def link_client(self, client: ClientRecord) -> None:
        """``client`` waits for this job's result (a foreground submit, or one coalesced onto it)."""
        if self not in client.jobs:  # both sides change together, so one tells for both
            self.clients.append(client)
            client.jobs[self] = None

    def unlink_client(self, client: ClientRecord) -> None:
        if self in client.jobs:
            del client.jobs[self]
            self.clients.remove(client)


    def assign(self, worker: WorkerRecord) -> None:
        """QUEUED -> RUNNING on ``worker`` (after its function's queue gave the job up)."""
        self.state = RUNNING
        self.worker = worker
        worker.jobs[self] = None
        self.function.running += 1

    def unassign(self) -> None:
        """RUNNING -> not on any worker (the caller sets the next state)."""
        self.function.running -= 1
        worker = self.worker
        if worker is not None:
            worker.jobs.pop(self, None)
            self.worker = None
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None

    def end(self) -> None:
        """To DONE from any state: out of its queue or off its worker, its timer cancelled,
        its clients unlinked (the server forgets it next: Job tables are the server's)."""
        state = self.state
        if state == RUNNING:
            self.unassign()
        elif state == QUEUED:
            self.function.remove(self)
        elif state == SCHEDULED:
            self.function.scheduled -= 1
        self.state = DONE
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None
        clients = self.clients
        if clients:
            for client in clients:
                del client.jobs[self]
            self.clients = []

    def __repr__(self) -> str:
        return f"<Job {self.handle!r} {self.function.name!r} state={self.state}>"


def handles(prefix: str | None = None) -> Iterator[bytes]:
    """Job handles like gearmand's ``H:<hostname>:<counter>`` (at most 63 bytes), endless.

    Made by iterators written in C: ``next(handles)`` runs no Python code (one job, one handle).
    """
    if prefix is None:
        prefix = "H:" + socket.gethostname()[:40]
    return map((prefix + ":").encode().__add__, map(str.encode, map(str, itertools.count(1))))
