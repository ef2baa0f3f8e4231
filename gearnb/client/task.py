"""Task and TaskSet, as in gearman-ruby: one job with callbacks, and a set waited on together.

A :class:`Task` is a :class:`~gearnb.client.submission.Submission` with gearman-ruby's
public face: callbacks, ``retries`` and waiting. Network events reach it on gearnb's I/O
thread (its listener, :meth:`Task._event`), which decides retries there and queues every
callback for the thread that waits on it: the caller of ``TaskSet.wait`` or
``Task.wait`` (a task submitted on its own). Tasks submitted through the :class:`AsyncClient`
run their callbacks on that client's event loop instead. A task's end reaches its waiter
as the last event it queues.
"""

from __future__ import annotations

import queue
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol

from ..errors import JobException, JobFailed
from .submission import COMPLETE, EV_CREATED, EV_DATA, EV_END, EV_STATUS, EV_WARNING, FAILED, Submission

if TYPE_CHECKING:
    from .client import Client
    from .core import ClientCore

Callback = Callable[..., Any]
EVENTS = ("created", "complete", "fail", "retry", "exception", "status", "data", "warning")
_ENDED = "_ended"  # the last event a task queues for its waiter
_EVENT_NAMES = {EV_CREATED: "created", EV_STATUS: "status", EV_DATA: "data", EV_WARNING: "warning"}


class JobStatus(NamedTuple):
    """What GET_STATUS answers about a job handle."""

    known: bool
    running: bool
    numerator: int
    denominator: int


class JobHandle(bytes):
    """A job handle (``b"H:host:42"``, usable wherever bytes are) that remembers the job
    server it came from, so :meth:`Client.status` asks that server: handles are only unique
    per server (two gearmands on one host hand out the same ones)."""

    server: str | None

    def __new__(cls, handle: bytes, server: str | None = None) -> JobHandle:
        self = super().__new__(cls, handle)
        self.server = server
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return JobHandle, (bytes(self), self.server)


class Sink(Protocol):
    """Where a task's events go: ``put((task, event_name, args))``."""

    def put(self, item: tuple[Task, str, tuple[Any, ...]]) -> None: ...


def _as_bytes(data: bytes | str | bytearray | memoryview) -> bytes:
    if isinstance(data, str):
        return data.encode()
    return bytes(data)


class Task(Submission):
    """One Gearman job to submit: function name, payload and options, plus callbacks.

    Callbacks: ``on_complete(data)``, ``on_fail()``, ``on_retry(n)``, ``on_exception(text)``,
    ``on_status(numerator, denominator)``, ``on_data(data)``, ``on_warning(data)``,
    ``on_created(handle)``. Each returns the task (chainable) and works as a decorator.
    ``on_fail`` runs once when the task ends unsuccessfully: WORK_FAIL or an exception with no
    retries left, or a task no server accepted (then ``task.error`` holds why, such as
    :class:`~gearnb.NoJobServers` or the server's ERROR).
    """

    __slots__ = ("retries", "retries_done", "exception_text", "_callbacks", "_sink", "_core")

    def __init__(
        self,
        function: str | bytes,
        data: bytes | str = b"",
        *,
        priority: str = "normal",
        background: bool = False,
        unique: str | bytes | None = None,
        retries: int = 0,
        when: float | None = None,
    ) -> None:
        if unique is None and (background or when is not None):
            # As libgearman does: every background job gets a unique, or persistent queues
            # (keyed on unique and function) keep only one of them (gearmand #80, #87).
            unique = uuid.uuid4().hex
        super().__init__(
            function if type(function) is bytes else _as_bytes(function),
            data if type(data) is bytes else _as_bytes(data),
            priority=priority, background=background or when is not None,
            unique=_as_bytes(unique) if unique is not None else b"", when=when)
        self.listener = self._event
        self.retries = retries
        self.retries_done = 0
        self.exception_text: str | None = None
        self._callbacks: dict[str, list[Callback]] = {}
        self._sink: Sink | None = None  # set when submitted (see submit_to)
        self._core: ClientCore | None = None  # the core it was submitted to (for retries)

    # -- callbacks ----------------------------------------------------------------------
    def _on(self, event: str, fn: Callback) -> Task:
        self._callbacks.setdefault(event, []).append(fn)
        return self

    def on_created(self, fn: Callback) -> Task:
        return self._on("created", fn)

    def on_complete(self, fn: Callback) -> Task:
        return self._on("complete", fn)

    def on_fail(self, fn: Callback) -> Task:
        return self._on("fail", fn)

    def on_retry(self, fn: Callback) -> Task:
        return self._on("retry", fn)

    def on_exception(self, fn: Callback) -> Task:
        return self._on("exception", fn)

    def on_status(self, fn: Callback) -> Task:
        return self._on("status", fn)

    def on_data(self, fn: Callback) -> Task:
        return self._on("data", fn)

    def on_warning(self, fn: Callback) -> Task:
        return self._on("warning", fn)

    def run_callbacks(self, event: str, args: tuple[Any, ...]) -> None:
        """Run the callbacks of one event (the waiter calls this for each queued event)."""
        for fn in self._callbacks.get(event, ()):
            fn(*args)

    # -- on the I/O thread ----------------------------------------------------------------
    def submit_to(self, core: ClientCore, sink: Sink) -> None:
        """Where this task goes and where its events go; then send it (the client does this)."""
        if self._sink is not None and not self.finished:
            raise RuntimeError("this task is already submitted")
        self._core = core
        self._sink = sink

    def _event(self, sub: Submission, event: int, argument: Any) -> None:
        sink = self._sink
        assert sink is not None
        if event != EV_END:
            sink.put((self, _EVENT_NAMES[event], argument if event == EV_STATUS else (argument,)))
            return
        if self.state == COMPLETE:
            sink.put((self, "complete", (self.result,)))
        elif self.state == FAILED:
            if self.exception_data is not None:
                self.exception_text = self.exception_data.decode(errors="replace")
                sink.put((self, "exception", (self.exception_text,)))
            if self.retries_done < self.retries and self._core is not None:
                # gearman-ruby's retries: the same task again, as a new job.
                self.retries_done += 1
                sink.put((self, "retry", (self.retries_done,)))
                self.reset()
                self.exception_text = None
                self._core.submit(self)
                return
            sink.put((self, "fail", ()))
        else:  # REFUSED: never ran; on_fail as for WORK_FAIL, as libgearman's fail callback
            sink.put((self, "fail", ()))
        sink.put((self, _ENDED, ()))

    # -- waiting ------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Wait for this task, running its callbacks here. True when it ended.

        For a task submitted on its own (``Client.submit``); a task in a TaskSet is waited
        for with the set.
        """
        sink = self._sink
        if isinstance(sink, TaskSet):
            raise RuntimeError("this task belongs to a TaskSet: wait on the TaskSet")
        if sink is None:
            raise RuntimeError("this task has not been submitted (Client.submit(task))")
        assert isinstance(sink, _OwnQueue)
        return sink.run_until_ended(timeout)

    def raise_for_outcome(self) -> bytes | None:
        """The result of an ended task, or the matching exception."""
        if self.error is not None:
            raise self.error
        if not self.successful:
            if self.exception_text is not None:
                raise JobException(self.exception_text)
            raise JobFailed(f"job {self.function.decode(errors='replace')} failed")
        return self.result


class _EventQueue:
    """A task's events queued for the waiting thread, run there in order."""

    def __init__(self) -> None:
        self._events: queue.SimpleQueue[tuple[Task, str, tuple[Any, ...]]] = queue.SimpleQueue()
        self.put = self._events.put
        self._pending = 0

    def _run(self, timeout: float | None) -> bool:
        """Run callbacks as events arrive until every task ended; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events = self._events
        while self._pending:
            try:  # events already here: no clock reading, no timed wait
                task, event, args = events.get_nowait()
            except queue.Empty:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                try:
                    task, event, args = events.get(timeout=remaining)
                except queue.Empty:
                    return False
            if event == _ENDED:
                self._pending -= 1
            else:
                task.run_callbacks(event, args)
        return True


class _OwnQueue(_EventQueue):
    """The event queue of a task submitted on its own."""

    def __init__(self) -> None:
        super().__init__()
        self._pending = 1

    def run_until_ended(self, timeout: float | None) -> bool:
        return self._run(timeout)


class TaskSet(_EventQueue):
    """Tasks submitted through one client and waited on together (gearman-ruby's TaskSet)."""

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client
        self.tasks: list[Task] = []

    def add(self, task: Task) -> Task:
        """Submit ``task`` now; its callbacks will run inside :meth:`wait`."""
        self.add_many([task])
        return task

    add_task = add

    def add_many(self, tasks: list[Task]) -> list[Task]:
        """Submit several tasks in one hand-over to the I/O thread."""
        for task in tasks:
            task.submit_to(self.client._core, self)
            self.tasks.append(task)
            self._pending += 1
        self.client.submit_many(tasks)
        return tasks

    def wait(self, timeout: float | None = None) -> bool:
        """Run callbacks as events arrive until every task ended; False on timeout.

        ``timeout=None`` waits as long as it takes (gearman-ruby's default of 1 s surprised
        users; here a time limit is asked for explicitly).
        """
        return self._run(timeout)
