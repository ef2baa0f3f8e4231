"""Task and TaskSet, as in gearman-ruby: one job with callbacks, and a set waited on together.

Network events arrive on gearnb's I/O thread. A task's *state* (handle, status, result)
is updated there at once; its *callbacks* run on the thread that waits (``TaskSet.wait`` /
``Task.wait``), so user code never blocks the I/O thread. Tasks driven through the async API
run their callbacks on the event loop instead.
"""

from __future__ import annotations

import queue
import threading
import uuid
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from ..errors import JobException, JobFailed
from ..protocol import PRIORITY_NAMES

if TYPE_CHECKING:
    from .client import Client

Callback = Callable[..., Any]
_done_lock = threading.Lock()  # makes Task._done at most once
EVENTS = ("created", "complete", "fail", "retry", "exception", "status", "data", "warning")


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


def _as_bytes(data: bytes | str | bytearray | memoryview) -> bytes:
    if isinstance(data, str):
        return data.encode()
    return bytes(data)


class Task:
    """One Gearman job to submit: function name, payload and options, plus callbacks.

    Callbacks: ``on_complete(data)``, ``on_fail()``, ``on_retry(n)``, ``on_exception(text)``,
    ``on_status(numerator, denominator)``, ``on_data(data)``, ``on_warning(data)``,
    ``on_created(handle)``. Each returns the task (chainable) and works as a decorator.
    ``on_fail`` runs once when the task ends unsuccessfully: WORK_FAIL or an exception with no
    retries left, or a task no server accepted (then ``task.error`` holds why, such as
    :class:`~gearnb.NoJobServers` or the server's ERROR).
    """

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
        if priority not in PRIORITY_NAMES:
            raise ValueError(f"priority must be 'high', 'normal' or 'low', not {priority!r}")
        self.function = function if type(function) is bytes else _as_bytes(function)
        self.data = data if type(data) is bytes else _as_bytes(data)
        self.priority = priority
        self.background = background
        if unique is None and background:
            # As libgearman does: every background job gets a unique, or persistent queues
            # (keyed on unique and function) keep only one of them (gearmand #80, #87).
            unique = uuid.uuid4().hex
        self.unique = _as_bytes(unique) if unique is not None else b""
        self.retries = retries
        self.when = when  # epoch seconds: SUBMIT_JOB_EPOCH (a background job that runs then)
        self.handle: bytes | None = None
        self.server: str | None = None
        self.result: bytes | None = None
        self.exception_text: str | None = None
        self.exception_data: bytes | None = None  # WORK_EXCEPTION's data as sent
        self.status: tuple[int, int] = (0, 0)
        self.retries_done = 0
        self.finished = False
        self.successful = False
        self.error: BaseException | None = None  # set when the task could not be submitted
        self._callbacks: dict[str, list[Callback]] = {}
        self._sink: queue.SimpleQueue[tuple[Task, str, tuple[Any, ...]]] | None = None
        self._done_event: threading.Event | None = None  # see _done
        self._done_hooks: list[Callable[[Task], None]] = []  # run on the I/O thread
        self._tried: set[str] = set()  # servers that refused this submission
        self._own_set: TaskSet | None = None  # set by Client.submit for a task on its own

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

    def _run_callbacks(self, event: str, args: tuple[Any, ...]) -> None:
        for fn in self._callbacks.get(event, ()):
            fn(*args)

    @property
    def _done(self) -> threading.Event:
        """Set when the task ends. Made on first use: a TaskSet never needs one, and making a
        threading.Event for each of many thousands of tasks was a tenth of the client's time."""
        event = self._done_event
        if event is None:
            with _done_lock:
                event = self._done_event
                if event is None:
                    event = threading.Event()
                    self._done_event = event  # publish first, then look (_finish does the reverse)
                    if self.finished:
                        event.set()
        return event

    # -- events, on the I/O thread ------------------------------------------------------
    def _emit(self, event: str, *args: Any) -> None:
        if self._sink is not None:
            self._sink.put((self, event, args))
        elif event in self._callbacks:
            self._run_callbacks(event, args)

    def _created(self, handle: bytes, server: str) -> None:
        self.handle = handle
        self.server = server
        self._emit("created", handle)
        if self.background:
            self._finish(True)

    def _finish(self, successful: bool, error: BaseException | None = None) -> None:
        if self.finished:
            return
        if error is not None:
            # Never submitted, or refused (NoJobServers, the server's ERROR): on_fail runs as
            # for WORK_FAIL, as libgearman's fail callback does; ``task.error`` says why.
            self._emit("fail")
        self.finished = True
        self.successful = successful
        self.error = error
        event = self._done_event
        if event is not None:
            event.set()
        for hook in self._done_hooks:
            hook(self)
        if self._sink is not None:
            self._sink.put((self, "_finished", ()))

    # -- waiting ------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Wait for this task alone, running its callbacks here. True when it ended."""
        if self._own_set is not None:
            return self._own_set.wait(timeout)
        if self._sink is None:
            return self._done.wait(timeout)
        raise RuntimeError("this task belongs to a TaskSet: wait on the TaskSet")

    def raise_for_outcome(self) -> bytes | None:
        """The result of an ended task, or the matching exception."""
        if self.error is not None:
            raise self.error
        if not self.successful:
            if self.exception_text is not None:
                raise JobException(self.exception_text)
            raise JobFailed(f"job {self.function.decode(errors='replace')} failed")
        return self.result

    def __repr__(self) -> str:
        state = "finished" if self.finished else "pending"
        return f"<Task {self.function!r} handle={self.handle!r} {state}>"


class TaskSet:
    """Tasks submitted through one client and waited on together (gearman-ruby's TaskSet)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.tasks: list[Task] = []
        self._events: queue.SimpleQueue[tuple[Task, str, tuple[Any, ...]]] = queue.SimpleQueue()
        self._pending = 0

    def add(self, task: Task) -> Task:
        """Submit ``task`` now; its callbacks will run inside :meth:`wait`."""
        task._sink = self._events
        self.tasks.append(task)
        self._pending += 1
        self.client._submit_soon(task)
        return task

    add_task = add

    def wait(self, timeout: float | None = None) -> bool:
        """Run callbacks as events arrive until every task ended; False on timeout.

        ``timeout=None`` waits as long as it takes (gearman-ruby's default of 1 s surprised
        users; here a time limit is asked for explicitly).
        """
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
            if event == "_finished":
                self._pending -= 1
            else:
                task._run_callbacks(event, args)
        # Drain anything left (for instance callbacks emitted just before the end).
        while True:
            try:
                task, event, args = self._events.get_nowait()
            except queue.Empty:
                return True
            if event != "_finished":
                task._run_callbacks(event, args)
