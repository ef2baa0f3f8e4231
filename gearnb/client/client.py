"""``Client`` (blocking, safe inside Jupyter) and ``AsyncClient`` (for asyncio code).

Order of calls: a submission is handed to the I/O thread by :meth:`Client.submit_many` (every
blocking submit goes through it: ``submit``, ``do``, ``do_background``, TaskSets, the
executor), which drains it into :meth:`ClientCore.submit` there; events come back through
the submission's listener (see :mod:`gearnb.client.submission`).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import Any, Iterable

from .._loop import io_loop
from ..addresses import ServerSpec, parse_servers
from ..protocol import PT
from .core import DEFAULT_SUBMIT_TIMEOUT, ClientCore
from .submission import Submission
from .task import _ENDED, JobHandle, JobStatus, Task, TaskSet, _OwnQueue


class Client:
    """A Gearman client over one or more job servers.

    >>> client = Client("127.0.0.1:4730")          # doctest: +SKIP
    >>> client.do("reverse", b"abc")               # doctest: +SKIP
    b'cba'

    All network I/O runs on gearnb's background I/O thread, so every method here blocks
    only the calling thread and works inside a running event loop (a Jupyter kernel).
    ``servers`` defaults to ``GEARMAN_SERVERS``, then ``127.0.0.1:4730``. ``namespace`` is put
    in front of every function name submitted (libgearman's namespace); give the workers the
    same one. ``max_packet_size``: the largest packet sent or taken (gearnb.limits: default
    ``GEARNB_MAX_PACKET_SIZE``, else the protocol's 4 GiB - 1); a job over it fails at once
    with :class:`~gearnb.errors.PacketTooLarge`. ``ssl``: a ``gearnb.tls.client_context``.
    """

    def __init__(
        self,
        servers: ServerSpec = None,
        *,
        submit_timeout: float = DEFAULT_SUBMIT_TIMEOUT,
        max_packet_size: int | str | None = None,
        ssl: Any = None,
        namespace: str | bytes = "",
    ) -> None:
        self.servers = parse_servers(servers)
        self._io = io_loop()
        self._core = ClientCore(self.servers, submit_timeout=submit_timeout,
                                max_packet_size=max_packet_size, ssl=ssl, namespace=namespace)
        self.max_packet_size = self._core.max_packet_size  # the limit in bytes, resolved (gearnb.limits)
        self._pid = os.getpid()  # its I/O thread belongs to this process (see submit_many)
        self._outbox: deque[Task] = deque()  # tasks on their way to the I/O thread
        self._outbox_scheduled = False

    # -- submitting ---------------------------------------------------------------------
    def submit_many(self, submissions: Iterable[Submission]) -> None:
        """Hand jobs to the I/O thread, in order, in one wake-up of it.

        Each is a :class:`Task` (one not in a TaskSet gets an event queue of its own: wait
        for it with ``task.wait()``) or a bare :class:`~gearnb.client.submission.Submission`
        whose listener handles its events on the I/O thread.
        """
        if os.getpid() != self._pid:
            raise RuntimeError(
                "this gearnb Client (or Executor) was made in another process, before a fork: its I/O "
                "thread does not exist here. Make a new one in this process; gearnb.map and "
                "gearnb.submit do that for you (the default executor follows forks).")
        outbox = self._outbox
        for sub in submissions:
            if isinstance(sub, Task) and sub._sink is None:
                sub.submit_to(self._core, _OwnQueue())
            outbox.append(sub)
        if self._io.in_loop_thread():
            self._drain_outbox()
        elif not self._outbox_scheduled and outbox:
            self._outbox_scheduled = True
            try:
                self._io.loop.call_soon_threadsafe(self._drain_outbox)
            except BaseException:
                self._outbox_scheduled = False
                raise

    def _drain_outbox(self) -> None:  # on the I/O thread
        # Clear the flag before taking submissions: one added after this line either is
        # taken below or schedules another drain.
        self._outbox_scheduled = False
        outbox = self._outbox
        submit = self._core.submit
        while outbox:
            submit(outbox.popleft())
        # The whole batch is in the connections' buffers: write it now. Waiting for the end
        # of the loop's turn would cost a blocking do() an extra turn of the loop.
        self._core.flush()

    def submit(self, task: Task) -> Task:
        """Submit a task without waiting; ``task.wait()`` waits and runs its callbacks there."""
        self.submit_many((task,))
        return task

    def do(self, function: str | bytes, data: bytes | str = b"", *, priority: str = "normal",
           unique: str | bytes | None = None, retries: int = 0, timeout: float | None = None) -> bytes:
        """Run a job and return its WORK_COMPLETE data.

        Raises :class:`~gearnb.JobException` (the worker's exception text),
        :class:`~gearnb.JobFailed`, :class:`~gearnb.ServerError` or ``TimeoutError``.
        """
        task = self.submit(Task(function, data, priority=priority, unique=unique, retries=retries))
        if not task.wait(_wait_timeout(timeout)):
            raise TimeoutError(f"job {task.function!r} did not finish within {timeout} s")
        result = task.raise_for_outcome()
        return result if result is not None else b""

    def do_background(self, function: str | bytes, data: bytes | str = b"", *,
                      priority: str = "normal", unique: str | bytes | None = None,
                      when: float | None = None, timeout: float | None = None) -> JobHandle:
        """Queue a background job and return its handle (``when``: run at that epoch time);
        the handle remembers its job server, for :meth:`status`."""
        task = self.submit(Task(function, data, priority=priority, unique=unique, background=True, when=when))
        if not task.wait(_wait_timeout(timeout)):
            raise TimeoutError("the job server did not answer the submit in time")
        task.raise_for_outcome()
        assert task.handle is not None
        return JobHandle(task.handle, task.server)

    def task_set(self) -> TaskSet:
        return TaskSet(self)

    # -- queries ------------------------------------------------------------------------
    def status(self, handle: bytes | str, server: str | None = None, timeout: float = 10) -> JobStatus:
        """GET_STATUS: ``JobStatus(known, running, numerator, denominator)``. Asks ``server``,
        else the server a :class:`JobHandle` came from, else each server until one knows it."""
        server = server or self._core.own_server(getattr(handle, "server", None))
        handle = handle.encode() if isinstance(handle, str) else handle
        return self._io.run(self._core.status(handle, server), timeout)

    def statuses(self, handles: list[JobHandle], timeout: float = 10) -> list[JobStatus]:
        """:meth:`status` of many handles (each asked of the server it came from), pipelined."""
        jobs = [(bytes(h), self._core.own_server(getattr(h, "server", None)) or self.servers[0]) for h in handles]
        return self._io.run(self._core.statuses(jobs), timeout)

    def status_unique(self, unique: bytes | str, server: str | None = None,
                      timeout: float = 10) -> tuple[JobStatus, int]:
        """GET_STATUS_UNIQUE: the status of the job with that unique, and its client count."""
        unique = unique.encode() if isinstance(unique, str) else unique
        packet = self._io.run(self._core.request(server, PT.GET_STATUS_UNIQUE, unique), timeout)
        _, known, running, num, den, clients = packet.args
        return JobStatus(known == b"1", running == b"1", int(num or 0), int(den or 0)), int(clients or 0)

    def echo(self, data: bytes = b"ping", server: str | None = None, timeout: float = 10) -> bytes:
        packet = self._io.run(self._core.request(server, PT.ECHO_REQ, data), timeout)
        return packet.args[0]

    def close(self) -> None:
        self._io.run(self._core.close(), 10)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<gearnb.Client servers={self.servers}>"


def _wait_timeout(timeout: float | None) -> float | None:
    """A caller's remaining time that is already spent times out at once."""
    return None if timeout is None else max(timeout, 0.0)


class _LoopSink:
    """Where an AsyncClient task's events go: its callbacks run at once, on the client's
    loop (the I/O thread of an AsyncClient is the caller's loop), and its end wakes waiters."""

    def __init__(self) -> None:
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def put(self, item: tuple[Task, str, tuple[Any, ...]]) -> None:
        task, event, args = item
        if event == _ENDED:
            if not self.ended.done():
                self.ended.set_result(None)
        else:
            task.run_callbacks(event, args)


class AsyncClient:
    """The same client for asyncio code: ``await client.do(...)`` on your own loop.

    Callbacks of tasks submitted here run on that loop.
    """

    def __init__(self, servers: ServerSpec = None, **options: Any) -> None:
        self.servers = parse_servers(servers)
        self._core = ClientCore(self.servers, **options)

    def submit(self, task: Task) -> Task:
        """Submit a task; its callbacks run on this loop. ``await client.wait(task)``."""
        task.submit_to(self._core, _LoopSink())
        self._core.submit(task)
        return task

    async def wait(self, task: Task) -> Task:
        sink = task._sink
        assert isinstance(sink, _LoopSink), "submit the task with this AsyncClient first"
        await asyncio.shield(sink.ended)
        return task

    async def do(self, function: str | bytes, data: bytes | str = b"", **options: Any) -> bytes:
        task = self.submit(Task(function, data, **options))
        await self.wait(task)
        return task.raise_for_outcome() or b""

    async def do_background(self, function: str | bytes, data: bytes | str = b"", **options: Any) -> JobHandle:
        task = self.submit(Task(function, data, background=True, **options))
        await self.wait(task)
        task.raise_for_outcome()
        assert task.handle is not None
        return JobHandle(task.handle, task.server)

    async def status(self, handle: bytes, server: str | None = None) -> JobStatus:
        return await self._core.status(handle, server or self._core.own_server(getattr(handle, "server", None)))

    async def echo(self, data: bytes = b"ping", server: str | None = None) -> bytes:
        return (await self._core.request(server, PT.ECHO_REQ, data)).args[0]

    async def close(self) -> None:
        await self._core.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
