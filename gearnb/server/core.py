"""The job server's state and what it does with each packet.

Named after gearmand's pieces: jobs (:mod:`.jobs`), functions and their queues
(:mod:`.functions`), the client and worker sides of a connection (:mod:`.clients`,
:mod:`.workers`, where the sleep/wake machine lives), connections (:mod:`.connections`),
replies waiting to be written (:mod:`.outbox`), admin text (:mod:`.admin`), what the server
may hold and who waits or leaves when it is full (:mod:`.bounds`). Behaviour
follows gearmand 1.1.x where ../shared/reference/gearman-protocol.md says so, with its known
bugs fixed (epoch jobs wake workers; no thundering herd; stale sleepers cannot absorb
wake-ups).

Order of calls: the listener makes a :class:`JobServer` with its event loop as ``timers``;
each connection hands what it decoded to :meth:`JobServer.received`, which runs one handler
per packet (the table in ``handlers``, made once); handlers change jobs, functions and
records through the primitives below - :meth:`submit`, :meth:`_enqueue`, :meth:`grab`,
:meth:`_requeue`, :meth:`_end_job` - and queue replies on connections; the outbox writes them.
No sockets here, and no event loop but the injected ``timers``.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .. import limits
from ..protocol import ADMIN_LINE, HIGH, PT, RES, SUBMIT_TYPES, ProtocolError
from ..protocol import pack, pack_parts
from ..protocol.codec import BIG_PACKET, LARGE, OVERSIZE, RECV_BUFFER
from ..protocol.packets import ARG_COUNT, MAX_UNIQUE_SIZE
from .admin import AdminCommands
from .bounds import Bounds
from .clients import ClientRecord
from .functions import Function
from .jobs import DONE, QUEUED, RUNNING, SCHEDULED, Job, coalescing_key, handles
from .outbox import Outbox
from .workers import AWAKE, Timers, Wakeups, WorkerRecord

if TYPE_CHECKING:
    from ..visual.recorder import TraceHub
    from .connections import Connection
    from .persistence import Queue

log = logging.getLogger("gearnb.server")

Handler = Callable[["Connection", Sequence[bytes]], None]
NO_JOB_PACKET = pack(RES, PT.NO_JOB, ())
# A job whose worker's connection dropped this many times while running it is failed
# (WORK_FAIL to its clients) instead of being queued again. gearmand's default is 0, "for
# ever": one job that kills every worker that takes it then keeps a cluster busy for ever.
DEFAULT_JOB_RETRIES = 3


class JobServer:
    """All state of one job server, independent of sockets (see :mod:`.listener`).

    ``timers`` is the serving event loop (``call_soon``, ``call_later``); without it, epoch
    jobs, CAN_DO_TIMEOUT, wake-up checks and the bounds' timeouts do not run, and replies are
    written only when :meth:`Outbox.flush` is called (in-process uses such as
    bench/queued_memory.py). ``max_packet_size`` (default: gearnb.limits), ``max_memory``,
    ``max_connections``, ``first_packet_timeout`` and ``stall_timeout``: see :mod:`.bounds`.
    """

    def __init__(
        self,
        *,
        timers: Timers | None = None,
        max_packet_size: int | str | None = None,
        job_retries: int = DEFAULT_JOB_RETRIES,
        handle_prefix: str | None = None,
        exceptions_default: bool = False,
        queue: Queue | None = None,
        can_do_timeout_seconds: bool = False,
        **bounds: Any,
    ) -> None:
        self.timers = timers
        self.max_packet_size = limits.max_packet_size(max_packet_size)
        # Bytes of job data kept and of large packets being received (bounds.py).
        self.held = 0
        # CAN_DO_TIMEOUT in seconds, as the Perl Gearman::Server reads it and Perl workers send it.
        self.can_do_timeout_seconds = can_do_timeout_seconds
        # As gearmand 1.1.x: 0 means unlimited; N means a job whose worker died N times is failed.
        self.job_retries = job_retries
        self.exceptions_default = exceptions_default
        self.handles = handles(handle_prefix)
        self.jobs: dict[bytes, Job] = {}
        self.functions: dict[bytes, Function] = {}
        self.connections: dict[Connection, None] = {}
        self.queue = queue
        self.outbox = Outbox(timers.call_soon if timers is not None else None,
                             before_write=queue.commit if queue is not None else None)
        self.wakeups = Wakeups(timers, self.outbox.flush)
        # Where every connection's decoder reads between large packets: one for all, as the
        # loop reads one socket at a time and the decoder copies out what it keeps.
        self.read_buffer = memoryview(bytearray(RECV_BUFFER))
        self.started = time.time()
        self.admin = AdminCommands(self)
        # gearnb.visual.trace's recorder while someone traces; checked once per read, per write
        # (Connection.write_out) and per closed connection, never per packet.
        self.tracer: TraceHub | None = None
        self.handlers: dict[int, Handler] = {
            PT.CAN_DO: self.can_do,
            PT.CANT_DO: self.cant_do,
            PT.RESET_ABILITIES: self.reset_abilities,
            PT.CAN_DO_TIMEOUT: self.can_do_timeout,
            PT.PRE_SLEEP: self.pre_sleep,
            PT.GRAB_JOB: functools.partial(self.grab, PT.JOB_ASSIGN),
            PT.GRAB_JOB_UNIQ: functools.partial(self.grab, PT.JOB_ASSIGN_UNIQ),
            PT.GRAB_JOB_ALL: functools.partial(self.grab, PT.JOB_ASSIGN_ALL),
            PT.WORK_STATUS: self.work_status,
            PT.WORK_COMPLETE: self.work_complete,
            PT.WORK_FAIL: self.work_fail,
            PT.WORK_EXCEPTION: self.work_exception,
            PT.WORK_DATA: self.work_data,
            PT.WORK_WARNING: self.work_warning,
            PT.GET_STATUS: self.get_status,
            PT.GET_STATUS_UNIQUE: self.get_status_unique,
            PT.ECHO_REQ: self.echo,
            PT.SET_CLIENT_ID: self.set_client_id,
            PT.OPTION_REQ: self.option_req,
            ADMIN_LINE: self.admin.handle_line,
        }
        for ptype in SUBMIT_TYPES:
            self.handlers[ptype] = self._submit_handler(ptype)
        # What each connection's decoder hands out per packet: its handler, found with the
        # lookup that gives the argument count (one dict lookup per packet). Types the server
        # does not take (ALL_YOURS, SUBMIT_JOB_SCHED, response types) decode too and are
        # answered as gearmand does.
        self.dispatch: dict[int, tuple[int, Handler]] = {
            ptype: (ARG_COUNT.get(ptype, 0), self.handlers.get(ptype) or functools.partial(self._unexpected, ptype))
            for ptype in [*ARG_COUNT, ADMIN_LINE]}
        self.bounds = Bounds(self, **bounds)
        # The head of a large packet (lazy decoder) and of one over max_packet_size: not a
        # packet yet, so not one that makes a connection authenticated (bounds.first_items).
        self.dispatch[LARGE] = (0, self.bounds.large_packet)
        self.dispatch[OVERSIZE] = (0, self.bounds.oversize)
        self.head_handlers = frozenset((self.dispatch[LARGE][1], self.dispatch[OVERSIZE][1]))
        self.packet_types = {handler: ptype for ptype, (_, handler) in self.dispatch.items()}  # for traces

    # -- connections ----------------------------------------------------------------------
    def connection_made(self, conn: Connection) -> None:
        self.connections[conn] = None
        self.bounds.connection_made(conn)

    def received(self, conn: Connection, items: list[tuple[Handler, Any]]) -> None:
        """Run each ``(handler, args)`` decoded from one read (see ``dispatch``), in order
        (LARGE and OVERSIZE items carry a large packet's head)."""
        if conn.newcomer:
            self.bounds.first_items(conn, items)
        if self.tracer is not None:  # the tracer reads packet types
            types = self.packet_types
            self.tracer.received(conn, [(types[handler], args) for handler, args in items
                                        if types[handler] >= ADMIN_LINE])
        for handler, args in items:
            if conn.closed:
                break
            try:
                handler(conn, args)
            except ProtocolError as exc:
                conn.protocol_error(exc)
                break
        self.outbox.flush_soon()

    def _unexpected(self, ptype: int, conn: Connection, args: Sequence[bytes]) -> None:
        """A well-formed packet the server does not take (ALL_YOURS, SUBMIT_JOB_SCHED, a
        response type): gearmand answers ERROR and keeps the connection open."""
        conn.error(b"INVALID_COMMAND", b"Command not expected")

    def connection_lost(self, conn: Connection) -> None:
        if self.tracer is not None:  # before the requeues and wake-ups it causes
            self.tracer.closed(conn)
        self.connections.pop(conn, None)
        self.bounds.connection_lost(conn)
        worker = conn.worker
        if worker is not None:
            woken_for = self.wakeups.forget(worker)
            for job in list(worker.jobs):
                # The worker died mid-job: run it elsewhere (gearmand requeues too).
                self._requeue(job, count_retry=True)
            for function in list(worker.functions):
                worker.cant_do(function)
            if woken_for is not None:
                # It died between our NOOP and its GRAB_JOB: the job it was woken for needs
                # another sleeper.
                self.wakeups.wake(woken_for)
        client = conn.client
        if client is not None:
            for job in list(client.jobs):
                self._client_left(job, client)

    def _client_of(self, conn: Connection) -> ClientRecord:
        client = conn.client
        if client is None:
            client = conn.client = ClientRecord(conn, self.exceptions_default)
        return client

    def _worker_of(self, conn: Connection) -> WorkerRecord:
        worker = conn.worker
        if worker is None:
            worker = conn.worker = WorkerRecord(conn)
        return worker

    def function(self, name: bytes) -> Function:
        """The named function, created on first mention; like gearmand, never forgotten."""
        function = self.functions.get(name)
        if function is None:
            if not name:
                raise ProtocolError("empty function name")
            function = self.functions[name] = Function(name)
        return function

    def restore(self) -> int:
        """Queue the background jobs kept in the persistent queue (at start-up)."""
        if self.queue is None:
            return 0
        count = 0
        for stored in list(self.queue.load()):
            job = self.submit(stored.priority, True, None, (stored.function, stored.unique, stored.data),
                              when=stored.when, stored=stored.unique)
            count += job is not None
        if count:
            log.info("restored %d background jobs from the persistent queue", count)
        return count

    # -- submitting ---------------------------------------------------------------------
    def _submit_handler(self, ptype: int) -> Handler:
        priority, background = SUBMIT_TYPES[ptype]
        if ptype not in (PT.SUBMIT_JOB_EPOCH, PT.SUBMIT_REDUCE_JOB, PT.SUBMIT_REDUCE_JOB_BACKGROUND):
            return functools.partial(self.submit, priority, background)  # (conn, args) follow
        epoch = ptype == PT.SUBMIT_JOB_EPOCH

        def submit_with_extra(conn: Connection, args: Sequence[bytes]) -> None:
            when = 0
            reducer = b""
            if epoch:
                try:
                    when = int(args[2])
                except ValueError:
                    raise ProtocolError("SUBMIT_JOB_EPOCH: the time is not a number") from None
            else:
                reducer = args[2]
            self.submit(priority, background, conn, (args[0], args[1], args[-1]), when, reducer)

        return submit_with_extra

    def submit(
        self,
        priority: int,
        background: bool,
        conn: Connection | None,
        args: Sequence[bytes],
        when: int = 0,
        reducer: bytes = b"",
        stored: bytes | None = None,
    ) -> Job | None:
        """Create a job from a submit's ``(function, unique, data)``, or coalesce it onto the
        job with that unique; answer JOB_CREATED or ERROR to ``conn``.

        ``stored``: restored from the persistent queue under that unique (already kept there).
        """
        name, unique, data = args
        function = self.functions.get(name) or self.function(name)
        key: bytes | tuple[bytes, bytes] = b""
        if unique:
            if len(unique) > MAX_UNIQUE_SIZE:
                if conn is not None:
                    conn.error(b"ARGUMENT_TOO_LARGE", b"Unique value too large")
                return None
            key = coalescing_key(unique, data)
            job = function.by_unique.get(key) if key else None
            if job is not None:
                # Coalesce: same (function, unique) gets the same handle; a foreground submitter
                # listens to the running job too.
                if conn is not None:
                    conn.send(pack(RES, PT.JOB_CREATED, (job.handle,)))
                    if not background:
                        job.link_client(conn.client or self._client_of(conn))
                return job
        if function.max_queue[priority] and function.queue_full(priority):
            if conn is not None:
                conn.error(b"QUEUE_ERROR", b"Job queue is full")
            return None
        client = None
        if conn is not None and not background:
            client = conn.client or self._client_of(conn)
        job = Job(next(self.handles), function, unique, key, data, priority, background, when, reducer, client)
        self.jobs[job.handle] = job
        if len(data) >= BIG_PACKET:  # counted against --max-memory (bounds.py: large jobs only)
            self.held += len(data)
        if key:
            function.by_unique[key] = job
        if background and self.queue is not None:
            job.stored = stored or self.queue.store(job)
        if conn is not None:
            conn.send(pack(RES, PT.JOB_CREATED, (job.handle,)))
        if when and when > time.time() and self.timers is not None:
            job.state = SCHEDULED
            function.scheduled += 1
            job.timer = self.timers.call_later(when - time.time(), self._epoch_due, job)
        else:
            self._enqueue(job)
        return job

    def _epoch_due(self, job: Job) -> None:
        if job.state != SCHEDULED:
            return
        job.timer = None
        job.function.scheduled -= 1
        self._enqueue(job)  # ... and wake a worker: gearmand <= 1.1.22 forgot to (#343)
        self.outbox.flush()

    def _enqueue(self, job: Job, front: bool = False) -> None:
        job.state = QUEUED
        function = job.function
        function.push(job, front)
        if function.sleepers:
            self.wakeups.wake(function)

    def _client_left(self, job: Job, client: ClientRecord) -> None:
        job.unlink_client(client)
        if not job.clients and not job.background and job.state in (QUEUED, SCHEDULED):
            # Nobody waits for it and it has not started: drop it rather than run it.
            self._end_job(job)

    # -- workers: abilities and sleep -----------------------------------------------------
    def can_do(self, conn: Connection, args: Sequence[bytes]) -> None:
        function = self.function(args[0])
        worker = self._worker_of(conn)
        worker.timeouts.pop(function.name, None)
        if worker.can_do(function):
            self.wakeups.ability_added(worker, function)

    def can_do_timeout(self, conn: Connection, args: Sequence[bytes]) -> None:
        function = self.function(args[0])
        try:
            timeout = float(args[1])  # Perl workers may send "1.5" (seconds)
        except ValueError:
            raise ProtocolError("CAN_DO_TIMEOUT: the timeout is not a number") from None
        worker = self._worker_of(conn)
        if worker.can_do(function):
            self.wakeups.ability_added(worker, function)
        if timeout > 0:
            # Milliseconds, as gearmand >= 1.1.19, which also raises anything below 1 s to 1 s
            # (0 or negative: no timeout); seconds for Perl worker fleets (see __init__).
            worker.timeouts[function.name] = (int(timeout * 1000) if self.can_do_timeout_seconds
                                               else max(int(timeout), 1000))

    def cant_do(self, conn: Connection, args: Sequence[bytes]) -> None:
        function = self.functions.get(args[0])
        if function is not None and conn.worker is not None:
            conn.worker.cant_do(function)

    def reset_abilities(self, conn: Connection, args: Sequence[bytes]) -> None:
        worker = conn.worker
        if worker is not None:
            for function in list(worker.functions):
                worker.cant_do(function)
            worker.timeouts.clear()

    def pre_sleep(self, conn: Connection, args: Sequence[bytes]) -> None:
        self.wakeups.pre_sleep(self._worker_of(conn))

    # -- grabbing -----------------------------------------------------------------------
    def grab(self, reply: int, conn: Connection, args: Sequence[bytes] = ()) -> None:
        """GRAB_JOB*: assign the worker the job it should run next and send it as ``reply``
        (the JOB_ASSIGN type that answers that grab), or answer NO_JOB."""
        worker = conn.worker
        if worker is None:  # a connection that never said CAN_DO
            conn.send(NO_JOB_PACKET)
            return
        woken_for = None
        if worker.state != AWAKE:
            woken_for = worker.woken_for
            self.wakeups.awake(worker)
        functions = worker.functions
        job = None
        if len(functions) == 1:
            for function in functions:
                job = function.pop()
        elif functions:
            # Highest priority across the worker's functions; FIFO within a priority.
            best: Function | None = None
            best_priority = 3
            for function in functions:
                priority = function.head_priority()
                if priority is not None and priority < best_priority:
                    best, best_priority = function, priority
                    if priority == HIGH:
                        break
            if best is not None:
                job = best.pop()
        if woken_for is not None and (job is None or job.function is not woken_for):
            self.wakeups.wake(woken_for)  # it was woken for another function's job: wake another
        if job is None:
            conn.send(NO_JOB_PACKET)
            return
        job.assign(worker)
        if worker.timeouts:
            timeout = worker.timeouts.get(job.function.name)
            if timeout and self.timers is not None:
                job.timer = self.timers.call_later(timeout / 1000.0, self._timed_out, job, worker)
        if reply == PT.JOB_ASSIGN_UNIQ:
            args: tuple[bytes, ...] = (job.handle, job.function.name, job.unique, job.data)
        elif reply == PT.JOB_ASSIGN:
            args = (job.handle, job.function.name, job.data)
        elif job.reducer:
            args = (job.handle, job.function.name, job.unique, job.reducer, job.data)
        else:  # gearmand answers GRAB_JOB_ALL with JOB_ASSIGN_UNIQ when the job has no reducer
            reply = PT.JOB_ASSIGN_UNIQ
            args = (job.handle, job.function.name, job.unique, job.data)
        # Unchecked: handles are ours, names and uniques came as leading arguments (no NUL).
        if len(job.data) < BIG_PACKET:
            conn.send(pack(RES, reply, args))
        else:
            for part in pack_parts(RES, reply, args):  # a large job's data is not copied
                conn.send(part)

    def _timed_out(self, job: Job, worker: WorkerRecord) -> None:
        """CAN_DO_TIMEOUT expired: take the job back silently and queue it again (gearmand)."""
        job.timer = None
        if job.worker is worker and job.state == RUNNING:
            log.info("job %r timed out on worker fd %d; requeued", job.handle, worker.conn.fd)
            self._requeue(job, count_retry=True)
            self.outbox.flush()

    def _requeue(self, job: Job, count_retry: bool) -> None:
        """A running job's worker is gone (or timed out): queue it again, at the front."""
        if job.state != RUNNING:
            return
        job.unassign()
        job.numerator = job.denominator = b"0"
        if not job.background and not job.clients:
            self._end_job(job)  # nobody is waiting any more
            return
        if count_retry:
            job.retries += 1
            if self.job_retries and job.retries >= self.job_retries:
                log.warning("job %r failed after %d retries", job.handle, job.retries)
                self._to_clients(job, PT.WORK_FAIL, (job.handle,))
                self._end_job(job)
                return
        self._enqueue(job, front=True)

    # -- results from workers -----------------------------------------------------------
    def _worker_job(self, conn: Connection, handle: bytes) -> Job | None:
        job = self.jobs.get(handle)
        worker = conn.worker
        if job is None or worker is None or job.worker is not worker:
            conn.error(b"JOB_NOT_FOUND", b"Job given in work result not found")
            return None
        return job

    def _to_clients(self, job: Job, ptype: int, args: Sequence[bytes], source: Connection | None = None) -> None:
        """Send one packet to every client waiting for ``job``, encoded once; a slow client
        holds ``source``, the worker that sent it (bounds.py)."""
        clients = job.clients
        if not clients:
            return
        # Unchecked: the worker's packet decoded, so its arguments fit the type.
        if len(args[-1]) < BIG_PACKET:
            packet = pack(RES, ptype, args)
            for client in clients:
                conn = client.conn
                conn.send(packet)
                if conn.pauses:  # not read from: perhaps a slow client
                    self.bounds.hold(source, conn)
            return
        parts = pack_parts(RES, ptype, args)  # a large result is not copied
        for client in clients:
            conn = client.conn
            for part in parts:
                conn.send(part)
            if conn.pauses:
                self.bounds.hold(source, conn)

    def work_status(self, conn: Connection, args: Sequence[bytes]) -> None:
        job = self._worker_job(conn, args[0])
        if job is not None:
            job.numerator, job.denominator = args[1], args[2]
            self._to_clients(job, PT.WORK_STATUS, args, conn)

    def work_data(self, conn: Connection, args: Sequence[bytes]) -> None:
        """WORK_DATA: passed on to every client waiting for the job."""
        job = self._worker_job(conn, args[0])
        if job is not None:
            self._to_clients(job, PT.WORK_DATA, args, conn)

    def work_warning(self, conn: Connection, args: Sequence[bytes]) -> None:
        """WORK_WARNING: passed on to every client waiting for the job."""
        job = self._worker_job(conn, args[0])
        if job is not None:
            self._to_clients(job, PT.WORK_WARNING, args, conn)

    def work_complete(self, conn: Connection, args: Sequence[bytes]) -> None:
        job = self._worker_job(conn, args[0])
        if job is not None:
            self._to_clients(job, PT.WORK_COMPLETE, args, conn)
            self._end_job(job)

    def work_fail(self, conn: Connection, args: Sequence[bytes]) -> None:
        job = self._worker_job(conn, args[0])
        if job is not None:
            self._to_clients(job, PT.WORK_FAIL, (job.handle,))
            self._end_job(job)

    def work_exception(self, conn: Connection, args: Sequence[bytes]) -> None:
        job = self._worker_job(conn, args[0])
        if job is None:
            return
        for client in job.clients:
            if client.exceptions:
                for part in pack_parts(RES, PT.WORK_EXCEPTION, args):
                    client.conn.send(part)
                if client.conn.pauses:
                    self.bounds.hold(conn, client.conn)
            else:  # clients that did not ask for exceptions get WORK_FAIL (no trailing NUL)
                client.conn.send(pack(RES, PT.WORK_FAIL, (job.handle,)))
        self._end_job(job)  # WORK_EXCEPTION ends the job, as in gearmand >= 1.1.9

    def _end_job(self, job: Job) -> None:
        """The one way a job ends (completed, failed, cancelled, dropped): the job drops its
        links (Job.end), the server its tables and the persistent queue its row."""
        if job.state == DONE:
            return
        job.end()
        del self.jobs[job.handle]
        if len(job.data) >= BIG_PACKET:
            self.bounds.job_ended(len(job.data))
        key = job.key
        if key and job.function.by_unique.get(key) is job:
            del job.function.by_unique[key]
        if job.stored and self.queue is not None:
            self.queue.delete(job)

    # -- status, echo, options ----------------------------------------------------------
    def get_status(self, conn: Connection, args: Sequence[bytes]) -> None:
        handle = args[0]
        job = self.jobs.get(handle)
        if job is None:
            conn.send_packet(PT.STATUS_RES, handle, b"0", b"0", b"0", b"0")
        else:
            running = b"1" if job.state == RUNNING else b"0"
            conn.send_packet(PT.STATUS_RES, handle, b"1", running, job.numerator, job.denominator)

    def get_status_unique(self, conn: Connection, args: Sequence[bytes]) -> None:
        unique = args[0]
        for function in self.functions.values():
            job = function.by_unique.get(unique)
            if job is not None:
                running = b"1" if job.state == RUNNING else b"0"
                conn.send_packet(
                    PT.STATUS_RES_UNIQUE, unique, b"1", running, job.numerator, job.denominator,
                    str(len(job.clients)).encode(),
                )
                return
        conn.send_packet(PT.STATUS_RES_UNIQUE, unique, b"0", b"0", b"0", b"0", b"0")

    def echo(self, conn: Connection, args: Sequence[bytes]) -> None:
        conn.send_packet(PT.ECHO_RES, args[0])

    def set_client_id(self, conn: Connection, args: Sequence[bytes]) -> None:
        conn.client_id = args[0] or b"-"

    def option_req(self, conn: Connection, args: Sequence[bytes]) -> None:
        if args[0] == b"exceptions":
            self._client_of(conn).exceptions = True
            conn.send_packet(PT.OPTION_RES, args[0])
        else:
            conn.error(b"UNKNOWN_OPTION", b"Server does not recognize given option")

    # -- admin operations ---------------------------------------------------------------
    def drop_function(self, function: Function) -> None:
        """``drop function``: forget a function no worker has and nothing runs for.

        gearmand leaves its queued jobs behind, unreachable; we end them, failing their clients.
        """
        for job in [job for job in self.jobs.values() if job.function is function]:
            self._to_clients(job, PT.WORK_FAIL, (job.handle,))
            self._end_job(job)
        self.functions.pop(function.name, None)

    def cancel(self, handle: bytes) -> bool:
        """Cancel a job that has not started; its clients get WORK_FAIL."""
        job = self.jobs.get(handle)
        if job is None or job.state not in (QUEUED, SCHEDULED):
            return False
        self._to_clients(job, PT.WORK_FAIL, (job.handle,))
        self._end_job(job)
        return True
