"""What a job server holds right now: functions and their queues, workers, jobs.

A :class:`ClusterSnapshot` is one picture of it, from one of two sources:

* :class:`InProcessSource`: a gearnb server running in this process, read on its own thread.
  Exact: each queue's jobs in order, which worker runs which job, who sleeps.
* :class:`AdminSource`: any job server, gearmand included, through the admin text protocol,
  in four commands and one batch of GET_STATUS packets per poll:

  - ``status``: per function, TOTAL (queued + running), RUNNING and the workers that can do it;
  - ``prioritystatus`` (gearmand >= 1.1.15): per function, the jobs *waiting* in each of the
    high / normal / low queues (running jobs are not counted; epoch jobs not yet due count
    as normal);
  - ``workers``: every connection, with its client id and functions (a worker has some);
  - ``show jobs``: every job's handle and retries. Its JOB_QUEUED column is gearmand's
    job_queued flag, which is 1 for every *background* job, running or not, and 0 for
    foreground jobs: it tells background from foreground, not queued from running.
    Whether a job runs, and how far it got, is what GET_STATUS answers (STATUS_RES
    running, numerator, denominator), asked here for up to MAX_STATUS_QUERIES jobs.

  What no admin command tells: which worker runs which job, a job's function and priority.
  The snapshot leaves those None and says so in ``notes``.

Drawing lives in :mod:`.cluster_view`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..admin import Admin
from ..errors import ServerError
from .inprocess import job_server, on_server_thread

if TYPE_CHECKING:
    from ..server.core import JobServer

PRIORITIES = ("high", "normal", "low")
# GET_STATUS packets sent per poll at most (pipelined, one round trip): a map's queue may hold
# thousands of jobs, and a picture shows a few dozen. Background jobs are asked about first.
MAX_STATUS_QUERIES = 256
ADMIN_TIMEOUT = 5.0  # seconds for one admin poll


@dataclass(frozen=True)
class JobState:
    """One job. ``state``: ``"queued"``, ``"running"`` or ``"scheduled"`` (an epoch job not
    yet due). None: the source cannot tell (see :mod:`.cluster`)."""

    handle: str
    state: str
    function: str | None = None
    priority: str | None = None
    background: bool | None = None
    numerator: int = 0
    denominator: int = 0
    worker: str | None = None
    retries: int = 0

    @property
    def progress(self) -> float | None:
        """numerator / denominator of its last WORK_STATUS, or None before any."""
        return self.numerator / self.denominator if self.denominator else None


@dataclass(frozen=True)
class FunctionState:
    """One function: ``queued`` jobs per priority (high, normal, low: prioritystatus's
    numbers), ``running`` jobs and the ``workers`` that can do it (status's numbers).
    ``queue``: the handles waiting in each priority, oldest first, when the source knows."""

    name: str
    queued: tuple[int, int, int]
    running: int
    workers: int
    queue: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None = None

    @property
    def total(self) -> int:
        """``status``'s TOTAL: waiting plus running."""
        return sum(self.queued) + self.running


@dataclass(frozen=True)
class WorkerState:
    """One worker connection: ``functions`` in the order it announced them; ``running``
    (job handles) and ``sleeping`` are None when the source cannot tell."""

    fd: int
    ip: str
    client_id: str
    functions: tuple[str, ...]
    running: tuple[str, ...] | None = None
    sleeping: bool | None = None

    @property
    def name(self) -> str:
        return self.client_id if self.client_id not in ("", "-") else f"fd {self.fd}"


@dataclass(frozen=True)
class ClusterSnapshot:
    """A job server's functions (by name), workers (by fd), and jobs at one moment (``taken``,
    time.time())."""

    server: str
    source: str  # "in-process" or "admin"
    taken: float
    functions: tuple[FunctionState, ...]
    workers: tuple[WorkerState, ...]
    jobs: tuple[JobState, ...]
    connections: int  # every connection, workers included
    notes: tuple[str, ...] = ()

    def function(self, name: str) -> FunctionState:
        for function in self.functions:
            if function.name == name:
                return function
        raise KeyError(f"no function {name!r} on {self.server}")

    def job(self, handle: str | bytes) -> JobState | None:
        handle = handle.decode() if isinstance(handle, bytes) else handle
        for job in self.jobs:
            if job.handle == handle:
                return job
        return None

    @property
    def running(self) -> list[JobState]:
        return [job for job in self.jobs if job.state == "running"]

    def _repr_svg_(self) -> str:
        from .cluster_view import render_svg

        return render_svg(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def text(self) -> str:
        from .cluster_view import render_text

        return render_text(self)

    def __repr__(self) -> str:
        return self.text()


class InProcessSource:
    """Snapshots of a gearnb job server running in this process (exact)."""

    def __init__(self, server: Any) -> None:
        core = job_server(server)
        if core is None:
            raise TypeError(f"not a gearnb server running in this process: {type(server).__name__}")
        self.server = server
        self.core = core
        self.address = getattr(server, "address", "in-process")

    def snapshot(self) -> ClusterSnapshot:
        return on_server_thread(self.server, lambda: _read_job_server(self.core, self.address))

    def close(self) -> None:
        pass


def _worker_name(conn: Any) -> str:
    client_id = conn.client_id.decode(errors="replace")
    return client_id if client_id not in ("", "-") else f"fd {conn.fd}"


def _read_job_server(core: JobServer, address: str) -> ClusterSnapshot:
    """The snapshot, read on the server's thread (nothing changes meanwhile)."""
    from ..server.jobs import QUEUED, RUNNING
    from ..server.workers import ASLEEP

    functions = []
    for f in core.functions.values():
        queue = tuple(tuple(h.decode(errors="replace") for h in q) for q in f.queues)
        # As gearmand's prioritystatus: epoch jobs not yet due count as normal.
        queued = (len(f.queues[0]), len(f.queues[1]) + f.scheduled, len(f.queues[2]))
        functions.append(FunctionState(f.name.decode(errors="replace"), queued, f.running, len(f.workers),
                                       queue))  # type: ignore[arg-type]
    workers = []
    for conn in core.connections:
        worker = conn.worker
        if worker is None or not worker.functions:
            continue
        workers.append(WorkerState(
            conn.fd, conn.peer, conn.client_id.decode(errors="replace"),
            tuple(f.name.decode(errors="replace") for f in worker.functions),
            tuple(job.handle.decode(errors="replace") for job in worker.jobs),
            worker.state == ASLEEP))  # WOKEN (a NOOP on its way) counts as awake
    jobs = []
    for job in core.jobs.values():
        state = "running" if job.state == RUNNING else "queued" if job.state == QUEUED else "scheduled"
        jobs.append(JobState(
            job.handle.decode(errors="replace"), state, job.function.name.decode(errors="replace"),
            PRIORITIES[job.priority], job.background, _int(job.numerator), _int(job.denominator),
            _worker_name(job.worker.conn) if job.worker is not None else None, job.retries))
    return ClusterSnapshot(address, "in-process", time.time(), tuple(sorted(functions, key=lambda f: f.name)),
                           tuple(sorted(workers, key=lambda w: w.fd)), tuple(jobs), len(core.connections))


def _int(value: bytes | int) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


class AdminSource:
    """Snapshots of any job server (gearmand included) through its admin text protocol."""

    def __init__(self, address: str, *, timeout: float = ADMIN_TIMEOUT) -> None:
        self.address = address
        self.admin = Admin(address, timeout=timeout)
        self.timeout = timeout
        self._client: Any = None  # an AsyncClient on gearnb's I/O thread, for GET_STATUS
        self._has_priorities = True

    def snapshot(self) -> ClusterSnapshot:
        notes = ["which worker runs which job, and a job's function and priority, are not in the admin protocol"]
        status = self.admin.status()
        priorities: dict[str, tuple[int, int, int]] = {}
        if self._has_priorities:
            try:
                priorities = {p.function: (p.high, p.normal, p.low) for p in self.admin.priority_status()}
            except ServerError:  # a server without prioritystatus (gearmand < 1.1.15, others)
                self._has_priorities = False
        if not self._has_priorities:
            notes.append("this server has no prioritystatus: waiting jobs are all shown as normal")
        functions = []
        for s in status:
            queued = priorities.get(s.function, (0, s.total - s.running, 0))
            functions.append(FunctionState(s.function, queued, s.running, s.workers))
        connections = self.admin.workers()
        workers = tuple(sorted((WorkerState(w.fd, w.ip, w.client_id, tuple(w.functions))
                                for w in connections if w.functions), key=lambda w: w.fd))
        listed = self.admin.show_jobs()
        # Background jobs first (see JobInfo.background).
        asked = sorted(listed, key=lambda j: not j.background)[:MAX_STATUS_QUERIES]
        if len(listed) > len(asked):
            notes.append(f"{len(listed) - len(asked)} more jobs not asked about (MAX_STATUS_QUERIES)")
        statuses = self._statuses([j.handle for j in asked])
        jobs = []
        for info, st in zip(asked, statuses):
            if not st.known:
                continue  # finished between `show jobs` and GET_STATUS
            jobs.append(JobState(info.handle, "running" if st.running else "queued", background=info.background,
                                 numerator=st.numerator, denominator=st.denominator, retries=info.retries))
        return ClusterSnapshot(self.address, "admin", time.time(), tuple(sorted(functions, key=lambda f: f.name)),
                               workers, tuple(jobs), len(connections), tuple(notes))

    def _statuses(self, handles: list[str]) -> list[Any]:
        """GET_STATUS for every handle, pipelined on one connection (one round trip)."""
        if not handles:
            return []
        from .._loop import io_loop
        from ..client import AsyncClient

        loop = io_loop()
        if self._client is None:
            self._client = AsyncClient(self.address)
        client = self._client

        async def ask() -> list[Any]:
            return list(await asyncio.gather(*(client.status(h.encode(), self.address) for h in handles)))

        return loop.run(ask(), self.timeout)

    def close(self) -> None:
        self.admin.close()
        if self._client is not None:
            from .._loop import io_loop

            try:
                io_loop().run(self._client.close(), self.timeout)
            except Exception:  # noqa: BLE001 - closing a connection to a server that went away
                pass
            self._client = None


def source_for(server: Any) -> InProcessSource | AdminSource:
    """The best source for ``server``: in-process when it runs here, else its admin port."""
    if job_server(server) is not None:
        return InProcessSource(server)
    if isinstance(server, str):
        return AdminSource(server)
    raise TypeError("a cluster picture needs a gearnb.server.Server running in this process, or the "
                    f"'host:port' of a job server (gearnb or gearmand); got {type(server).__name__}")


def snapshot(server: Any) -> ClusterSnapshot:
    """One :class:`ClusterSnapshot` of ``server`` (a Server in this process, or "host:port")."""
    source = source_for(server)
    try:
        return source.snapshot()
    finally:
        source.close()
