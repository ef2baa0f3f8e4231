"""One client connection to one job server: pipelined submits, replies matched to tasks.

JOB_CREATED and ERROR answer submits in order (matched FIFO); WORK_* packets carry the
handle. Writes made in one turn of the event loop go out in one system call.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from ..sockets import tune
from ..errors import ServerError
from ..protocol import PRIORITY_NAMES, REQ, RES, SUBMIT_TYPE_FOR, Decoder, PacketType, ProtocolError, request
from ..protocol.codec import BIG_PACKET, encode_parts
from ..protocol.packets import DEFAULT_MAX_PACKET_SIZE, Packet

if TYPE_CHECKING:
    from .core import ClientCore
    from .task import Task

log = logging.getLogger("gearnb.client")
P = PacketType


def set_nodelay(sock: socket.socket | None) -> None:
    tune(sock)  # TCP_NODELAY and keepalive (gearnb/sockets.py)


def submit_type(task: Task) -> PacketType:
    """The packet type that submits ``task``."""
    if task.when is not None:
        return P.SUBMIT_JOB_EPOCH
    return SUBMIT_TYPE_FOR[(PRIORITY_NAMES[task.priority], task.background)]


def submit_packet(task: Task, namespace: bytes = b"") -> bytes:
    function = namespace + task.function if namespace else task.function
    if task.when is not None:
        return request(P.SUBMIT_JOB_EPOCH, function, task.unique,
                       str(int(task.when)).encode(), task.data)
    return request(submit_type(task), function, task.unique, task.data)


class ClientConnection(asyncio.BufferedProtocol):
    """Protocol for one server; decisions (retry, failover) are left to its ``owner``."""

    def __init__(self, address: str, owner: ClientCore, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self.address = address
        self.owner = owner
        self.decoder = Decoder(RES, max_packet_size=max_packet_size)
        self.transport: asyncio.Transport | None = None
        # Requests answered in order: a Task (JOB_CREATED / ERROR) or a Future for
        # OPTION_RES, STATUS_RES, STATUS_RES_UNIQUE and ECHO_RES.
        self.pending: deque[Any] = deque()
        self.jobs: dict[bytes, list[Task]] = {}  # handle -> tasks (coalesced tasks share one)
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.closed = False
        loop = asyncio.get_running_loop()
        self.lost = loop.create_future()
        # Kept: asyncio.get_running_loop() costs a getpid() system call on every call.
        self._call_soon = loop.call_soon

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport.get_extra_info("socket"))

    # asyncio.BufferedProtocol: the loop reads into the Decoder's buffer; a large result is
    # read straight into its final bytes object.
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(nbytes)  # type: ignore[arg-type]

    def data_received(self, data: bytes | int) -> None:
        try:
            packets = self.decoder.buffer_updated(data) if type(data) is int else self.decoder.feed(data)
        except ProtocolError as exc:
            log.error("job server %s sent bad data: %s; reconnecting", self.address, exc)
            self.abort()
            return
        for packet in packets:
            try:
                self._dispatch(packet)  # type: ignore[arg-type]
            except Exception:  # a bug in a callback must not kill the connection
                log.exception("while handling %r from %s", packet, self.address)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        unfinished: list[Task] = []
        seen: set[int] = set()
        for item in self.pending:
            if isinstance(item, asyncio.Future):
                if not item.done():
                    item.set_exception(ConnectionError(f"lost connection to {self.address}"))
            elif id(item) not in seen:
                seen.add(id(item))
                unfinished.append(item)
        self.pending.clear()
        for tasks in self.jobs.values():
            for task in tasks:
                if id(task) not in seen and not task.finished:
                    seen.add(id(task))
                    unfinished.append(task)
        self.jobs.clear()
        if not self.lost.done():
            self.lost.set_result(None)
        self.owner.connection_lost(self, unfinished)

    # -- writing ------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._call_soon(self._flush)

    def flush(self) -> None:
        """Write what is queued now rather than at the end of this turn of the loop (the
        scheduled flush then finds nothing left)."""
        self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.transport is not None and not self.closed and self._out:
            if any(len(part) >= BIG_PACKET for part in self._out):
                self.transport.writelines(self._out)  # large parts are not joined (copied) first
            else:
                self.transport.write(b"".join(self._out))
        self._out.clear()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- requests -----------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        self.pending.append(task)
        if len(task.data) >= BIG_PACKET and task.when is None:
            # Header, function and unique, then the payload itself: not copied into one packet.
            ptype = SUBMIT_TYPE_FOR[(PRIORITY_NAMES[task.priority], task.background)]
            function = self.owner.namespace + task.function
            for part in encode_parts(REQ, ptype, function, task.unique, task.data):
                self.send(part)
            return
        self.send(submit_packet(task, self.owner.namespace))

    def request(self, ptype: int, *args: bytes) -> asyncio.Future[Packet]:
        future: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_exception(ConnectionError(f"lost connection to {self.address}"))
            return future
        self.pending.append(future)
        self.send(request(ptype, *args))
        return future

    # -- replies ------------------------------------------------------------------------
    def _dispatch(self, packet: Packet) -> None:
        ptype, args = packet.type, packet.args
        if ptype in _WORK_TYPES:
            # Strip a trailing NUL from the handle: gearmand adds one to the WORK_FAIL it
            # makes from a WORK_EXCEPTION (gearman-ruby #16).
            handle = args[0].rstrip(b"\0")
            tasks = self.jobs.get(handle)
            if not tasks:
                return  # a job we no longer track (retried elsewhere, or coalesced and done)
            if ptype in _FINAL_TYPES:
                del self.jobs[handle]
            if len(tasks) == 1:
                _deliver(tasks[0], ptype, args, self)
            else:
                for task in list(tasks):  # a copy: delivering may resubmit and change the list
                    _deliver(task, ptype, args, self)
            return
        if ptype == _JOB_CREATED:
            task = self._pop_any()
            if task is None or isinstance(task, asyncio.Future):
                log.warning("job server %s sent JOB_CREATED for no submit", self.address)
                return
            handle = args[0]
            if not task.background:
                self.jobs.setdefault(handle, []).append(task)
            task._created(handle, self.address)
            return
        if ptype == P.ERROR:
            item = self._pop_any()
            # Named for the error's wording where a server lacks the feature (the Perl server).
            refused = None if item is None or isinstance(item, asyncio.Future) else submit_type(item).name
            error = ServerError(args[0].decode(errors="replace"), args[1].decode(errors="replace"), self.address,
                                request=refused)
            if item is None:
                log.warning("job server %s: %s", self.address, error)
            elif isinstance(item, asyncio.Future):
                if not item.done():
                    item.set_exception(error)
            else:
                self.owner.refused(item, error, self)
            return
        if ptype in (P.STATUS_RES, P.STATUS_RES_UNIQUE, P.ECHO_RES, P.OPTION_RES):
            item = self._pop_any()
            if isinstance(item, asyncio.Future) and not item.done():
                item.set_result(packet)
            return
        if ptype == P.NOOP:
            return
        log.warning("unexpected %r from %s", packet, self.address)

    def _pop_any(self) -> Any:
        return self.pending.popleft() if self.pending else None



# Plain ints for the hot paths: reading a PacketType member (P.X) costs ~0.2 us, as the enum
# metaclass routes class attribute access through Python code.
_JOB_CREATED = int(P.JOB_CREATED)
_WORK_COMPLETE = int(P.WORK_COMPLETE)
_FINAL_TYPES = frozenset((P.WORK_COMPLETE, P.WORK_FAIL, P.WORK_EXCEPTION))
_WORK_TYPES = frozenset((P.WORK_STATUS, P.WORK_DATA, P.WORK_WARNING)) | _FINAL_TYPES


def _deliver(task: Task, ptype: int, args: tuple[bytes, ...], conn: ClientConnection) -> None:
    """Apply one WORK_* packet to a task (on the I/O thread)."""
    if task.finished:
        return
    if ptype == _WORK_COMPLETE:
        task.result = args[1]
        task._emit("complete", args[1])
        task._finish(True)
    elif ptype == P.WORK_DATA:
        task._emit("data", args[1])
    elif ptype == P.WORK_WARNING:
        task._emit("warning", args[1])
    elif ptype == P.WORK_STATUS:
        try:
            status = (int(args[1]), int(args[2]))
        except ValueError:
            status = (0, 0)
        task.status = status
        task._emit("status", *status)
    elif ptype == P.WORK_EXCEPTION:
        task.exception_data = args[1]
        task.exception_text = args[1].decode(errors="replace")
        task._emit("exception", task.exception_text)
        conn.owner.job_failed(task)
    elif ptype == P.WORK_FAIL:
        conn.owner.job_failed(task)
