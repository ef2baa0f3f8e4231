"""GearnbFuture: a concurrent.futures.Future for one pyexec call, awaitable and cancellable."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import TYPE_CHECKING, Any, Generator

if TYPE_CHECKING:
    from ..client.task import Task
    from .executor import Executor

# How long cancel() waits for the job server to answer the submit (JOB_CREATED) when it is
# asked to cancel a call that was submitted a moment ago.
CANCEL_CREATED_WAIT = 5.0


class GearnbFuture(concurrent.futures.Future):
    """The result of ``submit(f, ...)``.

    ``cancel()`` drops the job from the job server's queue if no worker has taken it yet
    (``cancel job`` in the admin protocol) and returns False once it runs, as
    concurrent.futures does. ``await future`` works in asyncio code.
    """

    def __init__(self, executor: Executor, label: str) -> None:
        super().__init__()
        self.executor = executor
        self.label = label
        self.task: Task | None = None
        self.submitted_at = time.time()
        self.finished_at: float | None = None
        self.add_done_callback(_stamp)

    @property
    def handle(self) -> bytes | None:
        return self.task.handle if self.task is not None else None

    @property
    def server(self) -> str | None:
        return self.task.server if self.task is not None else None

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        task = self.task
        if task is not None and task.handle is None and not task.finished:
            deadline = time.monotonic() + CANCEL_CREATED_WAIT
            while task.handle is None and not task.finished and time.monotonic() < deadline:
                time.sleep(0.001)
        if task is None or task.handle is None or self.done():
            return super().cancel() if task is None else self.cancelled()
        if not self.executor._cancel_jobs([task]):
            return False
        return super().cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        return f"<GearnbFuture {self.label} {self._state.lower()}>"

    def _repr_html_(self) -> str:
        from ..display import future_html

        return future_html(self)


def _stamp(future: concurrent.futures.Future) -> None:
    if isinstance(future, GearnbFuture):
        future.finished_at = time.time()
