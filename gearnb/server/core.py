"""The job server's state and what it does with each packet.

Named after gearmand's pieces: jobs (:mod:`.jobs`), functions and their queues
(:mod:`.functions`), connections (:mod:`.connections`), admin text (:mod:`.admin`).
Behaviour follows gearmand 1.1.x where ../shared/reference/gearman-protocol.md says so,
with its known bugs fixed (epoch jobs wake workers; no thundering herd).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Callable, Sequence

from ..protocol import DEFAULT_MAX_PACKET_SIZE, HIGH, NORMAL, SUBMIT_TYPES, PacketType, ProtocolError
from ..protocol.codec import RECV_BUFFER
from ..protocol.packets import ARG_COUNT, MAX_UNIQUE_SIZE
from . import fast_paths
from .admin import AdminCommands
from .functions import Function
from .jobs import DONE, QUEUED, RUNNING, SCHEDULED, HandleFactory, Job, coalescing_key

if TYPE_CHECKING:
    from .connections import Connection
    from .persistence import Queue
    from ..visual.recorder import TraceHub

log = logging.getLogger("gearnb.server")
P = PacketType

# Replies to a client that keeps many jobs in flight are held back while the loop is busy,
# so that they leave in fewer, larger writes: the client then reads (and refills its window)
# in batches too. Measured with bench/jobs_per_second.py: per job, the client made 0.6 reads
# through the gearnb server against 0.15 through gearmand, and each read costs CPU all round.
# A client with fewer jobs outstanding than this (Client.do: one) is answered at once.
BATCH_MIN_CLIENT_JOBS = 16
# At most this many turns of the loop, and this many bytes, are held: a busy loop's turn
# is ~30 us here, so replies wait well under a millisecond.
BATCH_MAX_TURNS = 8
BATCH_MAX_BYTES = 64 * 1024


class JobServer:
    """All state of one job server, independent of sockets (see :mod:`.listener`)."""

    def __init__(
        self,
        *,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        job_retries: int = 0,
        handle_prefix: str | None = None,
        exceptions_default: bool = False,
        queue: Queue | None = None,
    ) -> None:
        self.max_packet_size = max_packet_size
        # gearmand 1.1.x: 0 means unlimited; N means a job whose worker died N times is failed.
        self.job_retries = job_retries
        self.exceptions_default = exceptions_default
        self.new_handle = HandleFactory(handle_prefix)
        self.jobs: dict[bytes, Job] = {}
        self.functions: dict[bytes, Function] = {}
        self.connections: dict[Connection, None] = {}
        self.dirty: list[Connection] = []
        # Where connections read between packets (see Connection.get_buffer): one for all, as
        # the loop reads one socket at a time and the bytes are copied out at once.
        self.read_buffer = memoryview(bytearray(RECV_BUFFER))
        self.queue = queue
        self.started = time.time()
        self.admin = AdminCommands(self)
        self.handlers: dict[int, Callable[[Connection, Sequence[bytes]], None]] = {
            P.CAN_DO: self.can_do,
            P.CANT_DO: self.cant_do,
            P.RESET_ABILITIES: self.reset_abilities,
            P.CAN_DO_TIMEOUT: self.can_do_timeout,
            P.PRE_SLEEP: self.pre_sleep,
            P.GRAB_JOB: self.grab_job,
            P.GRAB_JOB_UNIQ: self.grab_job_uniq,
            P.GRAB_JOB_ALL: self.grab_job_all,
            P.WORK_STATUS: self.work_status,
            P.WORK_COMPLETE: self.work_complete,
            P.WORK_FAIL: self.work_fail,
            P.WORK_EXCEPTION: self.work_exception,
            P.WORK_DATA: self._forwarder(P.WORK_DATA),
            P.WORK_WARNING: self._forwarder(P.WORK_WARNING),
            P.GET_STATUS: self.get_status,
            P.GET_STATUS_UNIQUE: self.get_status_unique,
            P.ECHO_REQ: self.echo,
            P.SET_CLIENT_ID: self.set_client_id,
            P.OPTION_REQ: self.option_req,
        }
        for ptype in SUBMIT_TYPES:
            self.handlers[ptype] = self._submit_handler(ptype)
        fast_paths.install(self)
        # What Connection._handle_whole_packets looks up per packet, in one dict.
        self.dispatch: dict[int, tuple[int, Callable[[Connection, Sequence[bytes]], None]]] = {
            ptype: (ARG_COUNT[ptype], handler) for ptype, handler in self.handlers.items()}
        self._flush_scheduled = False
        self._call_soon: Callable[..., object] | None = None  # the serving loop's call_soon
        self._reads = 0  # reads handled so far; equal to _reads_seen after an idle turn
        self._reads_seen = 0
        self.tracer: TraceHub | None = None  # set while gearnb.visual.trace records packets

    # -- plumbing -----------------------------------------------------------------------
    def flush(self, hold_busy_clients: bool = False) -> None:
        """Write every connection's queued output, one write call each.

        The persistent queue commits first: no JOB_CREATED leaves before its job is stored.
        ``hold_busy_clients`` (at the end of a turn): while the loop keeps finding reads, a
        client with many jobs outstanding keeps its replies for another turn (see
        BATCH_MIN_CLIENT_JOBS); workers and other clients are written to at once.
        """
        if self.queue is not None:
            self.queue.commit()
        dirty = self.dirty
        if not dirty:
            return
        self.dirty = []
        if hold_busy_clients:
            hold_busy_clients = self._reads != self._reads_seen
            self._reads_seen = self._reads
        held = []
        for conn in dirty:
            if (hold_busy_clients and conn.held_turns < BATCH_MAX_TURNS and not conn.abilities
                    and len(conn.client_jobs) >= BATCH_MIN_CLIENT_JOBS and conn.out_bytes < BATCH_MAX_BYTES
                    and not conn.closed):
                conn.held_turns += 1
                held.append(conn)
            else:
                conn.flush()
        if held:
            # Nothing else can have been queued meanwhile: handlers do not run in here.
            self.dirty = held
            self._flush_scheduled = True
            assert self._call_soon is not None
            self._call_soon(self._scheduled_flush)  # the loop polls without blocking first

    def flush_soon(self) -> None:
        """Flush at the end of this turn of the event loop: the replies that several
        connections' packets cause to one peer leave in one write."""
        self._reads += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            call_soon = self._call_soon
            if call_soon is None:
                # Kept: asyncio.get_running_loop() costs a getpid() system call on every
                # call (CPython checks for a fork), one per turn of the loop under load.
                call_soon = self._call_soon = asyncio.get_running_loop().call_soon
            call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush(hold_busy_clients=True)

    def restore(self) -> int:
        """Queue the background jobs kept in the persistent queue (at start-up)."""
        if self.queue is None:
            return 0
        count = 0
        for stored in list(self.queue.load()):
            job = self.add_job(None, stored.function, stored.unique, stored.data, stored.priority,
                               background=True, when=stored.when, stored=stored.unique)
            count += job is not None
        if count:
            log.info("restored %d background jobs from the persistent queue", count)
        return count

    def connection_made(self, conn: Connection) -> None:
        self.connections[conn] = None

    def connection_lost(self, conn: Connection) -> None:
        self.connections.pop(conn, None)
        woken_for = conn.woken_for
        self._go_awake(conn)
        for job in list(conn.worker_jobs):
            # The worker died mid-job: run it elsewhere (gearmand requeues too).
            self._requeue(job, count_retry=True)
        conn.worker_jobs.clear()
        for function in list(conn.abilities):
            self._drop_worker(conn, function)
        if woken_for is not None:
            # It died between our NOOP and its GRAB_JOB: the job it was woken for needs
            # another sleeper (gearmand wakes them all, so it never has this problem).
            self._wake(woken_for)
        for job in list(conn.client_jobs):
            self._detach_client(job, conn)
        conn.client_jobs.clear()

    def function(self, name: bytes) -> Function:
        """The named function, created on first mention; like gearmand, never forgotten."""
        function = self.functions.get(name)
        if function is None:
            function = self.functions[name] = Function(name)
        return function

    # -- submitting ---------------------------------------------------------------------
    def _submit_handler(self, ptype: int) -> Callable[[Connection, Sequence[bytes]], None]:
        priority, background = SUBMIT_TYPES[ptype]
        epoch = ptype == P.SUBMIT_JOB_EPOCH
        reduce = ptype in (P.SUBMIT_REDUCE_JOB, P.SUBMIT_REDUCE_JOB_BACKGROUND)

        def handler(conn: Connection, args: Sequence[bytes]) -> None:
            name, unique = args[0], args[1]
            data = args[-1]
            when = 0
            reducer = b""
            if epoch:
                try:
                    when = int(args[2])
                except ValueError:
                    raise ProtocolError("SUBMIT_JOB_EPOCH: the time is not a number") from None
            elif reduce:
                reducer = args[2]
            self.add_job(conn, name, unique, data, priority, background, when, reducer)

        return handler

    def add_job(
        self,
        conn: Connection | None,
        name: bytes,
        unique: bytes,
        data: bytes,
        priority: int = NORMAL,
        background: bool = False,
        when: int = 0,
        reducer: bytes = b"",
        handle: bytes | None = None,
        stored: bytes | None = None,
    ) -> Job | None:
        """Create (or coalesce onto) a job; answers JOB_CREATED or ERROR to ``conn``."""
        if len(unique) > MAX_UNIQUE_SIZE:
            if conn is not None:
                conn.error(b"ARGUMENT_TOO_LARGE", b"Unique value too large")
            return None
        if not name:
            raise ProtocolError("empty function name")
        function = self.function(name)
        key = coalescing_key(unique, data)
        job = function.by_unique.get(key) if key else None
        if job is not None:
            # Coalesce: same (function, unique) gets the same handle; a foreground submitter
            # listens to the running job too.
            if conn is not None:
                conn.send_packet(P.JOB_CREATED, job.handle)
                if not background:
                    self._attach_client(job, conn)
            return job
        if function.queue_full(priority):
            if conn is not None:
                conn.error(b"QUEUE_ERROR", b"Job queue is full")
            return None
        job = Job(handle or self.new_handle(), function, unique, data, priority, background, when, reducer)
        job.stored = stored  # restored from the persistent queue: already there
        self.jobs[job.handle] = job
        if key:
            function.by_unique[key] = job
        if background and self.queue is not None and not job.stored:
            job.stored = self.queue.store(job)
        if conn is not None:
            conn.send_packet(P.JOB_CREATED, job.handle)
            if not background:
                self._attach_client(job, conn)
        if when and when > time.time():
            job.state = SCHEDULED
            function.scheduled += 1
            loop = asyncio.get_running_loop()
            delay = when - time.time()
            job.timer = loop.call_later(delay, self._epoch_due, job)
        else:
            self._enqueue(job)
        return job

    def _epoch_due(self, job: Job) -> None:
        if job.state != SCHEDULED:
            return
        job.timer = None
        job.function.scheduled -= 1
        self._enqueue(job)  # ... and wake a worker: gearmand <= 1.1.22 forgot to (#343)
        self.flush()

    def _attach_client(self, job: Job, conn: Connection) -> None:
        if conn not in job.clients:
            job.clients.append(conn)
            conn.client_jobs[job] = None

    def _detach_client(self, job: Job, conn: Connection) -> None:
        if conn in job.clients:
            job.clients.remove(conn)
        if not job.clients and not job.background and job.state in (QUEUED, SCHEDULED):
            # Nobody waits for it and it has not started: drop it rather than run it.
            self._end_job(job)

    def _enqueue(self, job: Job, front: bool = False) -> None:
        job.state = QUEUED
        job.function.push(job, front)
        self._wake(job.function)

    # -- workers: abilities, sleeping, waking -------------------------------------------
    def can_do(self, conn: Connection, args: Sequence[bytes]) -> None:
        function = self.function(args[0])
        conn.timeouts.pop(function.name, None)
        self._add_ability(conn, function)

    def can_do_timeout(self, conn: Connection, args: Sequence[bytes]) -> None:
        function = self.function(args[0])
        try:
            timeout = int(args[1])
        except ValueError:
            raise ProtocolError("CAN_DO_TIMEOUT: the timeout is not a number") from None
        if timeout > 0:
            # Milliseconds, as gearmand >= 1.1.19, which also raises anything below 1 s to 1 s
            # (0 or negative: no timeout).
            conn.timeouts[function.name] = max(timeout, 1000)
        self._add_ability(conn, function)

    def _add_ability(self, conn: Connection, function: Function) -> None:
        if function not in conn.abilities:
            conn.abilities[function] = None
            function.workers[conn] = None
            if conn.sleeping and not conn.noop_sent:
                function.sleepers[conn] = None
                self._wake(function)

    def cant_do(self, conn: Connection, args: Sequence[bytes]) -> None:
        function = self.functions.get(args[0])
        if function is not None and function in conn.abilities:
            self._drop_worker(conn, function)
            del conn.abilities[function]
            conn.timeouts.pop(function.name, None)

    def reset_abilities(self, conn: Connection, args: Sequence[bytes]) -> None:
        for function in list(conn.abilities):
            self._drop_worker(conn, function)
        conn.abilities.clear()
        conn.timeouts.clear()

    def _drop_worker(self, conn: Connection, function: Function) -> None:
        function.workers.pop(conn, None)
        function.sleepers.pop(conn, None)

    def pre_sleep(self, conn: Connection, args: Sequence[bytes]) -> None:
        self._go_awake(conn)
        if any(function.queued for function in conn.abilities):
            # Work arrived between NO_JOB and PRE_SLEEP: wake it at once.
            conn.noop_sent = True
            conn.sleeping = True
            conn.send_packet(P.NOOP)
            return
        conn.sleeping = True
        conn.noop_sent = False
        for function in conn.abilities:
            function.sleepers[conn] = None

    def _go_awake(self, conn: Connection) -> None:
        """The worker is talking to us: it is no longer asleep, nor owed a wake-up."""
        if conn.sleeping:
            conn.sleeping = False
            if not conn.noop_sent:
                for function in conn.abilities:
                    function.sleepers.pop(conn, None)
            conn.noop_sent = False
        woken_for = conn.woken_for
        if woken_for is not None:
            conn.woken_for = None
            woken_for.waking -= 1

    def _wake(self, function: Function) -> None:
        """Send NOOP to as many sleeping workers as there are jobs nobody is coming for."""
        sleepers = function.sleepers
        while sleepers and function.queued > function.waking:
            conn = next(iter(sleepers))
            for other in conn.abilities:
                other.sleepers.pop(conn, None)
            conn.noop_sent = True
            conn.woken_for = function
            function.waking += 1
            conn.send_packet(P.NOOP)

    # -- grabbing -----------------------------------------------------------------------
    def _grab(self, conn: Connection) -> Job | None:
        woken_for = conn.woken_for
        self._go_awake(conn)
        job = None
        best = None
        # Highest priority across the worker's functions; FIFO within a priority.
        for function in conn.abilities:
            priority = function.head_priority()
            if priority is not None and (best is None or priority < best[0]):
                best = (priority, function)
                if priority == HIGH:
                    break
        if best is not None:
            job = best[1].pop()
        if woken_for is not None and (job is None or job.function is not woken_for):
            self._wake(woken_for)  # it was woken for another function's job: wake another
        if job is None:
            conn.send_packet(P.NO_JOB)
            return None
        job.state = RUNNING
        job.worker = conn
        job.function.running += 1
        conn.worker_jobs[job] = None
        timeout = conn.timeouts.get(job.function.name)
        if timeout:
            loop = asyncio.get_running_loop()
            job.timer = loop.call_later(timeout / 1000.0, self._timed_out, job, conn)
        return job

    def grab_job(self, conn: Connection, args: Sequence[bytes]) -> None:
        job = self._grab(conn)
        if job is not None:
            conn.send_packet(P.JOB_ASSIGN, job.handle, job.function.name, job.data)

    def grab_job_uniq(self, conn: Connection, args: Sequence[bytes]) -> None:
        job = self._grab(conn)
        if job is not None:
            conn.send_packet(P.JOB_ASSIGN_UNIQ, job.handle, job.function.name, job.unique, job.data)

    def grab_job_all(self, conn: Connection, args: Sequence[bytes]) -> None:
        job = self._grab(conn)
        if job is None:
            return
        if job.reducer:
            conn.send_packet(
                P.JOB_ASSIGN_ALL, job.handle, job.function.name, job.unique, job.reducer, job.data
            )
        else:  # gearmand answers JOB_ASSIGN_UNIQ when the job has no reducer
            conn.send_packet(P.JOB_ASSIGN_UNIQ, job.handle, job.function.name, job.unique, job.data)

    def _timed_out(self, job: Job, conn: Connection) -> None:
        """CAN_DO_TIMEOUT expired: take the job back silently and queue it again (gearmand)."""
        job.timer = None
        if job.worker is conn and job.state == RUNNING:
            log.info("job %r timed out on worker fd %d; requeued", job.handle, conn.fd)
            conn.worker_jobs.pop(job, None)
            self._requeue(job, count_retry=True)
            self.flush()

    def _requeue(self, job: Job, count_retry: bool) -> None:
        if job.state != RUNNING:
            return
        job.function.running -= 1
        job.worker = None
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        job.numerator = job.denominator = b"0"
        if not job.background and not job.clients:
            self._end_job(job)  # nobody is waiting any more
            return
        if count_retry:
            job.retries += 1
            if self.job_retries and job.retries >= self.job_retries:
                log.warning("job %r failed after %d retries", job.handle, job.retries)
                for client in job.clients:
                    client.send_packet(P.WORK_FAIL, job.handle)
                self._end_job(job)
                return
        self._enqueue(job, front=True)

    # -- results from workers -----------------------------------------------------------
    def _worker_job(self, conn: Connection, handle: bytes) -> Job | None:
        job = self.jobs.get(handle)
        if job is None or job.worker is not conn:
            conn.error(b"JOB_NOT_FOUND", b"Job given in work result not found")
            return None
        return job

    def work_status(self, conn: Connection, args: Sequence[bytes]) -> None:
        job = self._worker_job(conn, args[0])
        if job is not None:
            job.numerator, job.denominator = args[1], args[2]
            for client in job.clients:
                client.send_packet(P.WORK_STATUS, *args)

    def _forwarder(self, ptype: int) -> Callable[[Connection, Sequence[bytes]], None]:
        """WORK_DATA and WORK_WARNING: pass on to every client attached to the job."""

        def forward(conn: Connection, args: Sequence[bytes]) -> None:
            job = self._worker_job(conn, args[0])
            if job is not None:
                for client in job.clients:
                    client.send_packet(ptype, *args)

        return forward

    def work_complete(self, conn: Connection, args: Sequence[bytes]) -> None:
        job = self._worker_job(conn, args[0])
        if job is not None:
            for client in job.clients:
                client.send_packet(P.WORK_COMPLETE, *args)
            self._end_job(job)

    def work_fail(self, conn: Connection, args: Sequence[bytes]) -> None:
        job = self._worker_job(conn, args[0])
        if job is not None:
            for client in job.clients:
                client.send_packet(P.WORK_FAIL, job.handle)
            self._end_job(job)

    def work_exception(self, conn: Connection, args: Sequence[bytes]) -> None:
        job = self._worker_job(conn, args[0])
        if job is not None:
            for client in job.clients:
                if client.exceptions:
                    client.send_packet(P.WORK_EXCEPTION, *args)
                else:  # clients that did not ask for exceptions get WORK_FAIL (no trailing NUL)
                    client.send_packet(P.WORK_FAIL, job.handle)
            self._end_job(job)  # WORK_EXCEPTION ends the job, as in gearmand >= 1.1.9

    def _end_job(self, job: Job) -> None:
        state = job.state
        if state == DONE:
            return
        function = job.function
        if state == QUEUED:
            function.remove(job)
        elif state == RUNNING:
            function.running -= 1
            if job.worker is not None:
                job.worker.worker_jobs.pop(job, None)
                job.worker = None
        elif state == SCHEDULED:
            function.scheduled -= 1
        job.state = DONE
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        self.jobs.pop(job.handle, None)
        if job.key and function.by_unique.get(job.key) is job:
            del function.by_unique[job.key]
        for client in job.clients:
            client.client_jobs.pop(job, None)
        job.clients = []
        if job.stored and self.queue is not None:
            self.queue.delete(job)

    # -- status, echo, options ----------------------------------------------------------
    def get_status(self, conn: Connection, args: Sequence[bytes]) -> None:
        handle = args[0]
        job = self.jobs.get(handle)
        if job is None:
            conn.send_packet(P.STATUS_RES, handle, b"0", b"0", b"0", b"0")
        else:
            running = b"1" if job.state == RUNNING else b"0"
            conn.send_packet(P.STATUS_RES, handle, b"1", running, job.numerator, job.denominator)

    def get_status_unique(self, conn: Connection, args: Sequence[bytes]) -> None:
        unique = args[0]
        for function in self.functions.values():
            job = function.by_unique.get(unique)
            if job is not None:
                running = b"1" if job.state == RUNNING else b"0"
                conn.send_packet(
                    P.STATUS_RES_UNIQUE, unique, b"1", running, job.numerator, job.denominator,
                    str(len(job.clients)).encode(),
                )
                return
        conn.send_packet(P.STATUS_RES_UNIQUE, unique, b"0", b"0", b"0", b"0", b"0")

    def echo(self, conn: Connection, args: Sequence[bytes]) -> None:
        conn.send_packet(P.ECHO_RES, args[0])

    def set_client_id(self, conn: Connection, args: Sequence[bytes]) -> None:
        conn.client_id = args[0] or b"-"

    def option_req(self, conn: Connection, args: Sequence[bytes]) -> None:
        if args[0] == b"exceptions":
            conn.exceptions = True
            conn.send_packet(P.OPTION_RES, args[0])
        else:
            conn.error(b"UNKNOWN_OPTION", b"Server does not recognize given option")

    # -- admin operations ---------------------------------------------------------------
    def drop_function(self, function: Function) -> None:
        """``drop function``: forget a function no worker has and nothing runs for.

        gearmand leaves its queued jobs behind, unreachable; we end them, failing their clients.
        """
        for job in [job for job in self.jobs.values() if job.function is function]:
            for client in job.clients:
                client.send_packet(P.WORK_FAIL, job.handle)
            self._end_job(job)
        self.functions.pop(function.name, None)

    def cancel(self, handle: bytes) -> bool:
        """Cancel a job that has not started; its clients get WORK_FAIL."""
        job = self.jobs.get(handle)
        if job is None or job.state not in (QUEUED, SCHEDULED):
            return False
        for client in job.clients:
            client.send_packet(P.WORK_FAIL, job.handle)
        self._end_job(job)
        return True
