"""One client connection to one job server: pipelined submits, replies matched to submissions.

JOB_CREATED and ERROR answer submits in order (matched FIFO); WORK_* packets carry the
handle. Writes made in one turn of the event loop go out in one system call. A packet over
this client's max_packet_size is dropped by the decoder, which hands out its head: the job
it reports on (or the request it answers) fails with :class:`~gearnb.errors.PacketTooLarge`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from ..errors import PacketTooLarge, ServerError
from ..limits import CLIENT_SETTING, too_large
from ..protocol import PT, REQ, RES, Decoder, PacketType, ProtocolError, pack_parts, request
from ..protocol.codec import BIG_PACKET, OVERSIZE, PacketHead, check_args
from ..protocol.packets import Packet
from ..sockets import tune
from .submission import COMPLETE, EV_DATA, EV_STATUS, EV_WARNING, FAILED, REFUSED

if TYPE_CHECKING:
    from .core import ClientCore
    from .submission import Submission

log = logging.getLogger("gearnb.client")

# The packets that end a job, and every packet about a running job (all carry its handle first).
_FINAL_TYPES = frozenset((PT.WORK_COMPLETE, PT.WORK_FAIL, PT.WORK_EXCEPTION))
_WORK_TYPES = frozenset((PT.WORK_STATUS, PT.WORK_DATA, PT.WORK_WARNING)) | _FINAL_TYPES
_ANSWER_TYPES = frozenset((PT.STATUS_RES, PT.STATUS_RES_UNIQUE, PT.ECHO_RES, PT.OPTION_RES))


def submit_size(sub: Submission, namespace: bytes = b"") -> int:
    """The body size of ``sub``'s SUBMIT packet: what a max_packet_size limits."""
    size = len(namespace) + len(sub.function) + len(sub.unique) + len(sub.data) + 2
    return size if sub.when is None else size + len(str(int(sub.when))) + 1


def submit_parts(sub: Submission, namespace: bytes = b"") -> list[bytes]:
    """The SUBMIT packet of ``sub``, in pieces: a large payload is not copied into the packet."""
    function = namespace + sub.function if namespace else sub.function
    if sub.when is not None:
        args: tuple[bytes, ...] = (function, sub.unique, str(int(sub.when)).encode(), sub.data)
    else:
        args = (function, sub.unique, sub.data)
    check_args(sub.submit_type, args[:-1] + (b"",))  # a NUL in the function name or unique
    return pack_parts(REQ, sub.submit_type, args)


class ClientConnection(asyncio.BufferedProtocol):
    """Protocol for one server; decisions (retry, failover) are left to its ``owner``."""

    def __init__(self, address: str, owner: ClientCore, max_packet_size: int) -> None:
        self.address = address
        self.owner = owner
        self.decoder = Decoder(RES, max_packet_size=max_packet_size, raw=True)
        self.transport: asyncio.Transport | None = None
        # Requests answered in order: a Submission (JOB_CREATED / ERROR) or a Future for
        # OPTION_RES, STATUS_RES, STATUS_RES_UNIQUE and ECHO_RES.
        self.pending: deque[Any] = deque()
        self.jobs: dict[bytes, list[Submission]] = {}  # handle -> submissions (coalesced ones share one)
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
        tune(transport.get_extra_info("socket"))  # TCP_NODELAY and keepalive

    # asyncio.BufferedProtocol: the loop reads into the Decoder's buffer; a large result is
    # read straight into its final bytes object.
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        try:
            packets = self.decoder.buffer_updated(nbytes)
        except ProtocolError as exc:
            self._bad_data(exc)
            return
        self._received(packets)

    def data_received(self, data: bytes) -> None:
        """For transports that hand over bytes instead of reading into :meth:`get_buffer`."""
        try:
            packets = self.decoder.feed(data)
        except ProtocolError as exc:
            self._bad_data(exc)
            return
        self._received(packets)

    def _bad_data(self, exc: ProtocolError) -> None:
        log.error("job server %s sent bad data: %s; reconnecting", self.address, exc)
        self.abort()

    def _received(self, packets: list[tuple[int, Any]]) -> None:
        for ptype, args in packets:
            try:
                self._dispatch(ptype, args)
            except Exception:  # a bug in a listener must not kill the connection
                log.exception("while handling %s from %s", PT_NAMES.get(ptype, ptype), self.address)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        unfinished: list[Submission] = []
        seen: set[int] = set()
        for item in self.pending:
            if isinstance(item, asyncio.Future):
                if not item.done():
                    item.set_exception(ConnectionError(f"lost connection to {self.address}"))
            elif id(item) not in seen:
                seen.add(id(item))
                unfinished.append(item)
        self.pending.clear()
        for subs in self.jobs.values():
            for sub in subs:
                if id(sub) not in seen and not sub.finished:
                    seen.add(id(sub))
                    unfinished.append(sub)
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
    def submit(self, sub: Submission) -> None:
        self.pending.append(sub)
        for part in submit_parts(sub, self.owner.namespace):
            self.send(part)

    def request(self, ptype: int, *args: bytes) -> asyncio.Future[Packet]:
        future: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_exception(ConnectionError(f"lost connection to {self.address}"))
            return future
        self.pending.append(future)
        self.send(request(ptype, *args))
        return future

    # -- replies ------------------------------------------------------------------------
    def _dispatch(self, ptype: int, args: Any) -> None:
        if ptype in _WORK_TYPES:
            # Strip a trailing NUL from the handle: gearmand adds one to the WORK_FAIL it
            # makes from a WORK_EXCEPTION (gearman-ruby #16).
            handle = args[0].rstrip(b"\0")
            subs = self.jobs.get(handle)
            if not subs:
                return  # a job we no longer track (retried elsewhere, or coalesced and done)
            if ptype in _FINAL_TYPES:
                del self.jobs[handle]
            if len(subs) == 1:
                _deliver(subs[0], ptype, args)
            else:
                for sub in list(subs):  # a copy: delivering may resubmit and change the list
                    _deliver(sub, ptype, args)
            return
        if ptype == PT.JOB_CREATED:
            sub = self._pop_any()
            if sub is None or isinstance(sub, asyncio.Future):
                log.warning("job server %s sent JOB_CREATED for no submit", self.address)
                return
            handle = args[0]
            if not sub.background:
                self.jobs.setdefault(handle, []).append(sub)
            sub.created(handle, self.address)
            return
        if ptype == PT.ERROR:
            item = self._pop_any()
            # Named for the error's wording where a server lacks the feature (the Perl server).
            refused = None if item is None or isinstance(item, asyncio.Future) else PT_NAMES[item.submit_type]
            code, text = args[0].decode(errors="replace"), args[1].decode(errors="replace")
            error = (PacketTooLarge(text, self.address, refused) if code == "ARGUMENT_TOO_LARGE"
                     else ServerError(code, text, self.address, request=refused))
            if item is None:
                log.warning("job server %s: %s", self.address, error)
            elif isinstance(item, asyncio.Future):
                if not item.done():
                    item.set_exception(error)
            else:
                self.owner.refused(item, error, self)
            return
        if ptype in _ANSWER_TYPES:
            item = self._pop_any()
            if isinstance(item, asyncio.Future) and not item.done():
                item.set_result(Packet(RES, ptype, tuple(args)))
            return
        if ptype == PT.NOOP:
            return
        if ptype == OVERSIZE:
            self._oversize(args)
            return
        log.warning("unexpected %s from %s", PT_NAMES.get(ptype, ptype), self.address)

    def _oversize(self, head: PacketHead) -> None:
        """A packet over our max_packet_size came (and was dropped): fail what it was for."""
        name = PT_NAMES.get(head.type, str(head.type))
        if head.type in _WORK_TYPES and head.args:
            handle = head.args[0].rstrip(b"\0")
            what = f"the {name} of job {handle.decode(errors='replace')}"
            error = PacketTooLarge(too_large(what, head.size, self.decoder.max_packet_size, "this client's",
                                             CLIENT_SETTING), self.address)
            log.error("%s", error)
            for sub in self.jobs.pop(handle, ()):  # no later packet of that job is taken
                sub.end(REFUSED, error=error)
            return
        error = PacketTooLarge(too_large(f"the {name} packet", head.size, self.decoder.max_packet_size,
                                         "this client's", CLIENT_SETTING), self.address)
        log.error("%s", error)
        if head.type in _ANSWER_TYPES:
            item = self._pop_any()
            if isinstance(item, asyncio.Future) and not item.done():
                item.set_exception(error)

    def _pop_any(self) -> Any:
        return self.pending.popleft() if self.pending else None


PT_NAMES = {member.value: member.name for member in PacketType}


def _deliver(sub: Submission, ptype: int, args: Any) -> None:
    """Apply one WORK_* packet to a submission (on the I/O thread)."""
    if sub.finished:
        return
    if ptype == PT.WORK_COMPLETE:
        sub.end(COMPLETE, args[1])
    elif ptype == PT.WORK_DATA:
        sub.listener(sub, EV_DATA, args[1])
    elif ptype == PT.WORK_WARNING:
        sub.listener(sub, EV_WARNING, args[1])
    elif ptype == PT.WORK_STATUS:
        try:
            status = (int(args[1]), int(args[2]))
        except ValueError:
            status = (0, 0)
        sub.status = status
        sub.listener(sub, EV_STATUS, status)
    elif ptype == PT.WORK_EXCEPTION:
        sub.exception_data = args[1]
        sub.end(FAILED)
    else:  # WORK_FAIL
        sub.end(FAILED)
