"""The worker side of a connection, and the machine that puts workers to sleep and wakes them.

Gearman workers pull: a worker asks for a job (GRAB_JOB*), gets NO_JOB when there is none,
says PRE_SLEEP, and waits for a NOOP before asking again. Every change of a worker's
sleep/wake state happens in :class:`Wakeups`, through one field, ``WorkerRecord.state``:

    AWAKE  --PRE_SLEEP, nothing queued-->  ASLEEP  --a job for one of its functions-->  WOKEN
    WOKEN / ASLEEP  --any grab, or the connection closes-->  AWAKE

Rules (gearmand's behaviour, with its known faults fixed):
* no thundering herd: a new job wakes one sleeper, not all of them; as many are woken for a
  function as it has jobs that no woken worker is coming for (``Function.waking``);
* a woken worker that grabs a job of another function, or none, passes the wake-up on;
* a woken worker that does not grab within ``WAKE_GRACE`` seconds (a stopped process, a
  leaked socket nobody reads) no longer counts as coming: the next sleeper is woken, so a
  stale connection cannot absorb the wake-ups while a live worker sleeps.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..protocol import PT, RES, pack

if TYPE_CHECKING:
    from .connections import Connection
    from .functions import Function
    from .jobs import Job

log = logging.getLogger("gearnb.server")

# Worker states
AWAKE = 0   # talking to us: grabbing, running jobs, or never slept
ASLEEP = 1  # sent PRE_SLEEP and is listed in each of its functions' ``sleepers``
WOKEN = 2   # was sent a NOOP and has not grabbed since

# A woken worker normally grabs within a millisecond; one that has not after this long is
# taken for a connection nobody reads, and the next sleeper is woken (gearmand wakes every
# sleeper at once, so it never waits for one that does not come).
WAKE_GRACE = 0.5

NOOP_PACKET = pack(RES, PT.NOOP, ())


class WorkerRecord:
    """gearmand's ``gearman_server_worker_st`` list of one connection, as one record: the
    functions it can do, their timeouts, the jobs it runs and its sleep/wake state."""

    __slots__ = ("conn", "functions", "timeouts", "jobs", "state", "woken_for", "woken_at")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.functions: dict[Function, None] = {}  # ordered set, in CAN_DO order
        self.timeouts: dict[bytes, int] = {}  # function name -> CAN_DO_TIMEOUT milliseconds
        self.jobs: dict[Job, None] = {}  # jobs it is running (linked by Job.assign)
        self.state = AWAKE
        self.woken_for: Function | None = None  # WOKEN for a job of this function (counted in its waking)
        self.woken_at = 0.0

    # -- links to functions ------------------------------------------------------------
    def can_do(self, function: Function) -> bool:
        """Add ``function`` to what this worker does; False if it already did."""
        if function in self.functions:
            return False
        self.functions[function] = None
        function.workers[self] = None
        return True

    def cant_do(self, function: Function) -> None:
        if function in self.functions:
            del self.functions[function]
            del function.workers[self]
            function.sleepers.pop(self, None)
            self.timeouts.pop(function.name, None)

    def __repr__(self) -> str:
        return f"<WorkerRecord fd={self.conn.fd} state={self.state} functions={len(self.functions)}>"


class Timers(Protocol):
    """What the server core needs of an event loop (``asyncio.AbstractEventLoop`` fits)."""

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Any: ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any: ...


class Wakeups:
    """The sleep/wake state of every worker of one job server (see the module docstring)."""

    def __init__(self, timers: Timers | None, flush: Callable[[], None]) -> None:
        self.timers = timers
        self.flush = flush  # writes NOOPs sent outside the handling of a read
        self.woken: dict[WorkerRecord, None] = {}  # WOKEN and counted in their function's waking
        self._check_due = False

    def pre_sleep(self, worker: WorkerRecord) -> None:
        """PRE_SLEEP: the worker sleeps until a NOOP; at once if work is already queued."""
        self.awake(worker)
        for function in worker.functions:
            if function.queued:
                # Work arrived between its NO_JOB and its PRE_SLEEP: wake it at once. Not counted
                # in ``waking``: the jobs' own wake-ups went (or go) to other sleepers.
                self._noop(worker, None)
                return
        worker.state = ASLEEP
        for function in worker.functions:
            function.sleepers[worker] = None

    def awake(self, worker: WorkerRecord) -> None:
        """The worker is talking to us (it grabs): it is no longer asleep, nor owed a job."""
        state = worker.state
        if state == ASLEEP:
            for function in worker.functions:
                function.sleepers.pop(worker, None)
        elif state == WOKEN:
            woken_for = worker.woken_for
            if woken_for is not None:
                woken_for.waking -= 1
                worker.woken_for = None
                del self.woken[worker]
        worker.state = AWAKE

    def wake(self, function: Function) -> None:
        """NOOP as many sleepers of ``function`` as it has jobs no woken worker is coming for."""
        sleepers = function.sleepers
        while sleepers and function.queued > function.waking:
            self._noop(next(iter(sleepers)), function)

    def ability_added(self, worker: WorkerRecord, function: Function) -> None:
        """A sleeping worker that can now do ``function`` sleeps for it too."""
        if worker.state == ASLEEP:
            function.sleepers[worker] = None
            self.wake(function)

    def forget(self, worker: WorkerRecord) -> Function | None:
        """The worker's connection closed: clear its state; returns the function it was woken
        for, whose job now needs another sleeper (once the worker's abilities are gone)."""
        woken_for = worker.woken_for if worker.state == WOKEN else None
        self.awake(worker)
        return woken_for

    def _noop(self, worker: WorkerRecord, function: Function | None) -> None:
        if worker.state == ASLEEP:
            for other in worker.functions:
                other.sleepers.pop(worker, None)
        worker.state = WOKEN
        if function is not None:
            worker.woken_for = function
            function.waking += 1
            worker.woken_at = time.monotonic()
            self.woken[worker] = None
            if not self._check_due and self.timers is not None:
                self._check_due = True
                self.timers.call_later(WAKE_GRACE, self._check_woken)
        worker.conn.send(NOOP_PACKET)

    def _check_woken(self) -> None:
        """Wake another sleeper for each wake-up that went unanswered for WAKE_GRACE."""
        self._check_due = False
        if not self.woken:
            return
        now = time.monotonic()
        late = [worker for worker in self.woken if now - worker.woken_at >= WAKE_GRACE]
        for worker in late:
            function = worker.woken_for
            assert function is not None
            log.info("worker fd %d did not come for its job of %r within %.1f s of its NOOP; "
                     "waking another", worker.conn.fd, function.name, WAKE_GRACE)
            # Still WOKEN (a NOOP is on its way), but no longer counted as coming.
            function.waking -= 1
            worker.woken_for = None
            del self.woken[worker]
            self.wake(function)
        if late:
            self.flush()
        if self.woken and not self._check_due and self.timers is not None:
            self._check_due = True
            oldest = min(worker.woken_at for worker in self.woken)
            self.timers.call_later(max(oldest + WAKE_GRACE - now, 0.01), self._check_woken)
