"""The client's core, on one event loop: connecting, choosing servers, submitting, failover.

``Client`` (blocking, on gearnb's I/O thread) and ``AsyncClient`` (on the caller's loop)
are thin faces over this. Order of calls: :meth:`ClientCore.submit` picks a live server (or
connects) and hands the :class:`~gearnb.client.submission.Submission` to that server's
:class:`~gearnb.client.connection.ClientConnection`, which writes it and applies the replies
to it; a refusal comes back to :meth:`refused` (next server), a lost connection to
:meth:`connection_lost` (unfinished submissions go to the next live server). What to do
with a job that failed - retry it or not - is the submitter's decision, not the core's.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from typing import TYPE_CHECKING

from .. import limits
from ..errors import NoJobServers, PacketTooLarge, ServerError
from ..protocol import PacketType
from ..addresses import split_address
from .connection import ClientConnection, submit_size
from .submission import REFUSED
from .task import JobStatus

if TYPE_CHECKING:
    from .submission import Submission

log = logging.getLogger("gearnb.client")
P = PacketType

# Reconnect back-off: 0.1 s doubling to 5 s - quick enough to ride out a server restart,
# slow enough not to hammer a server that is down.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
CONNECT_TIMEOUT = 5.0
# How long a submission waits for any server to come back before it fails with NoJobServers.
DEFAULT_SUBMIT_TIMEOUT = 30.0
# Room in a SUBMIT packet for what is not the data: a function name (up to 512 bytes, as in
# gearmand), a unique (64), an epoch time, NULs. Data below max_packet_size less this is not
# measured further.
SUBMIT_ROOM = 1024


class ServerState:
    __slots__ = ("address", "conn", "connecting", "failures", "retry_at")

    def __init__(self, address: str) -> None:
        self.address = address
        self.conn: ClientConnection | None = None
        self.connecting: asyncio.Future[ClientConnection] | None = None
        self.failures = 0
        self.retry_at = 0.0

    @property
    def live(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def usable(self, now: float) -> bool:
        return self.live or self.retry_at <= now


class ClientCore:
    """Owns the connections to the servers; runs only on its loop's thread."""

    def __init__(
        self,
        servers: list[str],
        *,
        submit_timeout: float = DEFAULT_SUBMIT_TIMEOUT,
        max_packet_size: int | str | None = None,
        ssl: object = None,
        namespace: str | bytes = b"",
    ) -> None:
        self.servers = [ServerState(a) for a in servers]
        # Put in front of every function name submitted, as libgearman's
        # gearman_client_set_namespace(): teams or tests share job servers without clashing.
        self.namespace = namespace.encode() if isinstance(namespace, str) else bytes(namespace)
        self.submit_timeout = submit_timeout
        self.max_packet_size = limits.max_packet_size(max_packet_size)
        self._data_unchecked = self.max_packet_size - SUBMIT_ROOM - len(self.namespace)
        self.ssl = ssl
        self._next = 0
        self.closed = False

    # -- connections --------------------------------------------------------------------
    async def connection(self, state: ServerState) -> ClientConnection:
        if state.live:
            assert state.conn is not None
            return state.conn
        if state.connecting is None:
            state.connecting = asyncio.ensure_future(self._connect(state))
        return await asyncio.shield(state.connecting)

    async def _connect(self, state: ServerState) -> ClientConnection:
        loop = asyncio.get_running_loop()
        host, port = split_address(state.address)
        conn: ClientConnection | None = None
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: ClientConnection(state.address, self, self.max_packet_size),
                    host, port, ssl=self.ssl),
                CONNECT_TIMEOUT)
            # Ask for WORK_EXCEPTION packets, and wait for the answer so that an ERROR from
            # an old server cannot be taken for the answer to a submit.
            try:
                await asyncio.wait_for(conn.request(P.OPTION_REQ, b"exceptions"), CONNECT_TIMEOUT)
            except ServerError as exc:
                log.info("%s does not support the exceptions option: %s", state.address, exc)
        except (OSError, asyncio.TimeoutError) as exc:
            if conn is not None:  # connected, but no answer to OPTION_REQ: don't leak it
                conn.abort()
            state.failures += 1
            delay = min(BACKOFF_FIRST * 2 ** (state.failures - 1), BACKOFF_MAX)
            state.retry_at = time.monotonic() + delay
            log.info("cannot reach job server %s (%s); next try in %.1f s", state.address, exc, delay)
            raise ConnectionError(f"cannot reach job server {state.address}: {exc}") from exc
        finally:
            state.connecting = None
        assert conn is not None
        if self.closed:  # close() ran while we were connecting: don't leave a socket open
            conn.abort()
            raise ConnectionError("the client is closed")
        state.conn = conn
        state.failures = 0
        return conn

    def connection_lost(self, conn: ClientConnection, unfinished: list[Submission]) -> None:
        for state in self.servers:
            if state.conn is conn:
                state.conn = None
                state.failures += 1
                state.retry_at = time.monotonic() + BACKOFF_FIRST
        if unfinished and not self.closed:
            log.warning("lost job server %s; resubmitting %d unfinished jobs elsewhere",
                        conn.address, len(unfinished))
        for sub in unfinished:
            if self.closed:
                sub.end(REFUSED, error=ConnectionError(f"lost connection to {conn.address}"))
            else:
                self.submit(sub, avoid=conn.address)

    # -- choosing a server --------------------------------------------------------------
    def _order(self, sub: Submission, avoid: str | None) -> list[ServerState]:
        n = len(self.servers)
        if sub.unique:
            # A unique always goes to the same server, so coalescing works across clients.
            start = zlib.crc32(sub.unique) % n
        else:
            start = self._next
            self._next = (self._next + 1) % n
        order = [self.servers[(start + i) % n] for i in range(n)]
        if avoid is not None and n > 1:
            order.sort(key=lambda s: s.address == avoid)  # stable: the avoided one goes last
        return order

    # -- submitting ---------------------------------------------------------------------
    def submit(self, sub: Submission, avoid: str | None = None) -> None:
        """Send ``sub`` to a live server now, or start connecting and send it then."""
        if self.closed:
            sub.end(REFUSED, error=NoJobServers("the client is closed"))
            return
        if len(sub.data) > self._data_unchecked and self._too_large(sub):
            return
        servers = self.servers
        if len(servers) == 1 and not sub.tried:
            # One server, connected: what the loop below comes to, without its set-up (this
            # runs for every submission).
            conn = servers[0].conn
            if conn is not None and not conn.closed:
                conn.submit(sub)
                return
        now = time.monotonic()
        for state in self._order(sub, avoid):
            if state.address in sub.tried:
                continue
            if state.live:
                assert state.conn is not None
                state.conn.submit(sub)
                return
            if not state.usable(now):
                continue  # backing off after a failure: fail over to the next one
            if sub.unique:
                # Not connected yet (or due for a retry): a unique waits for its own server
                # rather than taking whichever is live, or coalescing across clients breaks.
                break
            # Not connected yet: connect in the background, so that later submissions are
            # spread over every server instead of all going to the first one connected.
            if state.connecting is None:
                asyncio.ensure_future(self._connect_quietly(state))
        asyncio.ensure_future(self._submit_when_connected(sub, avoid))

    def _too_large(self, sub: Submission) -> bool:
        """End ``sub`` (REFUSED, PacketTooLarge) if its packet is over our limit; at once, before
        a byte of it is sent."""
        size = submit_size(sub, self.namespace)
        if size <= self.max_packet_size:
            return False
        sub.end(REFUSED, error=PacketTooLarge(limits.too_large(
            f"the job's packet ({sub.function.decode(errors='replace')})", size, self.max_packet_size,
            "this client's", limits.CLIENT_SETTING)))
        return True

    def flush(self) -> None:
        """Write every connection's queued submits now (after a batch was handed over)."""
        for state in self.servers:
            if state.conn is not None:
                state.conn.flush()  # nothing to write: no system call

    async def _connect_quietly(self, state: ServerState) -> None:
        try:
            await self.connection(state)
        except ConnectionError:
            pass  # _connect has set the back-off; tasks go elsewhere meanwhile

    async def _submit_when_connected(self, sub: Submission, avoid: str | None) -> None:
        deadline = time.monotonic() + self.submit_timeout
        errors: list[str] = []
        while not self.closed:
            now = time.monotonic()
            for state in self._order(sub, avoid):
                if state.address in sub.tried or not state.usable(now):
                    continue
                try:
                    conn = await self.connection(state)
                except ConnectionError as exc:
                    errors.append(str(exc))
                    continue
                conn.submit(sub)
                return
            if now >= deadline or all(s.address in sub.tried for s in self.servers):
                break
            wake = min((s.retry_at for s in self.servers), default=now + BACKOFF_FIRST)
            await asyncio.sleep(min(max(wake - time.monotonic(), 0.01), max(deadline - now, 0.01)))
        servers = ", ".join(s.address for s in self.servers)
        sub.end(REFUSED, error=NoJobServers(
            f"no job server accepted the job (tried {servers} for {self.submit_timeout:g} s). "
            f"Is a job server running there? Start one with 'gearnb server' or point "
            f"GEARMAN_SERVERS at yours. Last error: {errors[-1] if errors else 'refused'}"))

    def refused(self, sub: Submission, error: ServerError, conn: ClientConnection) -> None:
        """The server answered ERROR to a submit: try the next server, else it is REFUSED."""
        sub.tried.add(conn.address)
        if all(s.address in sub.tried for s in self.servers):
            sub.end(REFUSED, error=error)
        else:
            self.submit(sub)

    # -- queries ------------------------------------------------------------------------
    def own_server(self, address: str | None) -> str | None:
        """``address`` when it is one of this client's servers, else None."""
        return address if any(state.address == address for state in self.servers) else None

    def _state(self, address: str | None) -> ServerState:
        if address is None:
            return self.servers[0]
        for state in self.servers:
            if state.address == address:
                return state
        raise ValueError(f"{address} is not one of this client's servers")

    async def request(self, address: str | None, ptype: int, *args: bytes):  # type: ignore[no-untyped-def]
        conn = await self.connection(self._state(address))
        return await conn.request(ptype, *args)

    async def status(self, handle: bytes, address: str | None = None) -> JobStatus:
        targets = [self._state(address)] if address else self.servers
        last: JobStatus = JobStatus(False, False, 0, 0)
        for state in targets:
            try:
                packet = await self.request(state.address, P.GET_STATUS, handle)
            except ConnectionError:
                continue
            _, known, running, num, den = packet.args
            last = JobStatus(known == b"1", running == b"1", _int(num), _int(den))
            if last.known:
                return last
        return last

    async def statuses(self, jobs: list[tuple[bytes, str]]) -> list[JobStatus]:
        """GET_STATUS of many ``(handle, server)`` at once: pipelined, one round trip per server."""
        return list(await asyncio.gather(*(self.status(handle, server) for handle, server in jobs)))

    async def close(self) -> None:
        self.closed = True
        for state in self.servers:
            if state.conn is not None:
                state.conn.transport.close()  # type: ignore[union-attr]
                state.conn = None


def _int(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0
