"""When the job server's replies are written: the connections with bytes waiting, and the
policy that holds a busy client's replies back so that they leave in fewer writes.

Order of calls: handlers queue bytes with :meth:`Connection.send`, which lists the connection
here as dirty; after each read the connection asks :meth:`Outbox.flush_soon`; at the end of
that turn of the event loop :meth:`Outbox.flush` writes every dirty connection's bytes in one
write call each (the persistent queue commits first: no JOB_CREATED leaves before its job
is stored). Code that runs outside a read (timers) calls :meth:`flush` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .connections import Connection

# Replies to a client that keeps many jobs in flight are held back while the loop is busy,
# so that they leave in fewer, larger writes: the client then reads (and refills its window)
# in batches too, as gearmand's clients do (a read costs CPU on both sides). A client with
# fewer jobs outstanding than this (Client.do: one) is answered at once.
BATCH_MIN_CLIENT_JOBS = 16
# At most this many turns of the loop, and this many bytes, are held: a busy loop's turn
# takes tens of microseconds, so replies wait well under a millisecond.
BATCH_MAX_TURNS = 8
BATCH_MAX_BYTES = 64 * 1024


class Outbox:
    def __init__(self, call_soon: Callable[..., object] | None,
                 before_write: Callable[[], None] | None = None) -> None:
        self.call_soon = call_soon  # the serving loop's; None: flush() is called by hand
        self.before_write = before_write
        self.dirty: list[Connection] = []  # connections with bytes queued (Connection.send)
        self.held: dict[Connection, int] = {}  # held back -> turns held so far
        self._scheduled = False
        self._reads = 0  # reads handled so far; equal to _reads_seen after an idle turn
        self._reads_seen = 0

    def flush_soon(self) -> None:
        """A read was handled: write what it caused at the end of this turn of the loop, so
        that the replies several connections' packets cause to one peer leave in one write."""
        self._reads += 1
        if not self._scheduled and self.call_soon is not None:
            self._scheduled = True
            self.call_soon(self.flush, True)  # at the end of the turn: hold busy clients

    def flush(self, hold_busy_clients: bool = False) -> None:
        """Write every dirty connection's bytes, one write call each.

        ``hold_busy_clients`` (at the end of a turn): while the loop keeps finding reads, a
        client with many jobs outstanding keeps its replies for another turn (see
        BATCH_MIN_CLIENT_JOBS); workers and other clients are written to at once.
        """
        self._scheduled = False
        if self.before_write is not None:
            self.before_write()
        dirty = self.dirty
        if not dirty:
            return
        self.dirty = []
        if hold_busy_clients:
            hold_busy_clients = self._reads != self._reads_seen
            self._reads_seen = self._reads
        held = self.held
        keep = []
        for conn in dirty:
            if (hold_busy_clients and conn.client is not None and _busy_client(conn)
                    and held.get(conn, 0) < BATCH_MAX_TURNS):
                held[conn] = held.get(conn, 0) + 1
                keep.append(conn)
                continue
            if held:
                held.pop(conn, None)
            conn.write_out()
        if keep:
            # Nothing else can have been queued meanwhile: handlers do not run in here.
            self.dirty = keep
            self._scheduled = True
            assert self.call_soon is not None
            self.call_soon(self.flush, True)  # the loop polls without blocking first

    def forget(self, conn: Connection) -> None:
        """``conn`` closed: nothing of it is held any more."""
        self.held.pop(conn, None)


def _busy_client(conn: Connection) -> bool:
    """A connection that only submits, with many jobs outstanding, and not many bytes held."""
    client = conn.client
    worker = conn.worker
    return (client is not None and len(client.jobs) >= BATCH_MIN_CLIENT_JOBS and conn.out_bytes < BATCH_MAX_BYTES
            and (worker is None or not worker.functions) and not conn.closed)
